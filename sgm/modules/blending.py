"""Spatial/temporal blending: the merge factor ``mix_factor`` and the weight it gives.

Video blocks run a spatial path and a temporal path and blend them,
``alpha * x_first + (1 - alpha) * x_second``. A block (or its :class:`AlphaBlender`)
holds ``mix_factor``: a buffer for ``fixed``, a parameter for the learned strategies.
Two rules turn it into ``alpha``:

- the blender rule (:func:`mix_alpha`: :class:`AlphaBlender`, the temporal VAE): ``fixed``
  as is, ``learned`` through a sigmoid, ``learned_with_images`` like ``learned`` but 1
  where a frame is a still image;
- the legacy rule (:func:`get_alpha`: the SV4D blocks with ``time_mix_legacy``): the
  still-image override comes before the optional sigmoid, and ``fixed_with_images``
  weights by the indicator itself.

A leaf module: it imports nothing from sgm.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from torch import nn

__all__ = [
    "BLENDER_STRATEGIES",
    "MERGE_STRATEGIES",
    "AlphaBlender",
    "blend",
    "get_alpha",
    "init_merge",
    "legacy_blend",
    "mix_alpha",
    "register_mix_factor",
]

MERGE_STRATEGIES = ("fixed", "learned", "learned_with_images", "fixed_with_images")
BLENDER_STRATEGIES = ("learned", "fixed", "learned_with_images")
TOKENS_PATTERN = "b t -> (b t) 1 1"  # per-frame weights for (B*T, S, C) tokens
MAPS_PATTERN = "b t -> b 1 t 1 1"  # per-frame weights for (B, C, T, H, W) feature maps


def _check_strategy(merge_strategy: str, strategies: Sequence[str]) -> None:
    if merge_strategy not in strategies:
        raise ValueError(
            f"unknown merge_strategy {merge_strategy!r}; expected one of {', '.join(strategies)}"
        )


def register_mix_factor(
    module: nn.Module,
    merge_strategy: str,
    merge_factor: float,
    strategies: Sequence[str] = MERGE_STRATEGIES,
) -> None:
    """Give ``module`` its ``mix_factor``: buffer (fixed), parameter (learned*) or None.

    ``strategies``: those the caller accepts (an unknown one is a ValueError).
    """
    _check_strategy(merge_strategy, strategies)
    if merge_strategy == "fixed":
        module.register_buffer("mix_factor", torch.tensor([float(merge_factor)]))
    elif merge_strategy == "fixed_with_images":
        module.mix_factor = None
    else:
        module.register_parameter("mix_factor", nn.Parameter(torch.tensor([float(merge_factor)])))


def _per_frame(
    merge_strategy: str,
    weight: torch.Tensor | None,
    image_only_indicator: torch.Tensor | None,
    pattern: str,
) -> torch.Tensor:
    """Per-frame weights shaped by ``pattern``: the indicator itself (``fixed_with_images``)
    or ``weight`` with 1 where the indicator is set."""
    if image_only_indicator is None:
        raise ValueError(f"merge_strategy {merge_strategy!r} needs image_only_indicator")
    if merge_strategy == "fixed_with_images":
        alpha = image_only_indicator
    else:
        alpha = torch.where(
            image_only_indicator.bool(),
            torch.ones(1, 1, device=image_only_indicator.device),
            rearrange(weight, "... -> ... 1"),
        )
    return rearrange(alpha, pattern)


def get_alpha(
    merge_strategy: str,
    mix_factor: torch.Tensor | None,
    image_only_indicator: torch.Tensor | None,
    apply_sigmoid: bool = True,
    is_attn: bool = False,
) -> torch.Tensor:
    """Blend weight by the legacy rule.

    ``learned_with_images`` puts 1 where ``image_only_indicator`` is set, before the
    optional sigmoid; ``fixed_with_images`` uses the indicator itself. Per-frame
    weights are shaped ``(B*T, 1, 1)`` for token tensors (``is_attn``) and
    ``(B, 1, T, 1, 1)`` for ``(B, C, T, H, W)`` feature maps.
    """
    _check_strategy(merge_strategy, MERGE_STRATEGIES)
    alpha = mix_factor
    if merge_strategy.endswith("_with_images"):
        pattern = TOKENS_PATTERN if is_attn else MAPS_PATTERN
        alpha = _per_frame(merge_strategy, mix_factor, image_only_indicator, pattern)
    return torch.sigmoid(alpha) if apply_sigmoid else alpha


def mix_alpha(
    merge_strategy: str,
    mix_factor: torch.Tensor,
    image_only_indicator: torch.Tensor | None = None,
    rearrange_pattern: str = TOKENS_PATTERN,
) -> torch.Tensor:
    """Blend weight by the blender rule: ``fixed`` as is, otherwise ``sigmoid(mix_factor)``,
    which ``learned_with_images`` replaces by 1 where ``image_only_indicator`` is set
    (per-frame weights shaped by ``rearrange_pattern``)."""
    _check_strategy(merge_strategy, BLENDER_STRATEGIES)
    if merge_strategy == "fixed":
        return mix_factor
    alpha = torch.sigmoid(mix_factor)
    if merge_strategy == "learned_with_images":
        alpha = _per_frame(merge_strategy, alpha, image_only_indicator, rearrange_pattern)
    return alpha


def blend(
    alpha: torch.Tensor,
    x_first: torch.Tensor,
    x_second: torch.Tensor,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``alpha * x_first + (1 - alpha) * x_second``, alpha cast to ``dtype``
    (default: that of ``x_first``)."""
    alpha = alpha.to(x_first.dtype if dtype is None else dtype)
    if torch.is_grad_enabled():
        return alpha * x_first + (1.0 - alpha) * x_second
    return (alpha * x_first).add_((1.0 - alpha) * x_second)  # same sum, one buffer fewer


class AlphaBlender(nn.Module):
    """Blend spatial and temporal paths: ``alpha * x_spatial + (1 - alpha) * x_temporal``.

    ``fixed`` uses ``alpha`` as is (a buffer); ``learned`` learns it through a
    sigmoid; ``learned_with_images`` does the same but uses alpha = 1 (spatial only)
    where ``image_only_indicator`` is set.
    """

    strategies = BLENDER_STRATEGIES

    def __init__(
        self,
        alpha: float,
        merge_strategy: str = "learned_with_images",
        rearrange_pattern: str = TOKENS_PATTERN,
    ):
        super().__init__()
        self.merge_strategy = merge_strategy
        self.rearrange_pattern = rearrange_pattern
        register_mix_factor(self, merge_strategy, alpha, self.strategies)

    def get_alpha(self, image_only_indicator: torch.Tensor | None) -> torch.Tensor:
        return mix_alpha(
            self.merge_strategy, self.mix_factor, image_only_indicator, self.rearrange_pattern
        )

    def forward(
        self,
        x_spatial: torch.Tensor,
        x_temporal: torch.Tensor,
        image_only_indicator: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return blend(self.get_alpha(image_only_indicator), x_spatial, x_temporal)


def init_merge(
    module: nn.Module,
    merge_strategy: str,
    merge_factor: float,
    apply_sigmoid_to_merge: bool,
    legacy: bool,
    rearrange_pattern: str = TOKENS_PATTERN,
) -> None:
    """Legacy ``mix_factor`` on ``module`` itself, or (``legacy=False``) a ``time_mixer``."""
    module.time_mix_legacy = legacy
    module.merge_strategy = merge_strategy
    module.apply_sigmoid_to_merge = apply_sigmoid_to_merge
    if legacy:
        register_mix_factor(module, merge_strategy, merge_factor)
    else:
        module.time_mixer = AlphaBlender(
            alpha=merge_factor, merge_strategy=merge_strategy, rearrange_pattern=rearrange_pattern
        )


def legacy_blend(
    module: nn.Module,
    x_first: torch.Tensor,
    x_second: torch.Tensor,
    image_only_indicator: torch.Tensor | None,
    is_attn: bool,
) -> torch.Tensor:
    """``alpha * x_first + (1 - alpha) * x_second`` with the module's legacy alpha."""
    alpha = get_alpha(
        module.merge_strategy,
        module.mix_factor,
        image_only_indicator,
        apply_sigmoid=module.apply_sigmoid_to_merge,
        is_attn=is_attn,
    )
    return blend(alpha, x_first, x_second)
