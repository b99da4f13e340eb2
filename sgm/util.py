"""Small tensor helpers, model loading, and the config and device helpers by their old
paths (they live in :mod:`sgm.config` and :mod:`sgm.devices`)."""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

# The config machinery and the device helpers, by their old paths.
from .config import SPECIAL_CONFIG_VALUES as SPECIAL_CONFIG_VALUES
from .config import _check_params as _check_params
from .config import _locate as _locate
from .config import _walk as _walk
from .config import get_configs_path as get_configs_path
from .config import get_obj_from_str as get_obj_from_str
from .config import instantiate_from_config as instantiate_from_config
from .config import load_configs as load_configs
from .config import load_partial_from_config as load_partial_from_config
from .config import to_plain as to_plain
from .devices import accelerator_autocast
from .devices import accelerator_type as accelerator_type
from .devices import resolve_device as resolve_device

if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

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


def autocast(f: Callable, enabled: bool = True) -> Callable:
    """Decorator running ``f`` under autocast on the device of its arguments (the first
    tensor argument, else the first module argument's parameters), in that device's
    current autocast dtype; nothing changes on CPU."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        if not enabled:
            return f(*args, **kwargs)
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


# --------------------------------------------------------------------------- models


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
