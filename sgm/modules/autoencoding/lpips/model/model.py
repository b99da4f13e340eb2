"""PatchGAN discriminator (Isola et al., 2017) and its weight initialisation."""

from __future__ import annotations

import functools

import torch
from torch import nn

from ..util import ActNorm


def weights_init(m: nn.Module) -> None:
    """DCGAN init: conv weights ~ N(0, 0.02); batch-norm weights ~ N(1, 0.02), bias 0."""
    classname = m.__class__.__name__
    if classname.find("Conv") != -1:
        weight = m.weight if hasattr(m, "weight") else m.conv.weight
        nn.init.normal_(weight.data, 0.0, 0.02)
    elif classname.find("BatchNorm") != -1:
        nn.init.normal_(m.weight.data, 1.0, 0.02)
        nn.init.constant_(m.bias.data, 0)


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator: (B, input_nc, H, W) -> patch logits (B, 1, h, w)."""

    def __init__(
        self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, use_actnorm: bool = False
    ):
        super().__init__()
        norm_layer = ActNorm if use_actnorm else nn.BatchNorm2d
        base = norm_layer.func if isinstance(norm_layer, functools.partial) else norm_layer
        use_bias = base != nn.BatchNorm2d
        kw, padw = 4, 1
        sequence = [
            nn.Conv2d(input_nc, ndf, kernel_size=kw, stride=2, padding=padw),
            nn.LeakyReLU(0.2, True),
        ]
        nf_mult = 1
        for n in range(1, n_layers):
            nf_mult_prev, nf_mult = nf_mult, min(2**n, 8)
            sequence += self._layer(ndf * nf_mult_prev, ndf * nf_mult, 2, use_bias, norm_layer)
        nf_mult_prev, nf_mult = nf_mult, min(2**n_layers, 8)
        sequence += self._layer(ndf * nf_mult_prev, ndf * nf_mult, 1, use_bias, norm_layer)
        sequence += [nn.Conv2d(ndf * nf_mult, 1, kernel_size=kw, stride=1, padding=padw)]
        self.main = nn.Sequential(*sequence)

    @staticmethod
    def _layer(c_in, c_out, stride, use_bias, norm_layer) -> list[nn.Module]:
        conv = nn.Conv2d(c_in, c_out, kernel_size=4, stride=stride, padding=1, bias=use_bias)
        return [conv, norm_layer(c_out), nn.LeakyReLU(0.2, True)]

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.main(input)
