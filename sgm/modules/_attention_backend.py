"""The one attention-backend switch: PyTorch SDPA (default), xformers, or plain math.

Every attention in the library goes through :func:`scaled_dot_product`. The backend is
chosen, in order, by :func:`set_attention_backend` (or the ``attention_backend`` context
manager), else the ``SGM_ATTENTION_BACKEND`` environment variable, else ``"auto"``.
``"auto"`` honours what a layer asks for (``softmax-xformers`` layers ask for xformers,
everything else for SDPA); any other setting overrides every layer. xformers is probed
lazily, once; asking for it when it is missing (or for CPU tensors) falls back to SDPA,
with one warning when it is missing.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "sdpa", "xformers", "math")
ENV_VAR = "SGM_ATTENTION_BACKEND"

# xformers' memory-efficient kernel fails on batches above 65535 (B * heads); split.
_XFORMERS_MAX_BATCH = 32768

_setting: list[str | None] = [None]


def _check(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(
            f"unknown attention backend {name!r}; expected one of {', '.join(BACKENDS)}"
        )
    return name


def set_attention_backend(name: str | None) -> None:
    """Select the attention backend for the whole library (None: back to env/auto)."""
    _setting[0] = None if name is None else _check(name)


def get_attention_backend() -> str:
    """The backend setting in force: explicit setting, else env var, else ``auto``."""
    if _setting[0] is not None:
        return _setting[0]
    env = os.environ.get(ENV_VAR)
    if env:
        return _check(env.strip().lower())
    return "auto"


@contextlib.contextmanager
def attention_backend(name: str | None) -> Iterator[None]:
    """Temporarily select the attention backend (restored on exit)."""
    previous = _setting[0]
    set_attention_backend(name)
    try:
        yield
    finally:
        _setting[0] = previous


@functools.cache
def xformers_available() -> bool:
    """Whether ``xformers.ops`` imports (probed once, on first use)."""
    try:
        import xformers.ops  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _warn_missing_xformers() -> None:
    logger.warning("xformers was requested but is not installed; using PyTorch SDPA")


def resolve_backend(requested: str | None = None) -> str:
    """The concrete backend (``sdpa``, ``xformers`` or ``math``) for a layer's request."""
    setting = get_attention_backend()
    name = setting if setting != "auto" else (requested or "sdpa")
    if name == "auto":
        name = "sdpa"
    _check(name)
    if name == "xformers" and not xformers_available():
        _warn_missing_xformers()
        return "sdpa"
    return name


def _math_attention(q, k, v, mask, scale, dropout_p):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    weights = (q * scale) @ k.transpose(-2, -1)
    if mask is not None:
        if mask.dtype == torch.bool:
            weights = weights.masked_fill(~mask, float("-inf"))
        else:
            weights = weights + mask
    weights = weights.float().softmax(dim=-1).to(v.dtype)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v


def _xformers_attention(q, k, v, mask, scale, dropout_p):
    import xformers.ops as xops

    bias = None
    if mask is not None:
        bias = mask
        if mask.dtype == torch.bool:
            bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device)
            bias = bias.masked_fill(~mask, float("-inf"))
        bias = bias.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2]).to(q.dtype)
    # xformers wants (B, N, H, d).
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    outs = []
    for start in range(0, q.shape[0], _XFORMERS_MAX_BATCH):
        part = slice(start, start + _XFORMERS_MAX_BATCH)
        outs.append(
            xops.memory_efficient_attention(
                q[part],
                k[part],
                v[part],
                attn_bias=None if bias is None else bias[part],
                p=dropout_p,
                scale=scale,
            )
        )
    return torch.cat(outs).transpose(1, 2)


def scaled_dot_product(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    dropout_p: float = 0.0,
    backend: str | None = None,
) -> torch.Tensor:
    """Softmax attention ``softmax(q k^T * scale + mask) v`` on the selected backend.

    Args:
        q: queries ``(B, H, Nq, d)``; k: keys ``(B, H, Nk, d)``; v: values ``(B, H, Nk, dv)``.
        mask: optional, broadcastable to ``(B, H, Nq, Nk)``; boolean (True = attend) or
            additive float, as in ``torch.nn.functional.scaled_dot_product_attention``.
        scale: defaults to ``d ** -0.5``.
        dropout_p: attention dropout probability (pass 0 in eval).
        backend: what the calling layer asks for (``sdpa``/``xformers``/``math``); a
            global setting other than ``auto`` overrides it.

    Returns:
        ``(B, H, Nq, dv)``.
    """
    name = resolve_backend(backend)
    if name == "xformers" and q.device.type != "cpu":
        return _xformers_attention(q, k, v, mask, scale, dropout_p)
    if name == "math":
        return _math_attention(q, k, v, mask, scale, dropout_p)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
