"""The processes of a run as a launcher starts them: rank, world size and local rank from
``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) or SLURM's ``srun``
(``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``), each process's device, and the
``torch.distributed`` process group (NCCL on CUDA, gloo elsewhere) around the work::

    world = launcher_world()
    device = rank_device(world, "auto")
    with process_group(world, device):
        ...

One process without a launcher is a world of one, and needs no process group.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..devices import resolve_device
from ..errors import InputError

# (rank, world size, local rank) variables of each launcher, in the order they are read
LAUNCHERS = (
    ("torchrun", ("RANK", "WORLD_SIZE", "LOCAL_RANK")),
    ("SLURM", ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")),
)
DEFAULT_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class World:
    """This process's place among the processes of a run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str | None = None

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise InputError(
                f"rank {self.rank} / world size {self.world_size} / local rank "
                f"{self.local_rank} ({self.launcher or 'given'}) do not fit together"
            )

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that reports."""
        return self.rank == 0


def _env_int(env: Mapping[str, str], name: str) -> int:
    text = env[name]
    try:
        return int(text)
    except ValueError:
        raise InputError(f"environment variable {name}={text!r} is not an integer") from None


def launcher_world(env: Mapping[str, str] | None = None) -> World:
    """The world the launcher set up in ``env`` (default ``os.environ``): torchrun's
    variables, else SLURM's, else a world of one."""
    env = os.environ if env is None else env
    for name, keys in LAUNCHERS:
        if keys[0] in env and keys[1] in env:
            local = _env_int(env, keys[2]) if keys[2] in env else 0
            return World(_env_int(env, keys[0]), _env_int(env, keys[1]), local, name)
    return World()


def rank_device(world: World, device: str | torch.device = "auto") -> torch.device:
    """The device of this process: ``device`` (``"auto"`` as ``sgm.devices``), and on an
    accelerator with several devices the one of index ``LOCAL_RANK`` (made current)."""
    chosen = torch.device(resolve_device(device))
    if chosen.type != "cuda" or chosen.index is not None or world.world_size == 1:
        return chosen
    count = torch.cuda.device_count()
    if world.local_rank >= count:
        raise InputError(
            f"local rank {world.local_rank} has no CUDA device ({count} visible); start at "
            "most as many processes per node as there are devices"
        )
    torch.cuda.set_device(world.local_rank)
    return torch.device(chosen.type, world.local_rank)


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA devices, gloo for everything else."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def _rendezvous_env(world: World) -> None:
    """SLURM starts no rendezvous: without ``MASTER_ADDR`` / ``MASTER_PORT`` the run
    cannot meet, which is said in one line."""
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise InputError(
            f"{world.launcher or 'launcher'} started {world.world_size} processes but "
            f"{' and '.join(missing)} is not set (export the first node's address and a free port)"
        )


@contextlib.contextmanager
def process_group(
    world: World, device: torch.device | str = "cpu", timeout_s: float = DEFAULT_TIMEOUT_S
) -> Iterator[bool]:
    """``torch.distributed`` set up for ``world`` inside the block (yields whether a group
    is up): none for a world of one or when the caller set one up already; destroyed
    after."""
    import torch.distributed as dist

    if world.world_size == 1 or dist.is_initialized():
        yield dist.is_initialized()
        return
    _rendezvous_env(world)
    device = torch.device(device)
    options: dict[str, Any] = {}
    if device.type == "cuda":
        options["device_id"] = device
    dist.init_process_group(
        backend_for(device),
        init_method="env://",
        rank=world.rank,
        world_size=world.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
        **options,
    )
    try:
        yield True
    finally:
        if dist.is_initialized():  # a failed guidance pair may have torn it down already
            dist.destroy_process_group()


def leave_process_group() -> None:
    """Tear this process's group down now, so that peers blocked in a collective with it
    fail at once instead of waiting out the timeout (a failed guidance pair)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def object_group() -> Any:
    """A gloo group over the whole world for exchanging Python objects (the default group
    when it is gloo itself); None without a process group."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return None
    if dist.get_backend() == "gloo":
        return dist.group.WORLD
    return _gloo_world()


_GLOO_WORLD: list[Any] = []


def _gloo_world() -> Any:
    import torch.distributed as dist

    if not _GLOO_WORLD or _GLOO_WORLD[0][0] is not dist.group.WORLD:
        _GLOO_WORLD[:] = [(dist.group.WORLD, dist.new_group(backend="gloo"))]
    return _GLOO_WORLD[0][1]


def broadcast(value: Any, src: int = 0) -> Any:
    """``value`` of rank ``src`` on every rank (itself without a process group)."""
    import torch.distributed as dist

    group = object_group()
    if group is None:
        return value
    box = [value if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]
