"""Names of the tiny model families and random weights for them and their diffusers twins."""

from __future__ import annotations

import torch

FAMILIES = ("sd21", "sdxl_base", "sdxl_refiner", "svd")


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Random weights of moderate size; norm scales around 1, mixing factors spread."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.state_dict().items():
            if not p.is_floating_point() or name.endswith("sigmas"):
                continue
            scale = 0.2 if p.ndim > 1 else 0.05
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
            if "norm" in name.rsplit(".", 2)[-2] or ".ln_" in name:
                if name.endswith("weight"):
                    p.add_(1.0)
            if name.endswith(("mix_factor", "logit_scale")):
                p.copy_(torch.randn(p.shape, generator=gen))
