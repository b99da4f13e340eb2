"""SVD-XT in low-VRAM mode: the whole sample (conditioning, 25 steps, decode) with the
engine's parts kept on the host and moved to the GPU one at a time (``sgm.offload``), the
network stored in fp16, frames decoded ``--decoding-t`` at a time. Prints the time and the
accelerator's peak memory in the ``sample_*`` format, then whether the peak fits the budget.

    python benchmarks/svd_low_vram.py --gpu                 # SVD-XT, 25 frames 576x1024
    python benchmarks/svd_low_vram.py                       # scaled down on the CPU: runs the
                                                            # same code path, no peak figure

Random weights (sample_svd.py's scaled-down architecture on the CPU). No peer: diffusers'
own offloading needs accelerate, which the test environment does not hold.
"""

from __future__ import annotations

# sgm must be imported before torchvision and diffusers.
# isort: skip_file

import argparse
import tempfile
import time

import sgm  # noqa: F401  (must precede open_clip)

# isort: split
import torch

import sample_svd
from _pipeline import randomize

BUDGET_GIB = 24.0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="SVD-XT real size, fp16, CUDA")
    parser.add_argument("--decoding-t", type=int, default=2, help="frames decoded at a time")
    parser.add_argument("--budget-gib", type=float, default=BUDGET_GIB)
    parser.add_argument("--threads", type=int, default=1)
    ours, rest = parser.parse_known_args(argv)
    svd_argv = (["--gpu"] if ours.gpu else ["--quick"]) + rest
    args = sample_svd.parse_args(svd_argv)
    for name, value in vars(ours).items():
        setattr(args, name.replace("-", "_"), value)
    return args


def build(args, workdir: str):
    """The engine built on the host with random weights, the network in the half dtype,
    offloaded to the device."""
    from sgm import offload, precision
    from sgm.convert._engine import engine_params
    from sgm.util import instantiate_from_config

    if not args.full:
        sample_svd.register_image_tower(workdir)
    config = sample_svd.make_config(args)
    params = config.model.params
    params.sampler_config.params.num_steps = args.steps
    params.sampler_config.params.guider_config.params.num_frames = args.frames
    engine = instantiate_from_config(config.model).eval().requires_grad_(False)
    randomize(engine, seed=0)
    sample_svd.tie_aliases(engine, engine_params(config))
    if args.dtype != torch.float32:
        precision.cast_network(engine, args.dtype)
    engine.compute_dtype = args.dtype
    offload.offload_engine(engine, args.device)
    return engine


def main() -> None:
    from sgm.inference.video import build_value_dict, sample_video

    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="sgm_bench_svd_low_vram_") as workdir:
        engine = build(args, workdir)
        pil = sample_svd.conditioning_image((args.height, args.width))
        pixels = torch.from_numpy(sample_svd.np.asarray(pil).copy()).permute(2, 0, 1)[None]
        image = (pixels.float() / 127.5 - 1.0).to(device)

        def run():
            gen = torch.Generator().manual_seed(sample_svd.SEED)
            values = build_value_dict(
                image,
                sample_svd.COND_AUG,
                fps_id=sample_svd.FPS - 1,
                motion_bucket_id=sample_svd.MOTION,
                generator=gen,
            )
            return sample_video(
                engine,
                values,
                args.frames,
                generator=gen,
                decoding_t=args.decoding_t,
                dtype=args.sgm_dtype,
            )

        print(
            f"{'SVD-XT' if args.full else 'SVD scaled down'} low-VRAM: {args.frames} frames "
            f"{args.height}x{args.width} px, {args.steps} Euler steps, {args.dtype}, "
            f"{args.device}, offloaded, decoding_t {args.decoding_t}"
        )
        frames = run()  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        frames = run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        assert torch.isfinite(frames).all(), "non-finite frames"
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device) / 2**20
            fits = "yes" if peak / 1024 <= args.budget_gib else "NO"
            print(
                f"       sgm: median {seconds:8.3f} s  best {seconds:8.3f} s  (n=1)  peak + "
                f"{peak:8.1f} MiB during a run"
            )
            print(
                f"low-VRAM budget {args.budget_gib:g} GiB: peak {peak / 1024:.2f} GiB, fits: {fits}"
            )
        else:
            print(f"       sgm: {seconds:.3f} s on {device} (no accelerator peak to report)")


if __name__ == "__main__":
    main()
