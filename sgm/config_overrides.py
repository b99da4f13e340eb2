"""Dot-list overrides (``model.params.use_ema=true``) checked against the config they change.

An override is ``key=value``. Its value is converted to the type the config already holds
there (an integer stays an integer, ...); a key the config does not hold yet is checked
against the signature of the ``target`` whose ``params`` it extends, so a typo'd parameter
name or a wrongly typed value fails at once, naming key, value and the type expected.
``lightning.trainer.<name>`` values get the Trainer argument checks.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from .config_trainer import check_value
from .errors import ConfigError
from .targets import get_obj_from_str

# The top-level sections main.py reads; configs may add their own top-level keys.
KNOWN_SECTIONS = ("model", "data", "lightning")

_MISSING = object()
_SIMPLE = {"int": int, "float": float, "bool": bool, "str": str}


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=1"`` -> ``("a.b", 1)``; the value is parsed as YAML, as OmegaConf does."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value (e.g. model.params.use_ema=true)")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part.strip() for part in key.split(".")) or " " in key:
        raise ConfigError(f"override {text!r}: {key!r} is not a dotted key like model.params.x")
    try:
        parsed = OmegaConf.from_dotlist([f"value={raw}"])
        return key, OmegaConf.to_container(parsed, resolve=False)["value"]
    except (YAMLError, OmegaConfBaseException, ValueError) as error:
        first = (str(error).splitlines() or [""])[0]
        raise ConfigError(f"override {text!r}: cannot parse the value: {first}") from None


def apply_overrides(
    config: Any, overrides: Sequence[str], sections: Sequence[str] | None = KNOWN_SECTIONS
) -> Any:
    """Apply ``overrides`` to the DictConfig ``config`` in place, checking each; returns it.

    With ``sections``, a new top-level key must be one of them or already in ``config``.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    known = sorted(set(sections or ()) | set(config.keys()))
    for text in overrides:
        key, value = parse_override(text)
        top = key.split(".")[0]
        if sections is not None and top not in known:
            raise ConfigError(
                f"override {text!r}: {top!r} is not a config section; known: {', '.join(known)}"
            )
        value = _checked(config, key, value, text)
        try:
            OmegaConf.update(config, key, value, merge=True, force_add=True)
        except (OmegaConfBaseException, ValueError, KeyError, IndexError) as error:
            first = (str(error).splitlines() or [""])[0]
            raise ConfigError(f"override {text!r}: {first}") from None
    return config


def _checked(config: Any, key: str, value: Any, text: str) -> Any:
    parts = key.split(".")
    if parts[:2] == ["lightning", "trainer"] and len(parts) == 3:
        try:
            return check_value(parts[2], value)
        except ValueError as error:
            raise ConfigError(f"override {text!r}: {error}") from None
    current = _select(config, key)
    if isinstance(current, (bool, int, float)):
        try:
            return _convert(value, type(current), text, f"the config has {current!r}")
        except ConfigError as error:
            return _mismatch(config, parts, value, current, text, error)
    if current is _MISSING:
        expected = _signature_type(config, parts, text)
        if expected is not None and expected[0] is not None:
            if value is None and expected[1]:
                return None
            return _convert(value, expected[0], text, "the constructor's parameter type")
    return value


def _mismatch(
    config: Any, parts: list[str], value: Any, current: Any, text: str, error: ConfigError
) -> Any:
    """A value of another type than the config holds: the constructor signature decides."""
    expected = _signature_type(config, parts, text)
    kind, optional = expected if expected is not None else (None, False)
    if value is None:
        if optional and expected is not None:
            return None
        raise error
    if kind is not None:
        return _convert(value, kind, text, "the constructor's parameter type")
    if expected is not None and isinstance(value, (list, dict)):
        return value  # e.g. one count per level where the config gives one for all
    if type(current) is int and isinstance(value, float):
        return value
    raise error


def _kind(kind: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[kind]


def _convert(value: Any, kind: type, text: str, why: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value) if not isinstance(value, str) else value
    shown = "null" if value is None else repr(value)
    raise ConfigError(f"override {text!r}: expected {_kind(kind)} ({why}), got {shown}")


def _select(config: Any, key: str) -> Any:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.select(config, key, default=_MISSING, throw_on_resolution_failure=False)
    except Exception:  # noqa: BLE001  (a path through a scalar: nothing there)
        return _MISSING


def _signature_type(config: Any, parts: list[str], text: str) -> tuple[type | None, bool] | None:
    """(simple type or None, accepts None) of the parameter ``parts[-1]`` of the target
    whose ``params`` it sits in; None when the key is not directly such a parameter."""
    if len(parts) < 3 or parts[-2] != "params":
        return None
    owner = _select(config, ".".join(parts[:-2]))
    if not isinstance(owner, Mapping) or "target" not in owner:
        return None
    target = owner["target"]
    try:
        signature = inspect.signature(get_obj_from_str(target))
    except ConfigError as error:
        raise ConfigError(f"override {text!r}: {error}") from None
    except (TypeError, ValueError):
        return None
    name = parts[-1]
    params = signature.parameters
    if name not in params:
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return None
        accepted = [
            n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        raise ConfigError(
            f"override {text!r}: {target} has no parameter {name!r}; accepted: "
            f"{', '.join(accepted)}"
        )
    return _simple_type(params[name])


def _simple_type(param: inspect.Parameter) -> tuple[type | None, bool]:
    annotation = param.annotation
    optional = param.default is None
    if isinstance(annotation, str):
        names = [a.strip() for a in annotation.replace("Optional[", "").rstrip("]").split("|")]
        optional = optional or "None" in names or annotation.startswith("Optional[")
        names = [n for n in names if n != "None"]
        if len(names) == 1 and names[0] in _SIMPLE:
            return _SIMPLE[names[0]], optional
        return None, True
    if annotation is not inspect.Parameter.empty:
        args = typing.get_args(annotation) or (annotation,)
        optional = optional or type(None) in args
        args = tuple(a for a in args if a is not type(None))
        if len(args) == 1 and args[0] in (int, float, bool, str):
            return args[0], optional
        return None, True
    default = param.default
    if isinstance(default, (bool, int, float)) and default is not None:
        return type(default), False
    return None, True
