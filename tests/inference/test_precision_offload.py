"""Compute dtype and low-VRAM offloading through the sampling pipelines (CPU), plus the
GPU checks (fp16 images are finite, offloading lowers peak memory, no host sync).

On CPU the offloader's "accelerator" and host are both the CPU, so a recording
offloader keeps the books: which component is on the device when each one runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from builders import build_engine, save_state, tiny_image_config, wake_zero_weights
from omegaconf import OmegaConf

from sgm import offload
from sgm.inference.api import Sampler, SamplingParams, SamplingPipeline
from sgm.util import instantiate_from_config

PARTS = ("conditioner", "model", "first_stage_model")


@pytest.fixture(scope="module")
def tiny(tiny_clip_dir, tmp_path_factory):
    """(config, checkpoint) of the tiny SDXL-like engine: CLIP text, f8 KL autoencoder
    with ``disable_first_stage_autocast``, random weights."""
    config = tiny_image_config("sdxl_base", tiny_clip_dir)
    engine = build_engine(config, seed=0)
    wake_zero_weights(engine.model, std=0.05)  # zero output layers would hide the network
    return config, save_state(engine, tmp_path_factory.mktemp("tiny_sdxl") / "tiny.safetensors")


def _params(**kw) -> SamplingParams:
    base = dict(
        width=32,
        height=32,
        steps=2,
        orig_width=32,
        orig_height=32,
        scale=3.0,
        sampler=Sampler.EULER_EDM,
    )
    base.update(kw)
    return SamplingParams(**base)


def _dtypes_seen(module: torch.nn.Module, seen: list) -> None:
    module.register_forward_hook(lambda m, args, out: seen.append(out.dtype))


def test_tiny_engine_samples_end_to_end_in_bf16(tiny):
    config, ckpt = tiny
    exact = SamplingPipeline(config=config, ckpt=ckpt, device="cpu", dtype="fp32")
    mixed = SamplingPipeline(config=config, ckpt=ckpt, device="cpu", dtype="bf16")
    assert (exact.dtype, mixed.dtype) == (torch.float32, torch.bfloat16)
    unet, decoder, steps = [], [], []
    _dtypes_seen(mixed.model.model.diffusion_model, unet)
    _dtypes_seen(mixed.model.first_stage_model.decoder, decoder)
    a = exact.text_to_image(_params(), "a red cube", seed=4)
    b = mixed.text_to_image(_params(), "a red cube", seed=4, callback=steps.append)
    assert unet == [torch.bfloat16] * 2  # the network ran in bf16 ...
    assert decoder == [torch.float32]  # ... the first stage in float32
    assert [s["i"] for s in steps] == [0, 1]
    assert b.dtype == torch.float32 and torch.isfinite(b).all()
    assert 0 < (a - b).abs().max() < 0.05  # bf16 rounding, nothing more


class RecordingOffloader(offload.Offloader):
    """Keeps the books of what is "on the device" (here the CPU, like the host)."""

    def __init__(self) -> None:
        super().__init__("cpu")
        self.on_device: set[int] = set()
        self.moves = 0

    def _to_device(self, module):
        self.on_device.add(id(module))
        self.moves += 1
        super()._to_device(module)

    def _to_host(self, module):
        self.on_device.discard(id(module))
        super()._to_host(module)


def _record_runs(model, offloader) -> list[tuple[str, set[str]]]:
    """(component that runs, components on the device at that moment) per call."""
    names = {id(getattr(model, p)): p for p in PARTS}
    runs: list[tuple[str, set[str]]] = []
    watched = {
        "conditioner": [model.conditioner, *model.conditioner.embedders],
        "model": [model.model.diffusion_model],
        "first_stage_model": [model.first_stage_model.encoder, model.first_stage_model.decoder],
    }
    for name, modules in watched.items():
        for module in modules:
            module.register_forward_pre_hook(
                lambda m, args, name=name: runs.append(
                    (name, {names[i] for i in offloader.on_device})
                )
            )
    return runs


def test_offload_keeps_one_component_on_the_device_while_it_runs(tiny):
    config, ckpt = tiny
    pipe = SamplingPipeline(config=config, ckpt=ckpt, device="cpu", dtype="fp32")
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    params = _params()
    reference = pipe.text_to_image(params, "a red cube", seed=5)
    torch.manual_seed(0)  # the KL encoder samples its posterior from the global stream
    reference_i2i = pipe.image_to_image(params, image, "a red cube", seed=6)
    offloader = offload.offload_engine(pipe.model, "cpu", offloader=RecordingOffloader())
    runs = _record_runs(pipe.model, offloader)
    out = pipe.text_to_image(params, "a red cube", seed=5)
    torch.manual_seed(0)
    out_i2i = pipe.image_to_image(params, image, "a red cube", seed=6)
    assert torch.equal(out, reference) and torch.equal(out_i2i, reference_i2i)
    assert {name for name, _ in runs} == set(PARTS)
    assert all(on_device == {name} for name, on_device in runs), runs
    assert offloader.on_device == set()  # all back on the host after each call
    # per call: conditioner, network, first stage (+ the encoder for img2img)
    assert offloader.moves == 3 + 4


def test_offload_engine_leaves_ema_on_the_host_and_small_parts_on_the_device(tiny):
    config, _ = tiny
    params = OmegaConf.to_container(config.model, resolve=True)
    params["params"]["use_ema"] = True
    engine = instantiate_from_config(params)
    engine.denoiser.to(torch.float64)  # marks where it is sent: .to(device) keeps it
    offloader = offload.offload_engine(engine, "meta")
    try:
        assert engine.denoiser.sigmas.device.type == "meta"
        assert all(p.device.type == "cpu" for p in engine.model_ema.buffers())
        assert all(
            p.device.type == "cpu" for part in PARTS for p in getattr(engine, part).parameters()
        )
        assert offload.execution_device(engine) == torch.device("meta")
        with offload.using(engine.first_stage_model):
            assert next(engine.first_stage_model.parameters()).device.type == "meta"
            assert next(engine.model.parameters()).device.type == "cpu"
    finally:
        offloader.remove()
    assert offload.execution_device(engine) is None


def test_pipeline_offload_flag_and_bad_dtype(tiny):
    from sgm.errors import InputError

    config, ckpt = tiny
    pipe = SamplingPipeline(config=config, ckpt=ckpt, device="cpu", offload=True)
    assert offload.execution_device(pipe.model) == torch.device("cpu")
    assert pipe.model.compute_dtype == torch.float32
    with pytest.raises(InputError, match="'fp8'"):
        SamplingPipeline(config=config, ckpt=Path("/nonexistent"), dtype="fp8")


READS = ("__bool__", "item", "tolist", "__float__", "__int__", "__index__", "numpy", "cpu")


def trap_host_reads(sampler, monkeypatch, armed: list) -> None:
    """Inside the sampler's loop, any read of a tensor's value by Python raises (on an
    accelerator each would be a host synchronisation)."""
    plain = sampler.get_sigma_gen

    def steps(num_sigmas):
        indices = list(plain(num_sigmas))
        armed.append(len(indices))
        with monkeypatch.context() as patch:
            for name in READS:

                def refuse(self, *args, _name=name, **kwargs):
                    raise AssertionError(f"Tensor.{_name} inside the sampling loop")

                patch.setattr(torch.Tensor, name, refuse)
            yield from indices

    monkeypatch.setattr(sampler, "get_sigma_gen", steps)


@pytest.fixture(scope="module")
def pipe32(tiny):
    config, ckpt = tiny
    return SamplingPipeline(config=config, ckpt=ckpt, device="cpu", dtype="fp32")


@pytest.mark.parametrize("sampler", list(Sampler), ids=[s.value for s in Sampler])
def test_whole_engine_sampling_loop_never_reads_the_device(pipe32, sampler, monkeypatch):
    """Network, DiscreteDenoiser and classifier-free guidance included."""
    reference = pipe32.text_to_image(_params(sampler=sampler), "a red cube", seed=1)
    build, armed = pipe32._sampler, []

    def trapped(*args, **kwargs):
        built = build(*args, **kwargs)
        trap_host_reads(built, monkeypatch, armed)
        return built

    monkeypatch.setattr(pipe32, "_sampler", trapped)
    out = pipe32.text_to_image(_params(sampler=sampler), "a red cube", seed=1)
    assert armed == [2] and torch.equal(out, reference)


def test_peak_memory_report_is_cuda_only():
    assert offload.peak_memory("cpu") is None
    assert offload.peak_memory_report("cpu") is None
    offload.reset_peak_memory("cpu")


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_gpu_tiny_sdxl_engine_in_fp16_gives_finite_images(tiny):
    config, ckpt = tiny
    pipe = SamplingPipeline(config=config, ckpt=ckpt, device="cuda", dtype="fp16")
    assert pipe.use_fp16 and next(pipe.model.model.parameters()).dtype == torch.float16
    decoder = []
    _dtypes_seen(pipe.model.first_stage_model.decoder, decoder)
    out = pipe.text_to_image(_params(), "a red cube", samples=2, seed=1)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert decoder == [torch.float32]


@pytest.mark.gpu
def test_gpu_offload_lowers_peak_memory(tiny):
    config, ckpt = tiny
    peaks = {}
    for low_vram in (False, True):
        pipe = SamplingPipeline(
            config=config, ckpt=ckpt, device="cuda", dtype="fp16", offload=low_vram
        )
        torch.cuda.synchronize()
        offload.reset_peak_memory("cuda")
        pipe.text_to_image(_params(), "a red cube", seed=1)
        peaks[low_vram] = offload.peak_memory("cuda")
        del pipe
        torch.cuda.empty_cache()
    assert peaks[True] < peaks[False]


@pytest.mark.gpu
def test_gpu_sampling_loop_never_synchronises():
    from sgm.modules.diffusionmodules import sampling

    disc = {"target": "sgm.modules.diffusionmodules.discretizer.EDMDiscretization"}
    x = torch.randn(2, 4, 8, 8, device="cuda")
    for name in (
        "EulerEDMSampler",
        "HeunEDMSampler",
        "DPMPP2SAncestralSampler",
        "DPMPP2MSampler",
        "LinearMultistepSampler",
        "EulerAncestralSampler",
    ):
        sampler = getattr(sampling, name)(discretization_config=disc, num_steps=5)
        plain = sampler.get_sigma_gen

        def steps(n, plain=plain):
            indices = list(plain(n))
            torch.cuda.set_sync_debug_mode("error")
            try:
                yield from indices
            finally:
                torch.cuda.set_sync_debug_mode("default")

        sampler.get_sigma_gen = steps
        out = sampler(lambda x, s, c: x / (1 + s.reshape(-1, 1, 1, 1) ** 2), x, {})
        assert torch.isfinite(out).all()
