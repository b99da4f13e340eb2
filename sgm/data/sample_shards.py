"""A sampling run's outputs as webdataset tar shards (``--output_format wds``).

Each rank writes its own shards, ``shard-r<rank:05d>-<n:06d>.tar``, of ``max_count``
samples: ``<index:09d>.<ext>`` (the image or mp4) and ``<index:09d>.json`` (the item and
the run's parameters). A shard is written whole through ``sgm.data.shard_writer``; its
samples are recorded in the manifest just before it appears, so a killed run loses only
the shard it was filling, and the same command run again makes those items into new
shards (numbers go on after the ones present; no shard is ever replaced).
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..errors import InputError
from ..inference.manifest import Record, sha256_bytes
from ..inference.work_items import WorkItem
from .shard_writer import write_shard

_SHARD = re.compile(r"shard-r(\d+)-(\d+)\.tar$")


class ShardOutput:
    """Tar shards of up to ``max_count`` samples under ``folder``, this ``rank``'s own."""

    def __init__(
        self, folder: str | os.PathLike, rank: int, ext: str, max_count: int = 1000
    ) -> None:
        if max_count < 1:
            raise InputError(f"shard size must be at least 1 sample, got {max_count}")
        self.folder = Path(folder)
        self.rank, self.ext, self.max_count = rank, ext.lstrip("."), max_count
        self._pending: list[tuple[str, dict[str, bytes], Record]] = []
        self._publish: Callable[[list[Record]], None] | None = None
        self._members: dict[str, dict[str, str]] = {}

    def shards(self) -> list[Path]:
        """The shards present (every rank's), by name."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if _SHARD.match(p.name))

    def _next_name(self) -> Path:
        numbers = [
            int(m.group(2))
            for m in (_SHARD.match(p.name) for p in self.shards())
            if int(m.group(1)) == self.rank
        ]
        number = max(numbers, default=-1) + 1
        return self.folder / f"shard-r{self.rank:05d}-{number:06d}.tar"

    def _hashes(self, shard: Path) -> dict[str, str]:
        """sha256 of every member of ``shard`` (read once)."""
        if shard.name not in self._members:
            hashes = {}
            try:
                with tarfile.open(shard) as tar:
                    for member in tar.getmembers():
                        file = tar.extractfile(member)
                        if file is not None:
                            hashes[member.name] = sha256_bytes(file.read())
            except (OSError, tarfile.TarError):
                hashes = {}
            self._members[shard.name] = hashes
        return self._members[shard.name]

    def is_done(self, record: Record) -> bool:
        shard = self.folder / str(record.get("file", ""))
        if not shard.is_file():
            return False
        return self._hashes(shard).get(str(record.get("member"))) == record.get("sha256")

    def check_free(self, items: Sequence[WorkItem], records: Mapping[int, Record]) -> None:
        """New shards never take an old one's name: nothing to check."""

    def forget(self, records: Mapping[int, Record]) -> None:
        """``--overwrite``: remove the shards the old manifest records."""
        for name in sorted({str(r.get("file")) for r in records.values() if r.get("file")}):
            if _SHARD.match(name):
                (self.folder / name).unlink(missing_ok=True)

    def put(
        self,
        item: WorkItem,
        data: bytes,
        record: Record,
        publish: Callable[[list[Record]], None],
        replace: bool,
    ) -> None:
        member = f"{item.stem()}.{self.ext}"
        record = {**record, "member": member, "sha256": sha256_bytes(data)}
        meta = {k: v for k, v in record.items() if k not in ("member", "sha256")}
        members = {self.ext: data, "json": json.dumps(meta, sort_keys=True).encode()}
        self._pending.append((item.stem(), members, record))
        self._publish = publish
        if len(self._pending) >= self.max_count:
            self.close()

    def close(self) -> None:
        """Write the samples still buffered as a shard."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        path = self._next_name()
        records = [{**record, "file": path.name} for _, _, record in pending]
        publish = self._publish
        write_shard(
            path,
            [(key, members) for key, members, _ in pending],
            before_publish=None if publish is None else lambda: publish(records),
        )
