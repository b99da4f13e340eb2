"""EngineRun: every sampling path goes through it, it puts the engine back as it was, and
the sampler's step inputs (SV4D's dense windows) equal a hand-written loop."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from builders import CONFIGS, build_engine, tiny_image_config, wake_zero_weights

from sgm.inference import sv4d
from sgm.inference.sv4d_sampling import Window
from sgm.models.engine_run import EngineRun
from sgm.modules.diffusionmodules.sampling import EulerEDMSampler, StepInputs


@pytest.fixture
def runs(monkeypatch):
    """The (engine, sampler) pairs EngineRun.sample ran, in order."""
    seen = []
    original = EngineRun.sample

    def recording(self, sampler, *args, **kwargs):
        seen.append((self.engine, type(sampler).__name__))
        return original(self, sampler, *args, **kwargs)

    monkeypatch.setattr(EngineRun, "sample", recording)
    return seen


@pytest.fixture(scope="module")
def image_engine(tiny_image_clip_dir):
    engine = build_engine(tiny_image_config("sd_2_1", tiny_image_clip_dir))
    wake_zero_weights(engine.model)
    return engine.eval()


@pytest.fixture(scope="module")
def video_engine(video_arch_dir):
    from sgm.inference.video import load_video_model

    torch.manual_seed(0)
    return load_video_model(CONFIGS / "video_tiny_svd.yaml", None, "cpu", 3, 2)


def test_image_paths_run_through_the_engine_run(image_engine, runs, monkeypatch):
    from sgm.inference.api import SamplingParams
    from sgm.inference.helpers import do_img2img, do_sample
    from sgm.inference.sampling_params import get_sampler_config

    params = SamplingParams(width=64, height=64, steps=2, sampler="EulerEDMSampler")
    values = {"prompt": "a cat", "negative_prompt": ""}
    images = do_sample(image_engine, get_sampler_config(params), values, 1, 64, 64, 4, 8, seed=1)
    assert images.shape == (1, 3, 64, 64) and 0 <= images.min() <= images.max() <= 1
    do_img2img(images * 2 - 1, image_engine, get_sampler_config(params), values, 1, seed=1)
    from sgm.inference.batch import get_batch, get_unique_embedder_keys_from_conditioner

    keys = get_unique_embedder_keys_from_conditioner(image_engine.conditioner)
    c, uc = EngineRun(image_engine).condition(*get_batch(keys, values, [1]), num=1)
    monkeypatch.setattr(image_engine, "sampler", get_sampler_config(params), raising=False)
    latents = image_engine.sample(c, uc=uc, shape=(4, 8, 8), batch_size=1)
    assert latents.shape == (1, 4, 8, 8)
    assert runs == [(image_engine, "EulerEDMSampler")] * 3


def test_video_and_sv4d_paths_run_through_the_engine_run(video_engine, runs):
    from sgm.inference.video import build_value_dict, sample_video

    image = torch.rand(1, 3, 64, 64) * 2 - 1
    values = build_value_dict(image, 0.02, generator=torch.Generator().manual_seed(0))
    frames = sample_video(video_engine, values, 3, seed=0, decoding_t=2)
    assert frames.shape == (3, 3, 64, 64)
    assert runs == [(video_engine, type(video_engine.sampler).__name__)]

    # SV4D windows (whole and dense) reach the same method
    spec = sv4d.Spec("toy", 2, 1, "SpatiotemporalPredictionGuider", 2.0)
    sampler = sv4d.build_sampler(spec, 2)
    model = types.SimpleNamespace(model=None, denoiser=lambda net, x, s, c, **kw: x * 0)
    window = Window({}, {}, {"image_only_indicator": torch.zeros(2, 2)})
    sv4d.sample_window(model, sampler, window, torch.randn(2, 4, 2, 2))
    sv4d.sample_dense_window(
        model, sampler, torch.randn(3, 2, 4, 2, 2), [0, 1], [1], window, window, "cpu"
    )
    assert [name for _, name in runs[1:]] == ["EulerEDMSampler"] * 2


def test_the_run_puts_the_engine_back(video_engine):
    embedders = [
        e
        for e in video_engine.conditioner.embedders
        if hasattr(e, "en_and_decode_n_samples_a_time")
    ]
    before = (
        video_engine.en_and_decode_n_samples_a_time,
        [e.en_and_decode_n_samples_a_time for e in embedders],
    )
    assert embedders
    with pytest.raises(RuntimeError, match="inside"):
        with EngineRun(video_engine, decoding_t=1, encoding_t=1):
            assert video_engine.en_and_decode_n_samples_a_time == 1
            assert all(e.en_and_decode_n_samples_a_time == 1 for e in embedders)
            assert not torch.is_grad_enabled()
            raise RuntimeError("inside")
    after = (
        video_engine.en_and_decode_n_samples_a_time,
        [e.en_and_decode_n_samples_a_time for e in embedders],
    )
    assert after == before and torch.is_grad_enabled()
    assert not hasattr(video_engine, "_stack")


def test_condition_keeps_rows_and_repeats_frames():
    class Conditioner:
        def get_unconditional_conditioning(self, batch, batch_uc=None, force_uc_zero_embeddings=()):
            c = {"crossattn": torch.arange(6.0).view(3, 2), "vector": torch.arange(3.0)[:, None]}
            return c, {k: -v for k, v in c.items()}

    engine = types.SimpleNamespace(conditioner=Conditioner())
    run = EngineRun(engine, "cpu")
    c, uc = run.condition({}, num=2)
    assert c["crossattn"].shape == (3, 2) and c["vector"].tolist() == [[0.0], [1.0]]
    c, uc = run.condition({}, num=2, per_sample_except=())
    assert c["crossattn"].shape == (2, 2)
    c, uc = run.condition({}, repeat_per_frame=(2, ("vector",)))
    assert c["vector"].flatten().tolist() == [0, 0, 1, 1, 2, 2]
    assert uc["vector"].flatten().tolist() == [0, 0, -1, -1, -2, -2]


def test_step_inputs_equal_a_hand_written_alternating_loop():
    """Reordered rows and per-step conditioning in the sampler's loop equal the loop SV4D's
    dense windows used to write by hand (gather, one sampler_step, scatter) bit for bit."""
    sampler = EulerEDMSampler(
        num_steps=5,
        discretization_config={
            "target": "sgm.modules.diffusionmodules.discretizer.EDMDiscretization"
        },
        guider_config={
            "target": "sgm.modules.diffusionmodules.guiders.LinearPredictionGuider",
            "params": {"max_scale": 2.0, "num_frames": 6, "min_scale": 1.0},
        },
    )

    def denoiser_for(offset):
        weights = torch.linspace(0.5, 1.5, 12).view(12, 1, 1, 1)

        def denoise(x, sigma, cond):
            return torch.tanh(x * weights[: len(x)]) + offset * cond["vector"].view(-1, 1, 1, 1)

        return denoise

    cond = {"vector": torch.arange(6.0)}
    uc = {"vector": torch.zeros(6)}
    order = torch.tensor([4, 5, 2, 3, 0, 1])
    inputs = (
        StepInputs(denoiser_for(0.1), cond, uc, order),
        StepInputs(denoiser_for(0.3), cond, uc),
    )
    x0 = torch.randn(6, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    got = sampler.sample_steps(lambda i: inputs[i % 2], x0, cond, uc)

    sigmas = sampler.discretization(5)
    x = x0 * torch.sqrt(1.0 + sigmas[0] ** 2.0)
    s_in = torch.ones(6)
    for i in range(len(sigmas) - 1):
        step = inputs[i % 2]
        rows = torch.arange(6) if step.order is None else step.order
        x_step = sampler.sampler_step(
            s_in * sigmas[i], s_in * sigmas[i + 1], step.denoiser, x[rows], step.cond, step.uc
        )
        x = x.clone()
        x[rows] = x_step
    assert torch.equal(got, x)
    assert not np.allclose(got.numpy(), sampler(denoiser_for(0.3), x0, cond, uc).numpy())


def test_speedups_are_options_of_the_run(image_engine, video_engine):
    """DeepCache and token merging reach the network through the run: a changed output
    (each verified against its reference implementation in tests/modules), the same
    output when off, and a one-line refusal of what the network cannot take."""
    from sgm.errors import InputError
    from sgm.inference.api import SamplingParams
    from sgm.inference.helpers import do_sample
    from sgm.inference.sampling_params import deepcache_of, get_sampler_config, tome_of
    from sgm.inference.video import build_value_dict, sample_video
    from sgm.modules.diffusionmodules.deepcache import DeepCache
    from sgm.modules.token_merging import TokenMerging

    params = SamplingParams(width=64, height=64, steps=4, sampler="EulerEDMSampler")
    values = {"prompt": "a cat", "negative_prompt": ""}

    def image(**kwargs):
        sampler = get_sampler_config(params)
        return do_sample(image_engine, sampler, values, 2, 64, 64, 4, 8, seed=3, **kwargs)

    plain = image()
    assert torch.equal(image(deepcache=None, tome=None), plain)
    assert (image(deepcache=DeepCache(2)) - plain).abs().max() > 0
    assert (image(tome=TokenMerging(0.5, max_downsample=8)) - plain).abs().max() > 0
    assert deepcache_of(params) is None and tome_of(params) is None
    assert deepcache_of(SamplingParams(deepcache=3)) == DeepCache(3)
    with pytest.raises(InputError, match="branch 50 is too deep"):
        image(deepcache=DeepCache(2, branch=50))

    frames = build_value_dict(
        torch.zeros(1, 3, 64, 64), 0.02, generator=torch.Generator().manual_seed(0)
    )
    video = sample_video(video_engine, frames, 3, seed=0, deepcache=DeepCache(2))
    assert video.shape == (3, 3, 64, 64)
