"""sample_video on the toy SVD engine: compute dtype, low-VRAM offloading, frame chunking,
the image-only indicator for any batch, and per-step callbacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from builders import VIDEO_ARCH, wake_zero_weights
from test_precision_offload import RecordingOffloader, trap_host_reads
from test_video_sampling import TINY_CONFIG

from sgm import offload
from sgm.inference.video import build_value_dict, load_video_model, sample_video
from sgm.modules.diffusionmodules.guiders import IdentityGuider

FRAMES = 3
PARTS = ("conditioner", "model", "first_stage_model")


@pytest.fixture(scope="module")
def arch(video_arch_dir):
    return VIDEO_ARCH


def _model(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = load_video_model(TINY_CONFIG, None, "cpu", num_frames=FRAMES, num_steps=2, **kwargs)
    wake_zero_weights(model.model, std=0.05)  # zero output layers would hide the network
    return model


@pytest.fixture(scope="module")
def model(arch):
    return _model()


def _values(seed: int = 1) -> dict:
    rng = np.random.RandomState(seed)
    image = torch.from_numpy(rng.uniform(-1, 1, (1, 3, 64, 64)).astype(np.float32))
    return build_value_dict(image, 0.02, generator=torch.Generator().manual_seed(seed))


def _sample(model, **kwargs) -> torch.Tensor:
    return sample_video(
        model, _values(), FRAMES, generator=torch.Generator().manual_seed(3), decoding_t=2, **kwargs
    )


def test_indicator_follows_the_batch_and_chunk_sizes_are_restored(model, monkeypatch):
    shapes, decodes, steps = [], [], []
    net = model.model.diffusion_model
    hooks = [
        net.register_forward_pre_hook(
            lambda m, a, kw: shapes.append(tuple(kw["image_only_indicator"].shape)),
            with_kwargs=True,
        ),
        model.first_stage_model.decoder.register_forward_pre_hook(
            lambda m, a: decodes.append(a[0].shape[0])
        ),
    ]
    (encoder,) = [e for e in model.conditioner.embedders if e.input_key == "cond_frames"]
    try:
        _sample(model, callback=steps.append, encoding_t=1)
        assert shapes == [(2, FRAMES)] * 2  # guidance doubles the one video
        assert decodes == [2, 1]  # decoding_t frames at a time
        assert [s["i"] for s in steps] == [0, 1]
        assert model.en_and_decode_n_samples_a_time is None
        assert encoder.en_and_decode_n_samples_a_time is None
        shapes.clear()
        monkeypatch.setattr(model.sampler, "guider", IdentityGuider())
        frames = _sample(model)
        assert shapes == [(1, FRAMES)] * 2 and frames.shape == (FRAMES, 3, 64, 64)
    finally:
        for hook in hooks:
            hook.remove()


def test_video_sampling_loop_never_reads_the_device(model, monkeypatch):
    """VideoUNet, the video denoiser and the per-frame guider included."""
    reference = _sample(model)
    armed = []
    trap_host_reads(model.sampler, monkeypatch, armed)
    frames = _sample(model)
    assert armed == [2] and torch.equal(frames, reference)


def test_bf16_runs_the_network_in_bf16_and_the_autoencoders_in_float32(model):
    net_out, decoded, encoded = [], [], []
    hooks = [
        model.model.diffusion_model.register_forward_hook(
            lambda m, a, out: net_out.append(out.dtype)
        ),
        model.first_stage_model.decoder.register_forward_hook(
            lambda m, a, out: decoded.append(out.dtype)
        ),
        model.conditioner.embedders[3].encoder.encoder.register_forward_hook(
            lambda m, a, out: encoded.append(out.dtype)
        ),
    ]
    try:
        exact = _sample(model)
        net_out.clear(), decoded.clear(), encoded.clear()
        mixed = _sample(model, dtype="bf16")
    finally:
        for hook in hooks:
            hook.remove()
    assert net_out == [torch.bfloat16] * 2
    assert set(decoded) == set(encoded) == {torch.float32}
    assert torch.isfinite(mixed).all() and 0 < (mixed - exact).abs().max() < 0.05


def test_offloaded_video_model_gives_the_same_frames(model):
    reference = _sample(model)
    offloader = offload.offload_engine(model, "cpu", offloader=RecordingOffloader())
    names = {id(getattr(model, p)): p for p in PARTS}
    runs = []
    watched = {
        "conditioner": model.conditioner.embedders,
        "model": [model.model.diffusion_model],
        "first_stage_model": [model.first_stage_model.decoder],
    }
    hooks = [
        module.register_forward_pre_hook(
            lambda m, a, name=name: runs.append((name, {names[i] for i in offloader.on_device}))
        )
        for name, modules in watched.items()
        for module in modules
    ]
    try:
        frames = _sample(model)
    finally:
        for hook in hooks:
            hook.remove()
        offloader.remove()
    assert torch.equal(frames, reference)
    assert {name for name, _ in runs} == set(PARTS)
    assert all(on_device == {name} for name, on_device in runs), runs
    assert offloader.on_device == set()


def test_load_video_model_dtype_offload_and_half_weights(model):
    low = _model(dtype="bf16", offload=True, half_weights=True)
    assert low.compute_dtype == torch.bfloat16
    assert offload.execution_device(low) == torch.device("cpu")
    assert next(low.model.parameters()).dtype == torch.bfloat16
    assert {p.dtype for p in low.first_stage_model.parameters()} == {torch.float32}
    assert {p.dtype for p in low.conditioner.parameters()} == {torch.float32}
    frames = _sample(low)
    assert torch.isfinite(frames).all()
    assert (frames - _sample(model, dtype="bf16")).abs().max() < 0.05


@pytest.mark.gpu
def test_gpu_clip_image_embedder_runs_under_autocast(model):
    """As in the original, the CLIP image tower autocasts on the accelerator even when
    the caller opened no autocast; its output comes back in the input's dtype."""
    embedder = model.conditioner.embedders[0].open_clip.to("cuda")
    seen = []
    hook = embedder.model.visual.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    try:
        out = embedder(torch.rand(2, 3, 64, 64, device="cuda") * 2 - 1)
    finally:
        hook.remove()
        embedder.to("cpu")
    assert seen == [torch.float16] and out.dtype == torch.float32
