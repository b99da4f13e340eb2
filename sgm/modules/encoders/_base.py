"""Base class of every conditioning embedder, and construction helpers they share."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ...devices import device_of


def _reset_to_none_property(name: str) -> property:
    """A property stored in ``_<name>`` that ``del`` resets to None."""
    private = "_" + name

    def get(self: nn.Module) -> Any:
        return getattr(self, private)

    def set_(self: nn.Module, value: Any) -> None:
        setattr(self, private, value)

    def delete(self: nn.Module) -> None:
        setattr(self, private, None)

    return property(get, set_, delete, doc=f"The embedder's ``{name}`` (None if unset).")


class AbstractEmbModel(nn.Module):
    """An embedder run by ``GeneralConditioner``: carries its batch key(s) and dropout rate.

    ``is_trainable``, ``ucg_rate``, ``input_key``/``input_keys`` and ``legacy_ucg_val``
    are set by the conditioner from the embedder's config entry.
    """

    def __init__(self) -> None:
        super().__init__()
        self._is_trainable: bool | None = None
        self._ucg_rate: float | None = None
        self._input_key: str | None = None
        self.input_keys: Sequence[str] | None = None
        self.legacy_ucg_val: Any = None
        self.ucg_generator: torch.Generator | None = None

    is_trainable = _reset_to_none_property("is_trainable")
    ucg_rate = _reset_to_none_property("ucg_rate")
    input_key = _reset_to_none_property("input_key")

    def freeze(self) -> None:
        """Eval mode and no gradients for every parameter."""
        self.eval()
        for param in self.parameters():
            param.requires_grad = False


def module_device(module: nn.Module) -> torch.device:
    """Device of the first parameter or buffer of ``module`` (CPU if it has none)."""
    return device_of(module)


def resolve_init_device(init_device: str | torch.device | None = None) -> torch.device:
    """Where to build weights: ``init_device`` if given, else the ambient default device.

    Building inside ``with torch.device("meta"):`` therefore builds on meta (shapes only,
    no memory); otherwise weights are real tensors on the default device (CPU).
    """
    if init_device is not None:
        return torch.device(init_device)
    return torch.device(torch.get_default_device())


def buffer_device(init_device: torch.device) -> torch.device:
    """Constant buffers (masks, means) stay real even when weights are built on meta."""
    return torch.device("cpu") if init_device.type == "meta" else init_device


@contextlib.contextmanager
def building_on(device: torch.device) -> Iterator[None]:
    """Create tensors on ``device`` while building a third-party model."""
    with torch.device(device):
        yield
