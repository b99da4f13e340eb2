"""``DiffusionEngine``: a latent (or pixel) diffusion model as a LightningModule."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import pytorch_lightning as pl
import torch

from .. import offload, precision
from ..checkpoint import LoadReport, load_state_dict, load_state_dict_into
from ..errors import ConfigError
from ..modules import UNCONDITIONAL_CONFIG
from ..modules.ema import LitEma
from ..util import (
    default,
    disabled_train,
    get_obj_from_str,
    instantiate_from_config,
    log_txt_as_img,
)
from ._ema_scope import ema_weights
from ._optimizer import instantiate_optimizer
from ._trainable import CHECKPOINT_KEY, apply_trainable, trained_record
from .engine_run import EngineRun

logger = logging.getLogger(__name__)

OPENAIUNETWRAPPER = "sgm.modules.diffusionmodules.wrappers.OpenAIWrapper"
DEFAULT_OPTIMIZER = {"target": "torch.optim.AdamW"}


class DiffusionEngine(pl.LightningModule):
    """Denoising diffusion model: network, denoiser, conditioner, first stage, loss, sampler.

    ``learning_rate`` is the optimizer's base rate; ``main.py`` sets it from
    ``model.base_learning_rate`` (scaled with ``--scale_lr``), and it may also be given
    here directly. Released checkpoints that hold ``model_ema.*`` keys load into a model
    built with ``use_ema=False``: those keys are dropped with a log line.
    """

    def __init__(
        self,
        network_config: Mapping,
        denoiser_config: Mapping,
        first_stage_config: Mapping,
        conditioner_config: Mapping | None = None,
        sampler_config: Mapping | None = None,
        optimizer_config: Mapping | None = None,
        scheduler_config: Mapping | None = None,
        loss_fn_config: Mapping | None = None,
        network_wrapper: str | None = None,
        ckpt_path: str | None = None,
        use_ema: bool = False,
        ema_decay_rate: float = 0.9999,
        scale_factor: float = 1.0,
        disable_first_stage_autocast: bool = False,
        input_key: str = "jpg",
        log_keys: list | None = None,
        no_cond_log: bool = False,
        compile_model: bool = False,
        en_and_decode_n_samples_a_time: int | None = None,
        learning_rate: float | None = None,
        lora_config: Mapping | None = None,
        trainable: Sequence[str] | str | None = None,
    ):
        super().__init__()
        self.log_keys = list(log_keys) if log_keys is not None else None
        self.input_key = input_key
        self.optimizer_config = default(optimizer_config, DEFAULT_OPTIMIZER)
        network = instantiate_from_config(network_config)
        wrapper = get_obj_from_str(default(network_wrapper, OPENAIUNETWRAPPER))
        self.model = wrapper(network, compile_model=compile_model)
        self.denoiser = instantiate_from_config(denoiser_config)
        self.sampler = (
            instantiate_from_config(sampler_config) if sampler_config is not None else None
        )
        self.conditioner = instantiate_from_config(
            default(conditioner_config, UNCONDITIONAL_CONFIG)
        )
        self.scheduler_config = scheduler_config
        self._init_first_stage(first_stage_config)
        self.loss_fn = (
            instantiate_from_config(loss_fn_config) if loss_fn_config is not None else None
        )
        self.use_ema = bool(use_ema)
        if self.use_ema:
            self.model_ema = LitEma(self.model, decay=ema_decay_rate)
            logger.info("Keeping EMAs of %d parameters.", len(self.model_ema.m_name2s_name))
        self.scale_factor = scale_factor
        self.disable_first_stage_autocast = disable_first_stage_autocast
        self.no_cond_log = no_cond_log
        self.en_and_decode_n_samples_a_time = en_and_decode_n_samples_a_time
        # compute precision chosen by a sampling pipeline (sgm.precision); None: auto
        self.compute_dtype: torch.dtype | None = None
        if learning_rate is not None:
            self.learning_rate = float(learning_rate)
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path)
        self.lora_config = lora_config
        if self.lora_config is not None:  # after the base weights: only the adapter trains
            from ..lora.training import attach_lora

            attach_lora(self, self.lora_config)
        self.trainable = apply_trainable(self, trainable)  # name patterns; None: default

    def _init_first_stage(self, config: Mapping) -> None:
        model = instantiate_from_config(config).eval()
        model.train = disabled_train.__get__(model)
        for param in model.parameters():
            param.requires_grad = False
        self.first_stage_model = model

    def init_from_ckpt(self, path: str, strict: bool = True) -> LoadReport:
        """Load a ``.ckpt``/``.safetensors`` file strictly.

        Without EMA, a checkpoint's ``model_ema.*`` keys are dropped. With EMA and a
        checkpoint that has none, the EMA starts from the checkpoint's weights.
        """
        state_dict = load_state_dict(path)
        if self.use_ema and not any(k.startswith("model_ema.") for k in state_dict):
            state_dict.update(self._ema_from(state_dict))
            logger.info("%s has no EMA weights; the EMA starts from its weights", path)
        ignore = () if self.use_ema else ("model_ema.",)
        report = load_state_dict_into(
            self, state_dict, strict=strict, ignore_unexpected=ignore, source=str(path)
        )
        logger.info("Restored from %s%s", path, "" if report.ok else ":\n" + report.summary())
        return report

    def _ema_from(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ema = {
            f"model_ema.{k}": v
            for k, v in self.model_ema.state_dict().items()
            if k in ("decay", "num_updates")
        }
        for name, shadow in self.model_ema.m_name2s_name.items():
            if f"model.{name}" in state_dict:
                ema[f"model_ema.{shadow}"] = state_dict[f"model.{name}"]
        return ema

    # ------------------------------------------------------------------ first stage

    def get_input(self, batch: Mapping) -> torch.Tensor:
        """The images of ``batch`` (``batch[input_key]``, in [-1, 1], channels first)."""
        if self.input_key not in batch:
            raise ConfigError(
                f"batch has no key {self.input_key!r} (model input_key); it has {sorted(batch)}"
            )
        return batch[self.input_key]

    def _first_stage_autocast(self, x: torch.Tensor):
        """float32 with ``disable_first_stage_autocast`` (whatever the caller opened),
        else the accelerator's autocast (none on CPU)."""
        if self.disable_first_stage_autocast:
            return precision.float32(x)
        return precision.accelerator_autocast(x)

    def _first_stage_input(self, x: torch.Tensor) -> torch.Tensor:
        if not self.disable_first_stage_autocast:
            return x
        for param in self.first_stage_model.parameters():
            return x.to(param.dtype) if param.is_floating_point() else x
        return precision.to_float32(x)

    def _chunks(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        n = default(self.en_and_decode_n_samples_a_time, x.shape[0]) or max(x.shape[0], 1)
        for i in range(math.ceil(x.shape[0] / n)):
            yield x[i * n : (i + 1) * n]

    @torch.no_grad()
    def decode_first_stage(self, z: torch.Tensor) -> torch.Tensor:
        """Decode latents (divided by ``scale_factor`` first), in chunks."""
        z = self._first_stage_input(z) / self.scale_factor
        video = _is_video_decoder(getattr(self.first_stage_model, "decoder", None))
        outs = []
        with self._first_stage_autocast(z), offload.using(self.first_stage_model):
            for chunk in self._chunks(z):
                kwargs = {"timesteps": len(chunk)} if video else {}
                outs.append(self.first_stage_model.decode(chunk, **kwargs))
        return torch.cat(outs, dim=0)

    @torch.no_grad()
    def encode_first_stage(self, x: torch.Tensor) -> torch.Tensor:
        """Encode images to latents (multiplied by ``scale_factor``), in chunks."""
        x = self._first_stage_input(x)
        with self._first_stage_autocast(x), offload.using(self.first_stage_model):
            outs = [self.first_stage_model.encode(chunk) for chunk in self._chunks(x)]
        return self.scale_factor * torch.cat(outs, dim=0)

    # ------------------------------------------------------------------ training

    def forward(self, x: torch.Tensor, batch: Mapping) -> tuple[torch.Tensor, dict]:
        """Mean diffusion loss on latents ``x`` with conditioning from ``batch``."""
        loss = self.loss_fn(self.model, self.denoiser, self.conditioner, x, batch)
        loss_mean = loss.mean()
        return loss_mean, {"loss": loss_mean}

    def shared_step(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """Encode the batch's images and compute the loss."""
        x = self.encode_first_stage(self.get_input(batch))
        batch["global_step"] = self.global_step
        return self(x, batch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, loss_dict = self.shared_step(batch)
        self.log_dict(loss_dict, prog_bar=True, logger=True, on_step=True, on_epoch=False)
        self.log(
            "global_step",
            float(self.global_step),
            prog_bar=True,
            logger=True,
            on_step=True,
            on_epoch=False,
        )
        if self.scheduler_config is not None:
            lr = self.optimizers().param_groups[0]["lr"]
            self.log("lr_abs", lr, prog_bar=True, logger=True, on_step=True, on_epoch=False)
        return loss

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = trained_record(self, self.trainable)
        if self.lora_config is not None:
            from ..lora.training import adapter_only

            adapter_only(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.lora_config is not None:
            from ..lora.training import check_adapter_checkpoint

            check_adapter_checkpoint(self, checkpoint)

    def on_train_start(self, *args: Any, **kwargs: Any) -> None:
        if self.sampler is None or self.loss_fn is None:
            raise ConfigError(
                "training needs model.params.sampler_config and model.params.loss_fn_config"
            )

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        if self.use_ema:
            self.model_ema(self.model)

    def ema_scope(self, context: str | None = None) -> AbstractContextManager[None]:
        """Run the block with the EMA weights in ``self.model`` (no-op without EMA)."""
        return ema_weights(self.model_ema if self.use_ema else None, self.model, context)

    def instantiate_optimizer_from_config(
        self, params: Any, lr: float, cfg: Mapping
    ) -> torch.optim.Optimizer:
        """``target(params, lr=lr, **params)`` from an optimizer config (``params`` may be
        missing or null)."""
        return instantiate_optimizer(params, lr, cfg)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The network's parameters plus those of trainable embedders (with
        ``lora_config``: the adapter's only; with ``trainable``: the selected ones)."""
        if self.lora_config is not None or getattr(self, "trainable", None) is not None:
            return [p for p in self.parameters() if p.requires_grad]
        params = list(self.model.parameters())
        for embedder in getattr(self.conditioner, "embedders", []):
            if getattr(embedder, "is_trainable", False):
                params += list(embedder.parameters())
        return params

    def configure_optimizers(self) -> Any:
        lr = getattr(self, "learning_rate", None)
        if lr is None:
            raise ConfigError(
                "no learning rate: set model.base_learning_rate (main.py) or "
                "model.params.learning_rate"
            )
        opt = self.instantiate_optimizer_from_config(
            self.trainable_parameters(), lr, self.optimizer_config
        )
        getattr(opt, "check_trainer", lambda trainer: None)(self._trainer)  # fused step
        if self.scheduler_config is None:
            return opt
        scheduler = instantiate_from_config(self.scheduler_config, key="scheduler_config")
        logger.info("Setting up LambdaLR scheduler (per step).")
        lambda_lr = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=scheduler.schedule)
        return [opt], [{"scheduler": lambda_lr, "interval": "step", "frequency": 1}]

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sample(
        self,
        cond: dict,
        uc: dict | None = None,
        batch_size: int = 16,
        shape: tuple | list | None = None,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Draw ``batch_size`` latents of ``shape`` with the configured sampler."""
        if self.sampler is None:
            raise ConfigError("sampling needs model.params.sampler_config")
        if shape is None:
            raise ValueError("sample() needs the latent shape (C, H, W)")
        randn = torch.randn(batch_size, *shape, generator=generator, device=self.device)
        run = EngineRun(self, self.device)  # the caller's block decides autocast and EMA
        return run.sample(
            self.sampler, randn, cond, uc, denoiser=run.denoiser(**kwargs), generator=generator
        )

    @torch.no_grad()
    def log_conditionings(self, batch: Mapping, n: int) -> dict:
        """Images showing the conditioning values of the first ``n`` batch entries."""
        image_h, image_w = batch[self.input_key].shape[-2:]
        log = {}
        for embedder in getattr(self.conditioner, "embedders", []):
            key = embedder.input_key
            if self.no_cond_log or (self.log_keys is not None and key not in self.log_keys):
                continue
            if key is None or key not in batch:
                continue
            log[key] = _conditioning_image(batch[key][:n], key, image_h, image_w)
        return log

    @torch.no_grad()
    def log_images(
        self,
        batch: dict,
        N: int = 8,
        sample: bool = True,
        ucg_keys: list[str] | None = None,
        **kwargs: Any,
    ) -> dict:
        """``inputs``, ``reconstructions``, conditioning images and (EMA) ``samples``."""
        embedders = list(getattr(self.conditioner, "embedders", []))
        input_keys = [e.input_key for e in embedders]
        if ucg_keys:
            unknown = [k for k in ucg_keys if k not in input_keys]
            if unknown:
                raise ConfigError(f"ucg_keys {unknown} are not conditioner input keys {input_keys}")
        else:
            ucg_keys = input_keys
        x = self.get_input(batch)
        N = min(x.shape[0], N)
        run = EngineRun(self, self.device)
        c, uc = run.condition(
            batch, force_uc_zero=ucg_keys if embedders else [], num=N, per_sample_except=()
        )
        x = x.to(self.device)[:N]
        log = {"inputs": x}
        z = run.encode(x)
        log["reconstructions"] = run.decode(z)
        log.update(self.log_conditionings(batch, N))
        if sample:
            with self.ema_scope("Plotting"):
                samples = self.sample(c, shape=z.shape[1:], uc=uc, batch_size=N)
            log["samples"] = run.decode(samples)
        return log


def _is_video_decoder(decoder: Any) -> bool:
    module = sys.modules.get("sgm.modules.autoencoding.temporal_ae")
    cls = getattr(module, "VideoDecoder", None)
    return cls is not None and isinstance(decoder, cls)


def _conditioning_image(x: Any, key: str, image_h: int, image_w: int) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        if x.dim() == 1:
            text = [str(v.item()) for v in x]
            return log_txt_as_img((image_w, image_h), text, size=max(image_h // 4, 4))
        if x.dim() == 2:
            text = ["x".join(str(v) for v in row.tolist()) for row in x]
            return log_txt_as_img((image_w, image_h), text, size=max(image_h // 20, 4))
    elif isinstance(x, Sequence) and not isinstance(x, str) and x and isinstance(x[0], str):
        return log_txt_as_img((image_w, image_h), list(x), size=max(image_h // 20, 4))
    raise ConfigError(
        f"cannot render conditioning {key!r} of type {type(x).__name__} as an "
        "image; add it to model.params.log_keys exclusions or set no_cond_log"
    )
