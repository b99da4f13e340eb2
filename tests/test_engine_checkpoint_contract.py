"""Whole engines of the released image configs have the released checkpoint layout.

Each DiffusionEngine (SD 2.1, SD 2.1-768, SDXL base, SDXL refiner) is built on the meta
device with networking disabled. diffusers' own single-file converters
(``diffusers.loaders.single_file_utils``) turn its state dict into the diffusers /
transformers layouts, which must equal, key for key and shape for shape, models that
those libraries build from their own configs. Every engine tensor is traced through
the converters, so a key that no converter reads shows up by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from pathlib import Path

import pytest
import torch
from builders import refuse_network, released_clip_text_model
from omegaconf import OmegaConf
from torch.utils._pytree import tree_leaves

from sgm.checkpoint import compare_state_dict, load_state_dict_into, remap_legacy_keys
from sgm.util import instantiate_from_config, load_configs

pytestmark = pytest.mark.filterwarnings("ignore:`image_size` is deprecated:FutureWarning")

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIZES = {"sd_2_1": 512, "sd_2_1_768": 768, "sd_xl_base": 1024, "sd_xl_refiner": 1024}
UNET = "model.diffusion_model."
VAE = "first_stage_model."
# Released parameter counts per part.
UNET_PARAMS = {
    "sd_2_1": 865_910_724,
    "sd_2_1_768": 865_910_724,
    "sd_xl_base": 2_567_463_684,
    "sd_xl_refiner": 2_259_526_660,
}
VAE_PARAMS = 83_653_863
CLIP_L_PARAMS = 123_060_480
BIGG_PARAMS = 694_659_841
# Text encoders: (embedder prefix inside the engine, kind).
TEXT_ENCODERS = {
    "sd_2_1": {"conditioner.embedders.0.model.": "vit_h"},
    "sd_2_1_768": {"conditioner.embedders.0.model.": "vit_h"},
    "sd_xl_base": {
        "conditioner.embedders.0.transformer.": "clip_l",
        "conditioner.embedders.1.model.": "bigg",
    },
    "sd_xl_refiner": {"conditioner.embedders.0.model.": "bigg"},
}
SD2 = ("sd_2_1", "sd_2_1_768")
ALL = tuple(IMAGE_SIZES)
# Keys diffusers' converters read but do not carry into the diffusers model.
LEGACY_TEXT = "cond_stage_model.model."
VIT_H_DROPPED = {
    *(
        f"{LEGACY_TEXT}transformer.resblocks.23.{name}"
        for name in (
            "attn.in_proj_weight",
            "attn.in_proj_bias",
            "attn.out_proj.weight",
            "attn.out_proj.bias",
            "ln_1.weight",
            "ln_1.bias",
            "ln_2.weight",
            "ln_2.bias",
            "mlp.c_fc.weight",
            "mlp.c_fc.bias",
            "mlp.c_proj.weight",
            "mlp.c_proj.bias",
        )
    ),
    f"{LEGACY_TEXT}text_projection",
}
# Persistent DDPM schedule buffers of ldm's LatentDiffusion, saved in SD 2.x ``.ckpt``
# files next to ``model_ema.decay``/``model_ema.num_updates``.
LDM_SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


class Traced(torch.Tensor):
    """A meta tensor that remembers which checkpoint keys it was computed from."""

    sources: frozenset = frozenset()

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        out = super().__torch_function__(func, types, args, kwargs or {})
        found = [a.sources for a in tree_leaves((args, kwargs)) if isinstance(a, Traced)]
        if isinstance(out, Traced) and found:
            out.sources = frozenset().union(*found)
        return out


def traced(state: Mapping[str, torch.Tensor]) -> dict[str, Traced]:
    out = {}
    for key, value in state.items():
        tensor = torch.empty(value.shape, dtype=value.dtype, device="meta").as_subclass(Traced)
        tensor.sources = frozenset({key})
        out[key] = tensor
    return out


def sources(converted: Mapping[str, torch.Tensor]) -> set[str]:
    return set().union(*(v.sources for v in converted.values()))


def shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in state.items()}


def numel(state: Mapping[str, torch.Tensor], keys=None) -> int:
    return sum(state[k].numel() for k in (state if keys is None else keys))


def with_prefix(keys, prefix: str) -> set[str]:
    return {k for k in keys if k.startswith(prefix)}


@pytest.fixture(scope="module")
def offline():
    """Opening a socket fails the test; the Hub is offline."""
    with pytest.MonkeyPatch.context() as patch:
        refuse_network(patch)
        yield


@pytest.fixture(scope="module")
def engines(offline):
    """``engines(name)`` -> (engine on meta, plain-dict config); each built once."""

    @cache
    def build(name: str):
        config = load_configs([ROOT / "configs/inference" / f"{name}.yaml"])
        with torch.device("meta"):
            engine = instantiate_from_config(config.model)
        return engine, OmegaConf.to_container(config, resolve=True)

    return build


@cache
def states(engine) -> tuple[dict[str, torch.Tensor], dict[str, Traced]]:
    state = engine.state_dict()
    return state, traced(state)


def flatten_text_model(model, converted: dict) -> dict:
    """Drop ``text_model.`` where transformers' class has no such wrapper (as diffusers does)."""
    if hasattr(model, "text_model"):
        return converted
    return {k.removeprefix("text_model."): v for k, v in converted.items()}


def sd2_legacy_state(engine) -> dict[str, Traced]:
    """The engine's keys in the ldm layout of the released SD 2.x files."""
    state, _ = states(engine)
    return traced(
        {k.replace("conditioner.embedders.0.", "cond_stage_model.", 1): v for k, v in state.items()}
    )


# --- layout of the whole engine ---------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_engine_has_only_released_prefixes(engines, name):
    engine, _ = engines(name)
    state, _ = states(engine)
    parts = [UNET, VAE, *TEXT_ENCODERS[name]]
    stray = [k for k in state if not k.startswith(tuple(parts)) and k != "denoiser.sigmas"]
    assert stray == []
    assert all(with_prefix(state, p) for p in parts)
    assert tuple(state["denoiser.sigmas"].shape) == (1000,)
    assert not engine.use_ema and not hasattr(engine, "model_ema")


@pytest.mark.parametrize("name", ALL)
def test_parameter_counts_per_part(engines, name):
    engine, _ = engines(name)
    params = dict(engine.named_parameters())
    assert numel(params, with_prefix(params, UNET)) == UNET_PARAMS[name]
    assert numel(params, with_prefix(params, VAE)) == VAE_PARAMS
    expected = {"clip_l": CLIP_L_PARAMS, "bigg": BIGG_PARAMS}
    for prefix, kind in TEXT_ENCODERS[name].items():
        if kind in expected:
            assert numel(params, with_prefix(params, prefix)) == expected[kind]
    assert not any(k.startswith("denoiser.") for k in params)


# --- UNet and VAE through diffusers' converters ------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_unet_converts_to_diffusers_layout(engines, name):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu

    engine, config = engines(name)
    state, trace = states(engine)
    unet_config = sfu.create_unet_diffusers_config_from_ldm(
        config, trace, image_size=IMAGE_SIZES[name]
    )
    converted = sfu.convert_ldm_unet_checkpoint(trace, unet_config)
    with torch.device("meta"):
        reference = UNet2DConditionModel(**unet_config)
    assert shapes(converted) == shapes(reference.state_dict())
    assert sources(converted) == with_prefix(state, UNET)
    assert numel(converted) == UNET_PARAMS[name]


@pytest.mark.parametrize("name", ALL)
def test_vae_converts_to_diffusers_layout(engines, name):
    from diffusers import AutoencoderKL
    from diffusers.loaders import single_file_utils as sfu

    engine, config = engines(name)
    state, trace = states(engine)
    vae_config = sfu.create_vae_diffusers_config_from_ldm(
        config,
        trace,
        image_size=IMAGE_SIZES[name],
        scaling_factor=config["model"]["params"]["scale_factor"],
    )
    converted = sfu.convert_ldm_vae_checkpoint(trace, vae_config)
    with torch.device("meta"):
        reference = AutoencoderKL(**vae_config)
    assert shapes(converted) == shapes(reference.state_dict())
    assert sources(converted) == with_prefix(state, VAE)
    assert numel(converted) == VAE_PARAMS


# --- text encoders -----------------------------------------------------------------


def test_sdxl_clip_l_converts_to_transformers_layout(engines):
    from diffusers.loaders import single_file_utils as sfu

    engine, _ = engines("sd_xl_base")
    state, trace = states(engine)
    prefix = "conditioner.embedders.0.transformer."
    reference = released_clip_text_model("clip_l")
    converted = flatten_text_model(reference, sfu.convert_ldm_clip_checkpoint(trace))
    assert sources(converted) == with_prefix(state, prefix)
    # The released files (and this engine) carry the constant ``position_ids`` buffer;
    # transformers' CLIPTextModel does not store it, and diffusers loads non-strictly.
    position_ids = [k for k in converted if k.endswith("embeddings.position_ids")]
    assert [converted[k].sources for k in position_ids] == [
        {prefix + "text_model.embeddings.position_ids"}
    ]
    assert tuple(converted.pop(position_ids[0]).shape) == (1, 77)
    assert shapes(converted) == shapes(reference.state_dict())
    assert numel(converted) == CLIP_L_PARAMS


@pytest.mark.parametrize(
    "name, prefix",
    [
        ("sd_xl_base", "conditioner.embedders.1.model."),
        ("sd_xl_refiner", "conditioner.embedders.0.model."),
    ],
)
def test_sdxl_bigg_converts_to_transformers_layout(engines, name, prefix):
    from diffusers.loaders import single_file_utils as sfu

    engine, _ = engines(name)
    state, trace = states(engine)
    reference = released_clip_text_model("bigg")
    converted = flatten_text_model(
        reference, sfu.convert_open_clip_checkpoint(reference, trace, prefix=prefix)
    )
    assert shapes(converted) == shapes(reference.state_dict())
    # open_clip's ``logit_scale`` scalar has no place in the text model: the converter
    # skips it without a word.
    assert with_prefix(state, prefix) - sources(converted) == {prefix + "logit_scale"}
    assert numel(converted) == BIGG_PARAMS - 1
    split = converted["text_model.encoder.layers.0.self_attn.q_proj.weight"]
    assert split.sources == {prefix + "transformer.resblocks.0.attn.in_proj_weight"}


@pytest.mark.parametrize("name", SD2)
def test_sd2_legacy_text_keys_map_back(engines, name):
    engine, _ = engines(name)
    state, _ = states(engine)
    legacy = sd2_legacy_state(engine)
    assert with_prefix(legacy, LEGACY_TEXT) and not with_prefix(legacy, "conditioner.")
    assert compare_state_dict(engine, legacy).unexpected
    remapped = remap_legacy_keys(legacy, state.keys())
    assert shapes(remapped) == shapes(state)
    assert compare_state_dict(engine, remapped).ok


@pytest.mark.parametrize("name", SD2)
def test_sd2_open_clip_text_converts_from_legacy_layout(engines, name):
    from diffusers.loaders import single_file_utils as sfu

    engine, _ = engines(name)
    legacy = sd2_legacy_state(engine)
    reference = released_clip_text_model("vit_h")
    converted = flatten_text_model(
        reference, sfu.convert_open_clip_checkpoint(reference, legacy, prefix=LEGACY_TEXT)
    )
    assert shapes(converted) == shapes(reference.state_dict())
    # diffusers' SD 2.x text encoder stops before ViT-H-14's last block (the
    # penultimate layer is what SD 2.x reads) and has no projection; it also skips
    # ``logit_scale``. Nothing else is left out.
    unread = with_prefix(legacy, LEGACY_TEXT) - sources(converted)
    assert unread == VIT_H_DROPPED | {LEGACY_TEXT + "logit_scale"}
    read = with_prefix(legacy, LEGACY_TEXT) - unread
    assert numel(converted) == numel(legacy, read) == numel(reference.state_dict())
    assert legacy[LEGACY_TEXT + "token_embedding.weight"].shape == (49408, 1024)


# --- every key is accounted for ----------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_converters_read_every_engine_key(engines, name):
    from diffusers.loaders import single_file_utils as sfu

    engine, config = engines(name)
    state, trace = states(engine)
    size = IMAGE_SIZES[name]
    unet_config = sfu.create_unet_diffusers_config_from_ldm(config, trace, image_size=size)
    vae_config = sfu.create_vae_diffusers_config_from_ldm(config, trace, image_size=size)
    read = sources(sfu.convert_ldm_unet_checkpoint(trace, unet_config))
    read |= sources(sfu.convert_ldm_vae_checkpoint(trace, vae_config))
    for prefix, kind in TEXT_ENCODERS[name].items():
        if kind == "clip_l":
            read |= sources(sfu.convert_ldm_clip_checkpoint(trace))
        else:
            model = released_clip_text_model(kind)
            read |= sources(sfu.convert_open_clip_checkpoint(model, trace, prefix=prefix))
    unread = set(state) - read
    text = next(p for p, kind in TEXT_ENCODERS[name].items() if kind != "clip_l")
    expected = {"denoiser.sigmas", text + "logit_scale"}
    # Under our prefix the SD 2.x ignore-list (spelled for ``cond_stage_model.``) does
    # not apply, so ViT-H-14's last block and projection are read here too.
    assert unread == expected


@pytest.mark.parametrize("name", ALL)
def test_sigma_table_matches_diffusers_scheduler(engines, name):
    from diffusers import EulerDiscreteScheduler

    engine, _ = engines(name)
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
    )
    expected = scheduler.sigmas[:-1].flip(0).float()
    # diffusers forms betas in float32, hence the 1e-5 relative spread.
    torch.testing.assert_close(engine.denoiser.sigmas, expected, rtol=3e-5, atol=0)


# --- strict loading of the SD 2.x ldm layout ---------------------------------------


def ldm_file(engine, extras=()) -> dict[str, torch.Tensor]:
    """The keys of a released SD 2.x ldm file, as meta tensors."""
    state, _ = states(engine)
    out = {
        k.replace("conditioner.embedders.0.", "cond_stage_model.", 1): torch.empty(
            v.shape, device="meta"
        )
        for k, v in state.items()
        if k != "denoiser.sigmas"
    }
    out.update({k: torch.empty(1000, device="meta") for k in extras})
    return out


@pytest.mark.parametrize("name", SD2)
def test_sd2_ldm_layout_loads_strictly(engines, name):
    engine, _ = engines(name)
    report = load_state_dict_into(engine, ldm_file(engine), strict=True)
    assert report.ok


def test_sd2_ldm_file_with_schedule_buffers_loads_strictly(engines):
    engine, _ = engines("sd_2_1")
    state = ldm_file(engine, LDM_SCHEDULE_BUFFERS)
    state["model_ema.decay"] = state["model_ema.num_updates"] = torch.empty((), device="meta")
    load_state_dict_into(engine, state, strict=True, ignore_unexpected=("model_ema.",))
