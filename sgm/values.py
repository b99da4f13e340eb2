"""Checks of numbers given through the Python API (demo pages, sampling functions): each bad
value is an ``InputError`` naming the field, never a ``ValueError`` from ``int(nan)``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .cli import MAX_SEED
from .errors import ConfigError, InputError


def _real(name: str, value: Any) -> float:
    """``value`` as a float if it is a finite number (not a bool, not text), else
    InputError; NumPy scalars and one-element tensors count as numbers."""
    number = None
    if not isinstance(value, (bool, str, bytes)):
        try:
            number = float(value)
        except (TypeError, ValueError):
            pass
    if number is None:
        raise InputError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(number):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    return number


def whole(name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` as an int if it is a whole number in ``low .. high``, else InputError."""
    number = _real(name, value)
    if not number.is_integer() or number < low or (high is not None and number > high):
        bounds = f"in {low}..{high}" if high is not None else f">= {low}"
        raise InputError(f"{name} must be a whole number {bounds}, got {value!r}")
    return int(number)


def seed(value: Any, name: str = "seed") -> int:
    """A seed NumPy, torch and Lightning all take: a whole number in 0 .. 2**32 - 1."""
    return whole(name, value, 0, MAX_SEED)


def finite(name: str, value: Any, low: float | None = None, high: float | None = None) -> float:
    """``value`` as a float if it is finite and in ``[low, high]`` (a bound of None: none)."""
    number = _real(name, value)
    if (low is not None and number < low) or (high is not None and number > high):
        if low is not None and high is not None:
            bounds = f"in [{low:g}, {high:g}]"
        else:
            bounds = f">= {low:g}" if low is not None else f"<= {high:g}"
        raise InputError(f"{name} must be {bounds}, got {value!r}")
    return number


def finite_list(name: str, values: Sequence[Any]) -> list[float]:
    """Every value of ``values`` finite (``finite``), as floats."""
    return [finite(f"{name}[{i}]", v) for i, v in enumerate(values)]


def check_learning_rate(config: Any) -> None:
    """``model.base_learning_rate`` / ``model.params.learning_rate``, where given, are
    finite numbers > 0 (checked before any model is built)."""
    model = config.get("model") or {}
    given = {"model.base_learning_rate": model.get("base_learning_rate")}
    given["model.params.learning_rate"] = (model.get("params") or {}).get("learning_rate")
    for key, value in given.items():
        if value is None:
            continue
        try:
            number = None if isinstance(value, bool) else float(value)
        except (TypeError, ValueError):
            number = None
        if number is None or not 0 < number < float("inf"):
            raise ConfigError(f"{key}={value!r}: expected a finite number > 0")
