"""A callback for the DDP test: every rank saves its final weights."""

import os

import pytorch_lightning as pl
import torch


class DumpWeights(pl.Callback):
    """Write ``rank<N>.pt`` with the module's state dict when training ends."""

    def __init__(self, out: str):
        self.out = out

    def on_train_end(self, trainer, pl_module):
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save(
            {"state": state, "world_size": trainer.world_size, "step": trainer.global_step},
            os.path.join(self.out, f"rank{trainer.global_rank}.pt"),
        )
