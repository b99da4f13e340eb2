"""Markdown results table from the logs ``benchmarks/gpu.sh`` writes.

    python benchmarks/gpu_table.py RESULTS_DIR   # reads RESULTS_DIR/rows.tsv and logs

``rows.tsv`` holds one line per row: name, status (ok / failed / timed out / skipped),
floor key, log file, command. A sample_* log ends with the lines of
``_pipeline.summary``; flops.py's log gives the compute floors.
"""

from __future__ import annotations

import datetime
import re
import sys
from pathlib import Path

SIDE = re.compile(
    r"^\s*(sgm|diffusers): median\s+([\d.]+) s\s+best\s+([\d.]+) s.*?peak \+\s*"
    r"([\d.]+) MiB during a run"
)
RATIO = re.compile(r"^ratio sgm/diffusers: time ([\d.]+), memory (\S+)")
SAME = re.compile(r"^same output: (.*)$|^(low-VRAM budget .*)$")
FLOOR = re.compile(r"^compute floor of (SDXL|SVD-XT)[^:]*: ([\d.]+) s")


def parse(log: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in log.splitlines():
        if m := SIDE.match(line):
            side, median, best, peak = m.groups()
            out[side] = (
                f"{float(median):.2f} s (best {float(best):.2f}), +{float(peak) / 1024:.2f} GiB"
            )
        elif m := RATIO.match(line):
            out["time"], out["memory"] = m.groups()
        elif m := SAME.match(line):
            out["same"] = m.group(1) or m.group(2)
        elif m := FLOOR.match(line):
            out[f"floor:{m.group(1)}"] = f"{float(m.group(2)):.2f} s"
    return out


def table(folder: Path, device: str) -> str:
    rows = [
        line.split("\t") for line in (folder / "rows.tsv").read_text().splitlines() if line.strip()
    ]
    floors: dict[str, str] = {}
    parsed = {}
    for name, status, floor_key, log, command in rows:
        text = (folder / log).read_text(errors="replace") if (folder / log).is_file() else ""
        parsed[name] = parse(text)
        floors.update({k: v for k, v in parsed[name].items() if k.startswith("floor:")})
    date = datetime.date.today().isoformat()
    lines = [
        "| workload | device | sgm | diffusers | time ratio | memory ratio | "
        "compute floor | output check | command | date |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, status, floor_key, log, command in rows:
        if name == "flops":
            continue
        got = parsed[name]
        ours = got.get("sgm", status if status != "ok" else "?")
        theirs = got.get("diffusers", status if status != "ok" else "?")
        lines.append(
            f"| {name} | {device} | {ours} | {theirs} | {got.get('time', '-')} | "
            f"{got.get('memory', '-')} | {floors.get('floor:' + floor_key, '-')} | "
            f"{got.get('same', '-')} | `{command}` | {date} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    folder = Path(sys.argv[1])
    device = sys.argv[2] if len(sys.argv) > 2 else "GPU"
    text = table(folder, device)
    (folder / "results.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
