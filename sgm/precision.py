"""The precision policy: the engine's compute dtype, autocast per device, float32 regions.

One engine-wide compute dtype (``fp32``, ``fp16`` or ``bf16``) decides the autocast that
sampling runs under; ``auto`` is fp16 on CUDA, bf16 on a CPU that computes it natively
(AMX or AVX-512 BF16 on x86, the BF16 extension on Arm; :func:`cpu_computes_bf16`) and fp32
elsewhere (bf16 is opt-in on other CPUs and on MPS). Sampling runs keep a CPU's first stage
in float32 whatever the compute dtype. Parts that must stay exact run in float32 whatever autocast the caller opened:
the first stage of an engine with ``disable_first_stage_autocast`` and the video
conditioning encoder with ``disable_encoder_autocast`` (the SDXL and SVD autoencoders
overflow in fp16). Command lines pass their ``--dtype`` through :func:`parse_dtype`::

    from sgm.precision import autocast, parse_dtype

    dtype = parse_dtype(args.dtype, device=args.device)   # "auto", "fp32", "fp16", "bf16"
    pipeline = SamplingPipeline(..., device=args.device, dtype=dtype)

    with autocast(device, dtype):          # mixed precision, or none for float32
        ...
    with float32(x):                       # exact float32 inside, whatever is open outside
        ...
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch

from . import util
from .devices import accelerator_autocast, device_of
from .errors import InputError

__all__ = [
    "DTYPES",
    "DTYPE_NAMES",
    "HALF_DTYPES",
    "DeviceLike",
    "accelerator_autocast",
    "autocast",
    "cast_network",
    "cpu_computes_bf16",
    "device_of",
    "float32",
    "parse_dtype",
    "to_float32",
]

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
HALF_DTYPES = (torch.float16, torch.bfloat16)
DTYPE_NAMES = ("auto", *DTYPES)

DeviceLike = torch.device | str | torch.Tensor | torch.nn.Module


def parse_dtype(name: str | torch.dtype | None, device: DeviceLike | None = None) -> torch.dtype:
    """The compute dtype for ``name`` (``auto``, ``fp32``, ``fp16``, ``bf16``, or a dtype).

    ``auto`` (or None) gives fp16 on the machine's accelerator (CUDA), bf16 on a CPU that
    computes it natively (:func:`cpu_computes_bf16`) and fp32 on other CPUs and on MPS;
    without ``device`` it looks at the machine's accelerator. Raises
    ``InputError`` naming the bad value.
    """
    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():
            raise InputError(f"dtype {name} is not supported; use one of {DTYPE_NAMES}")
        return name
    if name is None or name == "auto":
        return _auto_dtype(device)
    key = str(name).lower()
    if key not in DTYPES:
        raise InputError(f"dtype {name!r} is not supported; use one of {', '.join(DTYPE_NAMES)}")
    return DTYPES[key]


def _auto_dtype(where: DeviceLike | None) -> torch.dtype:
    # The machine's accelerator is looked up through sgm.util, the one place to override it.
    accelerator = util.accelerator_type()
    kind = (accelerator or "cpu") if where is None else device_of(where).type
    if kind == "cpu":
        return torch.bfloat16 if cpu_computes_bf16() else torch.float32
    if kind in ("mps", "meta") or kind != accelerator:
        return torch.float32
    return torch.float16


# CPU feature flags (Linux /proc/cpuinfo names) of native bfloat16 arithmetic
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16", "bf16"})


def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (``flags`` on x86, ``Features`` on
    Arm); empty where they cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_computes_bf16() -> bool:
    """Does this machine's CPU compute bfloat16 natively (AMX, AVX-512 BF16, Arm BF16)?
    Read once per process."""
    return bool(BF16_CPU_FLAGS & _cpu_flags())


def autocast(
    where: DeviceLike, dtype: torch.dtype | str | None = None
) -> contextlib.AbstractContextManager:
    """Autocast for the device of ``where`` computing in ``dtype`` (see
    :func:`parse_dtype`); float32 turns autocast off inside the block."""
    device = device_of(where)
    dtype = parse_dtype(dtype, device)
    if dtype == torch.float32:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


@contextlib.contextmanager
def float32(where: DeviceLike) -> Iterator[None]:
    """Run the block in float32 on the device of ``where``, whatever autocast is open."""
    with torch.autocast(device_of(where).type, enabled=False):
        yield


def to_float32(x: Any) -> Any:
    """``x`` in float32 if it is a floating tensor (other values unchanged)."""
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.float()
    return x


def cast_network(engine: torch.nn.Module, dtype: torch.dtype | str | None) -> None:
    """Keep the engine's network (``engine.model``) in ``dtype``; EMA shadows, the
    conditioner and the first stage keep their own dtypes. Run it under
    :func:`autocast` of the same dtype."""
    dtype = parse_dtype(dtype, device_of(engine))
    engine.model.to(dtype=dtype)
