"""Training logic of ``AutoencodingEngine``: two optimizers, manual optimisation, logging."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..errors import ConfigError
from ..util import default

logger = logging.getLogger(__name__)


class AutoencoderTrainingMixin:
    """Training/validation steps and optimizers for an encoder/decoder/loss engine.

    Optimizer 0 updates the autoencoder (plus trainable loss/regularizer parameters),
    optimizer 1 the discriminator; steps alternate by ``batch_idx`` once
    ``global_step >= disc_start_iter`` and use optimizer 0 only before that.
    """

    def get_autoencoder_params(self) -> list[torch.nn.Parameter]:
        params = []
        if hasattr(self.loss, "get_trainable_autoencoder_parameters"):
            params += list(self.loss.get_trainable_autoencoder_parameters())
        if hasattr(self.regularization, "get_trainable_parameters"):
            params += list(self.regularization.get_trainable_parameters())
        return params + list(self.encoder.parameters()) + list(self.decoder.parameters())

    def get_discriminator_params(self) -> list[torch.nn.Parameter]:
        if hasattr(self.loss, "get_trainable_parameters"):
            return list(self.loss.get_trainable_parameters())
        return []

    def _loss_kwargs(self, z, optimizer_idx: int, split: str, reg_log: dict) -> dict:
        if not hasattr(self.loss, "forward_keys"):
            return dict()
        extra = {
            "z": z,
            "optimizer_idx": optimizer_idx,
            "global_step": self.global_step,
            "last_layer": self.get_last_layer(),
            "split": split,
            "regularization_log": reg_log,
            "autoencoder": self,
        }
        return {k: extra[k] for k in self.loss.forward_keys}

    def _decode_kwargs(self, batch: Mapping[str, Any]) -> dict:
        return {key: batch[key] for key in self.additional_decode_keys.intersection(batch)}

    def inner_training_step(
        self, batch: Mapping[str, Any], batch_idx: int, optimizer_idx: int = 0
    ) -> torch.Tensor:
        x = self.get_input(batch)
        z, xrec, reg_log = self(x, **self._decode_kwargs(batch))
        extra = self._loss_kwargs(z, optimizer_idx, "train", reg_log)
        if optimizer_idx == 0:
            out = self.loss(x, xrec, **extra)
            if isinstance(out, tuple):
                aeloss, log_dict = out
            else:
                aeloss, log_dict = out, {"train/loss/rec": out.detach()}
            self.log_dict(log_dict, prog_bar=False, logger=True, on_step=True, on_epoch=True)
            self.log(
                "loss",
                aeloss.mean().detach(),
                prog_bar=True,
                logger=False,
                on_epoch=False,
                on_step=True,
            )
            return aeloss
        if optimizer_idx == 1:
            discloss, log_dict = self.loss(x, xrec, **extra)
            self.log_dict(log_dict, prog_bar=False, logger=True, on_step=True, on_epoch=True)
            return discloss
        raise ValueError(f"unknown optimizer_idx {optimizer_idx}; expected 0 or 1")

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        opts = self.optimizers()
        if not isinstance(opts, list):
            opts = [opts]
        optimizer_idx = batch_idx % len(opts)
        if self.global_step < self.disc_start_iter:
            optimizer_idx = 0
        opt = opts[optimizer_idx]
        opt.zero_grad()
        with opt.toggle_model():
            loss = self.inner_training_step(batch, batch_idx, optimizer_idx=optimizer_idx)
            self.manual_backward(loss)
        opt.step()

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict:
        log_dict = self._validation_step(batch, batch_idx)
        with self.ema_scope():
            log_dict.update(self._validation_step(batch, batch_idx, postfix="_ema"))
        return log_dict

    def _validation_step(self, batch: Mapping[str, Any], batch_idx: int, postfix: str = "") -> dict:
        x = self.get_input(batch)
        z, xrec, reg_log = self(x)
        extra = self._loss_kwargs(z, 0, "val" + postfix, reg_log)
        out = self.loss(x, xrec, **extra)
        if isinstance(out, tuple):
            _, log_dict = out
        else:
            log_dict = {f"val{postfix}/loss/rec": out.detach()}
        if "optimizer_idx" in extra:
            extra["optimizer_idx"] = 1
            log_dict.update(self.loss(x, xrec, **extra)[1])
        self.log(f"val{postfix}/loss/rec", log_dict[f"val{postfix}/loss/rec"], sync_dist=True)
        self.log_dict(log_dict, sync_dist=True)
        return log_dict

    def get_param_groups(
        self, parameter_names: Sequence[Sequence[str]], optimizer_args: Sequence[Mapping]
    ) -> tuple[list[dict], int]:
        """Parameter groups whose names match each list of regexes (``re.match``)."""
        groups, num_params = [], 0
        named = list(self.named_parameters())
        for names, args in zip(parameter_names, optimizer_args):
            params = []
            for pattern in names:
                matched = [p for n, p in named if re.match(pattern, n)]
                if not matched:
                    logger.warning("Did not find parameters for pattern %s", pattern)
                num_params += sum(p.numel() for p in matched)
                params.extend(matched)
            groups.append({"params": params, **dict(args)})
        return groups, num_params

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        lr = getattr(self, "learning_rate", None)
        if lr is None:
            raise ConfigError(
                f"{type(self).__name__}.learning_rate is not set (main.py sets it from "
                "model.base_learning_rate)"
            )
        if self.trainable_ae_params is None:
            ae_params = self.get_autoencoder_params()
        else:
            ae_params, n = self.get_param_groups(self.trainable_ae_params, self.ae_optimizer_args)
            logger.info("Number of trainable autoencoder parameters: %s", f"{n:,}")
        if self.trainable_disc_params is None:
            disc_params = self.get_discriminator_params()
        else:
            disc_params, n = self.get_param_groups(
                self.trainable_disc_params, self.disc_optimizer_args
            )
            logger.info("Number of trainable discriminator parameters: %s", f"{n:,}")
        opts = [
            self.instantiate_optimizer_from_config(
                ae_params, default(self.lr_g_factor, 1.0) * lr, self.optimizer_config
            )
        ]
        if len(disc_params) > 0:
            opts.append(
                self.instantiate_optimizer_from_config(disc_params, lr, self.optimizer_config)
            )
        return opts

    def _diff_images(self, x: torch.Tensor, xrec: torch.Tensor, suffix: str = "") -> dict:
        diff = (0.5 * torch.abs(torch.clamp(xrec, -1.0, 1.0) - x)).clamp(0, 1.0)
        return {
            f"diff{suffix}": 2.0 * diff - 1.0,
            # Boosting small errors makes their location visible.
            f"diff_boost{suffix}": 2.0 * torch.clamp(self.diff_boost_factor * diff, 0.0, 1.0) - 1,
        }

    @torch.no_grad()
    def log_images(
        self, batch: Mapping[str, Any], additional_log_kwargs: Mapping | None = None, **kwargs: Any
    ) -> dict:
        """Inputs, reconstructions (raw and EMA), their differences and loss visuals."""
        x = self.get_input(batch)
        decode_kwargs = self._decode_kwargs(batch)
        _, xrec, _ = self(x, **decode_kwargs)
        log = {"inputs": x, "reconstructions": xrec, **self._diff_images(x, xrec)}
        if hasattr(self.loss, "log_images"):
            log.update(self.loss.log_images(x, xrec))
        with self.ema_scope():
            _, xrec_ema, _ = self(x, **decode_kwargs)
            log["reconstructions_ema"] = xrec_ema
            log.update(self._diff_images(x, xrec_ema, "_ema"))
        if additional_log_kwargs:
            decode_kwargs.update(additional_log_kwargs)
            _, xrec_add, _ = self(x, **decode_kwargs)
            name = "-".join(f"{k}={v}" for k, v in additional_log_kwargs.items())
            log[f"reconstructions-{name}"] = xrec_add
        return log
