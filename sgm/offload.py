"""Low-VRAM sampling: big components live on the host and visit the accelerator in turn.

An :class:`Offloader` keeps registered modules on the host and moves one at a time onto
the device, right before it runs: the resident one goes back to the host first, so at
most one of them (plus activations) occupies accelerator memory. For an engine the
conditioner, the network and the first stage are registered, everything small (the
denoiser's tables, ...) moves to the device and EMA shadows stay on the host::

    from sgm.offload import offload_engine, peak_memory_report, reset_peak_memory

    offloader = offload_engine(model, device)          # --low_vram
    reset_peak_memory(device)
    try:
        frames = sample_video(model, values, num_frames, device=device)
    finally:
        offloader.unload()                             # everything back on the host
    print(peak_memory_report(device))                  # "peak CUDA memory: 3.2 GiB"

A module is loaded by forward pre-hooks on itself and on its direct children, and by
``with using(module):`` around calls that are not ``forward`` (first-stage
``encode``/``decode``). Sampling code must then pass the device explicitly, as inputs
are created before the components move.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator

import torch

logger = logging.getLogger(__name__)

_ATTR = "_sgm_offloader"
ENGINE_PARTS = ("conditioner", "model", "first_stage_model")
_CONTAINERS = (torch.nn.ModuleList, torch.nn.ModuleDict, torch.nn.Sequential)


class Offloader:
    """Moves registered modules between ``host`` and ``device``, one resident at a time.

    Args:
        device: where modules run.
        host: where they wait (default cpu).
        empty_cache: release the accelerator's cached blocks after each move back.
    """

    def __init__(
        self,
        device: torch.device | str,
        host: torch.device | str = "cpu",
        empty_cache: bool = True,
    ) -> None:
        self.device = torch.device(device)
        self.host = torch.device(host)
        self.empty_cache = empty_cache
        self.modules: list[torch.nn.Module] = []
        self.resident: torch.nn.Module | None = None
        self._hooks: list = []

    def register(self, module: torch.nn.Module) -> torch.nn.Module:
        """Keep ``module`` on the host; it moves to the device when it (or a direct
        child, or an embedder of a child list) is called, or inside ``using(module)``."""
        if any(m is module for m in self.modules):
            return module
        self._to_host(module)
        setattr(module, _ATTR, self)
        self.modules.append(module)

        def load(*_: object) -> None:
            self.load(module)

        for part in _entry_points(module):
            self._hooks.append(part.register_forward_pre_hook(load))
        return module

    def load(self, module: torch.nn.Module) -> None:
        """Put ``module`` on the device, moving the resident one back first."""
        if self.resident is module:
            return
        self.unload()
        self._to_device(module)
        self.resident = module

    def unload(self) -> None:
        """Move the resident module back to the host."""
        if self.resident is None:
            return
        module, self.resident = self.resident, None
        self._to_host(module)
        if self.empty_cache and _is_accelerator(self.device):
            torch.accelerator.empty_cache()

    def remove(self) -> None:
        """Undo :meth:`register` for every module (they stay where they are)."""
        for hook in self._hooks:
            hook.remove()
        for module in self.modules:
            if getattr(module, _ATTR, None) is self:
                delattr(module, _ATTR)
        self._hooks, self.modules, self.resident = [], [], None

    def _to_device(self, module: torch.nn.Module) -> None:
        module.to(self.device)

    def _to_host(self, module: torch.nn.Module) -> None:
        module.to(self.host)


def _entry_points(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``module``, its children, and the members of child containers (embedders)."""
    yield module
    for child in module.children():
        if isinstance(child, _CONTAINERS):
            yield from child.children()
        yield child


@contextlib.contextmanager
def using(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Make ``module`` resident for the block if it is offloaded (else a no-op)."""
    offloader = getattr(module, _ATTR, None)
    if offloader is not None:
        offloader.load(module)
    yield module


def execution_device(model: torch.nn.Module) -> torch.device | None:
    """The device an offloaded ``model`` (or one of its children) runs on, else None."""
    offloader = _offloader_of(model)
    return None if offloader is None else offloader.device


def _offloader_of(model: torch.nn.Module) -> Offloader | None:
    for part in (model, *model.children()):
        offloader = getattr(part, _ATTR, None)
        if offloader is not None:
            return offloader
    return None


@contextlib.contextmanager
def released(model: torch.nn.Module) -> Iterator[None]:
    """On leaving the block, move an offloaded ``model``'s resident part to the host."""
    try:
        yield
    finally:
        offloader = _offloader_of(model)
        if offloader is not None:
            offloader.unload()


def offload_engine(
    engine: torch.nn.Module,
    device: torch.device | str,
    host: torch.device | str = "cpu",
    parts: Iterable[str] = ENGINE_PARTS,
    offloader: Offloader | None = None,
) -> Offloader:
    """Offload an engine's big ``parts`` (default: conditioner, network, first stage);
    its other children move to ``device`` except ``model_ema``, which stays on the host."""
    offloader = offloader or Offloader(device, host)
    parts = [p for p in parts if isinstance(getattr(engine, p, None), torch.nn.Module)]
    for name, child in engine.named_children():
        if name not in parts and name != "model_ema":
            child.to(offloader.device)
    for name in parts:
        offloader.register(getattr(engine, name))
    return offloader


def _is_accelerator(device: torch.device) -> bool:
    """Is ``device`` on the machine's accelerator (CUDA, ...)? MPS keeps no peak stats."""
    from .util import accelerator_type

    return device.type not in ("cpu", "mps", "meta") and device.type == accelerator_type()


def reset_peak_memory(device: torch.device | str) -> None:
    """Start counting peak accelerator memory afresh (CUDA; elsewhere nothing)."""
    device = torch.device(device)
    if _is_accelerator(device):
        torch.accelerator.reset_peak_memory_stats(device)


def peak_memory(device: torch.device | str) -> int | None:
    """Peak bytes allocated on an accelerator ``device`` (CUDA) since the last reset;
    None on CPU and MPS."""
    device = torch.device(device)
    if not _is_accelerator(device):
        return None
    return int(torch.accelerator.max_memory_allocated(device))


def peak_memory_report(device: torch.device | str) -> str | None:
    """``"peak CUDA memory: X.XX GiB"`` on an accelerator, None elsewhere."""
    peak = peak_memory(device)
    if peak is None:
        return None
    return f"peak {torch.device(device).type.upper()} memory: {peak / 2**30:.2f} GiB"
