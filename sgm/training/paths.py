"""One training run's names and folders, and the exit code of a run stopped by a signal."""

from __future__ import annotations

import argparse
import datetime
import glob
import logging
import os
from dataclasses import dataclass

from ..errors import CheckpointError, ConfigError

logger = logging.getLogger("sgm.main")

# Every process of a run (DDP workers included) reads the run's start time from here.
RUN_ENV = "SGM_RUN_NOW"


@dataclass
class RunPaths:
    """Names and folders of one run."""

    now: str
    nowname: str
    logdir: str
    ckptdir: str
    cfgdir: str
    resume_ckpt: str | None
    base: list[str]


def _run_name(opt: argparse.Namespace, now: str) -> str:
    if opt.name:
        name = "_" + opt.name
    elif opt.base:
        stem = os.path.splitext(os.path.basename(opt.base[0]))[0]
        parent = os.path.dirname(opt.base[0]).split("configs")[-1].strip(os.sep)
        parts = [] if opt.no_base_name else [stem]
        if parent and not opt.legacy_naming and not opt.no_base_name:
            parts = parent.split(os.sep) + parts
        name = "_" + "-".join(parts) if parts else ""
    else:
        name = ""
    name += opt.postfix
    return name.lstrip("_") if opt.no_date else now + name


def resolve_paths(opt: argparse.Namespace) -> RunPaths:
    """Run folder, checkpoint to resume from and configs to merge."""
    now = (
        os.environ.get(RUN_ENV)
        or opt.startup
        or datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    )
    os.environ[RUN_ENV] = now
    base = list(opt.base)
    resume_ckpt = opt.resume_from_checkpoint
    if opt.name and opt.resume:
        raise ConfigError(
            "-n/--name and -r/--resume cannot be given together; to rename a "
            "resumed run, move its folder"
        )
    if opt.resume:
        if os.path.isfile(opt.resume):
            logdir = os.path.dirname(os.path.dirname(os.path.abspath(opt.resume)))
            resume_ckpt = opt.resume
        elif os.path.isdir(opt.resume):
            logdir = opt.resume.rstrip(os.sep)
            resume_ckpt = os.path.join(logdir, "checkpoints", "last.ckpt")
        else:
            raise CheckpointError(
                f"cannot resume: {opt.resume} is neither a run folder nor a checkpoint file"
            )
        if not os.path.isfile(resume_ckpt):
            raise CheckpointError(f"cannot resume: no checkpoint at {resume_ckpt}")
        configs = sorted(glob.glob(os.path.join(logdir, "configs", "*.yaml")))
        if not configs and not base:
            raise ConfigError(
                f"cannot resume {opt.resume}: no configs in "
                f"{os.path.join(logdir, 'configs')}; pass them with --base"
            )
        base = configs + base
        nowname = os.path.basename(logdir)
    else:
        nowname = _run_name(opt, now)
        logdir = os.path.join(opt.logdir, nowname)
    if resume_ckpt:
        from ..checkpoint import check_training_checkpoint

        check_training_checkpoint(resume_ckpt)
    return RunPaths(
        now,
        nowname,
        logdir,
        os.path.join(logdir, "checkpoints"),
        os.path.join(logdir, "configs"),
        resume_ckpt,
        base,
    )


def exit_code_for(signum: int | None) -> int:
    """Exit code after a signal-requested stop: 128 + the signal number."""
    return 128 + int(signum) if signum else 0


def remove_failed_run(logdir: str, existed: bool) -> None:
    """Remove what a failed run created: its whole folder if it was new and holds no
    checkpoint, else only the empty folders inside it."""
    import shutil
    from pathlib import Path

    root = Path(logdir)
    if not root.is_dir():
        return
    if not existed and not any(root.rglob("*.ckpt")):
        shutil.rmtree(root, ignore_errors=True)
        logger.info("Removed %s: the run failed before its first checkpoint", root)
        return
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
