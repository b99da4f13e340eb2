"""The path argument types of the command lines (re-exported by ``sgm.cli``): files to
read, folders to read from or write into, new outputs. A symlink counts as what it points
to; one that points to nothing is refused by name, as is an empty value (it would silently
mean the current folder)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def existing_file(text: str) -> Path:
    """A path to a readable file."""
    path = Path(text).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{path} does not exist")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{path} is not a file")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"{path} is not readable")
    return path


def existing_path(text: str) -> Path:
    """A file or folder that exists."""
    path = Path(text).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{path} does not exist")
    return path


def _given_path(text: str) -> Path:
    """``text`` as a path; an empty value is refused (it would silently mean the current
    folder)."""
    if not str(text).strip():
        raise argparse.ArgumentTypeError("the path is empty")
    return Path(text).expanduser()


def dangling_symlink(path: str | os.PathLike) -> tuple[Path, str] | None:
    """``(link, target)`` for the first of ``path`` and its parents that is a symlink to
    nothing (a missing target, or a loop), else None."""
    path = Path(path)
    for part in (path, *path.parents):
        if part.is_symlink() and not part.exists():
            return part, os.readlink(part)
    return None


def refuse_dangling(path: str | os.PathLike) -> None:
    """``ArgumentTypeError`` if ``path`` is, or lies below, a symlink to nothing: writing
    there would fail half-way, or create the link's target somewhere else."""
    found = dangling_symlink(path)
    if found is None:
        return
    link, target = found
    where = "" if link == Path(path) else f" lies below {link}, which"
    raise argparse.ArgumentTypeError(f"{path}{where} is a symlink to the missing {target}")


def new_output(text: str) -> Path:
    """A file or folder to create: nothing may be there yet (nothing is overwritten, not
    even a symlink), and the folder it goes in must be one :func:`output_folder` takes."""
    path = _given_path(text)
    refuse_dangling(path)
    if path.exists() or path.is_symlink():
        raise argparse.ArgumentTypeError(f"{path} exists; nothing is overwritten")
    output_folder(str(path.parent))
    return path


def output_folder(text: str) -> Path:
    """A folder to write into: it may not exist yet (it is created when the first file is
    written), but it may not be a file, nor lie below a file, nor be unwritable, nor be
    empty; a symlink counts as what it points to (one to nothing is refused)."""
    path = _given_path(text)
    refuse_dangling(path)
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                what = "is a file" if parent == path else f"lies below the file {parent}"
                if parent.is_symlink():
                    what += f" (a symlink to {os.readlink(parent)})"
                raise argparse.ArgumentTypeError(f"{path} {what}, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise argparse.ArgumentTypeError(f"{parent} is not writable")
            break
    return path


def input_folder(text: str) -> Path:
    """A folder to read from: it may be absent (the command then says what it did not
    find there), but it is not a file, nor empty, nor a symlink to nothing."""
    path = _given_path(text)
    refuse_dangling(path)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a file, not a folder")
    return path
