"""Shared pieces of the whole-pipeline benchmarks (sample_sdxl.py, sample_svd.py).

Random weights for an engine, an in-memory diffusers pipeline built from the engine's
tensors (the converters of ``sgm.convert``, the same ones ``to_diffusers`` writes to a
folder), device-aware timing, peak memory (resident set on CPU, allocator peak on CUDA)
and the summary every benchmark prints.
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from unet import PeakRSS


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights of a sensible scale: ``N(0, 1/fan_in)`` for matrices and kernels, small
    biases, norm scales around 1, mixing factors spread out; buffers (sigma tables,
    position ids) untouched. Zero-initialised output layers become non-zero, so every
    part of the network shapes the result."""
    gens: dict[torch.device, torch.Generator] = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.is_floating_point():
                continue
            if p.device not in gens:  # drawn where the weights live (fast on a GPU)
                gens[p.device] = torch.Generator(p.device).manual_seed(seed)
            gen = gens[p.device]

            def randn(shape, gen=gen, device=p.device):
                return torch.randn(shape, generator=gen, device=device)

            if p.ndim > 1:
                fan_in = p[0].numel()
                value = randn(p.shape) / math.sqrt(fan_in)
            else:
                value = randn(p.shape) * 0.02
                last = name.rsplit(".", 2)
                if (
                    name.endswith("weight")
                    and len(last) > 1
                    and ("norm" in last[-2] or last[-2].startswith("ln"))
                ):
                    value += 1.0
            if name.endswith("mix_factor"):
                value = randn(p.shape)
            if name.endswith("logit_scale"):
                value = torch.full(p.shape, math.log(100.0))
            p.copy_(value.to(p.dtype))


def diffusers_pipeline(
    engine: torch.nn.Module, params: Mapping[str, Any], device: torch.device, dtype: torch.dtype
) -> Any:
    """The diffusers pipeline of ``engine`` built in memory: each component converted
    from the engine's state dict exactly as ``sgm.convert.to_diffusers`` does it."""
    import diffusers

    from sgm.convert._components import layout
    from sgm.convert._encoders import flat_text_keys
    from sgm.convert._folders import _classes
    from sgm.convert._pipeline import _feature_extractor, scheduler_config
    from sgm.modules.encoders._tokenizers import build_hf_clip_tokenizer

    plan = layout(engine, params)
    state = {k: v.float() for k, v in engine.state_dict().items()}
    parts: dict[str, Any] = {}
    for component in plan.components:
        cls, config_cls = _classes(component)
        with torch.device(device):  # real buffers (position ids), unlike the meta device
            model = (
                cls(**component.config)
                if config_cls is None
                else cls(config_cls(**component.config))
            )
        converted = component.convert(state)
        if component.class_name.startswith("CLIPText"):
            converted = flat_text_keys(model, converted)
        model.load_state_dict(dict(converted), strict=True)
        parts[component.name] = model.to(device, dtype).eval()
        if component.name.startswith("text_encoder"):
            tokenizer = build_hf_clip_tokenizer(component.config["max_position_embeddings"])
            if component.pad_token is not None:
                tokenizer.pad_token = component.pad_token
            parts[component.name.replace("text_encoder", "tokenizer")] = tokenizer
    parts["scheduler"] = diffusers.EulerDiscreteScheduler.from_config(
        scheduler_config(params, plan.family)
    )
    if plan.family == "svd":
        import tempfile

        from transformers import CLIPImageProcessor

        with tempfile.TemporaryDirectory() as tmp:
            _feature_extractor(os.path.join(tmp, "fe"))
            parts["feature_extractor"] = CLIPImageProcessor.from_pretrained(os.path.join(tmp, "fe"))
    else:
        parts.update(add_watermarker=False, force_zeros_for_empty_prompt=True)
    return getattr(diffusers, plan.pipeline)(**parts)


# --------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Seconds of one call of ``fn`` (the device finished), and its output."""
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, out


def interleaved(
    runs: Mapping[str, Callable[[], Any]], repeats: int, device: torch.device, warmup: int = 1
) -> tuple[dict[str, list[float]], dict[str, tuple[float, float]]]:
    """(name -> seconds per run, name -> CUDA peak as ``peak_of_run`` gives it, empty on
    CPU); ``warmup`` runs each, then A B, B A, A B, ..."""
    for fn in runs.values():
        for _ in range(warmup):
            timed(fn, device)
    names = list(runs)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, tuple[float, float]] = {}
    for i in range(repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
            seconds[name].append(timed(runs[name], device)[0])
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device)
                old = peaks.get(name, (0.0, 0.0))
                peaks[name] = (max(old[0], (peak - before) / 2**20), max(old[1], peak / 2**20))
    return seconds, peaks


def add_speedup_flags(parser: Any) -> None:
    """--deepcache N, --deepcache-branch B, --tome RATIO, --tome-max-downsample D, --tgate
    STEP: time sgm with the speed-up against sgm without it (no diffusers run)."""
    parser.add_argument(
        "--deepcache",
        type=int,
        default=0,
        metavar="N",
        help="time sgm with DeepCache (one full network step in N) against sgm without it",
    )
    parser.add_argument("--deepcache-branch", type=int, default=0, metavar="B")
    parser.add_argument(
        "--tome",
        type=float,
        default=0.0,
        metavar="RATIO",
        help="time sgm with token merging (share of tokens merged) against sgm without it",
    )
    parser.add_argument("--tome-max-downsample", type=int, default=1, metavar="D")
    parser.add_argument(
        "--tgate",
        type=int,
        default=0,
        metavar="STEP",
        help="time sgm with T-GATE (gate step) against sgm without it (image runs)",
    )


def speedup_runs(args: Any, steps: int) -> tuple[str, dict[str, Any]] | None:
    """(label, keyword arguments of sgm's sampling call) of the speed-ups the flags ask for,
    or None."""
    from sgm.modules.diffusionmodules.deepcache import DeepCache
    from sgm.modules.diffusionmodules.tgate import TGate
    from sgm.modules.token_merging import TokenMerging

    kwargs: dict[str, Any] = {}
    labels = []
    if args.deepcache:
        kwargs["deepcache"] = DeepCache(args.deepcache, args.deepcache_branch)
        full = len(kwargs["deepcache"].full_steps(steps))
        labels.append(
            f"DeepCache interval {args.deepcache}, branch {args.deepcache_branch} "
            f"({full} of {steps} steps whole)"
        )
    if args.tome:
        kwargs["tome"] = TokenMerging(args.tome, args.tome_max_downsample)
        labels.append(f"token merging {args.tome:g} (max downsample {args.tome_max_downsample})")
    if args.tgate:
        kwargs["tgate"] = TGate(args.tgate)
        labels.append(f"T-GATE gate step {args.tgate} of {steps}")
    return (" + ".join(labels), kwargs) if kwargs else None


def option_ratio(
    label: str,
    off: Callable[[], Any],
    on: Callable[[], Any],
    repeats: int,
    device: torch.device,
) -> float:
    """Time a run without and with an option (interleaved, medians) and print the ratio
    and the PSNR of its output against the output without it (images in [0, 1]);
    returns the ratio."""
    first = {name: fn() for name, fn in (("off", off), ("on", on))}
    images = {k: (v[0] if isinstance(v, tuple) else v).float().cpu() for k, v in first.items()}
    mse = float(((images["on"] - images["off"]) ** 2).mean())
    psnr = float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)
    seconds, _ = interleaved({"off": off, "on": on}, repeats, device, warmup=0)
    t_off, t_on = (statistics.median(seconds[k]) for k in ("off", "on"))
    ratio = t_off / t_on
    print(
        f"{label}: {t_off:.2f} s without, {t_on:.2f} s with (median of {repeats}): "
        f"{ratio:.2f}x; PSNR vs without {psnr:.1f} dB"
    )
    return ratio


# --------------------------------------------------------------------------- memory


def peak_of_run(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """(MiB above the pre-run level during one warm call, MiB at the process peak):
    the allocator's on CUDA, the resident set on CPU."""
    fn()  # warm-up: kernels, libraries and caches become resident
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return (peak - before) / 2**20, peak / 2**20
    with PeakRSS() as mem:
        fn()
    return mem.delta / 2**20, high_water_mib()


def high_water_mib() -> float:
    """This process's resident-set peak (``VmHWM``; unlike ``ru_maxrss`` it does not
    inherit the parent's peak across fork + exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_in_fresh_process(script: str, argv: list[str], name: str) -> tuple[float, float]:
    """``peak_of_run`` of side ``name`` in a new process running ``script``."""
    cmd = [sys.executable, script, *argv, "--child", name]
    # A fixed mmap threshold makes freed tensors leave the resident set at once.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{name} memory run failed:\n{done.stderr[-3000:]}")
    run_mib, total_mib = done.stdout.split()[-2:]
    return float(run_mib), float(total_mib)


def child_report(fn: Callable[[], Any], device: torch.device) -> None:
    """The child side of ``peak_in_fresh_process``."""
    run_mib, total_mib = peak_of_run(fn, device)
    print(f"{run_mib:.3f} {total_mib:.3f}")


# --------------------------------------------------------------------------- output


def max_abs_diff(ours: torch.Tensor, theirs: torch.Tensor) -> tuple[float, float]:
    """(max |ours - theirs|, max |theirs|) in float32."""
    ours, theirs = ours.float().cpu(), theirs.float().cpu()
    return float((ours - theirs).abs().max()), float(theirs.abs().max())


def summary(
    seconds: Mapping[str, list[float]],
    peaks: Mapping[str, tuple[float, float]],
    ours: str = "sgm",
    theirs: str = "diffusers",
) -> str:
    """Median / best / peak per side, then the ``ratio`` line (last)."""
    lines, medians = [], {}
    for name, runs in seconds.items():
        medians[name] = statistics.median(runs)
        run_mib, total_mib = peaks[name]
        lines.append(
            f"{name:>10}: median {medians[name]:8.3f} s  best {min(runs):8.3f} s  "
            f"(n={len(runs)})  peak +{run_mib:8.1f} MiB during a run, "
            f"{total_mib:8.1f} MiB process peak"
        )
    time_ratio = medians[ours] / medians[theirs]
    # in-process resident-set deltas are ~0 (freed memory stays in the allocator)
    mem = f"{peaks[ours][0] / peaks[theirs][0]:.3f}" if peaks[theirs][0] >= 1.0 else "n/a"
    lines.append(f"ratio {ours}/{theirs}: time {time_ratio:.3f}, memory {mem}")
    return "\n".join(lines)


def without_run_cache(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with ``sgm.modules.run_cache`` off: every step computes all its work."""
    from sgm.modules import run_cache

    def run(**kwargs: Any) -> Any:
        with run_cache.disabled():
            return fn(**kwargs)

    return run


def compile_diffusers(pipe: Any) -> Any:
    """diffusers' UNet and VAE decoder compiled as sgm's ``compile_engine`` compiles its
    network and decoder (weights frozen in)."""
    from sgm.modules.diffusionmodules.wrappers import compile_network

    compile_network(pipe.unet, freeze=True)
    compile_network(pipe.vae.decoder, freeze=True)
    return pipe
