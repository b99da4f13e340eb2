"""Lets a CUDA-linked torchvision import next to a CPU-only torch.

Some registries pair a CPU torch with a torchvision whose compiled ops need CUDA
libraries. Importing it then fails with ``operator torchvision::nms does not exist``
(its meta registrations refer to ops the missing ``_C`` would define), and every
package that imports torchvision (open_clip, transformers, diffusers, Lightning)
fails with it. ``install()`` adds a one-shot import hook: on exactly that error it
declares the missing op schemas and runs torchvision's ``__init__`` again. The
compiled ops (nms, roi_align, io decoders) still raise when called; nothing here
uses them. On a consistent install the first import succeeds and the hook does
nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

_MISSING_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # keeps the op definitions alive


def _define_missing_ops() -> None:
    global _library
    if _library is None:
        import torch

        _library = torch.library.Library("torchvision", "DEF")
        for schema in _MISSING_OPS:
            _library.define(schema)


class _RetryingLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        try:
            self._loader.exec_module(module)
        except RuntimeError as error:
            if "torchvision::" not in str(error):
                raise
            for name in [n for n in sys.modules if n.startswith("torchvision.")]:
                del sys.modules[name]
            _define_missing_ops()
            self._loader.exec_module(module)


class _TorchvisionFinder(importlib.abc.MetaPathFinder):
    # Stays on sys.meta_path: availability probes (``importlib.util.find_spec``, as
    # transformers does) call find_spec without importing, so it must not be one-shot.
    _searching = False

    def find_spec(self, fullname, path, target=None):
        if fullname != "torchvision" or self._searching:
            return None
        self._searching = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._searching = False
        if spec is not None and spec.loader is not None:
            spec.loader = _RetryingLoader(spec.loader)
        return spec


def install() -> None:
    """Add the hook unless torchvision is already imported or the hook is present."""
    if "torchvision" in sys.modules:
        return
    if any(isinstance(f, _TorchvisionFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TorchvisionFinder())
