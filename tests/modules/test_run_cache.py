"""``sgm.modules.run_cache``: values reused through one sampling run only while their
inputs are the same, unchanged tensors; sampling with the cache gives the same numbers
as computing everything at every step, and projects the text context once per run."""

from __future__ import annotations

import pytest
import torch
from builders import write_tiny_model
from omegaconf import OmegaConf

from sgm.modules import run_cache
from sgm.modules._attention_layers import CrossAttention


def _counting(fn):
    calls = []

    def compute():
        calls.append(1)
        return fn()

    return compute, calls


def test_reuse_keeps_a_value_while_its_inputs_are_the_same_tensors():
    a, b = torch.ones(3), torch.zeros(3)
    compute, calls = _counting(lambda: a + b)
    with torch.no_grad(), run_cache.sampling_run():
        first = run_cache.reuse("slot", (a, b), compute)
        assert run_cache.reuse("slot", (a, b), compute) is first
        assert len(calls) == 1
        a.add_(1)  # in place: version counter moves
        assert torch.equal(run_cache.reuse("slot", (a, b), compute), torch.full((3,), 2.0))
        assert len(calls) == 2
        same_values = a.clone()  # equal values, another tensor
        run_cache.reuse("slot", (same_values, b), compute)
        assert len(calls) == 3
        run_cache.reuse("other slot", (same_values, b), compute)
        assert len(calls) == 4


@pytest.mark.parametrize("where", ["outside a run", "with autograd", "inference tensors"])
def test_reuse_computes_every_time(where):
    a = torch.ones(3)
    compute, calls = _counting(lambda: a * 2)
    for _ in range(2):
        if where == "outside a run":
            with torch.no_grad():
                run_cache.reuse("slot", (a,), compute)
        elif where == "with autograd":
            with run_cache.sampling_run(), torch.enable_grad():
                run_cache.reuse("slot", (a,), compute)
        else:
            with run_cache.sampling_run(), torch.inference_mode():
                run_cache.reuse("slot", (torch.ones(3),), compute)
    assert len(calls) == 2


def test_nested_runs_and_the_end_of_a_run_drop_values():
    a = torch.ones(3)
    compute, calls = _counting(lambda: a * 2)
    with torch.no_grad():
        with run_cache.sampling_run():
            run_cache.reuse("slot", (a,), compute)
            with run_cache.sampling_run():
                run_cache.reuse("slot", (a,), compute)
            run_cache.reuse("slot", (a,), compute)
        with run_cache.sampling_run():
            run_cache.reuse("slot", (a,), compute)
    assert len(calls) == 3


def test_cross_attention_projects_a_context_once_and_follows_weight_changes():
    torch.manual_seed(0)
    attn = CrossAttention(query_dim=16, context_dim=12, heads=2, dim_head=8).eval()
    x, context = torch.randn(2, 5, 16), torch.randn(2, 7, 12)
    calls = []
    attn.to_k.register_forward_hook(lambda *_: calls.append("k"))
    with torch.no_grad():
        want = attn(x, context)
        with run_cache.sampling_run():
            got = [attn(x + i, context) for i in range(3)]
            assert calls.count("k") == 1 + 1
            torch.testing.assert_close(got[0], want, rtol=0, atol=0)
            torch.testing.assert_close(got[2], attn(x + 2, context.clone()), rtol=0, atol=0)
            attn.to_k.weight.mul_(2)  # a weight changed mid-run is seen
            changed = attn(x, context)
        assert not torch.allclose(changed, want)
        torch.testing.assert_close(changed, attn(x, context), rtol=0, atol=0)
        own = CrossAttention(query_dim=16, heads=2, dim_head=8).eval()
        own.to_k.register_forward_hook(lambda *_: calls.append("own k"))
        with run_cache.sampling_run():
            own(x)  # self-attention: keys come from x, nothing to reuse
            own(x)
        assert calls.count("own k") == 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_image_clip_dir):
    root = tmp_path_factory.mktemp("run_cache")
    return write_tiny_model("sdxl_base", tiny_image_clip_dir, root / "model", "tiny.safetensors")


def test_sampling_an_engine_projects_the_text_once_per_run_with_the_same_numbers(tiny, monkeypatch):
    """A tiny SDXL engine, Euler with CFG: the same latents bit for bit as when every step
    computes everything (``run_cache.disabled()``), and each cross-attention's ``to_k``
    runs once per run instead of once per step."""
    from sgm.inference.helpers import do_sample
    from sgm.modules.diffusionmodules.sampling import EulerEDMSampler
    from sgm.util import instantiate_from_config

    config, ckpt = tiny
    engine = instantiate_from_config(OmegaConf.load(config).model).eval()
    engine.init_from_ckpt(str(ckpt))
    cross = [
        m
        for name, m in engine.model.named_modules()
        if isinstance(m, CrossAttention) and name.endswith("attn2")
    ]
    assert cross
    calls = []
    for m in cross:
        m.to_k.register_forward_hook(lambda *_: calls.append(1))
    diff = "sgm.modules.diffusionmodules"
    sampler = EulerEDMSampler(
        num_steps=4,
        discretization_config={"target": f"{diff}.discretizer.LegacyDDPMDiscretization"},
        guider_config={"target": f"{diff}.guiders.VanillaCFG", "params": {"scale": 4.0}},
    )
    value_dict = {
        "prompt": "a red cube",
        "negative_prompt": "",
        "orig_height": 16,
        "orig_width": 16,
        "crop_coords_top": 0,
        "crop_coords_left": 0,
        "target_height": 16,
        "target_width": 16,
    }
    noise = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(3))

    def sample():
        calls.clear()
        latents = do_sample(
            engine, sampler, value_dict, 1, 16, 16, 4, 8, noise=noise, return_latents=True
        )[1]
        return latents, len(calls)

    cached, cached_calls = sample()
    assert cached_calls == len(cross)
    with run_cache.disabled():
        plain, plain_calls = sample()
    assert plain_calls == 4 * len(cross)
    assert float(plain.abs().max()) > 1e-3
    torch.testing.assert_close(cached, plain, rtol=0, atol=0)


def test_values_of_temporary_inputs_are_not_held():
    kept = []
    with torch.no_grad(), run_cache.sampling_run():
        for i in range(3):
            temporary = torch.full((4,), float(i))  # made anew at every call
            run_cache.reuse("slot", (temporary,), lambda t=temporary: t * 2)
            kept.append(len(run_cache._RUN.get()))
            del temporary
            kept.append(len(run_cache._RUN.get()))
    assert kept == [1, 0, 1, 0, 1, 0]


def test_the_end_of_a_run_frees_its_values_without_the_cyclic_collector():
    import gc
    import weakref

    a = torch.ones(3)
    gc.disable()
    try:
        with torch.no_grad(), run_cache.sampling_run():
            value = run_cache.reuse("slot", (a,), lambda: a * 2)
            assert run_cache.reuse("slot", (a,), lambda: a * 3) is value
            ref = weakref.ref(value)
            del value
            assert ref() is not None  # kept through the run
        assert ref() is None  # and gone as soon as it ends, its input still alive
    finally:
        gc.enable()


def test_disabled_runs_keep_nothing_and_the_switch_is_restored():
    a = torch.ones(3)
    compute, calls = _counting(lambda: a * 2)
    with torch.no_grad():
        with run_cache.disabled(), run_cache.sampling_run():
            run_cache.reuse("slot", (a,), compute)
            run_cache.reuse("slot", (a,), compute)
        assert len(calls) == 2
        with run_cache.sampling_run():
            run_cache.reuse("slot", (a,), compute)
            run_cache.reuse("slot", (a,), compute)
    assert len(calls) == 3
