"""Weight updates of the adapter types in community files: LoRA / LoCon, LoHa, LoKr, DoRA.

Each adapter on one layer is a set of factor tensors named as in kohya's and LyCORIS's
files (``lora_down.weight``, ``hada_w1_a``, ``lokr_w2_b``, ...) and an optional
``alpha``; :func:`delta` rebuilds the full update ``dW`` of the layer's weight
(``alpha / rank`` folded in), :func:`apply` gives the adapted weight at a strength.

- LoRA: ``dW = up @ down`` (LoCon: conv kernels flattened; with ``lora_mid`` the kernel is
  a Tucker core between the two 1x1 projections), rank ``down.shape[0]``.
- LoHa: ``dW = (w1_a @ w1_b) * (w2_a @ w2_b)`` (Hadamard product; with ``hada_t1``/``t2``
  each factor is a Tucker core with an output and an input projection), rank
  ``w1_b.shape[0]``.
- LoKr: ``dW = kron(w1, w2)`` with ``w1 = lokr_w1`` or ``w1_a @ w1_b``, ``w2`` likewise
  (or a Tucker core ``lokr_t2``); the rank is that of the decomposed factor, and a file
  with both factors whole has scale 1 whatever its ``alpha``.
- DoRA (``dora_scale`` beside any of them): the adapted weight ``W + dW`` is normalised
  per output row (``dora_scale`` shaped ``(out, 1, ...)``) or per input column
  (``(1, in, ...)``) and multiplied by ``dora_scale``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

LORA = ("lora_down.weight", "lora_up.weight", "lora_mid.weight")
LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
LOKR = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
COMMON = ("alpha", "dora_scale")
TYPES = {"LoRA": LORA, "LoHa": LOHA, "LoKr": LOKR}
# LyCORIS types that are recognised but not supported (suffix -> name)
OTHER_TYPES = {
    "oft_blocks": "OFT",
    "oft_diag": "OFT",
    "oft_R": "BOFT",
    "boft_blocks": "BOFT",
    "diff": "full (diff)",
    "diff_b": "full (diff)",
    "w_norm": "norm",
    "b_norm": "norm",
    "a1.weight": "GLoRA",
    "a2.weight": "GLoRA",
    "b1.weight": "GLoRA",
    "b2.weight": "GLoRA",
    "on_input": "IA3",
}
# per type, groups of tensor names of which a layer needs one each
REQUIRED = {
    "LoRA": ({"lora_down.weight"}, {"lora_up.weight"}),
    "LoHa": ({"hada_w1_a"}, {"hada_w1_b"}, {"hada_w2_a"}, {"hada_w2_b"}),
    "LoKr": ({"lokr_w1", "lokr_w1_a"}, {"lokr_w2", "lokr_w2_a"}),
}


def kind_of(suffixes: set[str]) -> str | None:
    """``"LoRA"``, ``"LoHa"`` or ``"LoKr"`` for a layer's tensor names, ``None`` if none."""
    kinds = [k for k, names in TYPES.items() if suffixes & set(names)]
    return kinds[0] if len(kinds) == 1 else None


def _tucker(core: torch.Tensor, out_proj: torch.Tensor, in_proj: torch.Tensor) -> torch.Tensor:
    """Kernel ``[o, i, *k] = sum_mn out_proj[m, o] core[m, n, *k] in_proj[n, i]``."""
    return torch.einsum("mn...,mo,ni->oi...", core, out_proj, in_proj).contiguous()


def rank(kind: str, t: Mapping[str, torch.Tensor]) -> int | None:
    """The adapter's rank (the ``alpha / rank`` divisor); ``None`` for LoKr without a
    decomposed factor."""
    if kind == "LoRA":
        return int(t["lora_down.weight"].shape[0])
    if kind == "LoHa":
        return int(t["hada_w1_b"].shape[0])
    if "lokr_w2_b" in t:
        return int(t["lokr_w2_b"].shape[0])
    if "lokr_w1_b" in t:
        return int(t["lokr_w1_b"].shape[0])
    return None


def scale(kind: str, t: Mapping[str, torch.Tensor], alpha: float | None) -> float:
    """``alpha / rank`` (1 without an alpha, or for LoKr with both factors whole)."""
    r = rank(kind, t)
    return 1.0 if alpha is None or r is None else float(alpha) / r


def _fit(d: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if d.shape[0] != shape[0] or d.numel() != shape.numel():
        raise ValueError(f"gives a {tuple(d.shape)} update for a {tuple(shape)} weight")
    return d.reshape(shape)


def _lora(t: Mapping[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    down, up = t["lora_down.weight"], t["lora_up.weight"]
    if "lora_mid.weight" in t:
        return _fit(_tucker(t["lora_mid.weight"], up.flatten(1).T, down.flatten(1)), shape)
    return _fit(up.flatten(1) @ down.flatten(1), shape)


def _hada(t: Mapping[str, torch.Tensor], n: int, shape: torch.Size) -> torch.Tensor:
    a, b = t[f"hada_w{n}_a"], t[f"hada_w{n}_b"]
    core = t.get(f"hada_t{n}")
    if core is not None:
        return _fit(_tucker(core, a, b), shape)
    return _fit(a @ b, shape)


def _kron_factor(t: Mapping[str, torch.Tensor], n: int) -> torch.Tensor:
    whole = t.get(f"lokr_w{n}")
    if whole is not None:
        return whole
    core = t.get(f"lokr_t{n}")
    if core is not None:
        return _tucker(core, t[f"lokr_w{n}_a"], t[f"lokr_w{n}_b"])
    return t[f"lokr_w{n}_a"] @ t[f"lokr_w{n}_b"]


def _lokr(t: Mapping[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    w1, w2 = _kron_factor(t, 1), _kron_factor(t, 2)
    if len(shape) > 2 and w2.ndim == 2:  # decomposed conv factor: (out_k, in_k * kernel)
        out_k = shape[0] // w1.shape[0]
        w2 = w2.reshape(out_k, -1, *shape[2:])
    while w1.ndim < w2.ndim:
        w1 = w1.unsqueeze(-1)
    return _fit(torch.kron(w1, w2), shape)


def delta(
    kind: str, t: Mapping[str, torch.Tensor], alpha: float | None, shape: torch.Size
) -> torch.Tensor:
    """The full weight update ``dW`` (``alpha / rank`` included) for a weight of ``shape``,
    in the factors' dtype and device; ``ValueError`` when the factors do not fit it."""
    shape = torch.Size(shape)
    if kind == "LoRA":
        d = _lora(t, shape)
    elif kind == "LoHa":
        d = _hada(t, 1, shape) * _hada(t, 2, shape)
    elif kind == "LoKr":
        d = _lokr(t, shape)
    else:
        raise ValueError(f"unknown adapter type {kind!r}")
    return d * scale(kind, t, alpha)


def dora_axis(dora_scale: torch.Tensor, shape: torch.Size) -> int | None:
    """0 when ``dora_scale`` holds one value per output row, 1 per input column, else
    ``None`` (it does not fit)."""
    if dora_scale.shape[0] == shape[0] and dora_scale.numel() == shape[0]:
        return 0
    if len(shape) > 1 and dora_scale.ndim > 1 and dora_scale.shape[1] == shape[1]:
        if dora_scale.numel() == shape[1]:
            return 1
    return None


def _norm(weight: torch.Tensor, axis: int) -> torch.Tensor:
    """L2 norm of ``weight`` over every dimension but ``axis``, broadcastable to it."""
    moved = weight.transpose(0, axis)
    norm = moved.reshape(moved.shape[0], -1).norm(dim=1)
    view = [1] * weight.ndim
    view[axis] = -1
    return norm.reshape(view)


def apply(
    weight: torch.Tensor, update: torch.Tensor, strength: float, dora_scale: torch.Tensor | None
) -> torch.Tensor:
    """The adapted weight: ``W + strength * dW``; with DoRA ``W + strength * (W_d - W)``
    where ``W_d = dora_scale * (W + dW) / ||W + dW||``."""
    if dora_scale is None:
        return weight + strength * update
    adapted = weight + update
    axis = dora_axis(dora_scale, weight.shape)
    view = [1] * weight.ndim
    view[axis] = -1
    decomposed = adapted * (dora_scale.reshape(view) / _norm(adapted, axis))
    return weight + strength * (decomposed - weight)
