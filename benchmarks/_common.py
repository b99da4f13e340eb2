"""Shared pieces of the side-by-side benchmarks: timing, interleaving, peak memory."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from unet import PeakRSS

__all__ = [
    "PeakRSS",
    "interleaved",
    "memory_in_fresh_process",
    "print_summary",
    "report_memory",
    "timed",
]


def timed(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    """Seconds of one call of ``fn`` under inference mode, and its output."""
    with torch.inference_mode():
        start = time.perf_counter()
        out = fn()
    return time.perf_counter() - start, out


def interleaved(runs: dict[str, Callable[[], torch.Tensor]], repeats: int) -> dict:
    """name -> list of (seconds, output); one warm-up each, then alternating order."""
    for fn in runs.values():
        timed(fn)
    results = {name: [] for name in runs}
    names = list(runs)
    for i in range(repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            results[name].append(timed(runs[name]))
    return results


def memory_in_fresh_process(script: str, argv: list[str], name: str) -> float:
    """MiB above the pre-call level during one (warm) call of ``name``, in a new process."""
    cmd = [sys.executable, script, *argv, "--memory-of", name]
    # A fixed mmap threshold makes freed tensors leave the resident set at once.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    return int(out.split()[-1]) / 2**20


def report_memory(fn: Callable[[], torch.Tensor]) -> None:
    """Print the resident-set peak (bytes) of one warm call; the child side of the above."""
    with torch.inference_mode():
        fn()
        with PeakRSS() as mem:
            fn()
    print(mem.delta)


def print_summary(results: dict, peaks: dict[str, float], pairs: list[tuple[str, str]]) -> None:
    """Median/min per entry, then time and memory ratios and max abs diff per pair."""
    medians = {}
    for name, runs in results.items():
        medians[name] = statistics.median(r[0] for r in runs)
        fastest = min(r[0] for r in runs)
        print(
            f"{name:>22}: median {medians[name] * 1e3:9.1f} ms (min {fastest * 1e3:9.1f})"
            f"   peak +{peaks[name]:8.1f} MiB"
        )
    for ours, theirs in pairs:
        a, b = results[ours][0][1], results[theirs][0][1]
        diff = (a - b).abs().max().item()
        scale = b.abs().max().item()
        print(
            f"ratio {ours}/{theirs}: time {medians[ours] / medians[theirs]:.3f}, memory "
            f"{peaks[ours] / max(peaks[theirs], 1e-9):.3f}; max abs diff {diff:.2e} "
            f"(scale {scale:.2e})"
        )
