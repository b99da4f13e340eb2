"""Forward latency and peak memory: sgm UNetModel vs diffusers UNet2DConditionModel.

Both networks hold the same tensors (diffusers' own ldm -> diffusers converter, loaded
with ``assign=True``) and see the same inputs, dtype and thread count. The default is the
SDXL base architecture (sd_xl_base.yaml) with ``model_channels`` reduced so it fits a CPU.

    python benchmarks/unet.py --model-channels 128 --size 32 --repeats 5 --threads 2
"""

from __future__ import annotations

# sgm must be imported before torchvision and diffusers.
# isort: skip_file

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
import warnings

import sgm  # noqa: F401  (must precede diffusers)

# isort: split
import torch
import torchvision  # noqa: F401
from omegaconf import OmegaConf

from sgm.inference.releases import config_path

CONFIG = str(config_path("sdxl_base_1.0"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every millisecond."""

    def __enter__(self):
        self.base = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.delta = self.peak - self.base


def build(args):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        create_unet_diffusers_config_from_ldm,
    )

    from sgm.modules.diffusionmodules.openaimodel import UNetModel

    config = OmegaConf.load(CONFIG)
    params = OmegaConf.to_container(config.model.params.network_config.params)
    params["model_channels"] = args.model_channels
    torch.manual_seed(0)
    ours = UNetModel(**params).eval().to(args.dtype)
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.02)
    config.model.params.network_config.params = params
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dconfig = create_unet_diffusers_config_from_ldm(
            OmegaConf.to_container(config), {}, image_size=1024
        )
    state = {"model.diffusion_model." + k: v for k, v in ours.state_dict().items()}
    with torch.device("meta"):
        theirs = UNet2DConditionModel(**dconfig)
    theirs.load_state_dict(convert_ldm_unet_checkpoint(state, dconfig), assign=True)
    return ours, theirs.eval(), params


def make_inputs(args, params):
    from sgm.modules.diffusionmodules.util import timestep_embedding

    g = torch.Generator().manual_seed(0)
    b, dt = args.batch, args.dtype
    x = torch.randn(b, 4, args.size, args.size, generator=g).to(dt)
    t = torch.full((b,), 500.0)
    context = torch.randn(b, 77, params["context_dim"], generator=g).to(dt)
    text = torch.randn(b, 1280, generator=g).to(dt)
    time_ids = torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]] * b)
    size_emb = timestep_embedding(time_ids.flatten(), 256).reshape(b, -1).to(dt)
    y = torch.cat([text, size_emb], 1)

    def run_ours(model):
        return model(x, t, context, y)

    def run_theirs(model):
        cond = {"text_embeds": text, "time_ids": time_ids}
        return model(x, t, context, added_cond_kwargs=cond).sample

    return run_ours, run_theirs


def timed(fn, model):
    with torch.inference_mode():
        start = time.perf_counter()
        out = fn(model)
    return time.perf_counter() - start, out


def peak_memory_in_fresh_process(args, name: str) -> float:
    """MiB above the pre-forward level during one forward, in a new process."""
    cmd = [sys.executable, __file__, "--memory-of", name]
    for flag in ("model_channels", "size", "batch", "threads"):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    cmd += ["--dtype", str(args.dtype).split(".")[-1]]
    # A fixed mmap threshold makes freed tensors leave the resident set at once.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    return int(out.split()[-1]) / 2**20


def report_memory(args, ours, theirs, run_ours, run_theirs) -> None:
    fn, model = (run_ours, ours) if args.memory_of == "sgm" else (run_theirs, theirs)
    with torch.inference_mode():
        fn(model)  # warm-up: kernels and libraries become resident
        with PeakRSS() as mem:
            fn(model)
    print(mem.delta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-channels", type=int, default=128)
    parser.add_argument("--size", type=int, default=32, help="latent height = width")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--memory-of", choices=["sgm", "diffusers"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.dtype = getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)

    ours, theirs, params = build(args)
    run_ours, run_theirs = make_inputs(args, params)
    if args.memory_of:
        report_memory(args, ours, theirs, run_ours, run_theirs)
        return
    n_params = sum(p.numel() for p in ours.parameters())
    print(
        f"SDXL architecture, model_channels={args.model_channels} ({n_params / 1e6:.0f}M "
        f"params), latents {args.batch}x4x{args.size}x{args.size}, {args.dtype}, "
        f"{args.threads} threads, median of {args.repeats}"
    )
    timed(run_ours, ours)  # warm-up
    timed(run_theirs, theirs)
    results = {"sgm": [], "diffusers": []}
    for i in range(args.repeats):  # interleaved, alternating order: load hits both alike
        pairs = [("sgm", run_ours, ours), ("diffusers", run_theirs, theirs)]
        for name, fn, model in pairs if i % 2 == 0 else pairs[::-1]:
            results[name].append(timed(fn, model))
    diff = (results["sgm"][0][1] - results["diffusers"][0][1]).abs().max().item()
    scale = results["diffusers"][0][1].abs().max().item()
    summary = {}
    for name, runs in results.items():
        median = statistics.median(r[0] for r in runs)
        fastest = min(r[0] for r in runs)
        peak = peak_memory_in_fresh_process(args, name)
        summary[name] = (median, peak)
        print(
            f"{name:>9}: median {median * 1e3:8.1f} ms (min {fastest * 1e3:8.1f})   "
            f"forward peak +{peak:7.1f} MiB"
        )
    (ours_t, ours_m), (their_t, their_m) = summary["sgm"], summary["diffusers"]
    print(
        f"ratio sgm/diffusers: time {ours_t / their_t:.3f}, memory "
        f"{ours_m / max(their_m, 1e-9):.3f}; max abs diff {diff:.2e} (scale {scale:.2e})"
    )


if __name__ == "__main__":
    main()
