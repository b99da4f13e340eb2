"""The release registry agrees with the packaged configs and the original's tables."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from sgm.errors import InputError
from sgm.inference import releases as reg
from sgm.inference.specs import ModelArchitecture, model_specs

ALL = [r.name for r in reg.releases()]

# The original's names, sizes and checkpoint files (reference: sgm.inference.api's
# model_specs, the scripts' version tables and the released checkpoint names).
ORIGINAL_IMAGE = {
    "sd2.1": (512, "sd_2_1.yaml", "v2-1_512-ema-pruned.safetensors", True),
    "sd2.1_768": (768, "sd_2_1_768.yaml", "v2-1_768-ema-pruned.safetensors", True),
    "sdxl_base_0.9": (1024, "sd_xl_base.yaml", "sd_xl_base_0.9.safetensors", False),
    "sdxl_refiner_0.9": (1024, "sd_xl_refiner.yaml", "sd_xl_refiner_0.9.safetensors", True),
    "sdxl_base_1.0": (1024, "sd_xl_base.yaml", "sd_xl_base_1.0.safetensors", False),
    "sdxl_refiner_1.0": (1024, "sd_xl_refiner.yaml", "sd_xl_refiner_1.0.safetensors", True),
    "sdxl_turbo": (512, "sd_xl_base.yaml", "sd_xl_turbo_1.0.safetensors", False),
    "sd_turbo": (512, "sd_2_1.yaml", "sd_turbo.safetensors", False),
}
ORIGINAL_VIDEO = {  # name: (frames, steps, width, height)
    "svd": (14, 25, 1024, 576),
    "svd_xt": (25, 30, 1024, 576),
    "svd_image_decoder": (14, 25, 1024, 576),
    "svd_xt_image_decoder": (25, 30, 1024, 576),
    "svd_xt_1_1": (25, 30, 1024, 576),
    "sv3d_u": (21, 50, 576, 576),
    "sv3d_p": (21, 50, 576, 576),
}
ORIGINAL_SV4D = {"sv4d": (20, 5, 8), "sv4d2": (50, 12, 4), "sv4d2_8views": (50, 5, 8)}


def test_every_released_model_is_listed_once():
    assert len(ALL) == len(set(ALL))
    assert set(ALL) == {*ORIGINAL_IMAGE, *ORIGINAL_VIDEO, *ORIGINAL_SV4D}
    assert set(reg.names("image")) == set(ORIGINAL_IMAGE)
    assert set(reg.names("video")) == set(ORIGINAL_VIDEO)
    assert set(reg.names("sv4d")) == set(ORIGINAL_SV4D)


def test_image_releases_match_the_original_table():
    for name, (size, config, ckpt, legacy) in ORIGINAL_IMAGE.items():
        release = reg.get_release(name)
        assert (release.width, release.height) == (size, size)
        assert release.config == f"inference/{config}" and release.ckpt == ckpt
        assert release.is_legacy is legacy
        assert release.is_turbo is name.endswith("turbo")
        assert release.num_steps == (1 if release.is_turbo else 50)
    assert reg.get_release("sdxl_base_1.0").refiner == "sdxl_refiner_1.0"
    assert reg.get_release("sdxl_base_0.9").refiner == "sdxl_refiner_0.9"


def test_video_and_sv4d_releases_match_the_original_defaults():
    for name, (frames, steps, width, height) in ORIGINAL_VIDEO.items():
        release = reg.get_release(name)
        assert (release.num_frames, release.num_steps) == (frames, steps)
        assert (release.width, release.height) == (width, height)
        assert release.ckpt == f"{name}.safetensors"
        assert release.cond_aug == (1e-5 if name.startswith("sv3d") else 0.02)
    for name, (steps, n_time, n_view) in ORIGINAL_SV4D.items():
        release = reg.get_release(name)
        assert (release.num_steps, release.n_time, release.n_view) == (steps, n_time, n_view)
        assert release.num_frames == 21 and release.width == release.height == 576


def test_model_specs_are_the_registry_values():
    assert [a.value for a in ModelArchitecture] == [
        "stable-diffusion-v2-1",
        "stable-diffusion-v2-1-768",
        "stable-diffusion-xl-v0-9-base",
        "stable-diffusion-xl-v0-9-refiner",
        "stable-diffusion-xl-v1-base",
        "stable-diffusion-xl-v1-refiner",
        "stable-diffusion-xl-turbo",
        "stable-diffusion-turbo",
    ]
    for name, (size, config, ckpt, legacy) in ORIGINAL_IMAGE.items():
        spec = model_specs[reg.get_release(name).architecture]
        guided = not name.endswith("turbo")
        assert (spec.width, spec.height, spec.channels, spec.factor) == (size, size, 4, 8)
        assert (spec.config, spec.ckpt, spec.is_legacy, spec.is_guided) == (
            config,
            ckpt,
            legacy,
            guided,
        )


@pytest.mark.parametrize("name", ALL)
def test_release_agrees_with_its_packaged_config(name):
    release = reg.get_release(name)
    path = reg.config_path(release)
    assert path.is_file() and path.is_relative_to(reg.configs_dir())
    config = OmegaConf.load(path)
    params = config.model.params
    embedders = params.conditioner_config.params.emb_models
    assert tuple(e.input_key for e in embedders) == release.conditions_on
    if release.kind == "image":
        return
    assert str(params.ckpt_path) == f"checkpoints/{release.ckpt}"
    sampler = params.sampler_config
    assert sampler.target.endswith(f".{release.sampler}")
    if release.kind == "video":
        guider = sampler.params.guider_config
        assert guider.target.endswith(f".{release.guider}")
        assert guider.params.max_scale == release.max_scale
        assert guider.params.get("min_scale", 1.0) == release.min_scale
    else:
        assert (config.N_TIME, config.N_VIEW) == (release.n_time, release.n_view)


def test_unknown_names_list_the_known_ones():
    with pytest.raises(InputError, match="unknown release 'svd_xxl'; expected one of .*svd_xt_1_1"):
        reg.get_release("svd_xxl")
    with pytest.raises(InputError, match="unknown video release 'sd2.1'; expected one of svd"):
        reg.get_release("sd2.1", kind="video")
    with pytest.raises(InputError, match="unknown release kind"):
        reg.releases("audio")
    with pytest.raises(InputError, match="unknown model_id"):
        reg.for_architecture("sdxl")


def test_sv4d_releases_agree_with_the_sv4d_sampling_specs():
    from sgm.inference.sv4d import SPECS

    assert set(SPECS) == set(reg.names("sv4d"))
    for name, spec in SPECS.items():
        release = reg.get_release(name)
        assert (release.n_time, release.n_view) == (spec.n_time, spec.n_view)
        assert (release.guider, release.max_scale, release.min_scale) == (
            spec.guider,
            spec.max_scale,
            spec.min_scale,
        )
        assert release.elevation_deg == spec.elevation_deg
        assert release.azimuths_deg == spec.azimuths_deg
        assert release.window_overlap == spec.window_overlap
