"""Training says only what matters: Lightning's warning about modules in eval mode is
quiet when those modules are frozen by design, and still heard when one would train."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from pytorch_lightning.utilities.warnings import PossibleUserWarning

from sgm.training.run import _frozen_parts_expected

ROOT = Path(__file__).resolve().parents[2]
MESSAGE = "Found 1 module(s) in eval mode at the start of training."


def _heard(model: torch.nn.Module) -> list[str]:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with _frozen_parts_expected(model):
            warnings.warn(MESSAGE, PossibleUserWarning, stacklevel=1)
    return [str(w.message) for w in seen]


def test_eval_mode_warning_only_for_a_part_that_would_train():
    frozen, trainable = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    frozen.requires_grad_(False)
    assert _heard(torch.nn.Sequential(frozen.eval(), torch.nn.Linear(2, 2))) == []
    assert _heard(torch.nn.Sequential(trainable.eval())) == [MESSAGE]


@pytest.mark.slow  # trains two steps in a subprocess
def test_toy_demo_trains_without_the_eval_mode_warning(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts/demo/toy_demo.py"), "--max-steps=2", "--per-class=1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "in eval mode at the start of training" not in result.stderr + result.stdout
    assert "digits_cfg_grid.png" in result.stdout
