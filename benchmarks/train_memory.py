"""Peak memory of one fine-tuning step at released sizes, estimated on fake tensors.

The released-size network of each fine-tune config is built under PyTorch's
``FakeTensorMode`` (shapes and dtypes, no storage) and runs one training step (forward,
backward, optimizer step) under ``torch.distributed._tools.mem_tracker.MemTracker``; the
peak it reports is the accelerator's peak of live tensors for that step (weights,
gradients, optimizer state, activations; no allocator caching or fragmentation). One
step on zero gradients creates the optimizer state first, so the tracked
step is a steady-state one. Frozen parts that cached conditioning removes (VAE, text /
image encoders: their bf16 weights) are added unless the row says ``cached``.

Levers per row: weights ``fp32`` with bf16 autocast (``bf16-mixed``) or ``bf16``
(``bf16-true``); gradient checkpointing ``ckpt``; optimizer ``adamw`` (fp32 moments),
``adafactor`` (``torch.optim.Adafactor``'s state and temporaries; its step reads
data-dependent scalars that fake tensors lack, so a copy of its tensor work runs), ``adamw8bit`` (bitsandbytes' state layout: two
uint8 moments and a float32 scale per 256 values; bitsandbytes itself does not run on
fake tensors, so a stand-in with that state steps the weights); ``fused``: the step fused
into backward (``sgm.training.optimizers.FusedBackwardStep``); what trains: ``full``,
``lora`` (rank 16 on the attention projections) or ``temporal`` (SVD's temporal layers).

``--check`` runs a small real step on this CPU and measures its peak from the CPU
allocator's events (``torch.profiler`` with ``profile_memory``), beside the fake-tensor
estimate of the same step.

    python benchmarks/train_memory.py            # the table (a few minutes on 2 cores)
    python benchmarks/train_memory.py --check    # estimate vs a real CPU run
"""

from __future__ import annotations

# sgm must be imported before torchvision and diffusers.
# isort: skip_file

import argparse
import contextlib
import logging
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import sgm  # noqa: F401

# isort: split
import torch
from omegaconf import OmegaConf
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker

from sgm.models._trainable import TEMPORAL_PATTERNS, select_trainable
from sgm.training.optimizers import FusedBackwardStep
from sgm.util import instantiate_from_config

FINETUNE = Path(__file__).resolve().parents[1] / "configs" / "example_training" / "finetune"
GIB = 1024**3


@dataclass(frozen=True)
class Levers:
    weights: str = "fp32"  # fp32 (+ bf16 autocast) or bf16
    ckpt: bool = True
    optimizer: str = "adamw"  # adamw, adafactor, adamw8bit
    fused: bool = False
    train: str = "full"  # full, lora, temporal
    cached: bool = True

    def label(self) -> str:
        parts = [self.train, self.weights, self.optimizer]
        parts += ["fused step"] if self.fused else []
        parts += ["ckpt"] if self.ckpt else ["no ckpt"]
        parts += ["cached"] if self.cached else ["encoders loaded"]
        return ", ".join(parts)


@dataclass(frozen=True)
class Setup:
    name: str
    config: str
    latent: tuple[int, int]  # latent height, width
    frames: int = 0  # 0: an image model
    context: tuple[int, int] = (77, 2048)
    adm: int | None = None
    goal: dict | None = None  # train kind -> GiB target


SETUPS = {
    "sdxl": Setup("SDXL 1024²", "sdxl_base", (128, 128), adm=2816),
    "sd21": Setup("SD 2.1 768²", "sd_2_1", (96, 96), context=(77, 1024)),
    "svd": Setup("SVD 14x576x1024", "svd", (72, 128), frames=14, context=(1, 1024), adm=768),
    "svd_xt": Setup(
        "SVD-XT 25x576x1024", "svd_xt", (72, 128), frames=25, context=(1, 1024), adm=768
    ),
}

BASE = Levers(weights="fp32", ckpt=False, optimizer="adamw", cached=False)
ROWS = {
    "sdxl": [
        (BASE, None),
        (replace(BASE, ckpt=True), None),
        (Levers(weights="fp32", optimizer="adamw"), None),
        (Levers(weights="bf16", optimizer="adafactor"), 24),
        (Levers(weights="bf16", optimizer="adamw8bit"), 24),
        (Levers(weights="bf16", optimizer="adafactor", fused=True), 12),
        (Levers(weights="bf16", optimizer="adamw", train="lora"), 8),
    ],
    "sd21": [
        (BASE, None),
        (Levers(weights="bf16", optimizer="adamw8bit"), None),
        (Levers(weights="bf16", optimizer="adamw", train="lora"), None),
    ],
    "svd": [
        (BASE, None),
        (Levers(weights="fp32", optimizer="adamw"), 40),
        (Levers(weights="bf16", optimizer="adamw8bit"), 40),
        (Levers(weights="bf16", optimizer="adamw", train="temporal"), 24),
        (Levers(weights="bf16", optimizer="adamw", train="lora"), None),
    ],
    "svd_xt": [
        (BASE, None),
        (Levers(weights="bf16", optimizer="adamw8bit"), 80),
        (Levers(weights="bf16", optimizer="adamw", train="temporal"), None),
    ],
}


class StateOf8bitAdamW(torch.optim.Optimizer):
    """bitsandbytes ``AdamW8bit``'s state layout with a plain in-place step: two uint8
    moments and one float32 scale per 256 values for tensors of 4096+ values (float32
    moments below). Only its memory stands in for the real optimizer."""

    def __init__(self, params, lr: float = 1e-5):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else torch.enable_grad()(closure)()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    if p.numel() >= 4096:
                        state["state1"] = torch.zeros_like(p, dtype=torch.uint8)
                        state["state2"] = torch.zeros_like(p, dtype=torch.uint8)
                        blocks = (p.numel() + 255) // 256
                        state["absmax1"] = p.new_zeros(blocks, dtype=torch.float32)
                        state["absmax2"] = p.new_zeros(blocks, dtype=torch.float32)
                    else:
                        state["state1"] = torch.zeros_like(p, dtype=torch.float32)
                        state["state2"] = torch.zeros_like(p, dtype=torch.float32)
                p.add_(p.grad, alpha=-group["lr"])
        return loss


class StateOfAdafactor(torch.optim.Optimizer):
    """``torch.optim.Adafactor``'s single-tensor step with its data-dependent scalars
    (``.item()`` calls, which fake tensors cannot answer) held constant: the same state
    (row and column second moments, a full one for vectors) and the same temporaries."""

    def __init__(self, params, lr: float = 1e-5):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else torch.enable_grad()(closure)()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad, state = p.grad, self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    if grad.dim() > 1:
                        state["row_var"] = grad.new_zeros([*grad.shape[:-1], 1])
                        state["col_var"] = grad.new_zeros([*grad.shape[:-2], 1, grad.shape[-1]])
                    else:
                        state["variance"] = torch.zeros_like(grad)
                state["step"] += 1
                if grad.dim() > 1:
                    row_var, col_var = state["row_var"], state["col_var"]
                    row_mean = torch.norm(grad, dim=-1, keepdim=True).square_()
                    row_var.lerp_(row_mean.div_(grad.size(-1)), 0.1)
                    col_mean = torch.norm(grad, dim=-2, keepdim=True).square_()
                    col_var.lerp_(col_mean.div_(grad.size(-2)), 0.1)
                    var_estimate = row_var @ col_var
                    var_estimate.div_(row_var.mean(dim=-2, keepdim=True).clamp_(min=1e-3))
                else:
                    state["variance"].lerp_(grad * grad, 0.1)
                    var_estimate = state["variance"].clone()
                update = var_estimate.clamp_(min=1e-6).rsqrt_().mul_(grad)
                p.add_(update, alpha=-group["lr"])
        return loss


class PeakTracker(MemTracker):
    """``MemTracker`` keeping the step's overall peak only: the per-module peaks it
    also keeps cost a pass over every module after every op (hours for a
    released-size UNet's thousands of modules and tens of thousands of ops)."""

    def _update_peak_stats(self, peak_state) -> None:
        for device, snapshot in self._curr_mem_snap.items():
            if self._peak_mem.get(device, 0) < snapshot["Total"]:
                self._peak_mem[device] = snapshot["Total"]
                self._peak_mem_snap[device] = dict(snapshot)

    def _track_module_params_and_buffers(self, module, install_grad_hooks: bool = True):
        # No gradient hooks: they only relabel a gradient's bytes (already counted when
        # backward made them) and cannot be put on frozen parameters (LoRA, temporal).
        return super()._track_module_params_and_buffers(module, install_grad_hooks=False)


OPTIMIZERS = {
    "adamw": {"target": "torch.optim.AdamW", "params": {"foreach": False}},
    "adafactor": {"target": f"{__name__}.StateOfAdafactor"},
    "adamw8bit": {"target": f"{__name__}.StateOf8bitAdamW"},
}


def network_config(setup: Setup, ckpt: bool, tiny: dict | None = None):
    config = OmegaConf.load(FINETUNE / f"{setup.config}.yaml").model.params.network_config
    config.params.use_checkpoint = ckpt
    config.params.spatial_transformer_attn_type = "softmax"
    config.params.update(tiny or {})
    return config


def inputs(setup: Setup, latent, adm=None, context=None, dtype=torch.float32) -> dict:
    frames = setup.frames or 1
    h, w = latent
    n = frames
    channels = 8 if setup.frames else 4
    tokens, dim = context or setup.context
    batch = {
        "x": torch.randn(n, channels, h, w, dtype=dtype),
        "timesteps": torch.rand(n) * 999,
        "context": torch.randn(n, tokens, dim, dtype=dtype),
    }
    adm = adm or setup.adm
    if adm:
        batch["y"] = torch.randn(n, adm, dtype=dtype)
    if setup.frames:
        batch["num_video_frames"] = frames
        batch["image_only_indicator"] = torch.zeros(1, frames)
    return batch


def _dtype(levers: Levers) -> torch.dtype:
    return torch.bfloat16 if levers.weights == "bf16" else torch.float32


def build(setup: Setup, levers: Levers, tiny: dict | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    dtype = torch.get_default_dtype()
    if levers.weights == "bf16":  # built in bf16: fake parameters cannot be converted
        torch.set_default_dtype(torch.bfloat16)
    try:
        net = instantiate_from_config(network_config(setup, levers.ckpt, tiny))
        if levers.train == "lora":
            net.requires_grad_(False)
            _add_lora_in_place(net, bool(setup.frames))
    finally:
        torch.set_default_dtype(dtype)
    if levers.train == "temporal":
        select_trainable(net, [n for n, _ in net.named_parameters()], TEMPORAL_PATTERNS)
    return net


def _add_lora_in_place(net: torch.nn.Module, temporal: bool) -> None:
    """Rank-16 LoRA on the attention projections, made in the weights' dtype (the
    default dtype while building) on the weights' (fake) device. peft then moves each
    adapter with ``Module.to``, a conversion that fake parameters refuse (they cannot be
    swapped); with dtype and device already theirs, those moves are skipped."""
    from unittest import mock

    from sgm.lora import add_lora

    with mock.patch.object(torch.nn.Module, "to", lambda module, *args, **kwargs: module):
        add_lora(net, {"rank": 16, "alpha": 16, "temporal": temporal})


def optimizer(net: torch.nn.Module, levers: Levers) -> torch.optim.Optimizer:
    params = [p for p in net.parameters() if p.requires_grad]
    config = OPTIMIZERS[levers.optimizer]
    if levers.fused:
        return FusedBackwardStep(params, lr=1e-5, optimizer=config)
    return _make(config, params)


def _make(config: dict, params: list) -> torch.optim.Optimizer:
    from sgm.util import get_obj_from_str

    return get_obj_from_str(config["target"])(params, lr=1e-5, **(config.get("params") or {}))


def train_step(net, opt, batch, levers: Levers) -> None:
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if levers.weights == "fp32"
        else contextlib.nullcontext()
    )

    def closure():
        with autocast:
            out = net(**batch)
        target = torch.zeros_like(out)
        loss = (out.float() - target.float()).square().mean()
        loss.backward()
        return loss

    opt.zero_grad(set_to_none=True)
    opt.step(closure)


def create_state(net: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    """Create the optimizer state with one step on zero gradients (no forward needed)."""
    for inner in getattr(opt, "inner", [opt]):
        params = [p for group in inner.param_groups for p in group["params"]]
        for p in params:
            p.grad = torch.zeros_like(p)
        inner.step()
        for p in params:
            p.grad = None


def estimate(setup: Setup, levers: Levers, tiny: dict | None = None, latent=None) -> float:
    """Peak bytes of a steady-state training step, on fake tensors."""
    with FakeTensorMode(allow_non_fake_inputs=False):
        net = build(setup, levers, tiny)
        opt = optimizer(net, levers)
        context = (setup.context[0], tiny["context_dim"]) if tiny else None
        adm = tiny.get("adm_in_channels") if tiny else None
        create_state(net, opt)
        tracker = PeakTracker()
        tracker.track_external(net, opt, *getattr(opt, "inner", []))
        with tracker:
            batch = inputs(setup, latent or setup.latent, adm, context, _dtype(levers))
            train_step(net, opt, batch, levers)
        snapshot = tracker.get_tracker_snapshot("peak")
    return float(max(v["Total"] for v in snapshot.values()))


def frozen_encoder_bytes(setup: Setup) -> float:
    """bf16 bytes of the first stage and the frozen embedders (what caching removes)."""
    params = OmegaConf.load(FINETUNE / f"{setup.config}.yaml").model.params
    count = 0
    with FakeTensorMode():
        for config in [params.first_stage_config] + list(
            params.conditioner_config.params.emb_models
        ):
            config = OmegaConf.to_container(config)
            config.pop("is_trainable", None), config.pop("input_key", None)
            config.pop("ucg_rate", None), config.pop("legacy_ucg_value", None)
            try:
                module = instantiate_from_config(config)
            except Exception as error:  # an encoder that cannot be built offline
                print(f"  ({config['target']}: not counted: {error})", file=sys.stderr)
                continue
            count += sum(p.numel() for p in module.parameters())
    return 2.0 * count


def table(names: list[str]) -> None:
    print("| setup | levers | peak GiB (estimate) | goal GiB | meets |")
    print("| --- | --- | ---: | ---: | --- |")
    for name in names:
        setup = SETUPS[name]
        encoders = frozen_encoder_bytes(setup)
        for levers, goal in ROWS[name]:
            start = time.perf_counter()
            peak = estimate(setup, levers) + (0.0 if levers.cached else encoders)
            meets = "" if goal is None else ("yes" if peak / GIB <= goal else "no")
            print(
                f"| {setup.name} | {levers.label()} | {peak / GIB:.1f} | {goal or ''} | {meets} |",
                flush=True,
            )
            print(f"  ({time.perf_counter() - start:.0f} s)", file=sys.stderr)


TINY = {
    "model_channels": 64,
    "channel_mult": [1, 2],
    "attention_resolutions": [2],
    "num_res_blocks": 1,
    "num_head_channels": 32,
    "transformer_depth": 1,
    "context_dim": 64,
    "adm_in_channels": 32,
}


def real_peak(setup: Setup, levers: Levers, latent) -> float:
    """Peak live bytes of a real CPU step, from the CPU allocator's events (the
    profiler's allocation timeline: tensors alive before the step, then every
    allocation and free in time order)."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action, MemoryProfile

    net = build(setup, levers, TINY)
    opt = optimizer(net, levers)
    context = (setup.context[0], TINY["context_dim"])
    adm = TINY["adm_in_channels"]
    create_state(net, opt)
    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        train_step(net, opt, inputs(setup, latent, adm, context, _dtype(levers)), levers)
    live = peak = 0
    for _, action, _, nbytes in MemoryProfile(prof.profiler.kineto_results).timeline:
        if action in (Action.PREEXISTING, Action.CREATE):
            live += nbytes
        elif action == Action.DESTROY:
            live -= nbytes
        peak = max(peak, live)
    return float(peak)


CHECK_ROWS = (
    Levers(weights="fp32", ckpt=False, optimizer="adamw"),
    Levers(weights="fp32", ckpt=True, optimizer="adafactor"),
    Levers(weights="bf16", ckpt=True, optimizer="adamw"),
    Levers(weights="fp32", ckpt=True, optimizer="adamw", fused=True),
    Levers(weights="bf16", ckpt=True, optimizer="adamw", fused=True),
)


def check_row(index: int) -> float:
    """Print one row of the check (a fresh process per row: the profiler's memory
    timeline is read once per process); the estimate / real ratio."""
    levers = CHECK_ROWS[index]
    est = estimate(SETUPS["sdxl"], levers, TINY, (32, 32))
    real = real_peak(SETUPS["sdxl"], levers, (32, 32))
    print(f"| {levers.label()} | {est / 2**20:.1f} | {real / 2**20:.1f} | {est / real:.3f} |")
    return est / real


def check() -> bool:
    """Fake-tensor estimate vs a real CPU step of a small SDXL-structured UNet."""
    import subprocess

    print("| small UNet (SDXL structure), latent 32x32 | estimate MiB | real CPU MiB | ratio |")
    print("| --- | ---: | ---: | ---: |", flush=True)
    ok = True
    for index in range(len(CHECK_ROWS)):
        run = subprocess.run(
            [sys.executable, __file__, "--check-row", str(index)], capture_output=True, text=True
        )
        rows = [line for line in run.stdout.splitlines() if line.startswith("|")]
        if run.returncode != 0 or not rows:
            print(f"| {CHECK_ROWS[index].label()} | failed (exit {run.returncode}) | | |")
            ok = False
            continue
        print(rows[-1], flush=True)
        ok &= abs(float(rows[-1].split("|")[-2]) - 1) <= 0.10
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="estimate vs a real CPU step")
    parser.add_argument("--check-row", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--setups", nargs="*", default=list(SETUPS), choices=list(SETUPS))
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    if args.check_row is not None:
        check_row(args.check_row)
        return 0
    if args.check:
        return 0 if check() else 1
    table(args.setups)
    return 0


if __name__ == "__main__":
    sys.exit(main())
