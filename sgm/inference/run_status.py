"""How the processes of a run learn that every one has finished, or which did not.

Each process keeps a heartbeat file beating (a counter rewritten every ``beat_s`` seconds by
a daemon thread) and, when its items are done or it gave up, writes its status file. Then
every process waits until each rank either has a status or has been silent for
``dead_after_s`` seconds: that rank died. Files in the output folder work the same on any
backend and launcher, and a dead process cannot answer a collective call anyway.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

STATUS_DIR = ".sgm-run"


@dataclass(frozen=True)
class RankStatus:
    """How one rank ended: ``ok``, or the one-line ``message`` of its failure; ``made``
    outputs; ``dead`` when it fell silent without a status."""

    rank: int
    ok: bool
    made: int = 0
    message: str = ""
    dead: bool = False


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class RunStatus:
    """The status and heartbeat files of ``world_size`` ranks under ``folder``."""

    def __init__(
        self,
        folder: str | os.PathLike,
        rank: int,
        world_size: int,
        beat_s: float = 5.0,
        dead_after_s: float = 120.0,
    ) -> None:
        self.dir = Path(folder) / STATUS_DIR
        self.rank, self.world_size = rank, world_size
        self.beat_s, self.dead_after_s = beat_s, dead_after_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _status(self, rank: int) -> Path:
        return self.dir / f"rank{rank:05d}.status.json"

    def _beat(self, rank: int) -> Path:
        return self.dir / f"rank{rank:05d}.beat"

    def clear(self) -> None:
        """Remove the files of an earlier run (rank 0, before any rank starts)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for path in self.dir.iterdir():
            if path.name.startswith("rank"):
                path.unlink(missing_ok=True)

    def start(self) -> None:
        """Start this rank's heartbeat."""
        self.dir.mkdir(parents=True, exist_ok=True)

        def beat() -> None:
            count = 0
            while True:
                _write_atomically(self._beat(self.rank), str(count))
                count += 1
                if self._stop.wait(self.beat_s):
                    return

        self._thread = threading.Thread(target=beat, name="sgm-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the heartbeat."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def finish(self, ok: bool, made: int, message: str = "") -> None:
        """Write this rank's status."""
        status = {"rank": self.rank, "ok": ok, "made": made, "message": message}
        _write_atomically(self._status(self.rank), json.dumps(status))

    def _read_status(self, rank: int) -> RankStatus | None:
        try:
            data = json.loads(self._status(rank).read_text())
        except (FileNotFoundError, ValueError):
            return None
        return RankStatus(rank, bool(data["ok"]), int(data["made"]), str(data["message"]))

    def _read_beat(self, rank: int) -> str | None:
        try:
            return self._beat(rank).read_text()
        except FileNotFoundError:
            return None

    def wait_all(
        self, poll_s: float = 0.2, on_poll: Callable[[], None] | None = None
    ) -> list[RankStatus]:
        """Every rank's status, waiting for those still working; a rank whose heartbeat
        has not changed for ``dead_after_s`` seconds (by this process's clock) is dead."""
        statuses: dict[int, RankStatus] = {}
        last: dict[int, tuple[str | None, float]] = {}
        while len(statuses) < self.world_size:
            now = time.monotonic()
            for rank in range(self.world_size):
                if rank in statuses:
                    continue
                status = self._read_status(rank)
                if status is not None:
                    statuses[rank] = status
                    continue
                beat = self._read_beat(rank)
                seen, since = last.get(rank, (None, now))
                if beat != seen or rank not in last:
                    last[rank] = (beat, now)
                elif now - since > self.dead_after_s:
                    statuses[rank] = RankStatus(rank, False, dead=True)
            if on_poll is not None:
                on_poll()
            if len(statuses) < self.world_size:
                time.sleep(poll_s)
        return [statuses[r] for r in range(self.world_size)]


def summary(statuses: list[RankStatus], missing: int, total: int) -> str:
    """One line naming the dead and failed ranks and what is left to make."""
    bad = [s for s in statuses if not s.ok]
    parts = []
    for status in bad:
        if status.dead:
            parts.append(f"rank {status.rank} died (no heartbeat)")
        else:
            parts.append(f"rank {status.rank} failed: {status.message}")
    return (
        f"{'; '.join(parts)}; {missing} of {total} items are not made: run the same command "
        "again to make them"
    )
