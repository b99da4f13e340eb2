"""The manifest of a sampling run: one JSON line an output made, so that the same command
run again makes only what is missing.

A line holds the item (its index, prompt or input, seed, ...), every sampling parameter of
the run (``params``), the output file (and its ``member`` inside a shard) and the sha256
of the output's bytes. While a run works, each process appends to its own part file
(``manifest.rank00001.jsonl``) with single writes; when every process has finished, the
parts are merged into ``manifest.jsonl`` in index order (written whole, then renamed).
A process killed mid-write leaves at most a truncated last line of its part, which
reading drops (that output is then made again).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..output_files import write_new_file
from .work_items import ITEM_FIELDS

MANIFEST = "manifest.jsonl"
_PART = re.compile(r"manifest\.rank(\d+)\.jsonl$")

Record = dict[str, Any]


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    """``value`` as JSON reads it back (tuples as lists, paths as strings)."""
    return json.loads(json.dumps(value, default=str))


def first_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    """The first key (in ``new``'s order, then ``old``'s) whose values differ, or None."""
    new, old = _plain(dict(new)), _plain(dict(old))
    for key in [*new, *(k for k in old if k not in new)]:
        if old.get(key, "<unset>") != new.get(key, "<unset>"):
            return key
    return None


class Manifest:
    """The manifest of the run whose outputs are in ``folder``."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST

    def part(self, rank: int) -> Path:
        """The part file rank ``rank`` appends to."""
        return self.folder / f"manifest.rank{rank:05d}.jsonl"

    def parts(self) -> list[Path]:
        """The part files present, by rank."""
        if not self.folder.is_dir():
            return []
        found = [p for p in self.folder.iterdir() if _PART.match(p.name)]
        return sorted(found, key=lambda p: int(_PART.match(p.name).group(1)))

    # ------------------------------------------------------------------ reading

    def _lines(self, path: Path, tolerate_tail: bool) -> Iterable[Record]:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        lines = data.split(b"\n")
        complete = data.endswith(b"\n")
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            last = number == len(lines) and not complete
            try:
                record = json.loads(raw.decode("utf-8"))
                if not isinstance(record, dict) or not isinstance(record.get("index"), int):
                    raise ValueError("not a record with an integer 'index'")
            except (ValueError, UnicodeDecodeError) as error:
                if last and tolerate_tail:
                    return  # cut off by a kill mid-write
                raise InputError(
                    f"manifest {path}, line {number}: unreadable ({error}); it was not "
                    "written by a sampling run (move it away, or pass --overwrite)"
                ) from None
            yield record

    def read(self) -> dict[int, Record]:
        """Every record by index: the merged manifest, then the parts (later lines win)."""
        records: dict[int, Record] = {}
        for record in self._lines(self.path, tolerate_tail=False):
            records[record["index"]] = record
        for part in self.parts():
            for record in self._lines(part, tolerate_tail=True):
                records[record["index"]] = record
        return records

    # ------------------------------------------------------------------ checking

    def check(
        self,
        records: Mapping[int, Record],
        items: Mapping[int, Mapping[str, Any]],
        params: Mapping[str, Any],
    ) -> None:
        """``InputError`` when a record comes from another run: other sampling parameters
        (naming the first that differs), another item at its index, or an index this run
        does not have."""
        for index in sorted(records):
            record = records[index]
            key = first_difference(record.get("params", {}), params)
            if key is not None:
                old = record.get("params", {}).get(key, "<unset>")
                raise InputError(
                    f"manifest {self.path} was written with {key}={old!r}, this run has "
                    f"{key}={_plain(params.get(key, '<unset>'))!r}; use another output "
                    "folder, or pass --overwrite to make everything again"
                )
            if index not in items:
                raise InputError(
                    f"manifest {self.path} records item {index}, which this run does not "
                    "have; use another output folder, or pass --overwrite"
                )
            item = {k: v for k, v in record.items() if k in ITEM_FIELDS}
            key = first_difference(item, items[index])
            if key is not None:
                raise InputError(
                    f"manifest {self.path}: item {index} was made with {key}="
                    f"{item.get(key, '<unset>')!r}, this run has "
                    f"{key}={items[index].get(key, '<unset>')!r}; use another output "
                    "folder, or pass --overwrite"
                )

    # ------------------------------------------------------------------ writing

    def append(self, rank: int, records: Iterable[Record]) -> None:
        """Append ``records`` to rank ``rank``'s part, in one write, flushed to disk."""
        data = b"".join(
            json.dumps(r, sort_keys=True, ensure_ascii=False).encode() + b"\n" for r in records
        )
        if not data:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.part(rank), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def rewrite(self, records: Mapping[int, Record]) -> Path:
        """Write ``records`` (in index order) as the manifest, replacing it whole, and
        remove the parts they came from."""
        parts = self.parts()
        lines = [
            json.dumps(records[i], sort_keys=True, ensure_ascii=False) + "\n"
            for i in sorted(records)
        ]

        def write(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as file:
                file.writelines(lines)
                file.flush()
                os.fsync(file.fileno())

        path = write_new_file(write, [self.path], overwrite=True)
        for part in parts:
            part.unlink(missing_ok=True)
        return path

    def merge(self) -> Path:
        """Fold the parts into the manifest (call when no process appends any more)."""
        return self.rewrite(self.read())

    def remove(self) -> None:
        """Forget every record (``--overwrite``)."""
        for path in [self.path, *self.parts()]:
            path.unlink(missing_ok=True)
