"""Config targets: a dotted path ``"package.module.Name"`` imported to the object it names."""

from __future__ import annotations

import importlib
from typing import Any

from .errors import ConfigError


def get_obj_from_str(string: str, reload: bool = False, invalidate_cache: bool = True) -> Any:
    """Import ``"package.module.Name"`` and return ``Name``."""
    if not isinstance(string, str) or "." not in string:
        raise ConfigError(f"target must be a dotted path 'module.Name', got {string!r}")
    module_name, attr = string.rsplit(".", 1)
    if invalidate_cache:
        importlib.invalidate_caches()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and (module_name + ".").startswith(error.name + "."):
            raise ConfigError(f"cannot import {string!r} (no module {error.name})") from None
        raise ConfigError(
            f"cannot import {string!r}: importing {module_name} needs the missing "
            f"package {error.name!r}"
        ) from error
    if reload:
        module = importlib.reload(module)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(
            f"cannot import {string!r} (module {module_name} has no attribute {attr!r})"
        ) from None
