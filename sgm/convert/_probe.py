"""Key tables from forward converters, and their exact inverse.

A forward converter (ours or diffusers' own) turns an sgm state dict into a diffusers
one. Running it on meta *probe* tensors records, for every output tensor, the source
key it came from and the tensor operations applied on the way (renames apply none;
``[:, :, 0, 0]``, ``.T`` and q/k/v slices apply some). Replaying those operations on
a tensor of element indices tells where each output element comes from, so the
inverse (diffusers -> sgm) is exact, and checking that every source element is hit
exactly once proves the table is a bijection.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch.utils._pytree import tree_leaves, tree_map

from ..errors import CheckpointError

Op = Callable[[torch.Tensor], torch.Tensor]


class _Probe(torch.Tensor):
    """A meta tensor that remembers its source key and the operations applied to it."""

    source: str | None = None
    ops: tuple[Op, ...] = ()
    mixed: bool = False

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = super().__torch_function__(func, types, args, kwargs)
        parents = [a for a in tree_leaves((args, kwargs)) if isinstance(a, _Probe) and a.source]
        if not parents:
            return out
        parent = parents[0]
        mixed = len(parents) > 1 or parent.mixed

        def replay(x: torch.Tensor, func=func, args=args, kwargs=kwargs) -> torch.Tensor:
            swap = lambda a: x if a is parent else a  # noqa: E731
            return func(*tree_map(swap, args), **tree_map(swap, kwargs))

        def tag(tensor: torch.Tensor, op: Op) -> None:
            if isinstance(tensor, _Probe) and tensor is not parent:
                tensor.source, tensor.mixed = parent.source, mixed
                tensor.ops = parent.ops + (op,)

        if isinstance(out, (tuple, list)):
            for i, item in enumerate(out):
                tag(item, lambda x, i=i: replay(x)[i])
        else:
            tag(out, replay)
        return out


def probes(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """One meta probe per key, with the key's shape."""
    out = {}
    for key, shape in shapes.items():
        probe = torch.empty(shape, device="meta").as_subclass(_Probe)
        probe.source = key
        out[key] = probe
    return out


@dataclass(frozen=True)
class Entry:
    """Where one diffusers tensor comes from: an sgm key and the operations applied."""

    source: str
    ops: tuple[Op, ...]
    shape: tuple[int, ...]

    def apply(self, tensor: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            tensor = op(tensor)
        return tensor


KeyTable = dict[str, Entry]


def trace(
    convert: Callable[[dict[str, torch.Tensor]], Mapping[str, torch.Tensor]],
    shapes: Mapping[str, tuple[int, ...]],
) -> KeyTable:
    """Run ``convert`` on probes of ``shapes``: diffusers key -> :class:`Entry`."""
    converted = convert(probes(shapes))
    table = {}
    for key, value in converted.items():
        if not isinstance(value, _Probe) or value.source is None or value.mixed:
            raise CheckpointError(f"converted key {key!r} does not come from one source key")
        table[key] = Entry(value.source, value.ops, tuple(value.shape))
    return table


def _index_map(entry: Entry, shape: tuple[int, ...]) -> torch.Tensor:
    numel = 1
    for size in shape:
        numel *= size
    dtype = torch.int32 if numel < 2**31 else torch.int64
    return entry.apply(torch.arange(numel, dtype=dtype).reshape(shape)).reshape(-1).long()


def check_bijection(
    table: KeyTable, shapes: Mapping[str, tuple[int, ...]], unplaced: set[str]
) -> None:
    """Every element of every source key except ``unplaced`` lands exactly once."""
    by_source: dict[str, list[Entry]] = {}
    for entry in table.values():
        by_source.setdefault(entry.source, []).append(entry)
    missing = set(shapes) - set(by_source) - unplaced
    if missing:
        raise CheckpointError(f"no converted key for {sorted(missing)[:5]}")
    for source, entries in by_source.items():
        if not entries[0].ops and len(entries) == 1:
            continue
        hits = torch.zeros(torch.Size(shapes[source]).numel(), dtype=torch.int32)
        for entry in entries:
            index = _index_map(entry, shapes[source])
            hits.index_add_(0, index, torch.ones_like(index, dtype=torch.int32))
        if not bool((hits == 1).all()):
            raise CheckpointError(f"{source}: converted tensors do not cover it exactly once")


def invert(
    table: KeyTable, state: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, torch.Tensor]:
    """sgm tensors from the diffusers ``state`` the table describes (exact inverse)."""
    out: dict[str, torch.Tensor] = {}
    for key, entry in table.items():
        value = state[key]
        shape = shapes[entry.source]
        if not entry.ops:
            out[entry.source] = value.reshape(shape)
            continue
        if entry.source not in out:
            out[entry.source] = value.new_empty(shape)
        flat = out[entry.source].view(-1)
        flat[_index_map(entry, shape)] = value.reshape(-1)
    return out
