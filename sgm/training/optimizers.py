"""Memory-lean optimizers for ``model.params.optimizer_config``.

- ``sgm.training.optimizers.adamw``: ``torch.optim.AdamW``, fused where the parameters'
  device has the fused kernel (CUDA, CPU, ...), else PyTorch's default.
- ``torch.optim.Adafactor``: factored second moments (a row and a column per matrix).
- ``sgm.training.optimizers.adamw_8bit``: bitsandbytes' ``AdamW8bit`` (8-bit moments).
- ``sgm.training.optimizers.FusedBackwardStep``: any of these stepped inside the backward
  pass, one parameter at a time, so that no full set of gradients is ever held.

Every target is called as ``target(params, lr=lr, **params)`` (``sgm.models._optimizer``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError
from ..util import get_obj_from_str

logger = logging.getLogger(__name__)

ADAFACTOR = "torch.optim.Adafactor"


def _tensors(params: Iterable[Any]) -> list[torch.Tensor]:
    tensors = []
    for item in params:
        if isinstance(item, Mapping):
            tensors += list(item["params"])
        else:
            tensors.append(item)
    return tensors


def fused_available(params: Iterable[Any]) -> bool:
    """Whether PyTorch has a fused AdamW kernel for every one of ``params``."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    devices = set(_get_fused_kernels_supported_devices())
    tensors = _tensors(params)
    return bool(tensors) and all(
        t.device.type in devices and t.is_floating_point() for t in tensors
    )


def adamw(params: Iterable[Any], lr: float, **kwargs: Any) -> torch.optim.AdamW:
    """``torch.optim.AdamW``, fused where available (unless ``fused``/``foreach`` is
    given)."""
    params = list(params)
    if "fused" not in kwargs and "foreach" not in kwargs and fused_available(params):
        kwargs["fused"] = True
    return torch.optim.AdamW(params, lr=lr, **kwargs)


def adamw_8bit(params: Iterable[Any], lr: float, **kwargs: Any) -> torch.optim.Optimizer:
    """bitsandbytes' ``AdamW8bit``: both moments in 8 bits (blockwise quantized) for
    tensors of at least ``min_8bit_size`` (4096) elements, float32 below."""
    try:
        import bitsandbytes
    except Exception as error:  # missing, or its native library cannot load here
        raise ConfigError(
            f"optimizer adamw_8bit needs bitsandbytes, which cannot run here "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
            f"pip install bitsandbytes, or use {ADAFACTOR} (factored state, no extra package)"
        ) from None
    return bitsandbytes.optim.AdamW8bit(params, lr=lr, **kwargs)


class FusedBackwardStep(torch.optim.Optimizer):
    """The optimizer step fused into the backward pass.

    ``optimizer`` is an optimizer config (``{target, params}``); one such optimizer is
    built per parameter and stepped from that parameter's post-accumulate-grad hook, after
    which the gradient is freed. ``step(closure)`` only runs the closure. The learning
    rate of this optimizer's (single) param group is copied to every inner optimizer, so
    learning-rate schedulers work. Gradient accumulation, gradient clipping, fp16 loss
    scaling and several processes need all gradients at once: ``check_trainer`` refuses
    them.
    """

    def __init__(self, params: Iterable[Any], lr: float, optimizer: Mapping | None = None):
        config = dict(optimizer or {"target": "sgm.training.optimizers.adamw"})
        if "target" not in config:
            raise ConfigError("FusedBackwardStep.optimizer needs a 'target'")
        if str(config["target"]).endswith("FusedBackwardStep"):
            raise ConfigError("FusedBackwardStep.optimizer cannot be FusedBackwardStep")
        tensors = [t for t in _tensors(params) if t.requires_grad]
        if not tensors:
            raise ConfigError("FusedBackwardStep got no parameter that requires a gradient")
        super().__init__(tensors, {"lr": lr})
        factory = get_obj_from_str(config["target"])
        options = dict(config.get("params") or {})
        self.inner = [factory([t], lr=lr, **options) for t in tensors]
        self._handles = [
            t.register_post_accumulate_grad_hook(self._stepper(i)) for i, t in enumerate(tensors)
        ]
        logger.info("%s stepped in backward for %d tensors", config["target"], len(tensors))

    def _stepper(self, index: int):
        def hook(param: torch.Tensor) -> None:
            inner = self.inner[index]
            for group in inner.param_groups:
                group["lr"] = self.param_groups[0]["lr"]
            inner.step()
            param.grad = None

        return hook

    def step(self, closure: Any = None) -> Any:
        """Run ``closure`` (forward and backward): its backward steps the parameters."""
        return None if closure is None else closure()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Nothing to do: each gradient is freed right after its step."""

    def remove_hooks(self) -> None:
        """Stop stepping in backward (the parameters keep their current values)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["inner"] = [o.state_dict() for o in self.inner]
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state = dict(state_dict)
        inner = state.pop("inner", None)
        if inner is None or len(inner) != len(self.inner):
            raise CheckpointError(
                f"optimizer state holds {None if inner is None else len(inner)} per-parameter "
                f"states; FusedBackwardStep here steps {len(self.inner)} tensors"
            )
        super().load_state_dict(state)
        for optimizer, saved in zip(self.inner, inner):
            optimizer.load_state_dict(saved)

    def check_trainer(self, trainer: Any) -> None:
        """Refuse the Trainer settings that need every gradient before the step."""
        if trainer is None:
            return
        refusals = {
            "accumulate_grad_batches": getattr(trainer, "accumulate_grad_batches", 1) > 1,
            "gradient_clip_val": bool(getattr(trainer, "gradient_clip_val", None)),
            "precision": str(getattr(trainer, "precision", "")).startswith("16"),
            "devices": getattr(trainer, "world_size", 1) > 1,
        }
        bad = [k for k, v in refusals.items() if v]
        if bad:
            key = bad[0]
            value = getattr(trainer, "world_size" if key == "devices" else key)
            raise ConfigError(
                f"FusedBackwardStep steps each parameter during backward, so "
                f"lightning.trainer.{key}={value!r} "
                "cannot apply (it needs all gradients first): set accumulate_grad_batches 1, "
                "gradient_clip_val null, a non-fp16 precision and one process, or use the "
                "ordinary optimizer"
            )
