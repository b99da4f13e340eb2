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
    is replaced instead. Raises ``FileExistsError`` when every name is taken, and
    ``InputError`` naming it when the first name or a folder above it is a symlink to
    nothing or the folder is a file (nothing is written).
    """
    names = iter(names)
    first = Path(next(names))
    _check_place(first)
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


def _check_place(path: Path) -> None:
    """``InputError`` if ``path`` cannot be created as a new file where it is: it or a
    folder above it is a symlink to nothing, or a folder above it is a file."""
    from .cli_paths import dangling_symlink
    from .errors import InputError

    found = dangling_symlink(path)
    if found is not None:
        link, target = found
        where = "" if link == path else f" lies below {link}, which"
        raise InputError(f"{path}{where} is a symlink to the missing {target}; nothing was written")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{path} lies below the file {parent}; nothing was written")
            break
