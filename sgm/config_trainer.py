"""The ``pytorch_lightning.Trainer`` arguments ``main.py`` accepts, with their checks.

Listed here rather than read from ``Trainer.__init__`` so that the command line can be
parsed and checked without importing Lightning (a bad flag fails in about a second);
``tests/training/test_trainer_args.py`` keeps the list equal to the installed Trainer's.
Each check takes a YAML-parsed value and returns it, or raises ``ValueError`` saying what
was expected. The same checks apply to ``--<name>`` flags and ``lightning.trainer.<name>``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

# Arguments main.py passes itself (never from the command line or lightning.trainer).
RESERVED = ("callbacks", "plugins", "logger")

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu")
PRECISIONS = (
    "64",
    "32",
    "16",
    "bf16",
    "transformer-engine",
    "transformer-engine-float16",
    "16-true",
    "16-mixed",
    "bf16-true",
    "bf16-mixed",
    "32-true",
    "64-true",
)
_TIME = re.compile(r"^\d+:\d{1,2}:\d{1,2}:\d{1,2}$")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_at_least(low: int, none: bool = True, note: str = "") -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value is None and none:
            return None
        if not _is_int(value) or value < low:
            raise ValueError(f"expected an integer >= {low}{note}")
        return value

    return check


def _boolean(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    raise ValueError("expected true or false")


def _batches(value: Any) -> Any:
    """An integer count >= 0 or a fraction in [0, 1]."""
    if value is None or (_is_int(value) and value >= 0):
        return value
    if isinstance(value, float) and 0.0 <= value <= 1.0:
        return value
    raise ValueError("expected a number of batches (integer >= 0) or a fraction in [0, 1]")


def _interval(value: Any) -> Any:
    if value is None or isinstance(value, (str, dict)) or (_is_int(value) and value >= 1):
        return value
    if isinstance(value, float) and 0.0 < value <= 1.0:
        return value
    raise ValueError("expected a number of batches (integer >= 1) or a fraction in (0, 1]")


def _accelerator(value: Any) -> Any:
    if isinstance(value, str) and value in ACCELERATORS:
        return value
    raise ValueError(f"expected one of {', '.join(ACCELERATORS)}")


def _precision(value: Any) -> Any:
    if value is None or str(value) in PRECISIONS:
        return value
    raise ValueError(f"expected one of {', '.join(PRECISIONS)}")


def _devices(value: Any) -> Any:
    if _is_int(value) and value >= -1:
        return value
    if isinstance(value, list) and value and all(_is_int(v) and v >= 0 for v in value):
        return value
    if isinstance(value, str) and (
        value in ("auto", "-1") or re.fullmatch(r"\s*\d+\s*(,\s*\d+\s*)*,?\s*", value)
    ):
        return value
    raise ValueError("expected a count (integer >= -1), a list of device ids, 'auto' or '0,1'")


def _max_time(value: Any) -> Any:
    if value is None or isinstance(value, dict):
        return value
    if isinstance(value, str) and _TIME.match(value):
        return value
    raise ValueError("expected DD:HH:MM:SS (e.g. 00:12:00:00)")


def _fast_dev_run(value: Any) -> Any:
    if isinstance(value, bool) or (_is_int(value) and value >= 0):
        return value
    raise ValueError("expected true, false or a number of batches >= 0")


def _clip(value: Any) -> Any:
    if value is None or (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and 0 <= value < float("inf")
    ):
        return value
    raise ValueError("expected a finite number >= 0")


def _choice(*options: Any) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value in options:
            return value
        raise ValueError(f"expected one of {', '.join(map(str, options))}")

    return check


def _string(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    raise ValueError("expected a string")


def _any(value: Any) -> Any:
    return value


CHECKS: dict[str, Callable[[Any], Any]] = {
    "accelerator": _accelerator,
    "strategy": _any,
    "devices": _devices,
    "num_nodes": _int_at_least(1, none=False),
    "precision": _precision,
    "fast_dev_run": _fast_dev_run,
    "max_epochs": _int_at_least(-1, note=" (-1: no limit)"),
    "min_epochs": _int_at_least(0),
    "max_steps": _int_at_least(-1, none=False, note=" (-1: no limit)"),
    "min_steps": _int_at_least(0),
    "max_time": _max_time,
    "limit_train_batches": _batches,
    "limit_val_batches": _batches,
    "limit_test_batches": _batches,
    "limit_predict_batches": _batches,
    "overfit_batches": _batches,
    "val_check_interval": _interval,
    "check_val_every_n_epoch": _int_at_least(1),
    "num_sanity_val_steps": _int_at_least(-1, note=" (-1: all)"),
    "log_every_n_steps": _int_at_least(1),
    "enable_checkpointing": _boolean,
    "enable_progress_bar": _boolean,
    "enable_model_summary": _boolean,
    "accumulate_grad_batches": _int_at_least(1, none=False),
    "gradient_clip_val": _clip,
    "gradient_clip_algorithm": _choice(None, "norm", "value"),
    "deterministic": _choice(None, True, False, "warn"),
    "benchmark": _boolean,
    "inference_mode": _boolean,
    "use_distributed_sampler": _boolean,
    "profiler": _string,
    "detect_anomaly": _boolean,
    "barebones": _boolean,
    "sync_batchnorm": _boolean,
    "reload_dataloaders_every_n_epochs": _int_at_least(0, none=False),
    "default_root_dir": _string,
    "enable_autolog_hparams": _boolean,
    "model_registry": _string,
}


def check_value(name: str, value: Any) -> Any:
    """``value`` if it suits Trainer argument ``name``; ``ValueError`` otherwise."""
    check = CHECKS.get(name)
    if check is None:
        raise ValueError(f"not a Trainer argument (known: {', '.join(CHECKS)})")
    return check(value)


def accelerator_available(name: str) -> bool:
    """Whether this machine has the accelerator ``name`` (cpu and auto always)."""
    if name in ("auto", "cpu"):
        return True
    import torch

    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if name == "cuda":
        return torch.cuda.is_available()
    if name == "gpu":
        return torch.cuda.is_available() or has_mps
    if name == "mps":
        return has_mps
    return True  # tpu / hpu: Lightning checks them when it builds the Trainer
