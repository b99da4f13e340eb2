"""Sharded training strategies for the fine-tune configs.

``lightning.strategy: {target: sgm.training.strategies.FSDP2}`` shards the network's
parameters, gradients and optimizer state over the processes with PyTorch's FSDP2
(``torch.distributed.fsdp.fully_shard``) under Lightning's ``ModelParallelStrategy``: each
residual / transformer block of the UNet is its own unit, then the network and every
trainable embedder; the frozen first stage and frozen encoders stay whole on every
process. It runs on CUDA (NCCL) and on CPUs (gloo); Lightning's ``strategy: fsdp`` (FSDP1)
needs an accelerator. Checkpoints are sharded (a folder per checkpoint, written by every
process) and resume with ``--resume`` / ``ckpt_path`` as usual. EMA and a single process
are refused.

``lightning.strategy: {target: sgm.training.strategies.deepspeed_zero, params: {stage: 2}}``
(or 3): DeepSpeed's ZeRO under Lightning's ``DeepSpeedStrategy``, for CUDA machines with
``deepspeed`` installed; stage 2 shards gradients and optimizer state, stage 3 the
parameters too. Where DeepSpeed cannot run it is refused in one line before the model is
built, naming FSDP2 as the alternative; EMA is refused with stage 3 (the parameters it
would copy are partitioned).
"""

from __future__ import annotations

import importlib.util
import logging
import types
from typing import Any

from pytorch_lightning.strategies import ModelParallelStrategy
from pytorch_lightning.utilities.model_helpers import is_overridden
from torch import nn

from ..errors import ConfigError

logger = logging.getLogger(__name__)


def network_blocks(network: nn.Module) -> list[nn.Module]:
    """The UNet's FSDP units: each input block, the middle block, and each layer of the
    output blocks (the UNet calls those layer by layer, so that is where FSDP's hooks
    fire)."""
    blocks = list(getattr(network, "input_blocks", []))
    middle = getattr(network, "middle_block", None)
    blocks += [middle] if middle is not None else []
    for block in getattr(network, "output_blocks", []):
        blocks += list(block)
    return blocks


def shard_engine(engine: nn.Module, mesh: Any, reshard_after_forward: bool = True) -> None:
    """Apply ``fully_shard`` to the network's blocks, the network, and the trainable
    embedders of ``engine`` (a ``DiffusionEngine``)."""
    from torch.distributed.fsdp import fully_shard

    if getattr(engine, "use_ema", False):
        raise ConfigError(
            "FSDP2 with model.params.use_ema: true is not supported (the EMA keeps a whole "
            "copy of the network on every process); set use_ema: false or use DDP"
        )
    options = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    network = engine.model.diffusion_model
    for block in network_blocks(network):
        if any(p.requires_grad for p in block.parameters()):
            fully_shard(block, **options)
    fully_shard(engine.model, **options)
    for embedder in getattr(engine.conditioner, "embedders", []):
        if any(p.requires_grad for p in embedder.parameters()):
            fully_shard(embedder, **options)


class FSDP2(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` with the engine sharded by
    :func:`shard_engine` over all processes (data parallel, no tensor parallelism)."""

    def __init__(self, reshard_after_forward: bool = True, **kwargs: Any):
        kwargs.setdefault("data_parallel_size", "auto")
        kwargs.setdefault("tensor_parallel_size", 1)
        super().__init__(**kwargs)
        self.reshard_after_forward = bool(reshard_after_forward)

    def setup_environment(self) -> None:
        if self.num_processes * self.num_nodes < 2:
            raise ConfigError(
                "lightning.strategy FSDP2 with a single process has nothing to shard over; "
                "set lightning.trainer.devices >= 2 (or drop the strategy)"
            )
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_processes * self.num_nodes
        super().setup_environment()

    def connect(self, model: Any) -> None:
        super().connect(model)
        if not is_overridden("configure_model", model):
            strategy = self

            def configure_model(module: Any) -> None:
                if getattr(module, "_sgm_sharded", False):
                    return
                mesh = strategy.device_mesh["data_parallel"]
                shard_engine(module, mesh, strategy.reshard_after_forward)
                module._sgm_sharded = True
                logger.info("FSDP2: engine sharded over %d processes", mesh.size())

            model.configure_model = types.MethodType(configure_model, model)


def deepspeed_zero(
    stage: int = 2,
    offload_optimizer: bool = False,
    offload_parameters: bool = False,
    **kwargs: Any,
) -> Any:
    """Lightning's ``DeepSpeedStrategy`` at ZeRO ``stage`` 2 or 3 (``offload_*``: keep
    the optimizer state / parameters in host memory), checked first: DeepSpeed needs its
    package and CUDA, and stage 3 cannot keep an EMA of partitioned parameters."""
    if stage not in (2, 3):
        raise ConfigError(f"lightning.strategy deepspeed_zero: stage {stage!r} must be 2 or 3")
    if offload_parameters and stage != 3:
        raise ConfigError("lightning.strategy deepspeed_zero: offload_parameters needs stage 3")
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            "lightning.strategy deepspeed_zero needs the deepspeed package (pip install "
            "deepspeed) and CUDA; without them use sgm.training.strategies.FSDP2"
        )
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            "lightning.strategy deepspeed_zero needs CUDA, which this machine does not have; "
            "use sgm.training.strategies.FSDP2 (it runs on CPUs with gloo)"
        )
    from pytorch_lightning.strategies import DeepSpeedStrategy

    class DeepSpeedZeRO(DeepSpeedStrategy):
        def connect(self, model: Any) -> None:
            if stage == 3 and getattr(model, "use_ema", False):
                raise ConfigError(
                    "DeepSpeed ZeRO stage 3 with model.params.use_ema: true is not supported "
                    "(the EMA would copy partitioned parameters); set use_ema: false or use "
                    "stage 2"
                )
            super().connect(model)

    return DeepSpeedZeRO(
        stage=stage,
        offload_optimizer=offload_optimizer,
        offload_parameters=offload_parameters,
        **kwargs,
    )
