"""What the sampling command lines share to run many items on many processes: the flags
(``--cfg_parallel``, ``--output_format``, ``--shard_size``, ``--overwrite``) and the run
itself (``sgm.inference.data_parallel``) on the launcher's world.

The same command runs unchanged alone or under ``torchrun --nproc_per_node N`` /
``torchrun --nnodes`` / ``srun``: each process takes the device of its ``LOCAL_RANK``,
makes its share of the items and writes them beside a manifest, so running the command
again makes only what is missing.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..cli import MAX_SEED, positive_int
from ..errors import InputError, SgmError
from ..inference.distributed import World, launcher_world, process_group, rank_device
from ..inference.work_items import WorkItem

logger = logging.getLogger(__name__)

SCALE_FLAGS = ("cfg_parallel", "output_format", "shard_size", "overwrite")

Load = Callable[[Any, Callable[[Any], Any] | None], Callable[[WorkItem], Any]]


def add_scale_args(parser: argparse.ArgumentParser, media: str) -> None:
    """The flags of a run at scale; ``media``: the file format of one output (png, mp4)."""
    group = parser.add_argument_group(
        "many items on many processes (start with torchrun --nproc_per_node N, or srun)"
    )
    group.add_argument(
        "--cfg_parallel",
        action="store_true",
        help="guidance-parallel: the conditional and unconditional halves of each sample "
        "run on 2 processes (an even number of processes)",
    )
    group.add_argument(
        "--output_format",
        choices=[media, "wds"],
        default=media,
        help=f"{media} files, or webdataset tar shards ({media} + json) per process",
    )
    group.add_argument(
        "--shard_size", type=positive_int, default=1000, help="samples per webdataset shard"
    )
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="make every item again, replacing an earlier run's outputs and manifest",
    )


def at_scale(args: argparse.Namespace, world: World | None = None) -> bool:
    """Whether the run goes through the manifest: under a launcher, with a prompts file,
    or with a flag of :func:`add_scale_args`."""
    world = world or launcher_world()
    return (
        world.world_size > 1
        or bool(getattr(args, "prompts_file", None))
        or args.cfg_parallel
        or args.output_format == "wds"
        or args.overwrite
    )


def check_seeds(items: Sequence[WorkItem], seed: int, what: str, extra: int = 0) -> None:
    """``InputError`` naming ``--seed`` and the last seed the run would need when the
    seeds of ``items`` (``seed`` + their index; ``extra`` more where one item draws from
    seeds after its own, as Turbo's steps do) pass ``MAX_SEED`` (2**32 - 1, the last seed
    NumPy takes): a valid start seed can still run out over many items. ``what``: the
    items, for the message ("image", "video")."""
    last = max((item.seed for item in items), default=seed) + extra
    if last > MAX_SEED:
        raise InputError(
            f"--seed {seed}: this run's {len(items)} {what}(s) need seeds up to {last}, "
            f"past the last seed {MAX_SEED} (2**32 - 1); lower --seed to at most "
            f"{MAX_SEED - (last - seed)}"
        )


def check_world(args: argparse.Namespace, guided: bool) -> World:
    """The launcher's world; ``InputError`` for ``--cfg_parallel`` on an odd world or an
    unguided model (before any model loads)."""
    world = launcher_world()
    if args.cfg_parallel:
        from ..inference.cfg_parallel import check_cfg_parallel

        check_cfg_parallel(world, object() if guided else None)
    return world


def _output(args: argparse.Namespace, folder: Path, media: str, world: World) -> Any:
    if args.output_format == "wds":
        from ..data.sample_shards import ShardOutput

        return ShardOutput(folder, world.rank, media, args.shard_size)
    from ..inference.item_outputs import FolderOutput

    return FolderOutput(folder, f".{media}")


def run(
    args: argparse.Namespace,
    world: World,
    items: Sequence[WorkItem],
    params: Mapping[str, Any],
    folder: Path,
    media: str,
    load: Load,
    encode: Callable[[WorkItem, Any], bytes],
) -> Any:
    """Plan (the manifest checked), ``load(device, split)`` the model (``split``: None, or
    what wraps a guider for ``--cfg_parallel``), make this process's items. Errors every
    process shares are printed by rank 0 alone; the others exit with the same status."""
    from ..inference.data_parallel import RunFailed, plan_run, run_items

    try:
        device = rank_device(world, args.device)
        with process_group(world, device):
            output = _output(args, folder, media, world)
            plan = plan_run(items, output, params, world, overwrite=args.overwrite)
            split = None
            if args.cfg_parallel:
                from ..inference.cfg_parallel import SplitGuider, pair_group

                group, member = pair_group(world), world.rank % 2
                split = lambda guider: SplitGuider(guider, group, member)  # noqa: E731
            make = load(device, split)
            report = run_items(
                items,
                make,
                encode,
                output,
                params,
                world,
                overwrite=args.overwrite,
                pairs=args.cfg_parallel,
                progress=world.is_main,
                plan=plan,
                on_done=_printer(args, output),
            )
    except RunFailed as error:
        if error.reporter == world.rank:
            raise
        sys.exit(2)
    except SgmError:
        if world.is_main:
            raise
        sys.exit(2)
    if world.is_main:
        logger.info(
            "%d made, %d made before, %d in all: %s",
            report.made_all,
            report.skipped,
            report.total,
            folder,
        )
    return report


def _printer(args: argparse.Namespace, output: Any) -> Callable[[WorkItem], None] | None:
    """Prints each file written (as the command lines do); shards are not one per item."""
    if args.output_format == "wds":
        return None
    return lambda item: print(output.path(item), flush=True)
