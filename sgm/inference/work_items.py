"""The items of a sampling run, each with a global index: prompts from a prompts file, or
input images from a folder or glob.

An item's index is its place in the whole run (prompt line x sample), whatever the number
of processes; its seed is the base seed plus its index unless the item gives one, and its
output file is named by its index. So every process of a run computes the same list, and
a run makes the same files whatever its world size::

    items = prompt_items(read_prompts_file("prompts.txt"), num_samples=2, seed=42)
    mine = deal(items, rank=1, world_size=4)
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..cli import MAX_SEED
from ..errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# keys a JSON line of a prompts file may hold
PROMPT_KEYS = ("prompt", "negative_prompt", "seed", "width", "height")


@dataclass(frozen=True)
class Prompt:
    """One line of a prompts file: the prompt and what the line sets for it."""

    prompt: str
    negative_prompt: str | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class WorkItem:
    """One output of a run: its global ``index``, what it is made from and its seed.

    ``prompt`` / ``negative_prompt`` / ``width`` / ``height`` for text-to-image (None:
    the run's own), ``input`` (a file) for image-to-video; ``sample``: which sample of
    its prompt or input it is.
    """

    index: int
    seed: int
    prompt: str | None = None
    negative_prompt: str | None = None
    width: int | None = None
    height: int | None = None
    input: str | None = None
    sample: int = 0

    def stem(self) -> str:
        """The output's file name without suffix, from the index alone."""
        return f"{self.index:09d}"

    def describe(self) -> dict[str, Any]:
        """What the manifest records of the item (the fields that are set)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


ITEM_FIELDS = tuple(f.name for f in fields(WorkItem))


def _line_error(path: Path, number: int, message: str) -> InputError:
    return InputError(f"prompts file {path}, line {number}: {message}")


def _int_field(path: Path, number: int, key: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        kind = "a positive" if least > 0 else "a non-negative"
        raise _line_error(path, number, f"{key!r} must be {kind} integer, got {value!r}")
    if key == "seed" and value > MAX_SEED:
        raise _line_error(path, number, f"'seed' {value} is outside the seeds 0 .. 2**32 - 1")
    return value


def _json_prompt(path: Path, number: int, text: str) -> Prompt:
    try:
        entry = json.loads(text)
    except json.JSONDecodeError as error:
        raise _line_error(path, number, f"malformed JSON ({error.msg})") from None
    if not isinstance(entry, dict):
        raise _line_error(path, number, "a JSON line must be an object")
    unknown = sorted(set(entry) - set(PROMPT_KEYS))
    if unknown:
        raise _line_error(
            path, number, f"unknown key(s) {unknown}; expected some of {list(PROMPT_KEYS)}"
        )
    prompt = entry.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _line_error(path, number, "'prompt' must be a non-empty string")
    negative = entry.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise _line_error(path, number, f"'negative_prompt' must be a string, got {negative!r}")
    numbers = {
        key: _int_field(path, number, key, entry[key], 0 if key == "seed" else 1)
        for key in ("seed", "width", "height")
        if entry.get(key) is not None
    }
    return Prompt(prompt.strip(), negative, **numbers)


def read_prompts_file(path: str | os.PathLike) -> list[Prompt]:
    """The prompts of ``path``: one prompt a line, or a JSON object a line (keys
    :data:`PROMPT_KEYS`); both may mix. Blank lines are skipped. Raises ``InputError``
    naming the file (and line) for an unreadable, non-UTF-8 or empty file or a bad line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputError(f"prompts file {path}: cannot read it ({error.strerror})") from None
    prompts = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8").strip()
            if "\0" in text:
                raise _line_error(path, number, "not UTF-8 text (a NUL byte)")
        except UnicodeDecodeError as error:
            raise _line_error(
                path, number, f"not UTF-8 text (byte {error.start + 1} is 0x{raw[error.start]:02x})"
            ) from None
        if number == 1:
            text = text.lstrip("\ufeff")
        if not text:
            continue
        prompts.append(_json_prompt(path, number, text) if text[0] == "{" else Prompt(text))
    if not prompts:
        raise InputError(f"prompts file {path} holds no prompt")
    return prompts


def prompt_items(prompts: Sequence[Prompt], num_samples: int = 1, seed: int = 0) -> list[WorkItem]:
    """``num_samples`` items a prompt, indexed prompt-major; a line's own seed counts up
    over its samples, the others take ``seed + index``."""
    items = []
    for line, entry in enumerate(prompts):
        for k in range(num_samples):
            index = line * num_samples + k
            own = entry.seed + k if entry.seed is not None else seed + index
            items.append(
                WorkItem(
                    index,
                    own,
                    prompt=entry.prompt,
                    negative_prompt=entry.negative_prompt,
                    width=entry.width,
                    height=entry.height,
                    sample=k,
                )
            )
    return items


def find_images(spec: str | os.PathLike) -> list[Path]:
    """The image files of ``spec``: a single image, a folder (its images, not recursive) or
    a glob pattern, sorted by path. Raises ``InputError`` when it names none."""
    text = os.fspath(spec)
    path = Path(text)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = [p for p in path.iterdir() if p.is_file()]
    elif glob.has_magic(text):
        found = [Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file()]
    else:
        raise InputError(f"input {text}: no such file, folder or glob match")
    images = sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise InputError(f"input {text}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return images


def input_items(inputs: Sequence[Path], num_samples: int = 1, seed: int = 0) -> list[WorkItem]:
    """``num_samples`` items an input file, indexed input-major, seed ``seed + index``."""
    return [
        WorkItem(i * num_samples + k, seed + i * num_samples + k, input=str(path), sample=k)
        for i, path in enumerate(inputs)
        for k in range(num_samples)
    ]


def deal(items: Iterable[WorkItem], rank: int, world_size: int) -> list[WorkItem]:
    """The items of ``rank`` among ``world_size``: every ``world_size``-th item of the list
    (in index order), starting at the ``rank``-th. Every item goes to exactly one rank."""
    if not 0 <= rank < world_size:
        raise InputError(f"rank {rank} outside a world of {world_size}")
    ordered = sorted(items, key=lambda item: item.index)
    return ordered[rank::world_size]
