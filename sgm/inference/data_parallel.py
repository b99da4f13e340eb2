"""A sampling run over many items on every process of a launcher (``torchrun``, ``srun``),
resumable through its manifest::

    world = launcher_world()
    with process_group(world, device):
        report = run_items(items, make, encode, FolderOutput(folder, ".png"), params, world)

Rank 0 reads the manifest and decides which items are still to make (those without an
output whose sha256 matches its record); every rank takes its share of them, dealt by
global index, makes each with the global random generators seeded with the item's seed,
and hands the encoded bytes to the output (written whole, then recorded in the manifest).
Rank 0 shows one progress bar over the whole run. At the end every rank waits for the
others (``sgm.inference.run_status``); if one failed or died, all raise :class:`RunFailed`
naming it, and the same command run again makes exactly the missing items.

With ``pairs=True`` (guidance-parallel) ranks ``2p`` and ``2p + 1`` make the same items
together (``sgm.inference.cfg_parallel``) and rank ``2p`` writes them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..errors import InputError, SgmError
from .distributed import World, broadcast, leave_process_group
from .manifest import Manifest, Record
from .run_status import RunStatus, summary
from .work_items import WorkItem, deal

logger = logging.getLogger(__name__)


class RunFailed(SgmError, RuntimeError):
    """A rank of the run failed or died; the outputs made so far are kept and recorded.
    ``reporter``: the lowest rank still alive, the one that says so."""

    def __init__(self, message: str, reporter: int = 0) -> None:
        super().__init__(message)
        self.reporter = reporter


class ItemOutput(Protocol):
    """Where a run's outputs go (a folder of files, or tar shards)."""

    folder: Any

    def is_done(self, record: Record) -> bool:
        """Whether ``record``'s output exists with its recorded sha256."""

    def check_free(self, items: Sequence[WorkItem], records: Mapping[int, Record]) -> None:
        """``InputError`` for an output of ``items`` present but not recorded."""

    def put(
        self,
        item: WorkItem,
        data: bytes,
        record: Record,
        publish: Callable[[list[Record]], None],
        replace: bool,
    ) -> None:
        """Write ``data`` for ``item``; ``publish(records)`` records it just before it
        appears under its name; ``replace``: an old output of the item may be replaced."""

    def close(self) -> None:
        """Write what is still buffered."""

    def forget(self, records: Mapping[int, Record]) -> None:
        """``--overwrite``: drop what of the old outputs new ones will not replace."""


@dataclass(frozen=True)
class RunReport:
    """What a run did: outputs made here, made in total by all ranks, skipped as already
    made, and the run's size."""

    made: int
    made_all: int
    skipped: int
    total: int


def _plan(
    items: Sequence[WorkItem],
    output: ItemOutput,
    manifest: Manifest,
    params: Mapping[str, Any],
    overwrite: bool,
) -> tuple[list[int], list[int]]:
    """(indices still to make, those of them whose old output may be replaced)."""
    if overwrite:
        try:
            output.forget(manifest.read())
        except InputError:
            pass  # an unreadable manifest is replaced all the same
        manifest.remove()
        records: dict[int, Record] = {}
    else:
        records = manifest.read()
        manifest.check(records, {i.index: i.describe() for i in items}, params)
        output.check_free(items, records)
    done = {i for i, record in records.items() if output.is_done(record)}
    pending = [item.index for item in items if item.index not in done]
    stale = [i for i in pending if i in records or overwrite]
    return pending, stale


@dataclass(frozen=True)
class RunPlan:
    """What a run still has to make (indices), and which of those replace an old output."""

    pending: tuple[int, ...]
    stale: frozenset[int]


def plan_run(
    items: Sequence[WorkItem],
    output: ItemOutput,
    params: Mapping[str, Any],
    world: World,
    *,
    overwrite: bool = False,
) -> RunPlan:
    """Rank 0 reads the manifest and checks it against ``items`` and ``params``; every rank
    gets the plan, or raises the same ``InputError``. Call it before loading a model, so a
    refused manifest costs nothing (:func:`run_items` calls it when not given a plan)."""
    plan: Any = None
    if world.is_main:
        try:
            pending, stale = _plan(items, output, Manifest(output.folder), params, overwrite)
            RunStatus(output.folder, 0, world.world_size).clear()
            plan = RunPlan(tuple(pending), frozenset(stale))
        except SgmError as error:
            plan = str(error).split("\n")[0]
    plan = broadcast(plan)
    if isinstance(plan, str):
        raise InputError(plan)
    return plan


class _Progress:
    """Rank 0's bar over the whole run, advanced by the records all ranks append."""

    def __init__(self, manifest: Manifest, total: int, done: int, enabled: bool) -> None:
        from tqdm import tqdm

        self.manifest = manifest
        self.base = self._count()
        self.bar = tqdm(total=total, initial=done, unit="item", disable=not enabled)
        self.done = done

    def _count(self) -> int:
        count = 0
        for part in self.manifest.parts():
            try:
                count += part.read_bytes().count(b"\n")
            except FileNotFoundError:
                continue
        return count

    def refresh(self) -> None:
        now = self.done + self._count() - self.base
        if now > self.bar.n:
            self.bar.update(now - self.bar.n)

    def close(self) -> None:
        self.refresh()
        self.bar.close()


def _make_all(
    mine, make, encode, output, manifest, params, stale, world, writer, progress, on_done
):
    """Make this rank's items; returns (made, failure message or ""). Outputs made before
    a failure are still written."""
    made, failure = 0, ""
    try:
        for item in mine:
            torch.manual_seed(item.seed)
            result = make(item)
            if writer:
                record = {**item.describe(), "params": dict(params)}
                output.put(
                    item,
                    encode(item, result),
                    record,
                    lambda records: manifest.append(world.rank, records),
                    replace=item.index in stale,
                )
                made += 1
                if on_done is not None:
                    on_done(item)
            if progress is not None:
                progress.refresh()
    except Exception as error:  # noqa: BLE001 - any failure of an item ends this rank's share
        logger.exception("rank %d: sampling failed", world.rank)
        text = " ".join(str(error).split("\n")[0].split())
        failure = f"{type(error).__name__}: {text}"
    if writer:
        output.close()
    return made, failure


def run_items(
    items: Sequence[WorkItem],
    make: Callable[[WorkItem], Any],
    encode: Callable[[WorkItem, Any], bytes],
    output: ItemOutput,
    params: Mapping[str, Any],
    world: World,
    *,
    overwrite: bool = False,
    pairs: bool = False,
    progress: bool = True,
    beat_s: float = 5.0,
    dead_after_s: float = 120.0,
    plan: RunPlan | None = None,
    on_done: Callable[[WorkItem], None] | None = None,
) -> RunReport:
    """Make every item of ``items`` not made yet, this rank its share (see the module).

    ``make(item)`` samples one item (the same on every rank); ``encode(item, result)``
    gives its output's bytes. ``params``: every sampling parameter of the run (JSON
    values), recorded with each output and compared with an old manifest (``InputError``
    naming the first that differs, unless ``overwrite``); ``plan``: made by
    :func:`plan_run` beforehand; ``on_done(item)``: called when this rank has handed an
    item's output over (a shard output writes it when the shard is full). Raises :class:`RunFailed` on every rank when any rank
    failed or fell silent for ``dead_after_s`` seconds.
    """
    if pairs and world.world_size % 2:
        raise InputError(
            f"--cfg_parallel runs each image on 2 processes; the world size {world.world_size} "
            "is odd"
        )
    if plan is None:
        plan = plan_run(items, output, params, world, overwrite=overwrite)
    manifest = Manifest(output.folder)
    status = RunStatus(output.folder, world.rank, world.world_size, beat_s, dead_after_s)
    by_index = {item.index: item for item in items}
    pending = [by_index[i] for i in plan.pending]
    unit, units = (
        (world.rank // 2, world.world_size // 2) if pairs else (world.rank, world.world_size)
    )
    writer = not pairs or world.rank % 2 == 0
    mine = deal(pending, unit, units)
    done = len(items) - len(pending)
    bar = _Progress(manifest, len(items), done, progress) if world.is_main else None
    status.start()
    try:
        made, failure = _make_all(
            mine, make, encode, output, manifest, params, plan.stale, world, writer, bar, on_done
        )
        status.finish(not failure, made, failure)
        if failure and pairs:
            leave_process_group()
        statuses = status.wait_all(on_poll=None if bar is None else bar.refresh)
    finally:
        status.stop()
        if bar is not None:
            bar.close()
    made_all = sum(s.made for s in statuses)
    if not all(s.ok for s in statuses):
        recorded = manifest.read()
        missing = sum(1 for item in items if item.index not in recorded)
        alive = [s.rank for s in statuses if not s.dead]
        raise RunFailed(summary(statuses, missing, len(items)), min(alive, default=world.rank))
    if world.is_main:
        manifest.merge()
    return RunReport(made, made_all, done, len(items))
