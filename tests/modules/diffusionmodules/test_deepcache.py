"""DeepCache against the ``deepcache`` package's DeepCacheSDHelper on diffusers'
UNet2DConditionModel holding the same weights (diffusers' own converter), step by step;
the schedules; off is bit-identical; bad settings."""

from __future__ import annotations

import types

import pytest
import torch
from test_unet_parity import SD21_TINY, SDXL_TINY, assert_close, build
from unet_oracle import sdxl_vector, to_diffusers

from sgm.errors import InputError
from sgm.modules import sampling_step
from sgm.modules.diffusionmodules import deepcache
from sgm.modules.diffusionmodules.deepcache import DeepCache

pytestmark = pytest.mark.parity


def _reference_run(theirs, calls, interval, branch):
    """The package's helper wraps the diffusers UNet's blocks; the step is the index of
    the timestep in the scheduler's list."""
    from DeepCache import DeepCacheSDHelper

    timesteps = [t for t, *_ in calls]
    pipe = types.SimpleNamespace(unet=theirs, scheduler=types.SimpleNamespace(timesteps=timesteps))
    helper = DeepCacheSDHelper(pipe=pipe)
    helper.set_params(cache_interval=interval, cache_branch_id=branch)
    helper.enable()
    try:
        return [
            theirs(x, torch.tensor([t]), encoder_hidden_states=ctx, added_cond_kwargs=added).sample
            for t, x, ctx, added in calls
        ]
    finally:
        helper.disable()


def _our_run(ours, calls, options):
    outs = []
    with deepcache.enabled(options):
        for i, (t, x, ctx, added) in enumerate(calls):
            y = None if added is None else sdxl_vector(added["text_embeds"], added["time_ids"])
            with sampling_step.at(i, len(calls)):
                outs.append(ours(x, torch.full((x.shape[0],), float(t)), context=ctx, y=y))
    return outs


def _calls(params, steps, batch=2, sdxl=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(batch, 7, params["context_dim"], generator=g)
    added = None
    if sdxl:
        added = {
            "text_embeds": torch.randn(batch, 64, generator=g),
            "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * batch),
        }
    timesteps = torch.linspace(999, 1, steps).round().int().tolist()
    # the state drifts from step to step, as in sampling
    return [(t, torch.randn(batch, 4, 16, 16, generator=g), context, added) for t in timesteps]


@pytest.mark.parametrize(
    "params,sdxl,interval,branch",
    [
        (SD21_TINY, False, 3, 0),
        (SD21_TINY, False, 2, 1),
        (SD21_TINY, False, 3, 3),  # the branch below the first downsampling
        (SDXL_TINY, True, 3, 0),
        (SDXL_TINY, True, 4, 2),
    ],
)
def test_matches_the_deepcache_package_step_by_step(params, sdxl, interval, branch):
    ours = build(params, from_omegaconf=sdxl)
    theirs = to_diffusers(ours, params)
    calls = _calls(params, 7, sdxl=sdxl)
    with torch.no_grad():
        got = _our_run(ours, calls, DeepCache(interval, branch))
        want = _reference_run(theirs, calls, interval, branch)
        plain = [
            ours(
                x,
                torch.full((2,), float(t)),
                context=ctx,
                y=None if a is None else sdxl_vector(a["text_embeds"], a["time_ids"]),
            )
            for t, x, ctx, a in calls
        ]
    for step, (a, b) in enumerate(zip(got, want, strict=True)):
        assert_close(a, b, rtol=1e-4)
    reused = [i for i in range(len(calls)) if i % interval]
    assert reused, "no reused step: the comparison would not test the cache"
    for i in reused:  # a reused step differs from the whole network's output
        assert (got[i] - plain[i]).abs().max() > 1e-4
    for i in range(0, len(calls), interval):
        assert torch.equal(got[i], plain[i])


def test_off_and_outside_a_loop_the_network_is_unchanged():
    ours = build(SD21_TINY)
    x, t, ctx = torch.randn(2, 4, 16, 16), torch.tensor([500.0, 500.0]), torch.randn(2, 7, 64)
    with torch.no_grad():
        plain = ours(x, t, context=ctx)
        with deepcache.enabled(None), sampling_step.at(1, 4):
            assert torch.equal(ours(x, t, context=ctx), plain)
        with deepcache.enabled(DeepCache(2)):  # no sampling step: always whole
            first = ours(x, t, context=ctx)
            second = ours(x * 0.5, t, context=ctx)
        assert torch.equal(first, plain)
        assert torch.equal(second, ours(x * 0.5, t, context=ctx))


def test_schedules():
    assert DeepCache(3).full_steps(10) == (0, 3, 6, 9)
    assert DeepCache(1).full_steps(5) == (0, 1, 2, 3, 4)
    steps = DeepCache(5, uniform=False, center=15).full_steps(50)
    assert len(steps) == 10 and steps[0] == 0 and steps == tuple(sorted(set(steps)))
    gaps = [b - a for a, b in zip(steps, steps[1:])]
    near = min(range(len(steps)), key=lambda k: abs(steps[k] - 15))
    # denser around the center than at the end
    assert gaps[min(near, len(gaps) - 1)] < gaps[-1]
    assert DeepCache(2, uniform=False).full_steps(20)[0] == 0


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"interval": 0}, "interval must be at least 1"),
        ({"interval": 2.5}, "interval must be an integer"),
        ({"interval": 2, "branch": -1}, "branch must be 0 or more"),
        ({"interval": 2, "power": float("nan")}, "power must be a finite number"),
    ],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(InputError, match=message):
        DeepCache(**kwargs)


def test_a_branch_deeper_than_the_network_is_refused():
    ours = build(SD21_TINY)
    with pytest.raises(
        InputError, match="branch 40 is too deep for UNetModel: its branches are 0 .. "
    ):
        with torch.no_grad(), deepcache.enabled(DeepCache(2, branch=40)), sampling_step.at(0, 2):
            ours(torch.randn(1, 4, 16, 16), torch.tensor([1.0]), context=torch.randn(1, 7, 64))
    with pytest.raises(InputError, match="center 60 is outside the 50 steps"):
        DeepCache(2, uniform=False, center=60).full_steps(50)
