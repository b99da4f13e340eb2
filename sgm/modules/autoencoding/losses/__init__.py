"""Autoencoder training losses."""

from __future__ import annotations

from .discriminator_loss import GeneralLPIPSWithDiscriminator
from .lpips import LatentLPIPS

__all__ = ["GeneralLPIPSWithDiscriminator", "LatentLPIPS"]
