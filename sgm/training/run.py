"""Building the trainer, model and data from the merged config, and running fit/test."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .. import config_trainer as trainer_args
from ..config import instantiate_from_config, load_configs
from ..config_overrides import KNOWN_SECTIONS
from ..devices import accelerator_type
from ..errors import ConfigError
from ..values import check_learning_rate
from .paths import RunPaths, exit_code_for, remove_failed_run, resolve_paths

logger = logging.getLogger("sgm.main")

MAIN_PREFIX = "main."
CALLBACKS_MODULE = "sgm.training.callbacks."
SETUP_CALLBACK = "setup_callback"


def _localize_targets(node: Any) -> Any:
    """Targets ``main.X`` resolve to ``sgm.training.callbacks.X`` (no import of main.py)."""
    if isinstance(node, DictConfig):
        target = node.get("target")
        if isinstance(target, str) and target.startswith(MAIN_PREFIX):
            node.target = CALLBACKS_MODULE + target[len(MAIN_PREFIX) :]
        for key in node:
            _localize_targets(node[key])
    return node


def _gpu_available() -> bool:
    return accelerator_type() is not None


def trainer_settings(lightning_config: DictConfig, opt: argparse.Namespace) -> dict:
    """``lightning.trainer`` plus ``--<trainer arg>`` flags, checked and made valid for
    this machine."""
    trainer = OmegaConf.to_container(lightning_config.get("trainer") or {}, resolve=True)
    if not isinstance(trainer, dict):
        raise ConfigError(f"lightning.trainer must be a mapping, got {trainer!r}")
    for key, value in trainer.items():
        if key in trainer_args.RESERVED:
            raise ConfigError(f"lightning.trainer.{key}: set it as lightning.{key} instead")
        try:
            trainer_args.check_value(key, value)
        except ValueError as error:
            raise ConfigError(f"lightning.trainer.{key}={value!r}: {error}") from None
    for key, value in vars(opt).items():
        if key.startswith("trainer__"):
            trainer[key[len("trainer__") :]] = value
    trainer.setdefault("accelerator", "auto")
    if not trainer_args.accelerator_available(trainer["accelerator"]):
        raise ConfigError(
            f"lightning.trainer.accelerator={trainer['accelerator']!r}: this "
            "machine has no such device (use cpu or auto)"
        )
    devices = trainer.get("devices")
    on_cpu = trainer["accelerator"] == "cpu" or (
        trainer["accelerator"] == "auto" and not _gpu_available()
    )
    if on_cpu and isinstance(devices, str):
        count = len([d for d in devices.split(",") if d.strip()]) or 1
        logger.info("No GPU: devices=%r (GPU ids) becomes %d CPU process(es).", devices, count)
        trainer["devices"] = count
        trainer["accelerator"] = "cpu"
    if devices is None:
        trainer["devices"] = 1 if on_cpu else "auto"
    if on_cpu:
        trainer.pop("benchmark", None)
    return trainer


def _world_size(trainer: dict) -> int:
    devices = trainer.get("devices", 1)
    if isinstance(devices, (list, tuple)):
        count = len(devices)
    elif isinstance(devices, str):
        count = len([d for d in devices.split(",") if d.strip()]) if devices != "auto" else 1
    else:
        count = int(devices) if int(devices) > 0 else 1
    return count * int(trainer.get("num_nodes", 1))


def _logger_config(opt: argparse.Namespace, paths: RunPaths, lightning_config: DictConfig):
    if opt.wandb:
        default = {
            "target": "pytorch_lightning.loggers.WandbLogger",
            "params": {
                "name": paths.nowname,
                "save_dir": paths.logdir,
                "project": opt.projectname,
                "offline": opt.debug,
                "id": paths.nowname,
            },
        }
    else:
        default = {
            "target": "pytorch_lightning.loggers.CSVLogger",
            "params": {"name": "testtube", "save_dir": paths.logdir},
        }
    custom = lightning_config.get("logger")
    if custom is False:
        return None
    if custom and "target" in custom and custom.target != default["target"]:
        default["params"] = {"save_dir": paths.logdir}
    return OmegaConf.merge(default, custom or {})


def callback_configs(
    opt: argparse.Namespace, paths: RunPaths, lightning_config: DictConfig, has_logger: bool
) -> DictConfig:
    """Default callbacks (setup, images, LR monitor, checkpoints) merged with the config's.

    The setup callback's ``config`` and ``lightning_config`` are not among its params:
    :func:`build_callbacks` hands them over as they are."""
    ckpt = {
        "target": "pytorch_lightning.callbacks.ModelCheckpoint",
        "params": {
            "dirpath": paths.ckptdir,
            "filename": "{epoch:06}",
            "verbose": True,
            "save_last": True,
            "enable_version_counter": False,
        },
    }
    ckpt = OmegaConf.merge(ckpt, lightning_config.get("modelcheckpoint") or {})
    defaults = {
        SETUP_CALLBACK: {
            "target": "sgm.training.callbacks.SetupCallback",
            "params": {
                "resume": opt.resume,
                "now": paths.now,
                "logdir": paths.logdir,
                "ckptdir": paths.ckptdir,
                "cfgdir": paths.cfgdir,
                "debug": opt.debug,
            },
        },
        "image_logger": {
            "target": "sgm.training.callbacks.ImageLogger",
            "params": {"batch_frequency": 1000, "max_images": 4, "clamp": True},
        },
        "checkpoint_callback": ckpt,
        "signal_checkpoint": {
            "target": "sgm.training.callbacks.SignalCheckpoint",
            "params": {"ckptdir": paths.ckptdir},
        },
    }
    if has_logger:
        defaults["learning_rate_logger"] = {
            "target": "pytorch_lightning.callbacks.LearningRateMonitor",
            "params": {"logging_interval": "step"},
        }
    custom = lightning_config.get("callbacks") or OmegaConf.create()
    if "metrics_over_trainsteps_checkpoint" in custom:
        defaults["metrics_over_trainsteps_checkpoint"] = {
            "target": "pytorch_lightning.callbacks.ModelCheckpoint",
            "params": {
                "dirpath": os.path.join(paths.ckptdir, "trainstep_checkpoints"),
                "filename": "{epoch:06}-{step:09}",
                "verbose": True,
                "save_top_k": -1,
                "every_n_train_steps": 10000,
                "save_weights_only": True,
            },
        }
    return _localize_targets(OmegaConf.merge(defaults, custom))


def build_callbacks(
    callbacks_cfg: DictConfig, config: DictConfig, lightning_config: DictConfig
) -> list:
    """The callbacks of ``callbacks_cfg``; the setup callback gets the run's configs as
    DictConfigs (it saves them with their interpolations)."""
    setup = {"config": config, "lightning_config": lightning_config}
    return [
        instantiate_from_config(
            callbacks_cfg[k],
            key=f"lightning.callbacks.{k}",
            extra=setup if k == SETUP_CALLBACK else None,
        )
        for k in callbacks_cfg
    ]


def _configured_strategy(lightning_config: DictConfig) -> Any:
    """``lightning.strategy`` (a name, or built from its config), else None."""
    strategy = lightning_config.get("strategy")
    if strategy is None or isinstance(strategy, str):
        return strategy
    return instantiate_from_config(strategy, key="lightning.strategy")


def _strategy(configured: Any, trainer: dict) -> Any:
    if configured is not None:
        return configured
    if "strategy" in trainer:
        return trainer.pop("strategy")
    if _world_size(trainer) > 1:
        from pytorch_lightning.strategies import DDPStrategy

        return DDPStrategy(find_unused_parameters=False)
    return "auto"


def set_learning_rate(model: Any, config: DictConfig, trainer: dict, scale: bool) -> None:
    """``model.learning_rate`` from ``model.base_learning_rate`` (scaled if asked)."""
    base_lr = config.model.get("base_learning_rate")
    if base_lr is None:
        if getattr(model, "learning_rate", None) is None:
            raise ConfigError("set model.base_learning_rate (or model.params.learning_rate)")
        return
    data_params = config.get("data", {}).get("params", {}) or {}
    batch_size = (
        data_params.get("batch_size")
        or ((data_params.get("train") or {}).get("loader", {}).get("batch_size"))
        or 1
    )
    accumulate = int(trainer.get("accumulate_grad_batches") or 1)
    world = _world_size(trainer)
    if scale:
        model.learning_rate = accumulate * world * batch_size * float(base_lr)
        logger.info(
            "learning rate %.2e = %d (accumulate) * %d (devices x nodes) * %d "
            "(batch size) * %.2e (base)",
            model.learning_rate,
            accumulate,
            world,
            batch_size,
            base_lr,
        )
    else:
        model.learning_rate = float(base_lr)
        logger.info("learning rate %.2e (base_learning_rate, not scaled)", model.learning_rate)


def _has_test_step(model: Any) -> bool:
    import pytorch_lightning as pl

    return type(model).test_step is not pl.LightningModule.test_step


@dataclass
class Run:
    """Everything ``main.py`` builds before fitting."""

    trainer: Any
    model: Any
    data: Any
    paths: RunPaths
    callbacks: list
    config: DictConfig


def build(opt: argparse.Namespace, overrides: list[str]) -> Run:
    """Merge the configs and build model, data, callbacks and trainer."""
    paths = resolve_paths(opt)
    if not paths.base:
        raise ConfigError("no config given: pass --base config.yaml (or --resume a run)")
    config = load_configs(paths.base, overrides, sections=KNOWN_SECTIONS)
    check_learning_rate(config)
    from ..checkpoint import check_config_checkpoints

    check_config_checkpoints(config.get("model"), "model")  # whole, and no code, first
    lightning_config = config.pop("lightning", OmegaConf.create())
    for key in ("model",) + (("data",) if opt.train else ()):
        if key not in config:
            raise ConfigError(f"the merged config has no {key!r} section")
    # The data first: its checks (shard patterns, unreadable shards) are cheap, and a bad
    # data config then stops the run before anything else is set up or built.
    data = instantiate_from_config(config.data, key="data") if "data" in config else None
    # A strategy that cannot run here (DeepSpeed without CUDA) says so before anything else.
    configured = _configured_strategy(lightning_config)
    trainer_cfg = trainer_settings(lightning_config, opt)
    lightning_config.trainer = trainer_cfg

    import pytorch_lightning as pl
    import torch
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    if opt.enable_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    strategy = _strategy(configured, trainer_cfg)
    pl.seed_everything(opt.seed, workers=True)
    model = instantiate_from_config(config.model, key="model")
    logger_cfg = _logger_config(opt, paths, lightning_config)
    run_logger = False
    if logger_cfg is not None:
        run_logger = instantiate_from_config(logger_cfg, key="lightning.logger")
    callbacks_cfg = callback_configs(opt, paths, lightning_config, bool(run_logger))
    callbacks = build_callbacks(callbacks_cfg, config, lightning_config)
    if trainer_cfg.get("enable_progress_bar", True) is not False:
        from pytorch_lightning.callbacks.progress import ProgressBar

        from .callbacks import progress_bar

        bar = progress_bar()
        if bar is not None and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.append(bar)
    try:
        trainer = pl.Trainer(
            **trainer_cfg, logger=run_logger, callbacks=callbacks, strategy=strategy
        )
    except (TypeError, ValueError, MisconfigurationException) as error:
        raise ConfigError(f"lightning.trainer: {error}") from None
    trainer.logdir = paths.logdir
    set_learning_rate(model, config, trainer_cfg, opt.scale_lr)
    return Run(trainer, model, data, paths, callbacks, config)


def run(opt: argparse.Namespace, overrides: list[str]) -> int:
    """Check and build everything, fit (and test if the model has a ``test_step``); the
    exit code. A run that fails before its first checkpoint leaves no run folder behind."""
    return fit_or_clean_up(opt, build(opt, overrides))


def fit_or_clean_up(opt: argparse.Namespace, built: Run) -> int:
    """``fit_and_test``; if it fails, ``remove_failed_run`` (on the main process)."""
    existed = os.path.exists(built.paths.logdir)
    code = 1
    try:
        code = fit_and_test(opt, built)
        return code
    finally:
        if code != 0 and built.trainer.is_global_zero:
            remove_failed_run(built.paths.logdir, existed)


def fit_and_test(opt: argparse.Namespace, built: Run) -> int:
    """Fit, handling signal-requested stops, then test; returns the exit code."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    trainer, model, data, paths = built.trainer, built.model, built.data, built.paths
    callbacks = built.callbacks

    from .callbacks import SignalCheckpoint

    signal_cb = next((c for c in callbacks if isinstance(c, SignalCheckpoint)), None)
    if opt.train:
        try:
            # Resuming reads the checkpoint as tensors and plain containers only.
            with _frozen_parts_expected(model):
                trainer.fit(model, data, ckpt_path=paths.resume_ckpt, weights_only=True)
        except SIGTERMException:
            signum = signal_cb.received if signal_cb else None
            _report_stop(trainer, signum, paths)
            return exit_code_for(signum or 15)
        if signal_cb is not None and signal_cb.received is not None:
            _report_stop(trainer, signal_cb.received, paths)
            return exit_code_for(signal_cb.received)
        if trainer.received_sigterm:  # arrived after the last step: the run is whole
            _report_stop(trainer, int(signal.SIGTERM), paths)
            return exit_code_for(int(signal.SIGTERM))
    if not opt.no_test and not trainer.interrupted and _has_test_step(model):
        trainer.test(model, data)
    return 0


@contextlib.contextmanager
def _frozen_parts_expected(model: Any) -> Iterator[None]:
    """Lightning warns about modules in eval mode when training starts; frozen parts (a
    first stage, frozen embedders) are so by design: quiet while every such module has
    no trainable parameter."""
    with warnings.catch_warnings():
        modules = [m for m in model.modules() if not m.training]
        if all(not p.requires_grad for m in modules for p in m.parameters()):
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        yield


def _report_stop(trainer: Any, signum: int | None, paths: RunPaths) -> None:
    if trainer.is_global_zero:
        logger.warning(
            "Stopped by signal %s at step %d; checkpoint in %s; continue with "
            "python main.py --resume %s",
            signum,
            trainer.global_step,
            paths.ckptdir,
            paths.logdir,
        )
