"""Download the wheels a GPU run needs on the lent machines' bare image (run here, once).

    python benchmarks/gpu_prepare.py [DEST] [--here HERE_DEST]    # or: gpu.sh --prepare

DEST (default .gpu-wheels) receives, for CPython 3.12 on manylinux x86-64, the wheels
pinned in gpu_wheels.txt and the project's own wheel built from this checkout, plus
``requirements.txt`` naming each as NAME==VERSION (what gpu.sh installs from). It is
checked before it replaces an earlier DEST: no package the image already has
(device_image_packages.txt), every declared need of every wheel either in the image or in
DEST (versions checked where the image's are known), and at most 64 MiB in all (what one
device call can carry). HERE_DEST (default .gpu-wheels-here) receives the same versions
of the compiled wheels built for the Python running this script, so that
``gpu.sh --cpu-smoke`` can install the folder here the way the GPU machine does; it is
never carried.
"""

from __future__ import annotations

import argparse
import email.parser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from image_env import normalize

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
IMAGE_LIST = HERE / "device_image_packages.txt"
PINS = HERE / "gpu_wheels.txt"
LIMIT_MIB = 64.0
PYTHON_VERSION = "3.12"
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)]
PLATFORMS += ["manylinux2014_x86_64", "manylinux1_x86_64"]
# Marker values of the image's interpreter (Python 3.12.3 on Linux x86-64).
TARGET_ENV = {
    "python_version": PYTHON_VERSION,
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "extra": "",
}


class PrepareError(Exception):
    """The prepared folder would be incomplete, too large or carry an image package."""


def read_pins(path: Path) -> dict[str, str]:
    """{normalised name: version} from NAME==VERSION lines ('#' comments)."""
    pins = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not version.strip():
            raise PrepareError(f"{path}: {line!r} is not NAME==VERSION")
        pins[normalize(name.strip())] = version.strip()
    return pins


def read_versions(path: Path) -> dict[str, str | None]:
    """{normalised name: version or None} from the image list (NAME or NAME==VERSION)."""
    out: dict[str, str | None] = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[normalize(name)] = version or None
    return out


def wheel_metadata(path: Path):
    """The METADATA of a wheel file as an email message."""
    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(zf.read(name).decode())


def wheel_is_pure(path: Path) -> bool:
    """True for a wheel with no compiled code ('-none-any' tag)."""
    return Path(path).name.endswith("-none-any.whl")


def check_folder(folder: Path, image: dict[str, str | None], limit_mib: float) -> list[str]:
    """Problems with the prepared folder (empty when it will do)."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    wheels = sorted(Path(folder).glob("*.whl"))
    problems = []
    have: dict[str, str] = {}
    metas = {}
    for whl in wheels:
        meta = wheel_metadata(whl)
        name = normalize(meta["Name"])
        if name in have:
            problems.append(f"two wheels of {name}: pip would refuse the install")
        have[name], metas[name] = meta["Version"], meta
        if name in image:
            problems.append(f"{whl.name}: the image already has {name}")
    for name, meta in metas.items():
        for line in meta.get_all("Requires-Dist") or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(TARGET_ENV):
                continue
            dep = normalize(req.name)
            version = have.get(dep) or image.get(dep)
            if dep not in have and dep not in image:
                problems.append(f"{name} needs {req}: neither in the image nor prepared")
            elif version and req.specifier and not req.specifier.contains(Version(version)):
                problems.append(f"{name} needs {req}, but {dep} {version} is what it gets")
    size = sum(w.stat().st_size for w in wheels) / 2**20
    if size > limit_mib:
        problems.append(
            f"{size:.1f} MiB of wheels: over the {limit_mib:g} MiB a device call carries"
        )
    return problems


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def download_target(pins: dict[str, str], dest: Path) -> None:
    """The pinned wheels for CPython 3.12 on manylinux x86-64, without their dependencies."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    pip(
        "download", "--no-deps", "--only-binary=:all:", "--python-version", PYTHON_VERSION,
        "--implementation", "cp", *platforms, "-d", str(dest),
        *(f"{n}=={v}" for n, v in pins.items()),
    )  # fmt: skip


def build_project(dest: Path) -> None:
    """The project's own wheel from this checkout (hatchling, installed with the test extra)."""
    pip("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dest), str(ROOT))


def stale_files(wheel: Path, root: Path = ROOT) -> list[str]:
    """The project wheel's Python files that differ from (or are missing in) the checkout."""
    with zipfile.ZipFile(wheel) as zf:
        packed = {
            n: zf.read(n) for n in zf.namelist() if n.startswith("sgm/") and n.endswith(".py")
        }
    here = {p.relative_to(root).as_posix(): p for p in (root / "sgm").rglob("*.py")}
    stale = [n for n in packed if n not in here or here[n].read_bytes() != packed[n]]
    return sorted(stale + [n for n in here if n not in packed])


def write_requirements(folder: Path) -> None:
    lines = []
    for whl in sorted(folder.glob("*.whl")):
        meta = wheel_metadata(whl)
        lines.append(f"{meta['Name']}=={meta['Version']}")
    (folder / "requirements.txt").write_text("\n".join(lines) + "\n")


def replace_dir(tmp: Path, dest: Path) -> None:
    """Move the finished `tmp` onto `dest` (an earlier prepared folder is replaced whole)."""
    if dest.exists():
        old = dest.with_name(dest.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old)
    else:
        tmp.rename(dest)


def prepare(dest: Path, here: Path | None, limit_mib: float = LIMIT_MIB) -> float:
    """Fill `dest` (and `here`); return the size of `dest`'s wheels in MiB."""
    image = read_versions(IMAGE_LIST)
    pins = read_pins(PINS)
    clash = sorted(set(pins) & set(image))
    if clash:
        raise PrepareError(f"{PINS.name} names packages the image has: {', '.join(clash)}")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    download_target(pins, tmp)
    build_project(tmp)
    problems = check_folder(tmp, image, limit_mib)
    if problems:
        raise PrepareError("; ".join(problems))
    write_requirements(tmp)
    compiled = {}
    for whl in tmp.glob("*.whl"):
        if not wheel_is_pure(whl):
            meta = wheel_metadata(whl)
            compiled[meta["Name"]] = meta["Version"]
    if here is not None:
        here_tmp = here.with_name(here.name + ".tmp")
        shutil.rmtree(here_tmp, ignore_errors=True)
        here_tmp.mkdir(parents=True)
        if compiled:
            pip(
                "download", "--no-deps", "--only-binary=:all:", "-d", str(here_tmp),
                *(f"{n}=={v}" for n, v in compiled.items()),
            )  # fmt: skip
        replace_dir(here_tmp, here)
    replace_dir(tmp, dest)
    return sum(w.stat().st_size for w in dest.glob("*.whl")) / 2**20


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dest", nargs="?", type=Path, default=ROOT / ".gpu-wheels")
    p.add_argument("--here", type=Path, default=ROOT / ".gpu-wheels-here")
    p.add_argument("--limit-mib", type=float, default=LIMIT_MIB)
    p.add_argument(
        "--check-fresh",
        action="store_true",
        help="only check that DEST's sgm wheel holds this checkout's code (exit 2 if not)",
    )
    args = p.parse_args(argv)
    if args.check_fresh:
        wheels = sorted(args.dest.glob("sgm-*.whl"))
        stale = stale_files(wheels[0]) if len(wheels) == 1 else ["(no single sgm wheel)"]
        if stale:
            print(
                f"gpu_prepare: {args.dest} holds other code than this checkout "
                f"({len(stale)} files, e.g. {stale[0]}): run gpu.sh --prepare again",
                file=sys.stderr,
            )
            return 2
        return 0
    try:
        size = prepare(args.dest.resolve(), args.here.resolve(), args.limit_mib)
    except (PrepareError, subprocess.CalledProcessError, OSError) as exc:
        print(f"gpu_prepare: {exc}", file=sys.stderr)
        return 2
    wheels = sorted(w.name for w in args.dest.glob("*.whl"))
    print(f"prepared {len(wheels)} wheels, {size:.1f} MiB, in {args.dest}:")
    for name in wheels:
        print(f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
