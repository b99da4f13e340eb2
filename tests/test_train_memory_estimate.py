"""benchmarks/train_memory.py's fake-tensor estimate: it runs for every kind of row
(full, LoRA, temporal, each optimizer stand-in, fused step) on a small network, orders
them as their memory must be ordered, and matches a real CPU step (the oracle: the CPU
allocator's events) within 10 %."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import train_memory as tm  # noqa: E402

SDXL = tm.SETUPS["sdxl"]


def _estimate(**levers) -> float:
    return tm.estimate(SDXL, tm.Levers(**levers), tm.TINY, (32, 32))


def test_every_lever_runs_and_leaner_levers_need_less():
    full = _estimate(weights="fp32", optimizer="adamw", ckpt=False)
    checkpointed = _estimate(weights="fp32", optimizer="adamw")
    bf16 = _estimate(weights="bf16", optimizer="adamw")
    adafactor = _estimate(weights="bf16", optimizer="adafactor")
    eight_bit = _estimate(weights="bf16", optimizer="adamw8bit")
    fused = _estimate(weights="bf16", optimizer="adafactor", fused=True)
    lora = _estimate(weights="bf16", optimizer="adamw", train="lora")
    assert full > checkpointed > bf16 > eight_bit > adafactor > fused > lora > 0


def test_the_estimate_matches_a_real_cpu_step():
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / "train_memory.py"), "--check-row", "0"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    rows = [line for line in run.stdout.splitlines() if line.startswith("|")]
    assert run.returncode == 0 and rows, run.stderr[-2000:]
    assert float(rows[-1].split("|")[-2]) == pytest.approx(1.0, abs=0.10), rows[-1]
