"""The machine's accelerator, the device of a value, and autocast on that device.

Nothing here names a device: ``auto`` means the machine's accelerator (CUDA, then MPS)
if it has one, else the CPU. torch is imported on first use.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def accelerator_type() -> str | None:
    """Device type of the available accelerator (e.g. CUDA, MPS), or None on CPU only."""
    import torch

    if hasattr(torch, "accelerator"):
        if torch.accelerator.is_available():
            return torch.accelerator.current_accelerator().type
        return None
    if torch.cuda.is_available():
        return torch.device(torch.cuda.current_device()).type
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return None


def resolve_device(device: Any = "auto") -> str:
    """``"auto"``/None picks the accelerator (CUDA, then MPS) if any, else cpu; any other
    value must name a device (``InputError`` otherwise)."""
    if device in (None, "auto"):
        return accelerator_type() or "cpu"
    import torch

    from .errors import InputError

    try:
        return str(torch.device(device))
    except (RuntimeError, TypeError, ValueError):
        raise InputError(
            f"device {device!r} is not a device name (expected auto, cpu, cuda, cuda:N or mps)"
        ) from None


def device_of(where: Any) -> torch.device:
    """The device of a device name, a tensor or a module's first parameter or buffer;
    None is the machine's accelerator (see :func:`resolve_device`)."""
    import torch

    if where is None:
        return torch.device(resolve_device("auto"))
    if isinstance(where, torch.Tensor):
        return where.device
    if isinstance(where, torch.nn.Module):
        for tensor in (*where.parameters(), *where.buffers()):
            return tensor.device
        return torch.device("cpu")
    return torch.device(where)


def accelerator_autocast(where: Any) -> contextlib.AbstractContextManager:
    """Autocast in the caller's current dtype for the device of ``where``, but only on
    an accelerator (a no-op on CPU): the original's ``autocast`` for encoders."""
    import torch

    device = device_of(where)
    if device.type in ("cpu", "meta"):
        return contextlib.nullcontext()
    return torch.autocast(
        device.type,
        dtype=torch.get_autocast_dtype(device.type),
        cache_enabled=torch.is_autocast_cache_enabled(),
    )
