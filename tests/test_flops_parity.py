"""Networks at their released sizes compute as many FLOPs as diffusers' (meta device)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import flops  # noqa: E402


@pytest.mark.parity
@pytest.mark.parametrize("workload", flops.WORKLOADS, ids=lambda w: w.name)
def test_forward_flops_equal_diffusers(workload):
    with torch.device("meta"):
        run_ours, run_theirs = workload.build()
        ours, theirs = flops.count(run_ours), flops.count(run_theirs)
    assert theirs > 1e12
    assert abs(ours / theirs - 1) < 0.01, (workload.name, ours, theirs)
