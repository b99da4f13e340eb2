"""Writing output files atomically, never replacing an existing file."""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path


def numbered_names(path: str | os.PathLike) -> Iterator[Path]:
    """``path``, then ``stem-1.ext``, ``stem-2.ext``, ... beside it."""
    path = Path(path)
    yield path
    for n in itertools.count(1):
        yield path.with_name(f"{path.stem}-{n}{path.suffix}")


def write_new_file(
    write: Callable[[str], None], names: Iterable[str | os.PathLike], overwrite: bool = False
) -> Path:
    """Write a file through ``write(temp_path)`` and publish it under the first free name.

    The file appears complete or not at all: it is written to a temporary file in the
    target folder, then hard-linked to the first of ``names`` that does not exist yet
    (renamed where the file system has no hard links). With ``overwrite`` the first name
    is replaced instead. Raises ``FileExistsError`` when every name is taken.
    """
    names = iter(names)
    first = Path(next(names))
    first.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{first.stem}-", suffix=first.suffix, dir=first.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if overwrite:
            os.replace(tmp, first)
            return first
        for candidate in itertools.chain([first], map(Path, names)):
            try:
                os.link(tmp, candidate)
                return candidate
            except FileExistsError:
                continue
            except OSError:
                if candidate.exists():
                    continue
                os.replace(tmp, candidate)
                return candidate
        raise FileExistsError(f"{first}: file exists; nothing was written")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
