"""T-GATE against the ``tgate`` package: its ``register_forward`` and ``tgate_scheduler``
drive diffusers' UNet2DConditionModel holding the same weights (diffusers' own
converter) through the denoising loop of the package's SD / SDXL pipelines (Euler on
the same sigmas), step by step; the schedule; off is bit-identical; bad settings."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from test_unet_parity import SD21_TINY, SDXL_TINY, assert_close, build
from unet_oracle import sdxl_vector, to_diffusers

from sgm.errors import InputError
from sgm.modules import sampling_step
from sgm.modules._attention_layers import CrossAttention
from sgm.modules.diffusionmodules import tgate
from sgm.modules.diffusionmodules.sampling import EulerEDMSampler
from sgm.modules.diffusionmodules.tgate import Plan, TGate
from sgm.modules.diffusionmodules.wrappers import compile_network

pytestmark = pytest.mark.parity

SCALE = 5.0
GUIDERS = {
    "cfg": {
        "target": "sgm.modules.diffusionmodules.guiders.VanillaCFG",
        "params": {"scale": SCALE},
    },
    "none": {"target": "sgm.modules.diffusionmodules.guiders.IdentityGuider"},
    "video": {
        "target": "sgm.modules.diffusionmodules.guiders.LinearPredictionGuider",
        "params": {"max_scale": 2.0, "num_frames": 1},
    },
}


def _reference():
    """The package's ``tgate_utils`` module (its ``__init__`` imports every pipeline)."""
    spec = importlib.util.find_spec("tgate")
    path = Path(spec.submodule_search_locations[0]) / "tgate_utils.py"
    module_spec = importlib.util.spec_from_file_location("tgate_reference_utils", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _sampler(num_steps: int, guider: str = "cfg") -> EulerEDMSampler:
    return EulerEDMSampler(
        discretization_config={
            "target": "sgm.modules.diffusionmodules.discretizer.EDMDiscretization",
            "params": {"sigma_min": 0.05, "sigma_max": 8.0},
        },
        num_steps=num_steps,
        guider_config=GUIDERS[guider],
    )


def _timestep(sigma: torch.Tensor) -> torch.Tensor:
    return sigma * 60.0


def _inputs(params: dict, sdxl: bool, seed: int = 0):
    """Noise, conditioning and unconditional conditioning (sgm's dicts and diffusers'
    keyword arguments for each)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(2, 4, 16, 16, generator=g)
    sides = []
    for _ in range(2):
        context = torch.randn(2, 7, params["context_dim"], generator=g)
        ours, theirs = {"crossattn": context}, {"encoder_hidden_states": context}
        if sdxl:
            text = torch.randn(2, 64, generator=g)
            time_ids = torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2) + torch.rand(1, generator=g)
            ours["vector"] = sdxl_vector(text, time_ids)
            theirs["added_cond_kwargs"] = {"text_embeds": text, "time_ids": time_ids}
        sides.append((ours, theirs))
    (c, c_theirs), (uc, uc_theirs) = sides
    return noise, c, uc, c_theirs, uc_theirs


def _denoiser(ours):
    """An eps-prediction denoiser around ``ours`` (the reference loop's update)."""

    def denoiser(x, sigma, cond):
        s = sigma.reshape(-1, 1, 1, 1)
        t = _timestep(sigma)
        eps = ours(x / (s**2 + 1) ** 0.5, t, context=cond["crossattn"], y=cond.get("vector"))
        return x - s * eps

    return denoiser


def _sample(ours, sampler, noise, c, uc):
    """The network's (guided) noise prediction at every step, ``(x - D(x)) / sigma``."""
    steps = []

    def record(info):
        steps.append((info["x"] - info["denoised"]) / info["sigma"])

    sampler(_denoiser(ours), noise, c, uc, callback=record)
    return steps


def _our_run(ours, sampler, noise, c, uc, options):
    with tgate.enabled(options):
        return _sample(ours, sampler, noise, c, uc)


def _join(a: dict, b: dict) -> dict:
    """The two sides' diffusers keyword arguments in one doubled batch."""
    out = {
        "encoder_hidden_states": torch.cat([a["encoder_hidden_states"], b["encoder_hidden_states"]])
    }
    if "added_cond_kwargs" in a:
        out["added_cond_kwargs"] = {
            k: torch.cat([a["added_cond_kwargs"][k], b["added_cond_kwargs"][k]])
            for k in a["added_cond_kwargs"]
        }
    return out


def _reference_run(theirs, sigmas, noise, c, uc, options, guided=True):
    """The package's pipeline loop: guided (negative first) before the gate step, then
    the negative conditioning alone; the scheduler's flags set on every Attention.
    Without guidance the loop keeps the conditional pass and the gate keeps the outputs
    as they are (``keep_shape``: there are no halves to average)."""
    ref = _reference()
    off = {"cache": False, "reuse": False}
    ref.register_forward(theirs, "Attention", ca_kward=off, sa_kward=off, keep_shape=True)
    x = noise * (1 + sigmas[0] ** 2) ** 0.5
    steps = []
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        doubled = guided and i < options.gate_step
        if doubled:
            latent, kwargs = torch.cat([x] * 2), _join(uc, c)
        else:
            latent, kwargs = x, uc if guided else c
        ca, sa, keep_shape = ref.tgate_scheduler(
            cur_step=i,
            gate_step=options.gate_step,
            sp_interval=options.sp_interval,
            fi_interval=options.fi_interval,
            warm_up=options.warm_up,
        )
        keep_shape = keep_shape or not guided
        ref.register_forward(theirs, "Attention", ca_kward=ca, sa_kward=sa, keep_shape=keep_shape)
        t = _timestep(sigma).expand(latent.shape[0])
        eps = theirs(latent / (1 + sigma**2) ** 0.5, t, **kwargs).sample
        if doubled:
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + SCALE * (eps_c - eps_u)
        steps.append(eps)
        x = x + (sigmas[i + 1] - sigma) * eps
    return steps


def _first_reuse(options: TGate, num_steps: int) -> int:
    plans = options.schedule(num_steps)
    return next(i for i, p in enumerate(plans) if "reuse" in (p.cross, p.self_attn))


@pytest.mark.parametrize(
    "params,sdxl,options,num_steps,guider",
    [
        (SD21_TINY, False, TGate(5, sp_interval=2, fi_interval=1, warm_up=1), 7, "cfg"),
        (SD21_TINY, False, TGate(6), 8, "cfg"),  # the package's defaults
        (SD21_TINY, False, TGate(3, sp_interval=2, fi_interval=2, warm_up=1), 6, "none"),
        (SDXL_TINY, True, TGate(4, sp_interval=5, fi_interval=2, warm_up=0), 6, "cfg"),
    ],
)
def test_matches_the_tgate_package_step_by_step(params, sdxl, options, num_steps, guider):
    ours = build(params, from_omegaconf=sdxl)
    theirs = to_diffusers(ours, params)
    noise, c, uc, c_theirs, uc_theirs = _inputs(params, sdxl)
    sampler = _sampler(num_steps, guider)
    sigmas = sampler.discretization(num_steps)
    with torch.no_grad():
        got = _our_run(ours, sampler, noise, c, uc, options)
        plain = _our_run(ours, sampler, noise, c, uc, None)
        want = _reference_run(theirs, sigmas, noise, c_theirs, uc_theirs, options, guider == "cfg")
    assert len(got) == len(want) == num_steps
    for a, b in zip(got, want, strict=True):
        assert_close(a, b, rtol=1e-4)
    first = _first_reuse(options, num_steps)
    for i in range(first):  # nothing reused yet: the plain run's numbers exactly
        assert torch.equal(got[i], plain[i])
    # the gate moves the predictions far beyond the tolerance: the comparison tests it
    effect = max((a - b).abs().max().item() for a, b in zip(got, plain, strict=True))
    assert effect > 10 * 1e-4 * max(b.abs().max().item() for b in want)


def test_the_unconditional_pass_after_the_gate():
    """Up to the gate the guided batch (unconditional rows first); after it the denoiser
    sees the state once, with the unconditional conditioning, and its output is the
    estimate (no guidance)."""
    seen, estimates = [], []
    attention = CrossAttention(3, heads=1, dim_head=4)  # keeps its output at the gate

    def denoiser(x, sigma, cond):
        seen.append(tuple(cond["crossattn"][:, 0, 0].tolist()))
        attention(torch.zeros(x.shape[0], 1, 3), context=cond["crossattn"])
        return x * 0.5 + cond["crossattn"][:, :1, :1, None]

    c, uc = {"crossattn": torch.ones(1, 2, 3)}, {"crossattn": torch.zeros(1, 2, 3)}
    with tgate.enabled(TGate(3)):
        _sampler(5)(
            denoiser,
            torch.randn(1, 4, 2, 2),
            c,
            uc,
            callback=lambda info: estimates.append(info["denoised"] - info["x"] * 0.5),
        )
    assert seen == [(0.0, 1.0)] * 3 + [(0.0,)] * 2
    for estimate, want in zip(estimates, [SCALE] * 3 + [0.0] * 2, strict=True):
        torch.testing.assert_close(estimate, torch.full_like(estimate, want))


def _package_plan(ref, options: TGate, step: int) -> Plan:
    ca, sa, keep_shape = ref.tgate_scheduler(
        cur_step=step,
        gate_step=options.gate_step,
        sp_interval=options.sp_interval,
        fi_interval=options.fi_interval,
        warm_up=options.warm_up,
    )

    def action(flags):
        return {(False, False): "compute", (True, False): "cache", (False, True): "reuse"}[
            (flags["cache"], flags["reuse"])
        ]

    return Plan(action(ca), action(sa), step < options.gate_step, not keep_shape)


@pytest.mark.parametrize("gate_step", [1, 2, 3, 7, 10, 25])
@pytest.mark.parametrize(
    "sp_interval,fi_interval,warm_up", [(5, 1, 2), (2, 3, 0), (1, 2, 4), (3, 1, 1)]
)
def test_schedule_matches_the_package_scheduler(gate_step, sp_interval, fi_interval, warm_up):
    ref = _reference()
    options = TGate(gate_step, sp_interval, fi_interval, warm_up)
    assert options.schedule(25) == tuple(_package_plan(ref, options, i) for i in range(25))


def test_schedule():
    c, k, r = "compute", "cache", "reuse"
    plans = TGate(6, sp_interval=3, fi_interval=2, warm_up=1).schedule(10)
    assert [(p.cross, p.self_attn) for p in plans] == [
        (c, c),  # warm-up
        (c, k),  # step warm_up keeps self-attention
        (c, r),
        (c, k),  # every sp_interval-th step
        (c, r),
        (k, k),  # the gate: both kept
        (r, k),  # every fi_interval-th step
        (r, r),
        (r, k),
        (r, r),
    ]
    assert [p.guidance for p in plans] == [True] * 6 + [False] * 4
    assert [p.average for p in plans] == [False] * 5 + [True] + [False] * 4
    assert TGate(1).plan(0) == Plan("cache", "cache", True, True)


def test_off_and_outside_a_loop_the_network_is_unchanged():
    ours = build(SD21_TINY)
    noise, c, uc, _, _ = _inputs(SD21_TINY, False)
    sampler = _sampler(5)
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([500.0, 500.0])
    with torch.no_grad():
        plain = _our_run(ours, sampler, noise, c, uc, None)
        plain_net = ours(x, t, context=c["crossattn"])
        with tgate.enabled(TGate(2)):
            again = [
                _our_run(ours, sampler, noise, c, uc, None),
                # no sampling step: everything computed, nothing kept
                ours(x, t, context=c["crossattn"]),
                ours(x * 0.5, t, context=c["crossattn"]),
            ]
            with sampling_step.at(3, 5):  # a step, but no sampler's call: plain too
                stepped = ours(x, t, context=c["crossattn"])
            assert not tgate.active().kept
    for a, b in zip(again[0], plain, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(again[1], plain_net)
    assert torch.equal(again[2], ours(x * 0.5, t, context=c["crossattn"]))
    assert torch.equal(stepped, plain_net)


def test_runs_in_one_block_do_not_share_kept_outputs():
    ours = build(SD21_TINY)
    first = _inputs(SD21_TINY, False, seed=1)[:3]
    noise, c, uc, _, _ = _inputs(SD21_TINY, False)
    options = TGate(3, sp_interval=2, warm_up=0)
    with torch.no_grad():
        alone = _our_run(ours, _sampler(6), noise, c, uc, options)
        with tgate.enabled(options):
            _sample(ours, _sampler(4), *first)
            second = _sample(ours, _sampler(6), noise, c, uc)
    for a, b in zip(second, alone, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"gate_step": 0}, "tgate gate_step must be at least 1, got 0"),
        ({"gate_step": 2.5}, "tgate gate_step must be an integer, got 2.5"),
        ({"gate_step": 5, "sp_interval": 0.5}, "tgate sp_interval must be an integer, got 0.5"),
        ({"gate_step": 5, "sp_interval": 0}, "tgate sp_interval must be at least 1, got 0"),
        ({"gate_step": 5, "fi_interval": -1}, "tgate fi_interval must be at least 1, got -1"),
        ({"gate_step": 5, "fi_interval": True}, "tgate fi_interval must be an integer, got True"),
        ({"gate_step": 5, "warm_up": -2}, "tgate warm_up must be 0 or more, got -2"),
    ],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(InputError, match=message):
        TGate(**kwargs)


def test_a_gate_beyond_the_steps_is_refused_before_the_network_runs():
    calls = []

    def denoiser(x, sigma, cond):
        calls.append(x)
        return x

    c = {"crossattn": torch.zeros(1, 2, 3)}
    with pytest.raises(InputError, match="^tgate gate step 5 is beyond the 4 sampling steps$"):
        with tgate.enabled(TGate(5)):
            _sampler(4)(denoiser, torch.randn(1, 4, 2, 2), c, c)
    assert not calls
    with pytest.raises(InputError, match="gate step 5 is beyond the 4 sampling steps"):
        TGate(5).check_sampler(_sampler(4))
    TGate(4).check_sampler(_sampler(4))
    TGate(5).check_sampler(_sampler(4), num_steps=5)


def test_a_gate_that_kept_no_cross_attention_stops_the_run():
    calls = []

    def denoiser(x, sigma, cond):  # no attention layer: nothing kept at the gate
        calls.append(x.shape[0])
        return x

    c = {"crossattn": torch.zeros(1, 2, 3)}
    message = "^tgate kept no cross-attention at its gate \\(step 1\\): the network has none or runs compiled$"
    with pytest.raises(InputError, match=message), tgate.enabled(TGate(2)):
        _sampler(4)(denoiser, torch.randn(1, 4, 2, 2), c, c)
    assert calls == [2, 2]  # refused before the unconditional pass


def test_a_guider_without_halves_is_refused():
    message = "^tgate needs classifier-free guidance \\(VanillaCFG\\) or none; the sampler's guider is LinearPredictionGuider$"
    with pytest.raises(InputError, match=message):
        TGate(2).check_sampler(_sampler(4, "video"))
    c = {"crossattn": torch.zeros(1, 2, 3)}
    with pytest.raises(InputError, match=message), tgate.enabled(TGate(2)):
        _sampler(4, "video")(lambda x, s, c: x, torch.randn(1, 4, 2, 2), c, c)


def test_a_network_without_cross_attention_is_refused():
    TGate(3).check_network(build(SD21_TINY))
    no_context = build(dict(SD21_TINY, attention_resolutions=[4], context_dim=None))
    with pytest.raises(
        InputError, match="^tgate needs cross-attention; UNetModel takes no context$"
    ):
        TGate(3).check_network(no_context)
    with pytest.raises(
        InputError, match="^tgate needs cross-attention; Sequential has no attention layers$"
    ):
        TGate(3).check_network(torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3)))
    with pytest.raises(
        InputError, match="^tgate needs cross-attention; Sequential takes no context$"
    ):
        TGate(3).check_network(torch.nn.Sequential(CrossAttention(8, heads=2, dim_head=4)))
    for freeze in (False, True):
        compiled = compile_network(build(SD21_TINY), freeze=freeze)  # compiles at its first call
        with pytest.raises(
            InputError, match="^tgate needs an eager network; UNetModel's forward is compiled$"
        ):
            TGate(3).check_network(compiled)
