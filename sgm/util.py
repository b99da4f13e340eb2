"""Config instantiation, small tensor helpers and model loading."""

from __future__ import annotations

import contextvars
import functools
import importlib
import inspect
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

SPECIAL_CONFIG_VALUES = ("__is_first_stage__", "__is_unconditional__")

# (location, params) of the config whose object is being constructed; lets a nested
# instantiate_from_config name its place, e.g. "model.params.network_config".
_BUILDING: contextvars.ContextVar[tuple[str, Any] | None] = contextvars.ContextVar(
    "sgm_building_config", default=None
)


# --------------------------------------------------------------------------- basics


def exists(x: Any) -> bool:
    """True unless ``x`` is None."""
    return x is not None


def default(val: Any, d: Any) -> Any:
    """``val`` if it is not None, else ``d`` (called first when it is a function)."""
    if exists(val):
        return val
    return d() if inspect.isfunction(d) else d


def append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    """Append trailing singleton dimensions until ``x`` has ``target_dims`` dims."""
    dims_to_append = target_dims - x.ndim
    if dims_to_append < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * dims_to_append]


def append_zero(x: torch.Tensor) -> torch.Tensor:
    """Append a single 0 to a 1-D tensor."""
    import torch

    return torch.cat([x, x.new_zeros([1])])


def expand_dims_like(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Append singleton dims to ``x`` until it has as many dims as ``y``."""
    return append_dims(x, y.ndim)


def mean_flat(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over all non-batch dimensions."""
    return tensor.mean(dim=list(range(1, tensor.ndim)))


def count_params(model: nn.Module, verbose: bool = False) -> int:
    """Number of parameters of ``model``."""
    total = sum(p.numel() for p in model.parameters())
    if verbose:
        logger.info("%s has %.2f M params.", model.__class__.__name__, total * 1e-6)
    return total


def disabled_train(self: nn.Module, mode: bool = True) -> nn.Module:
    """Replacement for ``nn.Module.train`` that keeps a frozen module in eval mode."""
    return self


def is_power_of_two(n: int) -> bool:
    """True for 1, 2, 4, 8, ..."""
    return n > 0 and (n & (n - 1)) == 0


def get_string_from_tuple(s: str) -> str:
    """``"('a',)"`` -> ``"a"``; any other string unchanged."""
    if s.startswith("(") and s.endswith(")"):
        inner = s[1:-1].rstrip(",").strip()
        if inner.startswith(("'", '"')) and inner[0] == inner[-1] and len(inner) > 1:
            return inner[1:-1]
    return s


def ismap(x: Any) -> bool:
    """A batch of multi-channel maps: 4-D tensor with more than 3 channels."""
    return _is_tensor(x) and x.ndim == 4 and x.shape[1] > 3


def isimage(x: Any) -> bool:
    """A batch of images: 4-D tensor with 1 or 3 channels."""
    return _is_tensor(x) and x.ndim == 4 and x.shape[1] in (1, 3)


def isheatmap(x: Any) -> bool:
    """A 2-D tensor."""
    return _is_tensor(x) and x.ndim == 2


def isneighbors(x: Any) -> bool:
    """A 5-D tensor with 1 or 3 channels in dim 2."""
    return _is_tensor(x) and x.ndim == 5 and x.shape[2] in (1, 3)


def _is_tensor(x: Any) -> bool:
    import torch

    return isinstance(x, torch.Tensor)


def partialclass(cls: type, *args: Any, **kwargs: Any) -> type:
    """A subclass of ``cls`` whose constructor has some arguments bound."""

    class Bound(cls):
        __init__ = functools.partialmethod(cls.__init__, *args, **kwargs)

    Bound.__name__ = Bound.__qualname__ = cls.__name__
    return Bound


def make_path_absolute(path: str) -> str:
    """Absolute path for local paths; URLs with a scheme are returned unchanged."""
    if "://" in path and not path.startswith("file://"):
        return path
    return os.path.abspath(path.removeprefix("file://"))


def get_nested_attribute(
    obj: Any, attribute_path: str, depth: int | None = None, return_key: bool = False
) -> Any:
    """Follow ``"a.0.b"`` through attributes and indices of ``obj``."""
    parts = attribute_path.split(".")
    if depth is not None:
        parts = parts[:depth]
    current = obj
    for part in parts:
        current = current[int(part)] if part.isdigit() else getattr(current, part)
    return (current, ".".join(parts)) if return_key else current


def accelerator_type() -> str | None:
    """Device type of the available accelerator (e.g. CUDA, MPS), or None on CPU only."""
    import torch

    if hasattr(torch, "accelerator"):
        if torch.accelerator.is_available():
            return torch.accelerator.current_accelerator().type
        return None
    if torch.cuda.is_available():
        return torch.device(torch.cuda.current_device()).type
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return None


def resolve_device(device: str | None = "auto") -> str:
    """``"auto"``/None picks the accelerator (CUDA, then MPS) if any, else cpu."""
    if device not in (None, "auto"):
        return str(device)
    return accelerator_type() or "cpu"


def autocast(f: Callable, enabled: bool = True) -> Callable:
    """Decorator running ``f`` under autocast on the device of its arguments (the first
    tensor argument, else the first module argument's parameters), in that device's
    current autocast dtype; nothing changes on CPU."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        if not enabled:
            return f(*args, **kwargs)
        from .precision import accelerator_autocast

        with accelerator_autocast(_argument_device(args, kwargs)):
            return f(*args, **kwargs)

    return wrapper


def _argument_device(args: tuple, kwargs: dict) -> Any:
    import torch

    values = (*args, *kwargs.values())
    for value in values:
        if isinstance(value, torch.Tensor):
            return value.device
    for value in values:
        if isinstance(value, torch.nn.Module):
            return value
    return torch.device("cpu")


# --------------------------------------------------------------------------- configs


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


def instantiate_from_config(config: Any, key: str | None = None) -> Any:
    """Build ``target(**params)`` from a ``{target, params}`` mapping.

    The special strings ``__is_first_stage__`` and ``__is_unconditional__`` give None.
    ``key`` names the config's place for error messages (e.g. ``"model"``); configs
    built from inside another config's constructor find their place by themselves.
    """
    if isinstance(config, str) and config in SPECIAL_CONFIG_VALUES:
        return None
    where = key or _locate(config) or "config"
    if not isinstance(config, Mapping) and not _is_dictconfig(config):
        raise ConfigError(f"{where}: expected a mapping with 'target', got {config!r}")
    if "target" not in config:
        raise ConfigError(f"{where}: expected key `target` to instantiate")
    try:
        cls = get_obj_from_str(config["target"])
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from error.__cause__
    params = config.get("params", None) or {}
    if not isinstance(params, Mapping) and not _is_dictconfig(params):
        raise ConfigError(f"{where}.params: expected a mapping, got {params!r}")
    _check_params(cls, params, where, config["target"])
    token = _BUILDING.set((where, params))
    try:
        return cls(**params)
    finally:
        _BUILDING.reset(token)


def _is_dictconfig(obj: Any) -> bool:
    try:
        from omegaconf import DictConfig
    except ImportError:
        return False
    return isinstance(obj, DictConfig)


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
    if depth > 4:
        return
    if isinstance(node, Mapping) or _is_dictconfig(node):
        items = node.items()
    elif isinstance(node, (list, tuple)) or type(node).__name__ == "ListConfig":
        items = enumerate(node)
    else:
        return
    for k, v in items:
        child = f"{path}.{k}"
        yield child, v
        yield from _walk(v, child, depth + 1)


def _same_config(a: Any, b: Any) -> bool:
    if not (isinstance(a, Mapping) or _is_dictconfig(a)) or "target" not in a:
        return False
    try:
        return _to_plain(a) == _to_plain(b)
    except Exception:  # unresolvable interpolations: not a match
        return False


def _to_plain(x: Any) -> Any:
    if _is_dictconfig(x) or type(x).__name__ == "ListConfig":
        from omegaconf import OmegaConf

        return OmegaConf.to_container(x, resolve=True)
    return x


def load_partial_from_config(config: Mapping) -> Callable:
    """``functools.partial(target, **params)``, built later by the caller."""
    return functools.partial(get_obj_from_str(config["target"]), **config.get("params", {}))


def load_configs(
    paths: Sequence[str | os.PathLike],
    overrides: Sequence[str] = (),
    sections: Sequence[str] | None = None,
):
    """Merge YAML files left to right, then apply ``key=value`` dot-list overrides.

    Each file must hold a mapping. Overrides are checked by
    :func:`sgm.config_overrides.apply_overrides` (``sections``: the allowed new top-level
    keys; None allows any).
    """
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    from .config_overrides import apply_overrides

    configs = []
    for path in paths:
        if not Path(path).is_file():
            what = "is a folder, not a config file" if Path(path).is_dir() else "not found"
            raise ConfigError(f"config file {what}: {path}")
        try:
            loaded = OmegaConf.load(path)
        except (YAMLError, OmegaConfBaseException, UnicodeDecodeError) as error:
            first = (str(error).splitlines() or [""])[0]
            raise ConfigError(f"{path}: not valid YAML: {first}") from None
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


def get_configs_path() -> str:
    """The ``configs`` folder: inside the installed package, or the source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if candidate.is_dir():
            return str(candidate)
    raise FileNotFoundError(
        f"could not find the sgm configs folder; looked in {here / 'configs'} and "
        f"{here.parent / 'configs'}"
    )


def load_model_from_config(
    config: Any,
    ckpt: str | os.PathLike | None,
    verbose: bool = True,
    freeze: bool = True,
    strict: bool = True,
) -> nn.Module:
    """Build ``config.model``, load ``ckpt`` into it strictly, and put it in eval mode."""
    from .checkpoint import load_checkpoint_into

    model_config = config["model"] if "model" in config else config
    model = instantiate_from_config(model_config, key="model")
    if ckpt is not None:
        report = load_checkpoint_into(model, ckpt, strict=strict)
        if verbose:
            logger.info("Loaded %s: %s", ckpt, report.summary() or "all keys matched")
    if freeze:
        for param in model.parameters():
            param.requires_grad_(False)
    return model.eval()


def log_txt_as_img(wh: tuple[int, int], xc: Sequence[str], size: int = 10) -> torch.Tensor:
    """Render each caption of ``xc`` black on white into a ``(B, 3, H, W)`` tensor in [-1, 1].

    ``wh`` is the image size as (width, height); text wraps to the image width.
    """
    import textwrap

    import numpy as np
    import torch
    from PIL import Image, ImageDraw, ImageFont

    width, height = int(wh[0]), int(wh[1])
    font = ImageFont.load_default(size=max(int(size), 4))
    chars_per_line = max(int(40 * (width / 256)), 1)
    images = []
    for caption in xc:
        canvas = Image.new("RGB", (width, height), color="white")
        text = "\n".join(textwrap.wrap(str(caption), chars_per_line)) or " "
        ImageDraw.Draw(canvas).multiline_text((0, 0), text, fill="black", font=font)
        array = np.asarray(canvas, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
        images.append(torch.from_numpy(array.copy()))
    if not images:
        return torch.zeros(0, 3, height, width)
    return torch.stack(images)
