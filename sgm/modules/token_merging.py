"""Token merging for Stable Diffusion (Bolya & Hoffman, 2023): fewer tokens through the
transformer blocks' attention, the same number out.

In every ``BasicTransformerBlock`` of a feature map downsampled at most ``max_downsample``
times from the latents, the tokens are split into destinations (one per ``sx`` x ``sy``
cell: its top-left token, or a random one with ``use_rand``) and sources (the rest); the
``ratio`` of all tokens taken from the sources most similar (cosine) to a destination are
averaged into it. Self-attention (and, if asked, cross-attention and the MLP) runs on the
merged tokens; its output is copied back to every token that was merged ("unmerged").
Random destinations come from a generator forked from the global random state at the first
merge of a run, so a seeded run is reproducible. Nothing changes unless a run enables it::

    with token_merging.enabled(TokenMerging(0.5)):
        samples = sampler(denoiser, noise, cond, uc)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError
from .run_scope import RunScope

Merge = Callable[[torch.Tensor], torch.Tensor]


def _same(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass(frozen=True)
class TokenMerging:
    """Token merging settings.

    Args:
        ratio: share of the tokens merged away, in [0, 1).
        max_downsample: merge in blocks downsampled at most this much (1, 2, 4 or 8).
        sx, sy: the destination cell's width and height in tokens.
        use_rand: a random destination per cell (else the top-left token); odd batches
            (no guidance pairs) always use the top-left token.
        merge_attn, merge_crossattn, merge_mlp: which parts run on merged tokens.
    """

    ratio: float
    max_downsample: int = 1
    sx: int = 2
    sy: int = 2
    use_rand: bool = True
    merge_attn: bool = True
    merge_crossattn: bool = False
    merge_mlp: bool = False

    def __post_init__(self) -> None:
        ratio = self.ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
            raise InputError(f"token merging ratio must be a number in [0, 1), got {ratio!r}")
        if not (math.isfinite(ratio) and 0 <= ratio < 1):
            raise InputError(f"token merging ratio must be in [0, 1), got {ratio!r}")
        if self.max_downsample not in (1, 2, 4, 8):
            raise InputError(
                f"token merging max_downsample must be 1, 2, 4 or 8, got {self.max_downsample!r}"
            )
        for name in ("sx", "sy"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"token merging {name} must be a positive integer, got {value!r}")

    def check_network(self, network: Any) -> None:
        """``InputError`` unless ``network`` has transformer blocks at a downsampling of at
        most ``max_downsample``."""
        levels = getattr(network, "attention_downsamplings", lambda: set())()
        if not any(ds <= self.max_downsample for ds in levels):
            where = ", ".join(map(str, sorted(levels))) or "no level"
            raise InputError(
                f"token merging at max_downsample {self.max_downsample} finds no transformer "
                f"block in {type(network).__name__} (its blocks are at downsampling {where})"
            )


class _Run:
    """One sampling run's merging: the settings, the latents' size, the generator."""

    def __init__(self, options: TokenMerging) -> None:
        self.options = options
        self.size: tuple[int, int] | None = None
        self.generator: torch.Generator | None = None

    def plan(self, x: torch.Tensor) -> tuple[Merge, Merge, Merge, Merge, Merge, Merge]:
        """(merge, unmerge) functions for attention, cross-attention and MLP of a block
        whose input tokens are ``x`` (B, N, C); identities where nothing merges."""
        o = self.options
        if self.size is None:
            return (_same,) * 6
        height, width = self.size
        downsample = math.ceil(math.sqrt((height * width) // x.shape[1]))
        if downsample > o.max_downsample:
            return (_same,) * 6
        w, h = math.ceil(width / downsample), math.ceil(height / downsample)
        random = o.use_rand and x.shape[0] % 2 == 0
        if random and (self.generator is None or self.generator.device != x.device):
            self.generator = _fork_generator(x.device, self.generator)
        merge, unmerge = bipartite_merge(
            x, w, h, o.sx, o.sy, int(x.shape[1] * o.ratio), self.generator if random else None
        )
        ma, mc, mm = (
            merge if on else _same for on in (o.merge_attn, o.merge_crossattn, o.merge_mlp)
        )
        ua, uc, um = (
            unmerge if on else _same for on in (o.merge_attn, o.merge_crossattn, o.merge_mlp)
        )
        return ma, mc, mm, ua, uc, um


def _fork_generator(device: torch.device, previous: torch.Generator | None) -> torch.Generator:
    """A generator in the global random state of ``device`` (CPU's where it keeps none)."""
    if device.type == "cuda":
        return torch.Generator(device=device).set_state(torch.cuda.get_rng_state(device))
    if device.type != "cpu" and previous is not None:
        return previous
    return torch.Generator(device="cpu").set_state(torch.get_rng_state())


def bipartite_merge(
    metric: torch.Tensor,
    w: int,
    h: int,
    sx: int,
    sy: int,
    r: int,
    generator: torch.Generator | None = None,
) -> tuple[Merge, Merge]:
    """Merge ``r`` source tokens of a ``h`` x ``w`` token grid into destinations.

    ``metric`` (B, N, C) gives the cosine similarities. Destinations: one token per full
    ``sy`` x ``sx`` cell (random with ``generator``, else the top-left one); the tokens
    outside the full cells are sources. Returns ``merge`` ((B, N, C) -> (B, N - r, C):
    kept sources, then destinations averaged with what merged into them) and
    ``unmerge`` (back to (B, N, C): each merged source takes its destination's value).
    """
    batch, n, _ = metric.shape
    if r <= 0:
        return _same, _same
    device = metric.device
    rows, cols = h // sy, w // sx
    with torch.no_grad():
        if generator is None:
            choice = torch.zeros(rows, cols, dtype=torch.int64, device=device)
        else:
            drawn = torch.randint(
                sy * sx, (rows, cols, 1), device=generator.device, generator=generator
            )
            choice = drawn[..., 0].to(device)
        cell_y = torch.arange(rows, device=device)[:, None] * sy + choice // sx
        cell_x = torch.arange(cols, device=device)[None, :] * sx + choice % sx
        is_dst = torch.zeros(h * w, dtype=torch.bool, device=device)
        is_dst[(cell_y * w + cell_x).flatten()] = True
        dst_pos = is_dst.nonzero()[:, 0]
        src_pos = (~is_dst).nonzero()[:, 0]
        unit = metric / metric.norm(dim=-1, keepdim=True)
        scores = unit[:, src_pos] @ unit[:, dst_pos].transpose(-1, -2)
        r = min(r, len(src_pos))
        best, best_dst = scores.max(dim=-1)  # (B, S): each source's closest destination
        order = best.argsort(dim=-1, descending=True)
        kept, merged = order[:, r:], order[:, :r]
        into = best_dst.gather(-1, merged)  # destination (index into dst_pos) per merged source

    def merge(x: torch.Tensor) -> torch.Tensor:
        c = x.shape[-1]
        src, dst = x[:, src_pos], x[:, dst_pos]
        moving = src.gather(1, merged[..., None].expand(-1, -1, c))
        dst = dst.scatter_reduce(1, into[..., None].expand(-1, -1, c), moving, reduce="mean")
        return torch.cat([src.gather(1, kept[..., None].expand(-1, -1, c)), dst], dim=1)

    def unmerge(x: torch.Tensor) -> torch.Tensor:
        c, n_kept = x.shape[-1], kept.shape[1]
        kept_x, dst = x[:, :n_kept], x[:, n_kept:]
        out = x.new_zeros(batch, n, c)
        out[:, dst_pos] = dst
        src = out[:, src_pos]
        src.scatter_(1, kept[..., None].expand(-1, -1, c), kept_x)
        src.scatter_(
            1, merged[..., None].expand(-1, -1, c), dst.gather(1, into[..., None].expand(-1, -1, c))
        )
        out[:, src_pos] = src
        return out

    return merge, unmerge


def _made(options: TokenMerging) -> _Run | None:
    return None if options.ratio == 0 else _Run(options)


_SCOPE: RunScope[_Run] = RunScope("sgm_token_merging", _made)


def enabled(options: TokenMerging | None) -> contextlib.AbstractContextManager[None]:
    """Transformer blocks called inside the block merge tokens as ``options`` say (None:
    no merging)."""
    return _SCOPE.enabled(options)


def active() -> _Run | None:
    """The token merging run in effect, if any."""
    return _SCOPE.active()
