"""Legacy spatial/temporal blending used by the SV4D blocks (``time_mix_legacy=True``).

These blocks hold their own ``mix_factor`` (no ``AlphaBlender`` submodule) and blend
``alpha * x_first + (1 - alpha) * x_second`` with ``alpha`` from :func:`get_alpha`.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

MERGE_STRATEGIES = ("fixed", "learned", "learned_with_images", "fixed_with_images")


def get_alpha(
    merge_strategy: str,
    mix_factor: torch.Tensor | None,
    image_only_indicator: torch.Tensor | None,
    apply_sigmoid: bool = True,
    is_attn: bool = False,
) -> torch.Tensor:
    """Blend weight for the legacy merge strategies.

    ``learned_with_images`` puts 1 where ``image_only_indicator`` is set, before the
    optional sigmoid; ``fixed_with_images`` uses the indicator itself. Per-frame
    weights are shaped ``(B*T, 1, 1)`` for token tensors (``is_attn``) and
    ``(B, 1, T, 1, 1)`` for ``(B, C, T, H, W)`` feature maps.
    """
    if merge_strategy in ("fixed", "learned"):
        alpha = mix_factor
    elif merge_strategy in ("learned_with_images", "fixed_with_images"):
        if image_only_indicator is None:
            raise ValueError(f"merge_strategy {merge_strategy!r} needs image_only_indicator")
        if merge_strategy == "learned_with_images":
            alpha = torch.where(
                image_only_indicator.bool(),
                torch.ones(1, 1, device=image_only_indicator.device),
                rearrange(mix_factor, "... -> ... 1"),
            )
        else:
            alpha = image_only_indicator
        pattern = "b t -> (b t) 1 1" if is_attn else "b t -> b 1 t 1 1"
        alpha = rearrange(alpha, pattern)
    else:
        raise ValueError(
            f"unknown merge_strategy {merge_strategy!r}; expected one of "
            f"{', '.join(MERGE_STRATEGIES)}"
        )
    return torch.sigmoid(alpha) if apply_sigmoid else alpha


def register_mix_factor(module: nn.Module, merge_strategy: str, merge_factor: float) -> None:
    """Give ``module`` its ``mix_factor``: buffer (fixed), parameter (learned*) or None."""
    if merge_strategy == "fixed":
        module.register_buffer("mix_factor", torch.tensor([float(merge_factor)]))
    elif merge_strategy in ("learned", "learned_with_images"):
        module.register_parameter("mix_factor", nn.Parameter(torch.tensor([float(merge_factor)])))
    elif merge_strategy == "fixed_with_images":
        module.mix_factor = None
    else:
        raise ValueError(
            f"unknown merge_strategy {merge_strategy!r}; expected one of "
            f"{', '.join(MERGE_STRATEGIES)}"
        )


def init_merge(
    module: nn.Module,
    merge_strategy: str,
    merge_factor: float,
    apply_sigmoid_to_merge: bool,
    legacy: bool,
    rearrange_pattern: str = "b t -> (b t) 1 1",
) -> None:
    """Legacy ``mix_factor`` on ``module`` itself, or (``legacy=False``) a ``time_mixer``."""
    from .util import AlphaBlender  # util re-exports this module's get_alpha

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
    ).to(x_first.dtype)
    return alpha * x_first + (1.0 - alpha) * x_second
