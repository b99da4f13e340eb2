"""The precision policy: the engine's compute dtype, autocast per device, float32 regions.

One engine-wide compute dtype (``fp32``, ``fp16`` or ``bf16``) decides the autocast that
sampling runs under; ``auto`` is fp16 on CUDA and fp32 elsewhere (bf16 is opt-in on CPU
and MPS). Parts that must stay exact run in float32 whatever autocast the caller opened:
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
from collections.abc import Iterator
from typing import Any

import torch

from .errors import InputError

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
HALF_DTYPES = (torch.float16, torch.bfloat16)
DTYPE_NAMES = ("auto", *DTYPES)

DeviceLike = torch.device | str | torch.Tensor | torch.nn.Module


def device_of(where: DeviceLike | None) -> torch.device:
    """The device of a device name, a tensor or a module's first parameter or buffer."""
    if where is None:
        from .util import resolve_device

        return torch.device(resolve_device("auto"))
    if isinstance(where, torch.Tensor):
        return where.device
    if isinstance(where, torch.nn.Module):
        for tensor in (*where.parameters(), *where.buffers()):
            return tensor.device
        return torch.device("cpu")
    return torch.device(where)


def parse_dtype(name: str | torch.dtype | None, device: DeviceLike | None = None) -> torch.dtype:
    """The compute dtype for ``name`` (``auto``, ``fp32``, ``fp16``, ``bf16``, or a dtype).

    ``auto`` (or None) gives fp16 on the machine's accelerator (CUDA) and fp32 on the
    CPU and on MPS; without ``device`` it looks at the machine's accelerator. Raises
    ``InputError`` naming the bad value.
    """
    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():
            raise InputError(f"dtype {name} is not supported; use one of {DTYPE_NAMES}")
        return name
    if name is None or name == "auto":
        return _auto_dtype(device_of(device))
    key = str(name).lower()
    if key not in DTYPES:
        raise InputError(f"dtype {name!r} is not supported; use one of {', '.join(DTYPE_NAMES)}")
    return DTYPES[key]


def _auto_dtype(device: torch.device) -> torch.dtype:
    from .util import accelerator_type

    if device.type in ("cpu", "mps", "meta") or device.type != accelerator_type():
        return torch.float32
    return torch.float16


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


def accelerator_autocast(where: DeviceLike) -> contextlib.AbstractContextManager:
    """Autocast in the caller's current dtype for the device of ``where``, but only on
    an accelerator (a no-op on CPU): the original's ``autocast`` for encoders."""
    device = device_of(where)
    if device.type in ("cpu", "meta"):
        return contextlib.nullcontext()
    return torch.autocast(
        device.type,
        dtype=torch.get_autocast_dtype(device.type),
        cache_enabled=torch.is_autocast_cache_enabled(),
    )


def cast_network(engine: torch.nn.Module, dtype: torch.dtype | str | None) -> None:
    """Keep the engine's network (``engine.model``) in ``dtype``; EMA shadows, the
    conditioner and the first stage keep their own dtypes. Run it under
    :func:`autocast` of the same dtype."""
    dtype = parse_dtype(dtype, device_of(engine))
    engine.model.to(dtype=dtype)
