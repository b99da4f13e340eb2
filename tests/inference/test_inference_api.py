"""SamplingPipeline and the sampling helpers on a tiny SDXL-like engine (CPU, offline)."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
from builders import build_engine, save_state, tiny_image_config, write_tiny_model

from sgm.errors import CheckpointError, ConfigError, InputError
from sgm.inference import api
from sgm.inference.api import (
    Discretization,
    Guider,
    ModelArchitecture,
    Sampler,
    SamplingParams,
    SamplingPipeline,
)
from sgm.inference.helpers import (
    Img2ImgDiscretizationWrapper,
    get_batch,
    get_unique_embedder_keys_from_conditioner,
    perform_save_locally,
)
from sgm.modules.diffusionmodules.discretizer import (
    EDMDiscretization,
    LegacyDDPMDiscretization,
)

SDXL_KEYS = ["txt", "original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple"]


@pytest.fixture(scope="module")
def tiny(tiny_clip_dir, tmp_path_factory):
    """(config, checkpoint path) of the tiny engine with random weights."""
    config = tiny_image_config("sdxl", tiny_clip_dir, name="inference_tiny")
    ckpt = save_state(
        build_engine(config, seed=0), tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    )
    return config, ckpt


@pytest.fixture(scope="module")
def pipeline(tiny):
    config, ckpt = tiny
    return SamplingPipeline(config=config, ckpt=ckpt, device="cpu")


def _params(**kw):
    base = dict(width=16, height=16, steps=3, orig_width=16, orig_height=16, scale=3.0)
    base.update(kw)
    return SamplingParams(**base)


def _record_denoiser_inputs(model, monkeypatch):
    calls = []
    original = model.denoiser.forward

    def forward(network, x, sigma, cond, **kwargs):
        calls.append((x.detach().clone(), sigma.detach().clone()))
        return original(network, x, sigma, cond, **kwargs)

    monkeypatch.setattr(model.denoiser, "forward", forward)
    return calls


def test_pipeline_loads_weights_and_infers_spec(pipeline, tiny):
    from safetensors.torch import load_file

    stored = load_file(str(tiny[1]))
    own = pipeline.model.state_dict()
    assert set(own) == set(stored)
    assert all(torch.equal(own[k], stored[k]) for k in stored)
    assert (pipeline.specs.channels, pipeline.specs.factor) == (3, 1)
    assert not pipeline.specs.is_legacy  # SDXL text path: negative text is zeroed
    assert not pipeline.use_fp16  # fp16 only on an accelerator


def test_text_to_image_shape_range_and_seeded_start_noise(pipeline, monkeypatch):
    calls = _record_denoiser_inputs(pipeline.model, monkeypatch)
    out = pipeline.text_to_image(_params(), "a red cube", samples=2, seed=7)
    assert out.shape == (2, 3, 16, 16) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # oracle: the first network input is N(0, 1) noise from the seed times sqrt(1 + s0^2),
    # doubled for classifier-free guidance; s0 is the discretization's largest sigma
    sigma0 = LegacyDDPMDiscretization()(3)[0]
    noise = torch.randn((2, 3, 16, 16), generator=torch.Generator().manual_seed(7))
    x0, s0 = calls[0]
    torch.testing.assert_close(x0, torch.cat([noise, noise]) * torch.sqrt(1 + sigma0**2))
    torch.testing.assert_close(s0, sigma0.repeat(4))
    assert len(calls) == 3


def test_text_to_image_seeds(pipeline):
    params = _params(sampler=Sampler.EULER_ANCESTRAL)
    a = pipeline.text_to_image(params, "a red cube", seed=1)
    b = pipeline.text_to_image(params, "a red cube", seed=1)
    c = pipeline.text_to_image(params, "a red cube", seed=2)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


def test_negative_text_is_zeroed_for_sdxl(pipeline, monkeypatch):
    seen = {}
    original = pipeline.model.conditioner.get_unconditional_conditioning

    def spy(*args, **kwargs):
        c, uc = original(*args, **kwargs)
        seen.update(c=c, uc=uc)
        return c, uc

    monkeypatch.setattr(pipeline.model.conditioner, "get_unconditional_conditioning", spy)
    pipeline.text_to_image(_params(steps=1), "a red cube", negative_prompt="blurry", seed=0)
    assert torch.count_nonzero(seen["uc"]["crossattn"]) == 0
    assert torch.count_nonzero(seen["c"]["crossattn"]) > 0
    torch.testing.assert_close(seen["uc"]["vector"], seen["c"]["vector"])


@pytest.mark.parametrize("strength,n", [(0.5, 10), (0.3, 4), (0.01, 5), (1.0, 6)])
def test_img2img_wrapper_keeps_lowest_sigmas(strength, n):
    disc = LegacyDDPMDiscretization()
    full = disc(n)  # n descending sigmas and a final 0
    keep = max(int(strength * (n + 1)), 1)
    wrapped = Img2ImgDiscretizationWrapper(disc, strength=strength)(n)
    torch.testing.assert_close(wrapped, full[n + 1 - keep :])
    assert wrapped[-1] == 0


def test_image_to_image_uses_lowest_sigmas_and_noises_input(pipeline, monkeypatch):
    steps, strength = 8, 0.5
    calls = _record_denoiser_inputs(pipeline.model, monkeypatch)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    params = _params(steps=steps, img2img_strength=strength, sampler=Sampler.EULER_EDM)
    out = pipeline.image_to_image(params, image, "a red cube", samples=2, seed=11)
    assert out.shape == (2, 3, 16, 16)
    full = LegacyDDPMDiscretization()(steps)
    expected = full[len(full) - int(strength * len(full)) :]
    used = torch.stack([s[0] for _, s in calls])
    torch.testing.assert_close(used, expected[:-1])
    assert float(used.max()) < float(full[0]) / 2
    # oracle: the first network input is image + noise * sigma_0 with the seed's noise
    noise = torch.randn((2, 3, 16, 16), generator=torch.Generator().manual_seed(11))
    start = image.expand(2, -1, -1, -1) + noise * expected[0]
    torch.testing.assert_close(calls[0][0], torch.cat([start, start]), atol=1e-5, rtol=1e-5)


def test_image_to_image_seed_fixes_the_posterior_sample(tmp_path, tiny_image_clip_dir):
    # The first stage samples its posterior (two encodes differ); a seed must still give
    # the same output whatever the global random state, and leave that state alone.
    config, ckpt = write_tiny_model("sdxl_base", tiny_image_clip_dir, tmp_path, "tiny.safetensors")
    pipeline = SamplingPipeline(config=config, ckpt=ckpt, device="cpu")
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        assert not torch.equal(
            pipeline.model.encode_first_stage(image), pipeline.model.encode_first_stage(image)
        )
    params = _params(steps=2, img2img_strength=0.5, width=64, height=64)
    torch.manual_seed(1)
    first = pipeline.image_to_image(params, image, "a red cube", seed=5)
    torch.manual_seed(2)
    state = torch.get_rng_state()
    second = pipeline.image_to_image(params, image, "a red cube", seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, second)
    assert not torch.equal(first, pipeline.image_to_image(params, image, "a red cube", seed=6))


def test_get_batch_sdxl_layout():
    value_dict = dict(
        prompt="cat",
        negative_prompt="dog",
        orig_width=1024,
        orig_height=768,
        crop_coords_top=3,
        crop_coords_left=5,
        target_width=512,
        target_height=256,
        aesthetic_score=6.0,
        negative_aesthetic_score=2.5,
        extra=torch.ones(2),
    )
    keys = SDXL_KEYS + ["aesthetic_score", "extra"]
    batch, batch_uc = get_batch(keys, value_dict, [3])
    assert batch["txt"] == ["cat"] * 3 and batch_uc["txt"] == ["dog"] * 3
    expected = {
        "original_size_as_tuple": torch.tensor([[768, 1024]] * 3),
        "crop_coords_top_left": torch.tensor([[3, 5]] * 3),
        "target_size_as_tuple": torch.tensor([[256, 512]] * 3),
        "aesthetic_score": torch.tensor([[6.0]] * 3),
    }
    for key, value in expected.items():
        assert torch.equal(batch[key], value), key
    assert torch.equal(batch_uc["aesthetic_score"], torch.tensor([[2.5]] * 3))
    for key in ("original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple"):
        assert torch.equal(batch_uc[key], batch[key])
        assert batch_uc[key].data_ptr() != batch[key].data_ptr()  # cloned
    assert batch["extra"] is value_dict["extra"]
    assert torch.equal(batch_uc["extra"], value_dict["extra"])
    assert batch_uc["extra"] is not value_dict["extra"]


def test_get_batch_video_layout():
    frame = torch.zeros(1, 3, 8, 8)
    value_dict = dict(
        fps_id=6,
        motion_bucket_id=127,
        cond_aug=0.02,
        cond_frames=frame,
        cond_frames_without_noise=frame,
        polars_rad=[0.1, 0.2],
    )
    keys = [
        "fps_id",
        "motion_bucket_id",
        "cond_aug",
        "cond_frames",
        "cond_frames_without_noise",
        "polars_rad",
    ]
    batch, batch_uc = get_batch(keys, value_dict, [2, 4], T=4)
    assert torch.equal(batch["fps_id"], torch.tensor([6] * 8))
    assert torch.equal(batch["motion_bucket_id"], torch.tensor([127] * 8))
    assert torch.allclose(batch["cond_aug"], torch.tensor([0.02] * 8))
    assert batch["cond_frames"].shape == (2, 3, 8, 8)
    assert torch.allclose(batch["polars_rad"], torch.tensor([0.1, 0.2, 0.1, 0.2]))
    assert batch["num_video_frames"] == 4 and "num_video_frames" not in batch_uc


def test_unique_embedder_keys(pipeline):
    keys = get_unique_embedder_keys_from_conditioner(pipeline.model.conditioner)
    assert keys == SDXL_KEYS


def test_missing_checkpoint_names_expected_path(tmp_path, tiny):
    with pytest.raises(CheckpointError, match=str(tmp_path / "sd_xl_base_1.0.safetensors")):
        SamplingPipeline(ModelArchitecture.SDXL_V1_BASE, model_path=tmp_path, device="cpu")
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(CheckpointError, match="nope.safetensors"):
        SamplingPipeline(config=tiny[0], ckpt=missing, device="cpu")


@pytest.mark.parametrize("device", ["bogus", "cuda:x", 3.5])
def test_a_device_that_is_no_device_name_is_an_input_error(tiny, device):
    with pytest.raises(InputError, match="is not a device name"):
        SamplingPipeline(config=tiny[0], ckpt=tiny[1], device=device)


def test_sampler_builders_cover_every_enum():
    for sampler in Sampler:
        # LCM needs the DDPM timesteps of its own schedule (EDM is refused: see below)
        schedule = Discretization.LCM if sampler is Sampler.LCM else Discretization.EDM
        for guider in Guider:
            built = api.get_sampler_config(
                SamplingParams(sampler=sampler, guider=guider, steps=5, discretization=schedule)
            )
            assert type(built).__name__ == sampler.value
            assert type(built.guider).__name__ == guider.value
    built = api.get_sampler_config(SamplingParams(discretization=Discretization.EDM, steps=5))
    assert built.guider.scale == 6.0
    # EDM closed form: (s_max^(1/rho) + i/(n-1) (s_min^(1/rho) - s_max^(1/rho)))^rho
    p = SamplingParams()
    ramp = np.linspace(0, 1, 5)
    inv = 1 / p.rho
    closed = (p.sigma_max**inv + ramp * (p.sigma_min**inv - p.sigma_max**inv)) ** p.rho
    sigmas = built.discretization(5)
    np.testing.assert_allclose(sigmas[:-1].numpy(), closed, rtol=1e-5)
    assert isinstance(built.discretization, EDMDiscretization)
    with pytest.raises(ConfigError, match="LCMSampler needs a DDPM discretization"):
        api.get_sampler_config(
            SamplingParams(sampler=Sampler.LCM, discretization=Discretization.EDM, steps=5)
        )


def test_perform_save_locally_never_overwrites(tmp_path):
    from PIL import Image

    Image.new("RGB", (4, 4), "red").save(tmp_path / "000000001.png")
    (tmp_path / "notes.txt").write_text("keep")
    before = (tmp_path / "000000001.png").read_bytes()
    samples = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    paths = perform_save_locally(tmp_path, samples, watermark=False)
    names = sorted(os.listdir(tmp_path))
    assert (tmp_path / "000000001.png").read_bytes() == before
    assert len(paths) == 3 and len(set(paths)) == 3
    assert names == [
        "000000001.png",
        "000000002.png",
        "000000003.png",
        "000000004.png",
        "notes.txt",
    ]
    for path, sample in zip(paths, samples):
        array = np.asarray(Image.open(path), dtype=np.float32) / 255.0
        expected = sample.permute(1, 2, 0).numpy()
        assert np.abs(array - expected).max() <= 1 / 255 + 1e-6
    perform_save_locally(tmp_path, samples[:1], watermark=False)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]
    assert len(os.listdir(tmp_path)) == 6


def test_perform_save_locally_watermarks(tmp_path):
    from imwatermark import WatermarkDecoder
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from sgm.inference.watermark import WATERMARK_BITS

    photo = torch.from_numpy(load_sample_images().images[0][:384, :512].copy())
    photo = photo.permute(2, 0, 1)[None].float() / 255
    (path,) = perform_save_locally(tmp_path, photo)
    bgr = np.asarray(Image.open(path))[..., ::-1].copy()
    decoded = WatermarkDecoder("bits", len(WATERMARK_BITS)).decode(bgr, "dwtDct")
    assert [int(b) for b in decoded] == WATERMARK_BITS


def test_refiner_skips_the_encoder(pipeline, monkeypatch):
    def no_encode(x):
        raise AssertionError("refiner input is already latent")

    monkeypatch.setattr(pipeline.model, "encode_first_stage", no_encode)
    calls = _record_denoiser_inputs(pipeline.model, monkeypatch)
    latents = torch.zeros(1, 3, 16, 16)
    params = _params(steps=4, img2img_strength=0.5, guider=Guider.IDENTITY)
    out = pipeline.refiner(params, latents, "a red cube", seed=3)
    assert out.shape == (1, 3, 16, 16)
    full = LegacyDDPMDiscretization()(4)
    noise = torch.randn((1, 3, 16, 16), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(calls[0][0], noise * full[len(full) - 2], rtol=1e-5, atol=1e-5)


def test_get_input_image_tensor_crops_to_64_and_scales():
    from PIL import Image

    from sgm.inference.helpers import get_input_image_tensor

    pixels = np.random.default_rng(0).integers(0, 256, (64, 130, 3), dtype=np.uint8)
    out = get_input_image_tensor(Image.fromarray(pixels))
    assert out.shape == (1, 3, 64, 128)
    resized = np.asarray(Image.fromarray(pixels).resize((128, 64)), dtype=np.float32)
    expected = torch.from_numpy(resized).permute(2, 0, 1)[None] / 127.5 - 1
    torch.testing.assert_close(out, expected)


def test_use_fp16_is_news_only_where_half_precision_was_asked_for(tiny, caplog):
    # The default use_fp16=True on a float32 CPU run is no news; bf16 on a CPU keeps the
    # weights float32, which is.
    config, ckpt = tiny
    with caplog.at_level(logging.INFO, logger="sgm.inference.api"):
        SamplingPipeline(config=config, ckpt=ckpt, device="cpu")
    assert not [r for r in caplog.records if "use_fp16" in r.getMessage()]
    with caplog.at_level(logging.INFO, logger="sgm.inference.api"):
        SamplingPipeline(config=config, ckpt=ckpt, device="cpu", dtype="bf16")
    news = [r for r in caplog.records if "use_fp16 ignored" in r.getMessage()]
    assert [r.levelno for r in news] == [logging.INFO], news
