"""ActNorm (data-initialised affine normalisation) and local weight-file helpers."""

from __future__ import annotations

import hashlib
import os

import torch
from torch import nn

from ....errors import CheckpointError

CKPT_MAP = {"vgg_lpips": "vgg.pth"}
MD5_MAP = {"vgg_lpips": "d507d7349b931f0638a25a48a722f98a"}


def md5_hash(path: str | os.PathLike) -> str:
    """MD5 hex digest of a file."""
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def get_ckpt_path(name: str, root: str | os.PathLike, check: bool = False) -> str:
    """Path of the local weight file ``name`` under ``root`` (never downloads)."""
    if name not in CKPT_MAP:
        raise ValueError(f"unknown weight file {name!r}; expected one of {sorted(CKPT_MAP)}")
    path = os.path.join(root, CKPT_MAP[name])
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} not found: place {CKPT_MAP[name]} ({name}) there")
    if check and md5_hash(path) != MD5_MAP[name]:
        raise CheckpointError(f"{path}: md5 differs from {MD5_MAP[name]} ({name})")
    return path


class ActNorm(nn.Module):
    """Per-channel affine ``scale * (x + loc)``, initialised from the first batch (Glow)."""

    def __init__(
        self,
        num_features: int,
        logdet: bool = False,
        affine: bool = True,
        allow_reverse_init: bool = False,
    ):
        if not affine:
            raise ValueError("ActNorm supports only affine=True")
        super().__init__()
        self.logdet = logdet
        self.loc = nn.Parameter(torch.zeros(1, num_features, 1, 1))
        self.scale = nn.Parameter(torch.ones(1, num_features, 1, 1))
        self.allow_reverse_init = allow_reverse_init
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    @torch.no_grad()
    def initialize(self, input: torch.Tensor) -> None:
        flat = input.transpose(0, 1).reshape(input.shape[1], -1)
        mean = flat.mean(1).view(1, -1, 1, 1)
        std = flat.std(1).view(1, -1, 1, 1)
        self.loc.data.copy_(-mean)
        self.scale.data.copy_(1 / (std + 1e-6))

    def _maybe_initialize(self, x: torch.Tensor) -> None:
        if self.training and self.initialized.item() == 0:
            self.initialize(x)
            self.initialized.fill_(1)

    def forward(self, input: torch.Tensor, reverse: bool = False):
        if reverse:
            return self.reverse(input)
        squeeze = input.ndim == 2
        if squeeze:
            input = input[:, :, None, None]
        height, width = input.shape[2:]
        self._maybe_initialize(input)
        h = self.scale * (input + self.loc)
        if squeeze:
            h = h.squeeze(-1).squeeze(-1)
        if self.logdet:
            logdet = height * width * torch.sum(torch.log(torch.abs(self.scale)))
            return h, logdet * torch.ones(input.shape[0]).to(input)
        return h

    def reverse(self, output: torch.Tensor) -> torch.Tensor:
        if self.training and self.initialized.item() == 0 and not self.allow_reverse_init:
            raise RuntimeError(
                "Initializing ActNorm in reverse direction is disabled by default. "
                "Use allow_reverse_init=True to enable."
            )
        squeeze = output.ndim == 2
        if squeeze:
            output = output[:, :, None, None]
        self._maybe_initialize(output)
        h = output / self.scale - self.loc
        return h.squeeze(-1).squeeze(-1) if squeeze else h
