"""``compile_model``: the engine's network really goes through TorchDynamo, keeps its
state-dict keys, and samples what the uncompiled network samples.

TorchDynamo runs with its ``eager`` backend here (the captured graph executed by
PyTorch itself): it proves the network is traced without paying a C++ compilation per
test. ``benchmarks/sample_*.py --compile`` run the default (inductor) backend.
"""

from __future__ import annotations

import functools

import pytest
import torch
from builders import write_tiny_model
from omegaconf import OmegaConf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_image_clip_dir):
    """(config path, checkpoint path) of a tiny SDXL-like engine with random weights."""
    root = tmp_path_factory.mktemp("compile_model")
    return write_tiny_model("sdxl_base", tiny_image_clip_dir, root / "model", "tiny.safetensors")


@pytest.fixture
def dynamo(monkeypatch):
    """torch.compile with the eager backend; yields the count of captured graphs."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    yield lambda: torch._dynamo.utils.counters["stats"]["unique_graphs"]
    torch._dynamo.reset()


def _engine(config_path, ckpt, compile_model: bool):
    from sgm.util import instantiate_from_config

    config = OmegaConf.load(config_path)
    config.model.params.compile_model = compile_model
    engine = instantiate_from_config(config.model).eval()
    engine.init_from_ckpt(str(ckpt))
    return engine


def test_compiled_engine_keeps_keys_and_loads_checkpoints_strictly(tiny, dynamo):
    plain = _engine(*tiny, compile_model=False)
    compiled = _engine(*tiny, compile_model=True)  # init_from_ckpt is strict
    assert list(compiled.state_dict()) == list(plain.state_dict())
    assert not any("_orig_mod" in k for k in compiled.state_dict())
    # the same file loads into either; the module tree is unchanged
    assert type(compiled.model.diffusion_model) is type(plain.model.diffusion_model)


def test_compiled_network_is_traced_and_matches_the_eager_network(tiny, dynamo):
    plain = _engine(*tiny, compile_model=False)
    compiled = _engine(*tiny, compile_model=True)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    t = torch.tensor([3.0, 700.0])
    cond = {
        "crossattn": torch.randn(2, 77, 32, generator=gen),
        "vector": torch.randn(2, 48, generator=gen),
    }
    assert dynamo() == 0
    with torch.no_grad():
        want = plain.model(x, t, cond)
        got = compiled.model(x, t, cond)
    assert dynamo() >= 1, "compile_model=True ran the network without TorchDynamo"
    assert float(want.abs().max()) > 1e-3
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * float(want.abs().max()))


def test_sampling_pipeline_compile_option_samples_the_same_images(tiny, dynamo):
    from sgm.inference.api import SamplingParams, SamplingPipeline

    config, ckpt = tiny
    params = SamplingParams(width=16, height=16, steps=2, orig_width=16, orig_height=16, scale=3.0)
    plain = SamplingPipeline(config=str(config), ckpt=ckpt, device="cpu")
    want = plain.text_to_image(params, "a red cube", seed=5)
    assert dynamo() == 0
    compiled = SamplingPipeline(config=str(config), ckpt=ckpt, device="cpu", compile_model=True)
    got = compiled.text_to_image(params, "a red cube", seed=5)
    assert dynamo() >= 1
    assert "compile_model" not in OmegaConf.load(config).model.params  # caller's file intact
    assert float(want.std()) > 1e-3
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


class _ConvNet(torch.nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.inner = torch.nn.Conv2d(4, 16, 3, padding=1)
        self.outer = torch.nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer(torch.nn.functional.silu(self.inner(x)))


def test_frozen_compile_follows_weight_changes():
    """Inductor with ``freezing`` really folds the weights into the graph (a plain
    frozen compile keeps answering with (partly) old weights after ``load_state_dict``);
    ``compile_network(freeze=True)`` notices the change and compiles again."""
    import torch._dynamo

    from sgm.modules.diffusionmodules.wrappers import compile_network

    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    old, new = _ConvNet(seed=1), _ConvNet(seed=2)
    with torch.no_grad():
        want_old, want_new = old(x), new(x)
    assert float((want_old - want_new).abs().max()) > 1e-2

    torch._dynamo.reset()
    try:
        from torch._inductor import config as inductor_config

        unguarded = _ConvNet(seed=1)
        forward = torch.compile(unguarded.forward)
        with torch.no_grad(), inductor_config.patch(freezing=True):
            torch.testing.assert_close(forward(x), want_old)
            unguarded.load_state_dict(new.state_dict())
            stale = forward(x)  # packed kernels were folded in as constants
        assert float((stale - want_new).abs().max()) > 1e-2

        torch._dynamo.reset()
        guarded = compile_network(_ConvNet(seed=1), freeze=True)
        with torch.no_grad():
            torch.testing.assert_close(guarded(x), want_old)
            guarded.load_state_dict(new.state_dict())
            torch.testing.assert_close(guarded(x), want_new)
        assert list(guarded.state_dict()) == list(new.state_dict())
        # with autograd the compiled graph takes the weights as inputs and trains
        guarded(x).sum().backward()
        assert guarded.inner.weight.grad is not None
    finally:
        torch._dynamo.reset()


def test_network_traces_as_one_graph_inside_a_sampling_run(tiny):
    """No graph break: inside a run, TorchDynamo traces the plain computation of the
    values ``sgm.modules.run_cache`` would reuse in eager mode."""
    import torch._dynamo

    from sgm.modules import run_cache

    engine = _engine(*tiny, compile_model=False)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    cond = {
        "crossattn": torch.randn(2, 77, 32, generator=gen),
        "vector": torch.randn(2, 48, generator=gen),
    }
    network = engine.model.diffusion_model
    with torch.no_grad(), run_cache.sampling_run():
        explained = torch._dynamo.explain(network.forward)(
            x, timesteps=torch.tensor([3.0, 700.0]), context=cond["crossattn"], y=cond["vector"]
        )
    torch._dynamo.reset()
    assert explained.graph_count == 1, explained.break_reasons
