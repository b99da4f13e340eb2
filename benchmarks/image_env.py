"""A virtual environment holding only the packages the lent GPU machines' image has.

    python benchmarks/image_env.py DEST [--image benchmarks/device_image_packages.txt]

DEST becomes a venv (no pip of its own) whose site-packages links, from the running
interpreter's environment, every installed distribution named in the image list and
nothing else (no diffusers, omegaconf, open_clip_torch, kornia, webdataset, no sgm).
Nothing is downloaded: the versions are the ones installed here (torch included).
`gpu.sh --cpu-smoke` run with DEST's python and the prepared wheels then shows, on this
machine, whether the prepared folder is complete. Prints DEST's python.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
IMAGE_LIST = HERE / "device_image_packages.txt"


def normalize(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_names(path: Path) -> set[str]:
    """Normalised names, one a line; '#' starts a comment; 'name==version' keeps the name."""
    names = set()
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(normalize(re.split(r"[=<>!~ ;\[]", line, maxsplit=1)[0]))
    return names


def installed() -> dict[str, md.Distribution]:
    """The running environment's distributions by normalised name (sgm left out)."""
    dists = {}
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if name and normalize(name) != "sgm":
            dists.setdefault(normalize(name), dist)
    return dists


def requirement_names(dist: md.Distribution) -> set[str]:
    """Names `dist` requires here (extras left out, markers evaluated for this Python)."""
    from packaging.requirements import Requirement

    names = set()
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            names.add(normalize(req.name))
    return names


def closure(image: set[str], exclude: set[str]) -> tuple[set[str], set[str]]:
    """(image packages installed here, the local dependencies they pull in beyond the list).

    The local versions can differ from the image's and need packages that the image
    does not list (huggingface_hub 2 needs httpx2): those are linked too, except any
    named in `exclude` (the wheels carried to the machine must come from the folder).
    """
    dists = installed()
    todo = [n for n in image if n in dists]
    seen = set(todo)
    while todo:
        for dep in requirement_names(dists[todo.pop()]):
            if dep in dists and dep not in seen and dep not in exclude:
                seen.add(dep)
                todo.append(dep)
    return seen & image, seen - image


def image_entries(names: set[str]) -> dict[str, Path]:
    """Top-level site-packages entries of the installed distributions in `names`."""
    entries: dict[str, Path] = {}
    for name, dist in installed().items():
        if name not in names or not dist.files:
            continue
        for f in dist.files:
            top = f.parts[0]
            if top in ("..", "__pycache__") or top.startswith("__editable__"):
                continue
            src = Path(dist.locate_file(top))
            if src.exists():
                entries[top] = src
    return entries


def build(dest: Path, names: set[str]) -> Path:
    """Make the venv at `dest` (which must not exist) linking `names`; return its python."""
    dest = Path(dest)
    if dest.exists():
        raise SystemExit(f"image_env: {dest} exists; remove it or name another folder")
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(dest)], check=True)
    python = dest / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    for top, src in sorted(image_entries(names).items()):
        os.symlink(src, Path(site) / top)
    return python


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dest", type=Path)
    p.add_argument("--image", type=Path, default=IMAGE_LIST)
    p.add_argument(
        "--exclude",
        type=Path,
        default=HERE / "gpu_wheels.txt",
        help="list of the carried wheels: never linked from here",
    )
    args = p.parse_args(argv)
    if not args.image.is_file():
        print(f"image_env: no package list at {args.image}", file=sys.stderr)
        return 2
    exclude = read_names(args.exclude) if args.exclude.is_file() else set()
    listed, extra = closure(read_names(args.image), exclude)
    if extra:
        print(
            "image_env: also linked (needed here by the local versions):", " ".join(sorted(extra))
        )
    print(build(args.dest, listed | extra))
    return 0


if __name__ == "__main__":
    sys.exit(main())
