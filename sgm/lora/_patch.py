"""Adapters from community files applied to the weights themselves, reversibly.

The first adapter on a weight keeps a copy of the original (on the CPU); the weight is
then ``original`` with every adapter on it applied in the order they were added, at
their strengths. Changing a strength or removing an adapter recomputes the weight from
the copy, so the original comes back exactly. Sampling costs nothing extra; state-dict
keys stay those of the released checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from . import _deltas
from ._kohya_names import Target

ATTRIBUTE = "_sgm_weight_adapters"


@dataclass
class LayerAdapter:
    """One adapter on one weight: its type, factor tensors, alpha and DoRA scale."""

    layer: str  # the layer's name in the file
    kind: str
    tensors: dict[str, torch.Tensor]
    alpha: float | None
    dora_scale: torch.Tensor | None
    target: Target

    def update(self, device: torch.device) -> torch.Tensor:
        """The full-strength update ``dW`` in float32 on ``device``."""
        t = {k: v.to(device, torch.float32) for k, v in self.tensors.items()}
        return _deltas.delta(self.kind, t, self.alpha, self.target.shape)


@dataclass
class _Entry:
    name: str
    adapter: LayerAdapter
    strength: float


@dataclass
class _Patched:
    original: torch.Tensor
    entries: list[_Entry] = field(default_factory=list)


def _state(module: nn.Module) -> dict[str, _Patched]:
    state = module.__dict__.get(ATTRIBUTE)
    if state is None:
        state = {}
        module.__dict__[ATTRIBUTE] = state
    return state


def patched(model: nn.Module) -> Iterator[tuple[nn.Module, str, _Patched]]:
    """``(module, parameter name, state)`` for every adapted weight of ``model``."""
    for module in model.modules():
        for param, state in module.__dict__.get(ATTRIBUTE, {}).items():
            yield module, param, state


def names(model: nn.Module) -> list[str]:
    """Names of the weight adapters on ``model``, in the order they were added."""
    out: list[str] = []
    for _, _, state in patched(model):
        out += [e.name for e in state.entries if e.name not in out]
    return out


def _recompute(module: nn.Module, param: str, state: _Patched) -> None:
    weight = getattr(module, param)
    value = state.original.to(weight.device, torch.float32, copy=True)
    for entry in state.entries:
        rows = entry.adapter.target.rows
        dora = entry.adapter.dora_scale
        dora = None if dora is None else dora.to(weight.device, torch.float32)
        part = value if rows is None else value[rows]
        new = _deltas.apply(part, entry.adapter.update(weight.device), entry.strength, dora)
        if rows is None:
            value = new
        else:
            value[rows] = new
    with torch.no_grad():
        weight.copy_(value.to(weight.dtype))


def add(adapters: list[LayerAdapter], name: str, strength: float) -> None:
    """Apply ``adapters`` (one file) as adapter ``name`` at ``strength``."""
    touched = {}
    for adapter in adapters:
        module, param = adapter.target.module, adapter.target.param
        state = _state(module)
        if param not in state:
            weight = getattr(module, param)
            state[param] = _Patched(weight.detach().to("cpu", copy=True))
        state[param].entries.append(_Entry(name, adapter, float(strength)))
        touched[(id(module), param)] = (module, param, state[param])
    for module, param, state in touched.values():
        _recompute(module, param, state)


def set_strength(model: nn.Module, strength: float, name: str | None = None) -> None:
    """Strength of weight adapter ``name`` (all when ``None``)."""
    for module, param, state in patched(model):
        hit = [e for e in state.entries if name is None or e.name == name]
        for entry in hit:
            entry.strength = float(strength)
        if hit:
            _recompute(module, param, state)


def remove(model: nn.Module, name: str | None = None) -> None:
    """Take weight adapter ``name`` (all when ``None``) out: the weights it changed are
    recomputed from their originals (exactly the originals once no adapter is left)."""
    for module, param, state in list(patched(model)):
        kept = [e for e in state.entries if name is not None and e.name != name]
        if len(kept) == len(state.entries):
            continue
        state.entries = kept
        _recompute(module, param, state)
        if not kept:
            del module.__dict__[ATTRIBUTE][param]


def fuse(model: nn.Module) -> None:
    """Make the adapted weights permanent: forget the originals (frees their copies)."""
    for module in model.modules():
        module.__dict__.pop(ATTRIBUTE, None)
