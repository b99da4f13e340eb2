"""The ``lora_config`` block: rank, alpha, dropout and which layers get an adapter."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import ConfigError

ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
# Spatial attention of the image and video UNets: transformer_blocks.N.attn{1,2}.<proj>.
SPATIAL_ATTENTION = r".*transformer_blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)"
# Temporal attention of the video UNet (SpatialVideoTransformer.time_stack.N.attn{1,2}).
TEMPORAL_ATTENTION = r".*time_stack\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)"
TEMPORAL_PARTS = ("time_stack", "time_mixer", "time_pos_embed")
ADAPTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
KEYS = ("rank", "alpha", "dropout", "target_modules", "temporal", "init_from", "text_encoders")
# Text-encoder layers kohya's scripts train (attention projections and MLP): transformers
# CLIP's q/k/v/out_proj and fc1/fc2; open_clip's c_fc/c_proj (its attention's fused
# in_proj and out_proj get weight adapters, see _fused).
CLIP_TEXT_LAYERS = r".*encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])"
OPEN_CLIP_TEXT_LAYERS = r".*resblocks\.\d+\.mlp\.c_(fc|proj)"


@dataclass(frozen=True)
class LoraSettings:
    """Validated ``lora_config``.

    ``target_modules`` are module-name patterns: a pattern matches a module whose name
    equals it or ends with ``"." + pattern`` (``to_q``, ``attn2.to_out.0``), or, failing
    that, that it matches as a full regular expression. ``None`` selects the attention
    projections ``to_q``/``to_k``/``to_v``/``to_out.0`` of the spatial transformers, and
    with ``temporal: true`` also those of the video UNet's temporal transformers.
    ``temporal: false`` keeps every temporal layer (``time_stack``, ``time_mixer``) out.
    ``alpha`` defaults to ``rank`` (adapter scale 1). ``text_encoders: true`` also puts
    adapters (same rank and alpha) on the CLIP / open_clip text encoders of the engine:
    attention projections and MLP layers, as kohya's scripts train them.
    """

    rank: int = 8
    alpha: float | None = None
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None
    temporal: bool = False
    init_from: str | None = None
    text_encoders: bool = False
    lora_alpha: float = field(init=False)

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise ConfigError(f"lora_config.rank must be a positive integer, got {self.rank!r}")
        alpha = float(self.rank if self.alpha is None else self.alpha)
        if not alpha > 0:
            raise ConfigError(f"lora_config.alpha must be positive, got {self.alpha!r}")
        object.__setattr__(self, "lora_alpha", alpha)
        if not isinstance(self.text_encoders, bool):
            raise ConfigError(
                f"lora_config.text_encoders must be true or false, got {self.text_encoders!r}"
            )
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"lora_config.dropout must be in [0, 1), got {self.dropout!r}")
        if self.target_modules is not None:
            if isinstance(self.target_modules, str) or not all(
                isinstance(p, str) and p for p in self.target_modules
            ):
                raise ConfigError(
                    "lora_config.target_modules must be a list of module-name "
                    f"patterns, got {self.target_modules!r}"
                )
            object.__setattr__(self, "target_modules", tuple(self.target_modules))

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | LoraSettings | None) -> LoraSettings:
        """Settings from a plain mapping (unknown keys are errors)."""
        if isinstance(config, LoraSettings):
            return config
        config = dict(config or {})
        unknown = sorted(set(config) - set(KEYS))
        if unknown:
            raise ConfigError(f"lora_config: unknown keys {unknown}; accepted {list(KEYS)}")
        if config.get("target_modules") is not None:
            modules = config["target_modules"]
            config["target_modules"] = (modules,) if isinstance(modules, str) else tuple(modules)
        return cls(**config)

    def patterns(self) -> tuple[str, ...]:
        if self.target_modules is not None:
            return self.target_modules
        return (SPATIAL_ATTENTION, TEMPORAL_ATTENTION) if self.temporal else (SPATIAL_ATTENTION,)


def _matches(pattern: str, name: str) -> bool:
    if name == pattern or name.endswith("." + pattern):
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def is_temporal(name: str) -> bool:
    return any(part in TEMPORAL_PARTS for part in name.split("."))


def adaptable_modules(network: nn.Module) -> dict[str, nn.Module]:
    """Layers an adapter can wrap: Linear and Conv layers by module name (a layer that
    already holds adapters counts under its own name, as its base layer)."""
    out = {}
    for name, module in network.named_modules():
        if not name or name.endswith(".base_layer") or ".lora_" in name:
            continue
        if hasattr(module, "get_base_layer") and hasattr(module, "lora_A"):
            module = module.get_base_layer()
        if type(module) in ADAPTABLE:
            out[name] = module
    return out


def _short(name: str) -> str:
    """The part of a module name after its last block index: ``attn1.to_q``, ``to_out.0``."""
    parts = name.split(".")
    last = parts.pop() if parts[-1].isdigit() and len(parts) > 1 else None
    idx = max((i for i, p in enumerate(parts) if p.isdigit()), default=-1)
    tail = parts[idx + 1 :] or parts[-1:]
    return ".".join(tail + ([last] if last is not None else []))


def _examples(names: Sequence[str], limit: int = 24) -> str:
    short = list(dict.fromkeys(_short(n) for n in names))
    more = f", ... ({len(short) - limit} more)" if len(short) > limit else ""
    return ", ".join(short[:limit]) + more


def resolve_targets(network: nn.Module, settings: LoraSettings) -> list[str]:
    """Full names of the layers ``settings`` selects in ``network``.

    Raises ``ConfigError`` naming the pattern that matches nothing and what could match.
    """
    candidates = adaptable_modules(network)
    if not settings.temporal:
        candidates = {n: m for n, m in candidates.items() if not is_temporal(n)}
    chosen: list[str] = []
    for pattern in settings.patterns():
        found = [n for n in candidates if _matches(pattern, n)]
        if not found:
            hint = (
                ""
                if settings.temporal or settings.target_modules is None
                else (" (temporal layers are left out unless lora_config.temporal is true)")
            )
            raise ConfigError(
                f"lora_config.target_modules: {pattern!r} matches no Linear/Conv layer of "
                f"{type(network).__name__}{hint}; layer names end in: "
                f"{_examples(list(candidates))}"
            )
        chosen += [n for n in found if n not in chosen]
    return chosen


def text_encoder_targets(embedder: nn.Module) -> list[str]:
    """Module names (inside ``embedder``) of the text-encoder layers that get adapters."""
    pattern = CLIP_TEXT_LAYERS if hasattr(embedder, "transformer") else OPEN_CLIP_TEXT_LAYERS
    names = [
        n
        for n, _ in embedder.named_modules()
        if re.fullmatch(pattern, n) and ".lora_" not in n and ".base_layer" not in n
    ]
    if not names:
        raise ConfigError(
            f"lora_config.text_encoders: no attention or MLP layer found in "
            f"{type(embedder).__name__}"
        )
    return names
