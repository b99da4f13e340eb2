"""Whole image-to-video runs: sgm (image -> Euler EDM + linear CFG ramp -> temporal
decode) vs diffusers' StableVideoDiffusionPipeline on the same weights, sigmas and noise.

CPU (default): the SVD architecture (scripts/sampling/configs/svd.yaml) scaled down:
video UNet ``model_channels`` 64, an open_clip ViT-H-like image tower of small width,
both VAEs at ``ch`` 32. Random weights go to a ``.safetensors`` file, exported with
``sgm.convert.to_diffusers``; sgm loads it with ``load_video_model``, diffusers with
``from_pretrained``. ``--gpu``: SVD-XT (svd_xt.yaml) at its real size, 25 frames,
576x1024, fp16 on CUDA, built in memory on the device.

Same noise on both sides: the conditioning-image noise (``cond_aug`` =
``noise_aug_strength`` = 0.02) and the start latents are the first and second draws of
one seeded CPU generator in both pipelines (diffusers draws nothing else when given
``latents``). The image goes to diffusers as a PIL image of the target size (its tensor
path skips the CLIP resize) and to sgm as the same pixels in [-1, 1].

    python benchmarks/sample_svd.py --quick
    python benchmarks/sample_svd.py --frames 8 --size 128 --steps 10 --repeats 5
    python benchmarks/sample_svd.py --gpu
"""

from __future__ import annotations

# sgm must be imported before torchvision and diffusers.
# isort: skip_file

import argparse
import json
import os
import sys
import tempfile

import sgm  # noqa: F401  (must precede diffusers)

# isort: split
import numpy as np
import torch
from omegaconf import OmegaConf

from sgm.inference.releases import config_path

from _pipeline import (
    child_report,
    compile_diffusers,
    diffusers_pipeline,
    interleaved,
    add_speedup_flags,
    max_abs_diff,
    option_ratio,
    peak_in_fresh_process,
    peak_of_run,
    randomize,
    speedup_runs,
    summary,
    without_run_cache,
)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
VITH = "sgm-bench-vith"
# ViT-H/14's structure (patch 14 at 224 px) at a small width and depth.
VITH_ARCH = {
    "embed_dim": 128,
    "vision_cfg": {
        "image_size": 224,
        "layers": 8,
        "width": 128,
        "head_width": 64,
        "patch_size": 14,
    },
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1},
}
SEED = 3
FPS, MOTION, COND_AUG = 7, 127, 0.02
TOLERANCE = 2e-3  # max abs difference of the [0, 1] frames (fp32); fp16: 5e-2


def register_image_tower(workdir: str) -> None:
    from open_clip.factory import add_model_config

    arch_dir = os.path.join(workdir, "open_clip")
    if not os.path.isdir(arch_dir):
        os.makedirs(arch_dir)
        with open(os.path.join(arch_dir, f"{VITH}.json"), "w") as f:
            json.dump(VITH_ARCH, f)
    add_model_config(arch_dir)


def make_config(args):
    config = OmegaConf.load(config_path("svd_xt" if args.full else "svd"))
    params = config.model.params
    params.pop("ckpt_path", None)
    unet = params.network_config.params
    unet.use_checkpoint = False
    if args.full:
        return config
    unet.model_channels = args.model_channels
    unet.context_dim = VITH_ARCH["embed_dim"]
    unet.spatial_transformer_attn_type = "softmax"
    embedders = params.conditioner_config.params.emb_models
    embedders[0].params.open_clip_embedding_config.params.arch = VITH
    ddconfigs = [
        embedders[3].params.encoder_config.params.ddconfig,
        params.first_stage_config.params.encoder_config.params,
        params.first_stage_config.params.decoder_config.params,
    ]
    for dd in ddconfigs:
        dd.ch = args.vae_channels
        dd.attn_type = "vanilla"
    return config


def tie_aliases(engine, params) -> None:
    """Released SVD files hold two equal copies of the VAE encoder; so do these."""
    from sgm.convert._components import layout

    state = engine.state_dict()
    with torch.no_grad():
        for copy, source in layout(engine, params).aliases.items():
            for key in [k for k in state if k.startswith(copy)]:
                state[key].copy_(state[source + key[len(copy) :]])


def prepare_files(args, workdir: str) -> None:
    from safetensors.torch import save_file

    from sgm.convert import to_diffusers
    from sgm.convert._engine import build_engine, engine_params

    register_image_tower(workdir)
    config = make_config(args)
    OmegaConf.save(config, os.path.join(workdir, "config.yaml"))
    engine = build_engine(config, device="cpu").eval()
    randomize(engine, seed=0)
    tie_aliases(engine, engine_params(config))
    state = {k: v.contiguous() for k, v in engine.state_dict().items()}
    save_file(state, os.path.join(workdir, "model.safetensors"))
    to_diffusers(
        os.path.join(workdir, "model.safetensors"),
        os.path.join(workdir, "config.yaml"),
        os.path.join(workdir, "diffusers"),
    )


def load_from_files(args, workdir: str, side: str):
    register_image_tower(workdir)
    if side == "sgm":
        from sgm.inference.video import load_video_model

        return load_video_model(
            os.path.join(workdir, "config.yaml"),
            os.path.join(workdir, "model.safetensors"),
            device=args.device,
            num_frames=args.frames,
            num_steps=args.steps,
            dtype=args.sgm_dtype,
            compile_model=args.compile in ("sgm", "both"),
        )
    from diffusers import StableVideoDiffusionPipeline

    pipe = StableVideoDiffusionPipeline.from_pretrained(os.path.join(workdir, "diffusers"))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(args.device)


def build_in_memory(args, workdir: str):
    """``--gpu``: engine with random weights on the device, and its diffusers twin."""
    from sgm import precision
    from sgm.convert._engine import engine_params
    from sgm.util import instantiate_from_config

    if not args.full:
        register_image_tower(workdir)
    config = make_config(args)
    params = config.model.params
    params.sampler_config.params.num_steps = args.steps
    params.sampler_config.params.guider_config.params.num_frames = args.frames
    with torch.device(args.device):
        engine = instantiate_from_config(config.model).eval()
    randomize(engine, seed=0)
    tie_aliases(engine, engine_params(config))
    pipe = diffusers_pipeline(engine, engine_params(config), torch.device(args.device), args.dtype)
    pipe.set_progress_bar_config(disable=True)
    if args.dtype != torch.float32:
        precision.cast_network(engine, args.dtype)
    engine.compute_dtype = args.dtype
    if args.compile in ("sgm", "both"):  # as load_engine(compile_model=True) does
        from sgm.inference.engines import compile_engine

        compile_engine(engine, freeze=True)
    return engine.requires_grad_(False), pipe


def conditioning_image(size: tuple[int, int]):
    """A smooth random RGB picture (PIL) of ``size`` = (height, width)."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    small = torch.rand(3, 4, 4, generator=g)
    big = torch.nn.functional.interpolate(small[None], size=size, mode="bicubic")[0]
    big = (big + 0.1 * torch.rand(big.shape, generator=g)).clamp(0, 1)
    return Image.fromarray((big.permute(1, 2, 0).numpy() * 255).astype(np.uint8))


def make_runs(args, engine, pipe):
    from sgm.inference.video import build_value_dict, sample_video

    h, w = args.height, args.width
    device = torch.device(args.device)
    pil = conditioning_image((h, w))
    pixels = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)[None].float()
    image = (pixels / 127.5 - 1.0).to(device)
    g = torch.Generator().manual_seed(SEED)
    torch.randn(image.shape, generator=g)  # the conditioning-image noise (first draw)
    latents = torch.randn(args.frames, 4, h // 8, w // 8, generator=g)[None]
    runs = {}
    if engine is not None:
        sigmas = engine.sampler.discretization(args.steps).tolist()

        def run_sgm(**speedups):
            gen = torch.Generator().manual_seed(SEED)
            values = build_value_dict(
                image, COND_AUG, fps_id=FPS - 1, motion_bucket_id=MOTION, generator=gen
            )
            return sample_video(
                engine,
                values,
                args.frames,
                generator=gen,
                decoding_t=args.frames,
                dtype=args.sgm_dtype,
                **speedups,
            )

        runs["sgm"] = run_sgm
    else:
        sigmas = args.sigmas
    if pipe is not None:
        max_scale = args.max_guidance

        def run_diffusers():
            with torch.no_grad():
                out = pipe(
                    pil,
                    height=h,
                    width=w,
                    num_frames=args.frames,
                    sigmas=sigmas,
                    min_guidance_scale=1.0,
                    max_guidance_scale=max_scale,
                    fps=FPS,
                    motion_bucket_id=MOTION,
                    noise_aug_strength=COND_AUG,
                    decode_chunk_size=args.frames,
                    output_type="pt",
                    generator=torch.Generator().manual_seed(SEED),
                    latents=latents.to(device, pipe.unet.dtype),
                )
            return out.frames[0]

        runs["diffusers"] = run_diffusers
    if args.no_run_cache and "sgm" in runs:
        runs["sgm"] = without_run_cache(runs["sgm"])
    return runs, sigmas


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small and few: < 2 min on 2 cores")
    parser.add_argument("--gpu", action="store_true", help="SVD-XT real size, fp16, CUDA")
    parser.add_argument(
        "--in-memory",
        action="store_true",
        help="build both sides in memory, as --gpu does (no files)",
    )
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument(
        "--size", type=int, default=None, help="square side in pixels (default 576x1024 with --gpu)"
    )
    parser.add_argument("--model-channels", type=int, default=64)
    parser.add_argument("--vae-channels", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--compile",
        choices=["none", "sgm", "both"],
        default="none",
        help="torch.compile network and VAE decoder (weights frozen in): sgm's (compile_model) or both",
    )
    parser.add_argument(
        "--no-run-cache",
        action="store_true",
        help="sgm computes the text keys/values and [uc, c] batches at every step",
    )
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="CPU: sgm computes in bfloat16 (autocast; first stage float32), "
        "diffusers stays float32 (the output check allows 5e-2)",
    )
    add_speedup_flags(parser)
    parser.add_argument("--child", choices=["sgm", "diffusers"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--sigmas", type=json.loads, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.full = args.gpu
    args.device = "cuda" if args.gpu else "cpu"
    args.dtype = torch.float16 if args.gpu else torch.float32
    args.sgm_dtype = "fp16" if args.gpu else "bf16" if args.bf16 else "fp32"
    args.in_memory = args.in_memory or args.gpu
    args.max_guidance = 3.0 if args.full else 2.5
    frames, steps, size, repeats = (
        (25, 25, None, 3) if args.gpu else (4, 3, 64, 3) if args.quick else (8, 10, 128, 5)
    )
    args.frames = args.frames or frames
    args.steps = args.steps or steps
    args.repeats = args.repeats or repeats
    args.size = args.size or size
    args.height, args.width = (args.size, args.size) if args.size else (576, 1024)
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        side = load_from_files(args, args.workdir, args.child)
        if args.child == "diffusers" and args.compile == "both":
            compile_diffusers(side)
        pair = (side, None) if args.child == "sgm" else (None, side)
        child_report(make_runs(args, *pair)[0][args.child], torch.device(args.device))
        return
    with tempfile.TemporaryDirectory(prefix="sgm_bench_svd_") as workdir:
        if args.in_memory:
            engine, pipe = build_in_memory(args, workdir)
        else:
            prepare_files(args, workdir)
            engine = load_from_files(args, workdir, "sgm")
            pipe = load_from_files(args, workdir, "diffusers")
        if args.compile == "both":
            compile_diffusers(pipe)
        n_params = sum(p.numel() for p in engine.model.parameters())
        print(
            f"{'SVD-XT' if args.full else 'SVD scaled down'} (video UNet "
            f"{n_params / 1e6:.0f}M params), {args.frames} frames {args.height}x"
            f"{args.width} px, {args.steps} Euler steps, guidance 1 -> "
            f"{args.max_guidance}, {args.dtype}, {args.device}, {args.threads} threads, "
            f"compile={args.compile}, median of {args.repeats}"
        )
        runs, sigmas = make_runs(args, engine, pipe)
        speedup = speedup_runs(args, args.steps)
        if speedup is not None:
            label, kwargs = speedup
            run = runs["sgm"]
            option_ratio(label, run, lambda: run(**kwargs), args.repeats, torch.device(args.device))
            return
        ours, theirs = runs["sgm"](), runs["diffusers"]()
        diff, _ = max_abs_diff(ours, theirs)
        tol = TOLERANCE if args.sgm_dtype == "fp32" else 5e-2
        print(
            f"same output: frames max abs diff {diff:.2e} (tolerance {tol:g}, frames in "
            f"[0, 1], std {float(theirs.float().std()):.3f})"
        )
        if not diff <= tol:
            message = f"outputs differ by {diff:.2e} > {tol:g}"
            if args.sgm_dtype == "fp32":  # exact arithmetic: a real difference, stop
                sys.exit(f"{message}: timings would compare different work")
            # half precision: rounding differences grow over the steps (random weights)
            print(f"WARNING: {message} (half precision); timing anyway")
        seconds, peaks = interleaved(runs, args.repeats, torch.device(args.device), warmup=0)
        # CUDA: the allocator's peaks during the timed runs; CPU: resident set
        if not peaks and args.in_memory:
            peaks = {name: peak_of_run(fn, torch.device(args.device)) for name, fn in runs.items()}
        elif not peaks:
            del engine, pipe, runs
            argv = sys.argv[1:] + ["--workdir", workdir, "--sigmas", json.dumps(sigmas)]
            peaks = {
                name: peak_in_fresh_process(__file__, argv, name) for name in ("sgm", "diffusers")
            }
        print(summary(seconds, peaks))


if __name__ == "__main__":
    main()
