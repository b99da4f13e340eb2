"""Autoencoders (first stages): KL/VQ VAEs, the general engine, identity, index wrapper.

``AutoencodingEngine`` is a LightningModule trained with two optimizers
(autoencoder and discriminator, manual optimisation). Every autoencoder offers
``encode``/``decode``, batch chunking (``max_batch_size``) and spatially tiled
``encode_tiled``/``decode_tiled`` for images larger than memory allows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from einops import rearrange
from torch import nn

from ..errors import ConfigError
from ..modules.autoencoding.regularizers import AbstractRegularizer
from ..util import default, get_nested_attribute, instantiate_from_config
from ._autoencoder_base import (  # noqa: F401  (importable from here)
    EMBEDDED_PREFIX,
    OPTIONAL_PREFIXES,
    AbstractAutoencoder,
)
from ._autoencoder_tiling import apply_in_chunks, apply_tiled
from ._autoencoder_training import AutoencoderTrainingMixin


class AutoencodingEngine(AutoencoderTrainingMixin, AbstractAutoencoder):
    """Encoder -> regularizer -> decoder, with a (LPIPS + GAN) training loss.

    ``encoder_config``/``decoder_config``/``loss_config``/``regularizer_config`` are
    ``{target, params}`` configs; ``trainable_*_params`` are lists of regex lists
    selecting parameter groups (with matching ``*_optimizer_args``).
    """

    def __init__(
        self,
        *args: Any,
        encoder_config: Mapping[str, Any],
        decoder_config: Mapping[str, Any],
        loss_config: Mapping[str, Any],
        regularizer_config: Mapping[str, Any],
        optimizer_config: Mapping[str, Any] | None = None,
        lr_g_factor: float = 1.0,
        trainable_ae_params: Sequence[Sequence[str]] | None = None,
        ae_optimizer_args: Sequence[Mapping[str, Any]] | None = None,
        trainable_disc_params: Sequence[Sequence[str]] | None = None,
        disc_optimizer_args: Sequence[Mapping[str, Any]] | None = None,
        disc_start_iter: int = 0,
        diff_boost_factor: float = 3.0,
        ckpt_engine: None | str | Mapping[str, Any] = None,
        ckpt_path: str | None = None,
        additional_decode_keys: Sequence[str] | None = None,
        max_batch_size: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.encoder: nn.Module = instantiate_from_config(encoder_config)
        self.decoder: nn.Module = instantiate_from_config(decoder_config)
        self.loss: nn.Module = instantiate_from_config(loss_config)
        self.regularization: AbstractRegularizer = instantiate_from_config(regularizer_config)
        self.optimizer_config = default(optimizer_config, {"target": "torch.optim.Adam"})
        self.diff_boost_factor = diff_boost_factor
        self.disc_start_iter = disc_start_iter
        self.lr_g_factor = lr_g_factor
        self.max_batch_size = max_batch_size
        self.trainable_ae_params, self.ae_optimizer_args = _param_groups_config(
            trainable_ae_params, ae_optimizer_args, "trainable_ae_params"
        )
        self.trainable_disc_params, self.disc_optimizer_args = _param_groups_config(
            trainable_disc_params, disc_optimizer_args, "trainable_disc_params"
        )
        if ckpt_path is not None and ckpt_engine is not None:
            raise ConfigError("set either ckpt_path or ckpt_engine, not both")
        self.apply_ckpt(default(ckpt_path, ckpt_engine))
        self.additional_decode_keys = set(default(additional_decode_keys, []))

    def get_input(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Images in [-1, 1], channels first, under ``input_key``."""
        return batch[self.input_key]

    def get_last_layer(self) -> torch.Tensor:
        return self.decoder.get_last_layer()

    @property
    def downsampling_factor(self) -> int:
        """Spatial size ratio image/latent (8 for the SD VAEs)."""
        levels = getattr(self.decoder, "num_resolutions", None)
        return 2 ** (levels - 1) if levels else 1

    # -- encoding / decoding ------------------------------------------------------

    def encode_moments(self, x: torch.Tensor) -> torch.Tensor:
        """Unregularized encoder output (e.g. Gaussian moments), chunked by batch."""
        return apply_in_chunks(self.encoder, x, self.max_batch_size)

    def decode_latents(self, z: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Decoder output for latents ``z`` (decoder kwargs such as ``timesteps``)."""
        return apply_in_chunks(lambda c: self.decoder(c, **kwargs), z, self._decode_chunk(kwargs))

    def _decode_chunk(self, kwargs: Mapping[str, Any]) -> int | None:
        # Video decoders mix frames: chunks must hold whole clips of ``timesteps`` frames.
        if self.max_batch_size is None or "timesteps" not in kwargs:
            return self.max_batch_size
        t = int(kwargs["timesteps"])
        return max(t, self.max_batch_size // t * t)

    def encode(
        self,
        x: torch.Tensor,
        return_reg_log: bool = False,
        unregularized: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, dict]:
        z = self.encode_moments(x)
        if unregularized:
            return z, dict()
        z, reg_log = self.regularization(z)
        return (z, reg_log) if return_reg_log else z

    def decode(self, z: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.decode_latents(z, **kwargs)

    def encode_tiled(
        self,
        x: torch.Tensor,
        tile_size: int = 512,
        overlap: int | None = None,
        return_reg_log: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, dict]:
        """``encode`` on overlapping ``tile_size`` pixel tiles, blended before regularizing.

        ``overlap`` (pixels) defaults to a quarter tile. Approximate: see
        ``sgm.models._autoencoder_tiling``.
        """
        f = self.downsampling_factor
        overlap = tile_size // 4 // f * f if overlap is None else overlap
        _check_tiling(x, tile_size, overlap, f)
        z = apply_tiled(self.encode_moments, x, tile_size, overlap, 1 / f, align=f)
        z, reg_log = self.regularization(z)
        return (z, reg_log) if return_reg_log else z

    def decode_tiled(
        self, z: torch.Tensor, tile_size: int = 64, overlap: int | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """``decode`` on overlapping ``tile_size`` latent tiles, blended linearly.

        ``overlap`` (latent pixels) defaults to a quarter tile. Approximate: see
        ``sgm.models._autoencoder_tiling``.
        """
        overlap = tile_size // 4 if overlap is None else overlap
        _check_tiling(z, tile_size, overlap, 1)
        fn = lambda t: self.decode_latents(t, **kwargs)  # noqa: E731
        return apply_tiled(fn, z, tile_size, overlap, self.downsampling_factor)

    def forward(
        self, x: torch.Tensor, **additional_decode_kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """x -> (latent, reconstruction, regularization log)."""
        z, reg_log = self.encode(x, return_reg_log=True)
        dec = self.decode(z, **additional_decode_kwargs)
        return z, dec, reg_log


class AutoencodingEngineLegacy(AutoencodingEngine):
    """Engine built from one ``ddconfig`` with 1x1 ``quant_conv``/``post_quant_conv``."""

    def __init__(self, embed_dim: int, **kwargs: Any):
        ddconfig = kwargs.pop("ddconfig")
        ckpt_path = kwargs.pop("ckpt_path", None)
        ckpt_engine = kwargs.pop("ckpt_engine", None)
        super().__init__(
            encoder_config={
                "target": "sgm.modules.diffusionmodules.model.Encoder",
                "params": ddconfig,
            },
            decoder_config={
                "target": "sgm.modules.diffusionmodules.model.Decoder",
                "params": ddconfig,
            },
            **kwargs,
        )
        moments = 1 + bool(ddconfig["double_z"])
        self.quant_conv = nn.Conv2d(moments * ddconfig["z_channels"], moments * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        self.embed_dim = embed_dim
        if ckpt_path is not None and ckpt_engine is not None:
            raise ConfigError("set either ckpt_path or ckpt_engine, not both")
        self.apply_ckpt(default(ckpt_path, ckpt_engine))

    def encode_moments(self, x: torch.Tensor) -> torch.Tensor:
        return apply_in_chunks(lambda c: self.quant_conv(self.encoder(c)), x, self.max_batch_size)

    def decode_latents(self, z: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        fn = lambda c: self.decoder(self.post_quant_conv(c), **kwargs)  # noqa: E731
        return apply_in_chunks(fn, z, self._decode_chunk(kwargs))


def _rename_lossconfig(kwargs: dict) -> dict:
    if "lossconfig" in kwargs:
        kwargs["loss_config"] = kwargs.pop("lossconfig")
    return kwargs


class AutoencoderKL(AutoencodingEngineLegacy):
    """KL-regularised VAE (SD/SDXL first stage); latents are posterior samples."""

    def __init__(self, **kwargs: Any):
        super().__init__(
            regularizer_config={
                "target": "sgm.modules.autoencoding.regularizers.DiagonalGaussianRegularizer"
            },
            **_rename_lossconfig(kwargs),
        )


class AutoencoderKLModeOnly(AutoencodingEngineLegacy):
    """KL VAE whose latents are the posterior mean (deterministic encoding)."""

    def __init__(self, **kwargs: Any):
        super().__init__(
            regularizer_config={
                "target": "sgm.modules.autoencoding.regularizers.DiagonalGaussianRegularizer",
                "params": {"sample": False},
            },
            **_rename_lossconfig(kwargs),
        )


class AutoencoderLegacyVQ(AutoencodingEngineLegacy):
    """VQ-regularised autoencoder (``n_embed`` codes of size ``embed_dim``)."""

    def __init__(self, embed_dim: int, n_embed: int, sane_index_shape: bool = False, **kwargs: Any):
        super().__init__(
            regularizer_config={
                "target": "sgm.modules.autoencoding.regularizers.quantize.VectorQuantizer",
                "params": {
                    "n_e": n_embed,
                    "e_dim": embed_dim,
                    "sane_index_shape": sane_index_shape,
                },
            },
            embed_dim=embed_dim,
            **_rename_lossconfig(kwargs),
        )


class IdentityFirstStage(AbstractAutoencoder):
    """Pixel-space models: encode and decode are the identity."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)

    def get_input(self, x: Any) -> Any:
        return x

    def encode(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return x

    def decode(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return x


class AEIntegerWrapper(nn.Module):
    """Wraps a VQ autoencoder: images <-> flat codebook indices ``(b, h*w)``."""

    def __init__(
        self,
        model: nn.Module,
        shape: Sequence[int] | None = (16, 16),
        regularization_key: str = "regularization",
        encoder_kwargs: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self.model = model
        if not hasattr(model, regularization_key.split(".")[0]):
            raise ConfigError(f"{type(model).__name__} has no regularizer {regularization_key!r}")
        self.regularization = get_nested_attribute(model, regularization_key)
        self.shape = shape
        self.encoder_kwargs = dict(default(encoder_kwargs, {"return_reg_log": True}))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise RuntimeError(f"{type(self).__name__} supports inference only; call .eval()")
        _, log = self.model.encode(x, **self.encoder_kwargs)
        return rearrange(log["min_encoding_indices"], "b ... -> b (...)")

    def decode(self, inds: torch.Tensor, shape: Sequence[int] | None = None) -> torch.Tensor:
        shape = default(shape, self.shape)
        if shape is not None:
            if len(shape) != 2:
                raise ValueError(f"shape must be (h, w), got {shape!r}")
            inds = rearrange(inds, "b (h w) -> b h w", h=shape[0], w=shape[1])
        h = self.regularization.get_codebook_entry(inds)
        return self.model.decode(rearrange(h, "b h w c -> b c h w"))


def _param_groups_config(names, args, what: str):
    if names is None:
        return None, [{}]
    args = default(args, [{} for _ in range(len(names))])
    if len(args) != len(names):
        raise ConfigError(f"{what}: {len(names)} groups but {len(args)} optimizer_args")
    return names, args


def _check_tiling(x: torch.Tensor, tile_size: int, overlap: int, factor: int) -> None:
    if x.ndim != 4:
        raise ValueError(f"tiling needs (B, C, H, W) input, got shape {tuple(x.shape)}")
    if tile_size % factor or x.shape[-1] % factor or x.shape[-2] % factor:
        raise ValueError(
            f"tile_size {tile_size} and input size {tuple(x.shape[-2:])} must be "
            f"multiples of the downsampling factor {factor}"
        )
    if not 0 <= overlap < tile_size:
        raise ValueError(f"overlap must be in [0, tile_size={tile_size}), got {overlap}")
