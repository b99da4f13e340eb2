"""Training part of a model: the parameters whose names match glob patterns.

``model.params.trainable`` in a training YAML lists ``fnmatch`` patterns over the engine's
parameter names (``model.diffusion_model.input_blocks.1.1.time_stack.0.attn1.to_q.weight``)
or module names (``model.diffusion_model.input_blocks.1.1.time_stack``); a pattern that
names a module selects all of that module's parameters. Everything else is frozen:
``requires_grad`` is off, so it gets no gradient and no optimizer state. Only parameters
the engine would train anyway (the network, trainable embedders) can be selected.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Iterable, Sequence

from torch import nn

from ..errors import ConfigError

logger = logging.getLogger(__name__)

# SVD's temporal layers: the temporal residual and transformer blocks, their
# positional embeddings and the spatial/temporal blend factors.
TEMPORAL_PATTERNS = ("*.time_stack.*", "*.time_mixer.*", "*.time_pos_embed.*")
CHECKPOINT_KEY = "sgm_trained_parameters"


def _patterns(trainable: str | Sequence[str]) -> list[str]:
    if isinstance(trainable, str):
        trainable = [trainable]
    patterns = [str(p) for p in trainable]
    if not patterns or any(not p for p in patterns):
        raise ConfigError(
            f"model.params.trainable must list non-empty name patterns, got {patterns}"
        )
    return patterns


def _owners(name: str) -> list[str]:
    """``a.b.c`` -> ``[a.b.c, a.b, a]``: the parameter and the modules that hold it."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def _name_parts(names: Iterable[str]) -> str:
    """The distinct non-numeric name parts, one line (what a pattern can name)."""
    parts = {p for n in names for p in n.split(".") if not p.isdigit()}
    return ", ".join(sorted(parts))


def matching(names: Iterable[str], pattern: str) -> list[str]:
    """The ``names`` matched by ``pattern`` themselves or through a module that holds them."""
    return [n for n in names if any(fnmatch.fnmatchcase(o, pattern) for o in _owners(n))]


def select_trainable(
    engine: nn.Module, candidates: Sequence[str], trainable: str | Sequence[str]
) -> list[str]:
    """Freeze every parameter of ``engine`` except the ``candidates`` that ``trainable``
    selects; return the selected names. A pattern that selects nothing is a ConfigError
    that lists the name parts there are."""
    patterns = _patterns(trainable)
    selected: set[str] = set()
    for pattern in patterns:
        found = matching(candidates, pattern)
        if not found:
            raise ConfigError(
                f"model.params.trainable pattern {pattern!r} selects no trainable parameter; "
                f"names are made of: {_name_parts(candidates)}"
            )
        selected.update(found)
    for name, param in engine.named_parameters():
        param.requires_grad_(name in selected)
    total = sum(p.numel() for p in engine.parameters())
    count = sum(p.numel() for p in engine.parameters() if p.requires_grad)
    logger.info(
        "training %d of %d parameters (%d tensors) selected by %s",
        count,
        total,
        len(selected),
        patterns,
    )
    return sorted(selected)


def trained_record(engine: nn.Module, patterns: Sequence[str] | None) -> dict:
    """What a checkpoint says was trained: the patterns and the parameter names."""
    names = [n for n, p in engine.named_parameters() if p.requires_grad]
    return {
        "patterns": None if patterns is None else list(_patterns(patterns)),
        "names": names,
        "count": sum(p.numel() for p in engine.parameters() if p.requires_grad),
    }


def collapse(names: Iterable[str]) -> list[str]:
    """Names with their numeric parts as ``N`` (a short summary of a selection)."""
    return sorted({re.sub(r"\.\d+(?=\.|$)", ".N", n) for n in names})


def apply_trainable(engine: nn.Module, trainable: str | Sequence[str] | None) -> list[str] | None:
    """Select ``engine``'s training part by ``trainable`` patterns (None: leave the
    default, the network and trainable embedders); return the patterns."""
    if trainable is None:
        return None
    if getattr(engine, "lora_config", None) is not None:
        raise ConfigError(
            "model.params.trainable and lora_config exclude each other (LoRA trains its "
            "adapter only); drop one"
        )
    patterns = _patterns(trainable)
    ids = {id(p) for p in engine.trainable_parameters()}
    candidates = [n for n, p in engine.named_parameters() if id(p) in ids]
    select_trainable(engine, candidates, patterns)
    return patterns
