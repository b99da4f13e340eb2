"""LR multipliers against their closed forms, and through torch's LambdaLR."""

import math

import pytest
import torch

from sgm.lr_scheduler import (
    LambdaLinearScheduler,
    LambdaWarmUpCosineScheduler,
    LambdaWarmUpCosineScheduler2,
)


def test_warmup_cosine_closed_form():
    s = LambdaWarmUpCosineScheduler(
        warm_up_steps=10, lr_min=0.1, lr_max=1.0, lr_start=0.0, max_decay_steps=110
    )
    assert s(0) == 0.0
    assert s(5) == pytest.approx(0.5)
    assert s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 2)))
    assert s(35) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert s(110) == pytest.approx(0.1)
    assert s(10_000) == pytest.approx(0.1)


def test_cycles_and_linear_decay():
    cos = LambdaWarmUpCosineScheduler2(
        warm_up_steps=[2, 4],
        f_min=[0.0, 0.5],
        f_max=[1.0, 2.0],
        f_start=[0.0, 0.0],
        cycle_lengths=[10, 20],
    )
    assert cos(1) == pytest.approx(0.5)
    assert cos(6) == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    # second cycle starts after step 10: warm-up 0 -> 2 over 4 steps
    assert cos(12) == pytest.approx(2.0 * 2 / 4)
    lin = LambdaLinearScheduler(
        warm_up_steps=[10], f_min=[0.0], f_max=[1.0], f_start=[0.0], cycle_lengths=[100]
    )
    assert lin(5) == pytest.approx(0.5)
    assert lin(50) == pytest.approx(0.5)
    assert lin(100) == pytest.approx(0.0)


def test_imagenet_config_schedule_through_lambdalr():
    s = LambdaLinearScheduler(
        warm_up_steps=[10000],
        cycle_lengths=[10000000000000],
        f_start=[1.0e-6],
        f_max=[1.0],
        f_min=[1.0],
    )
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=2.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=s.schedule)
    assert opt.param_groups[0]["lr"] == pytest.approx(2.0e-6)
    for _ in range(5000):
        opt.step()
        sched.step()
    expected = (1.0 - 1.0e-6) / 10000 * 5000 + 1.0e-6
    assert opt.param_groups[0]["lr"] == pytest.approx(2.0 * expected)
    assert s(20000) == pytest.approx(1.0)


def test_mismatched_lists_rejected():
    with pytest.raises(ValueError, match="equal lengths"):
        LambdaLinearScheduler(
            warm_up_steps=[1, 2], f_min=[0.0], f_max=[1.0], f_start=[0.0], cycle_lengths=[10]
        )
