"""Configs: loading and merging YAML, and building objects from ``{target, params}``.

A config names a class (or function) by its dotted path and the arguments to call it
with::

    model:
      target: sgm.models.diffusion.DiffusionEngine
      params: {network_config: {target: ..., params: {...}}, ...}

:func:`instantiate_from_config` checks the parameters against the target's signature
and hands them over as plain ``dict``/``list`` values with every interpolation resolved:
OmegaConf nodes are converted here, once, so constructors never see them. Configs nested
in ``params`` (``network_config`` above) are built by the constructor that receives them;
an error there names the config's place, e.g. ``model.params.network_config``.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .config_overrides import apply_overrides
from .errors import ConfigError
from .targets import get_obj_from_str

__all__ = [
    "SPECIAL_CONFIG_VALUES",
    "check_text_file",
    "get_configs_path",
    "get_obj_from_str",
    "instantiate_from_config",
    "load_configs",
    "load_partial_from_config",
    "load_yaml",
    "read_text_file",
    "text_problem",
    "to_plain",
]

SPECIAL_CONFIG_VALUES = ("__is_first_stage__", "__is_unconditional__")

# (location, params) of the config whose object is being constructed; lets a nested
# instantiate_from_config name its place, e.g. "model.params.network_config".
_BUILDING: contextvars.ContextVar[tuple[str, Any] | None] = contextvars.ContextVar(
    "sgm_building_config", default=None
)


def instantiate_from_config(
    config: Any, key: str | None = None, *, extra: Mapping[str, Any] | None = None
) -> Any:
    """Build ``target(**params)`` from a ``{target, params}`` mapping.

    The special strings ``__is_first_stage__`` and ``__is_unconditional__`` give None.
    ``params`` reach the target as plain containers (see :func:`to_plain`); ``extra``
    arguments join them as they are (e.g. a DictConfig for a callback that saves it).
    ``key`` names the config's place for error messages (e.g. ``"model"``); configs built
    from inside another config's constructor find their place by themselves.
    """
    if isinstance(config, str) and config in SPECIAL_CONFIG_VALUES:
        return None
    where = key or _locate(config) or "config"
    if not isinstance(config, Mapping):
        raise ConfigError(f"{where}: expected a mapping with 'target', got {config!r}")
    if "target" not in config:
        raise ConfigError(f"{where}: expected key `target` to instantiate")
    try:
        cls = get_obj_from_str(config["target"])
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from error.__cause__
    params = _resolved(config.get("params", None), f"{where}.params") or {}
    if not isinstance(params, Mapping):
        raise ConfigError(f"{where}.params: expected a mapping, got {params!r}")
    if extra:
        params = {**params, **extra}
    _check_params(cls, params, where, config["target"])
    token = _BUILDING.set((where, params))
    try:
        return cls(**params)
    finally:
        _BUILDING.reset(token)


def to_plain(node: Any) -> Any:
    """``node`` with every OmegaConf node in it turned into plain dicts and lists, its
    interpolations resolved (a missing ``???`` value raises). Plain containers holding no
    OmegaConf node come back as they are (the same object), as does anything else."""
    omegaconf = sys.modules.get("omegaconf")
    if omegaconf is None:  # never imported: no node can be an OmegaConf one
        return node
    if omegaconf.OmegaConf.is_config(node):
        return omegaconf.OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
    if isinstance(node, dict):
        converted = {k: to_plain(v) for k, v in node.items()}
        return node if all(converted[k] is v for k, v in node.items()) else converted
    if isinstance(node, (list, tuple)):
        items = [to_plain(v) for v in node]
        if all(a is b for a, b in zip(items, node)):
            return node
        return items if isinstance(node, list) else tuple(items)
    return node


def _resolved(node: Any, where: str) -> Any:
    try:
        return to_plain(node)
    except ConfigError:
        raise
    except Exception as error:  # omegaconf's resolution errors: missing keys, bad resolvers
        first = (str(error).splitlines() or [type(error).__name__])[0]
        raise ConfigError(f"{where}: cannot resolve the config: {first}") from None


def _check_params(
    cls: Any, params: Mapping, where: str, target: str, complete: bool = True
) -> None:
    """Raise ConfigError for unknown parameters and, if ``complete``, missing ones."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        return
    kinds = {p.kind for p in signature.parameters.values()}
    if inspect.Parameter.VAR_KEYWORD not in kinds:
        accepted = [
            name
            for name, p in signature.parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        unknown = [k for k in params if k not in accepted]
        if unknown:
            raise ConfigError(
                f"{where}.params: {target} has no parameter "
                f"{', '.join(map(repr, unknown))}; accepted: {', '.join(accepted)}"
            )
    if not complete:
        return
    try:
        signature.bind(**params)
    except TypeError as error:
        raise ConfigError(f"{where}.params: cannot call {target}: {error}") from None


def _locate(config: Any) -> str | None:
    """Where ``config`` sits inside the params of the config being built, if anywhere."""
    building = _BUILDING.get()
    if building is None:
        return None
    parent, params = building
    for path, value in _walk(params, f"{parent}.params"):
        if value is config:
            return path
    for path, value in _walk(params, f"{parent}.params"):
        if _same_config(value, config):
            return path
    return None


def _walk(node: Any, path: str, depth: int = 0) -> Iterator[tuple[str, Any]]:
    """(location, value) of everything in the plain containers ``node``, 5 levels deep."""
    if depth > 4:
        return
    if isinstance(node, Mapping):
        items = node.items()
    elif isinstance(node, (list, tuple)):
        items = enumerate(node)
    else:
        return
    for k, v in items:
        child = f"{path}.{k}"
        yield child, v
        yield from _walk(v, child, depth + 1)


def _same_config(a: Any, b: Any) -> bool:
    if not isinstance(a, Mapping) or "target" not in a:
        return False
    try:
        return to_plain(a) == to_plain(b)
    except Exception:  # unresolvable interpolations: not a match
        return False


def load_partial_from_config(config: Mapping) -> Callable:
    """``functools.partial(target, **params)``, built later by the caller."""
    params = to_plain(config.get("params", None)) or {}
    return functools.partial(get_obj_from_str(config["target"]), **params)


def load_configs(
    paths: Sequence[str | os.PathLike],
    overrides: Sequence[str] = (),
    sections: Sequence[str] | None = None,
):
    """Merge YAML files left to right, then apply ``key=value`` dot-list overrides.

    Each file must hold a mapping. Overrides are checked by
    :func:`sgm.config_overrides.apply_overrides` (``sections``: the allowed new top-level
    keys; None allows any). Returns the merged OmegaConf ``DictConfig``.
    """
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    configs = []
    for path in paths:
        loaded = load_yaml(path)
        if not isinstance(loaded, DictConfig):
            raise ConfigError(
                f"{path}: the top level must be a mapping of sections (model, data, "
                f"lightning), found a {type(loaded).__name__.replace('Config', '').lower()}"
            )
        configs.append(loaded)
    try:
        merged = OmegaConf.merge(*configs) if configs else OmegaConf.create()
    except (OmegaConfBaseException, ValueError) as error:
        first = (str(error).splitlines() or [""])[0]
        raise ConfigError(f"cannot merge {', '.join(map(str, paths))}: {first}") from None
    return apply_overrides(merged, overrides, sections)


def text_problem(data: bytes, line: int = 1) -> str | None:
    """Why ``data`` is not UTF-8 text (the first undecodable or NUL byte and its line,
    counted from ``line``), or None when it is."""
    nul = data.find(b"\0")
    try:
        data[: nul if nul >= 0 else None].decode("utf-8")
    except UnicodeDecodeError as error:
        where = error.start
        what = f"byte 0x{data[where]:02x}"
    else:
        if nul < 0:
            return None
        where, what = nul, "a NUL byte"
    return f"{what} at line {line + data.count(NEWLINE, 0, where)}"


_CHUNK = 2**20
NEWLINE = b"\n"


def check_text_file(path: str | os.PathLike, error: type[Exception] = ConfigError) -> None:
    """``error`` naming ``path`` unless the file is UTF-8 text without NUL bytes (read in
    pieces: a large binary file stops at its first bad byte)."""
    import codecs

    decoder, line = codecs.getincrementaldecoder("utf-8")(), 1
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                try:
                    decoder.decode(chunk)
                    bad = b"\0" in chunk
                except UnicodeDecodeError:
                    bad = True
                if bad:
                    reason = text_problem(chunk, line) or f"a bad byte after line {line}"
                    raise error(f"{path}: not UTF-8 text ({reason})")
                line += chunk.count(b"\n")
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text (it ends inside a character)") from None
    except OSError as failure:
        raise error(f"{path}: cannot be read: {failure.strerror or failure}") from None


def read_text_file(path: str | os.PathLike, error: type[Exception] = ConfigError) -> str:
    """The text of ``path``; ``error`` naming it when it is unreadable or not UTF-8 text
    (undecodable or NUL bytes), with the line of the first bad byte."""
    try:
        data = Path(path).read_bytes()
    except OSError as failure:
        raise error(f"{path}: cannot be read: {failure.strerror or failure}") from None
    reason = text_problem(data)
    if reason is not None:
        raise error(f"{path}: not UTF-8 text ({reason})")
    return data.decode("utf-8")


def load_yaml(path: str | os.PathLike) -> Any:
    """The OmegaConf of the YAML file ``path``; ``ConfigError`` naming it when it is
    missing, not UTF-8 text, or not YAML."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    if not Path(path).is_file():
        what = "is a folder, not a config file" if Path(path).is_dir() else "not found"
        raise ConfigError(f"config file {what}: {path}")
    check_text_file(path)
    try:
        return OmegaConf.load(path)
    except (YAMLError, OmegaConfBaseException, UnicodeDecodeError) as error:
        first = (str(error).splitlines() or [""])[0]
        raise ConfigError(f"{path}: not valid YAML: {first}") from None


def get_configs_path() -> str:
    """The ``configs`` folder inside the package (``sgm/configs``; the checkout's
    ``configs/`` links to it)."""
    path = Path(__file__).resolve().parent / "configs"
    if not path.is_dir():
        raise FileNotFoundError(f"the sgm configs folder {path} is missing; reinstall sgm")
    return str(path)
