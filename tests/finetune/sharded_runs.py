"""Two-process training runs for the sharded-strategy tests: ``launch`` starts ``world``
processes (torch.multiprocessing's spawn context, gloo on CPU, rank variables as torchrun
sets them, so Lightning starts no processes of its own); each trains the tiny engine of
tests/configs/tiny_train.yaml and rank 0 writes the full weights at the start and the
end of training to ``weights.pt``."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _strategy(name: str):
    if name == "ddp":
        from pytorch_lightning.strategies import DDPStrategy

        return DDPStrategy(process_group_backend="gloo")
    from sgm.training.strategies import FSDP2

    return FSDP2()


def train(rank: int, world: int, port: int, strategy: str, folder: str, steps: int, resume):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        GROUP_RANK="0",
        NODE_RANK="0",
        LOCAL_WORLD_SIZE=str(world),
        TORCHELASTIC_RUN_ID="sgm-test",
    )
    torch.set_num_threads(1)
    import sgm  # noqa: F401  (before Lightning imports torchvision)

    # isort: split
    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    from sgm.util import instantiate_from_config

    config = OmegaConf.load(ROOT / "tests" / "configs" / "tiny_train.yaml")
    config.model.params.learning_rate = 5e-2
    # SGD with momentum: linear in the gradients, so the two strategies' different
    # reduction orders stay at rounding level (Adam divides near-zero gradients by their
    # own size and turns rounding into whole steps); the momentum is optimizer state
    # that resuming must restore
    config.model.params.optimizer_config = {
        "target": "torch.optim.SGD",
        "params": {"momentum": 0.9},
    }
    pl.seed_everything(0)
    model = instantiate_from_config(config.model)
    data = instantiate_from_config(config.data)
    folder = Path(folder)
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=folder / "ckpt", save_last=True)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=world,
        strategy=_strategy(strategy),
        max_steps=steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[checkpoint],
        default_root_dir=folder,
    )
    start = {}

    class AtStart(pl.Callback):
        def on_train_start(self, trainer, module):
            start.update(_full_weights(module))

    trainer.callbacks.append(AtStart())
    trainer.fit(model, data, ckpt_path=resume)
    weights = _full_weights(model)
    if rank == 0:
        result = {"weights": weights, "start": start, "step": trainer.global_step}
        torch.save(result, folder / "weights.pt")


def _full_weights(model) -> dict:
    weights = {}
    for name, param in model.named_parameters():
        full = param.full_tensor() if hasattr(param, "full_tensor") else param
        weights[name] = full.detach().clone()
    return weights


def launch(world: int, strategy: str, folder: Path, steps: int, resume=None) -> dict:
    """Run :func:`train` in ``world`` processes; rank 0's ``weights.pt``."""
    import torch.multiprocessing as mp

    folder.mkdir(parents=True, exist_ok=True)
    args = (world, free_port(), strategy, str(folder), steps, resume)
    mp.start_processes(train, args=args, nprocs=world, start_method="spawn", join=True)
    return torch.load(folder / "weights.pt", weights_only=True)
