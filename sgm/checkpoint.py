"""Reading checkpoint files and loading them into models, strictly by default."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .checkpoint_files import (  # noqa: F401  (the readers, re-exported)
    CONFIG_CHECKPOINT_KEYS,
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIXES,
    check_config_checkpoints,
    check_training_checkpoint,
    check_weights_file,
    check_weights_folder,
    load_state_dict,
    safetensors_header,
)
from .errors import CheckpointError

if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

# Older releases (SD 2.x) store the text encoder as ``cond_stage_model.*``; models
# built here keep every embedder under ``conditioner.embedders.N``.
LEGACY_PREFIXES = (("cond_stage_model.", "conditioner.embedders.0."),)

# DDPM schedule buffers of the older LatentDiffusion layout (SD 2.x files). They are
# derived from the noise schedule, which the denoiser builds from the config.
LEGACY_SCHEDULE_KEYS = frozenset(
    {
        "betas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
    }
)

# Constant buffers that the module fills in itself; files may lack them (the SD 2.x
# ldm files have no ``denoiser.sigmas``: the table follows from the config).
OPTIONAL_KEY_SUFFIXES = (".embeddings.position_ids", ".denoiser.sigmas")


def _group(keys: Iterable[str], depth: int = 2) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for key in keys:
        parts = key.split(".")
        prefix = ".".join(parts[:depth]) + ".*" if len(parts) > depth else key
        counts[prefix] += 1
    return dict(sorted(counts.items()))


@dataclass
class LoadReport:
    """What did not match when a state dict was loaded into a model."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    wrong_shape: list[tuple[str, tuple, tuple]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_shape)

    def counts(self) -> str:
        """``12 missing, 3 unexpected, 1 wrong-shape keys`` (the kinds that occur)."""
        kinds = (
            (len(self.missing), "missing"),
            (len(self.unexpected), "unexpected"),
            (len(self.wrong_shape), "wrong-shape"),
        )
        return ", ".join(f"{n} {what}" for n, what in kinds if n) + " keys" if not self.ok else ""

    def lines(self, max_lines: int = 20) -> list[str]:
        """One line per key prefix (``first_stage_model.decoder.*: 12 missing``), then
        the first wrong shapes; past ``max_lines``, a last line says how many more."""
        lines = []
        for what, keys in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("wrong shape", [k for k, _, _ in self.wrong_shape]),
        ):
            lines += [f"{prefix}: {n} {what}" for prefix, n in _group(keys).items()]
        for key, expected, found in self.wrong_shape[:5]:
            lines.append(f"  {key}: model {list(expected)}, checkpoint {list(found)}")
        if len(lines) > max_lines:
            lines = lines[:max_lines] + [f"... and {len(lines) - max_lines} more lines"]
        return lines

    def summary(self, max_lines: int = 20) -> str:
        """:meth:`lines` as one text."""
        return "\n".join(self.lines(max_lines))


def remap_legacy_keys(
    state_dict: Mapping[str, torch.Tensor], expected: Iterable[str]
) -> dict[str, torch.Tensor]:
    """Rename keys of older layouts when the model expects the newer one.

    Schedule buffers of the older layout are dropped when the model has none of them.
    """
    expected = set(expected)
    out = dict(state_dict)
    if not expected & LEGACY_SCHEDULE_KEYS:
        out = {k: v for k, v in out.items() if k not in LEGACY_SCHEDULE_KEYS}
    for old, new in LEGACY_PREFIXES:
        if any(k.startswith(old) for k in out) and any(k.startswith(new) for k in expected):
            if not any(k.startswith(old) for k in expected):
                out = {(new + k[len(old) :] if k.startswith(old) else k): v for k, v in out.items()}
    return out


def compare_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> LoadReport:
    """Missing, unexpected and wrong-shape keys of ``state_dict`` against ``model``."""
    return compare_shapes(
        {k: tuple(v.shape) for k, v in model.state_dict().items()},
        {k: tuple(v.shape) for k, v in state_dict.items()},
    )


def compare_shapes(
    expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]]
) -> LoadReport:
    """Missing, unexpected and wrong-shape keys of ``found`` (key -> shape) against
    ``expected``; the constant buffers of ``OPTIONAL_KEY_SUFFIXES`` may be missing."""
    report = LoadReport(
        missing=[
            k for k in expected if k not in found and not ("." + k).endswith(OPTIONAL_KEY_SUFFIXES)
        ],
        unexpected=[k for k in found if k not in expected],
    )
    for key, shape in found.items():
        if key in expected and tuple(expected[key]) != tuple(shape):
            report.wrong_shape.append((key, tuple(expected[key]), tuple(shape)))
    return report


def load_state_dict_into(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    strict: bool = True,
    ignore_unexpected: Iterable[str] = (),
    source: str = "state dict",
) -> LoadReport:
    """Load ``state_dict`` into ``model``.

    Strict (default): any missing, unexpected or wrong-shape key raises
    ``CheckpointError`` listing them by prefix and nothing is loaded. Not strict:
    the matching keys are loaded and the report lists the rest. Unexpected keys
    starting with a prefix in ``ignore_unexpected`` are dropped first.
    """
    prefixes = tuple(ignore_unexpected)
    state_dict = remap_legacy_keys(state_dict, model.state_dict().keys())
    if prefixes:
        own = model.state_dict().keys()
        state_dict = {k: v for k, v in state_dict.items() if k in own or not k.startswith(prefixes)}
    report = compare_state_dict(model, state_dict)
    if not report.ok and strict:
        raise CheckpointError(
            f"{source} does not match {type(model).__name__}: {report.counts()}",
            details=report.lines(max_lines=100),
        )
    bad_shape = {k for k, _, _ in report.wrong_shape}
    loadable = {k: v for k, v in state_dict.items() if k not in bad_shape}
    model.load_state_dict(loadable, strict=False)
    if not report.ok:
        logger.warning("Partial load from %s:\n%s", source, report.summary())
    return report


def load_checkpoint_into(
    model: nn.Module,
    path: str | os.PathLike,
    strict: bool = True,
    ignore_unexpected: Iterable[str] = (),
) -> LoadReport:
    """Read ``path`` and load it into ``model`` (see ``load_state_dict_into``)."""
    return load_state_dict_into(
        model,
        load_state_dict(path),
        strict=strict,
        ignore_unexpected=ignore_unexpected,
        source=str(path),
    )
