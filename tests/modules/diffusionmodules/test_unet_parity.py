"""UNetModel against diffusers' UNet2DConditionModel holding the same weights.

The weights go through diffusers' own ldm -> diffusers converter, so these tests check
the state-dict layout and the numbers at once.
"""

import time

import pytest
import torch
from omegaconf import OmegaConf
from unet_oracle import diffusers_config, sdxl_vector, to_diffusers

from sgm.modules.diffusionmodules.openaimodel import UNetModel

pytestmark = pytest.mark.parity


def randomize(model: torch.nn.Module, std: float = 0.1) -> torch.nn.Module:
    """Random weights everywhere (also in the zero-initialised output layers)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1 + std * torch.randn_like(p))
            else:
                p.normal_(0, std)
    return model.eval()


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, rtol: float = 1e-5):
    scale = theirs.abs().max().item()
    assert scale > 1e-3, "degenerate output: the comparison would be vacuous"
    err = (ours - theirs).abs().max().item()
    assert err <= rtol * scale, f"max abs diff {err:.3g} at output scale {scale:.3g}"


def build(params: dict, from_omegaconf: bool = False) -> UNetModel:
    kwargs = OmegaConf.create(params) if from_omegaconf else params
    return randomize(UNetModel(**kwargs))


SDXL_TINY = dict(  # sd_xl_base structure, reduced widths
    in_channels=4,
    out_channels=4,
    model_channels=32,
    attention_resolutions=[4, 2],
    num_res_blocks=2,
    channel_mult=[1, 2, 2],
    num_head_channels=16,
    use_linear_in_transformer=True,
    transformer_depth=[1, 1, 2],
    context_dim=2048,
    num_classes="sequential",
    adm_in_channels=64 + 6 * 256,
    spatial_transformer_attn_type="softmax-xformers",
    use_checkpoint=True,
)

REFINER_TINY = dict(  # sd_xl_refiner structure: list context_dim, 4 levels, int depth
    in_channels=4,
    out_channels=4,
    model_channels=32,
    attention_resolutions=[4, 2],
    num_res_blocks=1,
    channel_mult=[1, 2, 2, 2],
    num_head_channels=16,
    use_linear_in_transformer=True,
    transformer_depth=2,
    context_dim=[1280, 1280],
    num_classes="sequential",
    adm_in_channels=48 + 5 * 256,
    spatial_transformer_attn_type="softmax-xformers",
    use_checkpoint=True,
)

SD21_TINY = dict(  # sd_2_1 structure
    in_channels=4,
    out_channels=4,
    model_channels=32,
    attention_resolutions=[4, 2, 1],
    num_res_blocks=2,
    channel_mult=[1, 2, 2, 2],
    num_head_channels=16,
    use_linear_in_transformer=True,
    transformer_depth=1,
    context_dim=64,
    use_checkpoint=True,
)


def _inputs(batch=2, size=16, ctx=2048, tokens=7):
    x = torch.randn(batch, 4, size, size)
    t = torch.tensor([3.0, 917.0])[:batch]
    context = torch.randn(batch, tokens, ctx)
    return x, t, context


def test_sdxl_structure_matches_diffusers():
    ours = build(SDXL_TINY, from_omegaconf=True)
    theirs = to_diffusers(ours, SDXL_TINY)
    x, t, context = _inputs(ctx=2048)
    text, time_ids = (
        torch.randn(2, 64),
        torch.tensor([[1024.0, 768, 0, 16, 1024, 1024]] * 2),
    )
    with torch.no_grad():
        out = ours(x, t, context, sdxl_vector(text, time_ids))
        ref = theirs(
            x, t, context, added_cond_kwargs={"text_embeds": text, "time_ids": time_ids}
        ).sample
    assert_close(out, ref)


def test_refiner_structure_matches_diffusers():
    ours = build(REFINER_TINY, from_omegaconf=True)
    theirs = to_diffusers(ours, REFINER_TINY)
    x, t, context = _inputs(ctx=1280)
    text, time_ids = torch.randn(2, 48), torch.tensor([[1024.0, 1024, 0, 0, 6.0]] * 2)
    with torch.no_grad():
        out = ours(x, t, context, sdxl_vector(text, time_ids))
        ref = theirs(
            x, t, context, added_cond_kwargs={"text_embeds": text, "time_ids": time_ids}
        ).sample
    assert_close(out, ref)


def test_sd21_structure_matches_diffusers():
    ours = build(SD21_TINY)
    theirs = to_diffusers(ours, SD21_TINY)
    x, t, context = _inputs(ctx=64)
    with torch.no_grad():
        assert_close(ours(x, t, context), theirs(x, t, context).sample)


def test_conv_projection_class_labels_and_cross_only_attention_match_diffusers():
    params = dict(
        SD21_TINY,
        use_linear_in_transformer=False,
        num_heads=2,
        num_head_channels=-1,
        num_classes=10,
        attention_resolutions=[2, 4],
        disable_self_attentions=[False, True, False, True],
    )
    ours = build(params)
    theirs = to_diffusers(ours, params)
    x, t, context = _inputs(ctx=64)
    labels = torch.tensor([3, 7])
    with torch.no_grad():
        out = ours(x, t, context, labels)
        ref = theirs(x, t, context, class_labels=labels).sample
    assert_close(out, ref)


def test_sequential_projection_and_scale_shift_norm_match_diffusers():
    # A context width other than 1280/2048 makes diffusers use a class projection.
    params = dict(
        SD21_TINY,
        num_classes="sequential",
        adm_in_channels=24,
        use_scale_shift_norm=True,
    )
    ours = build(params)
    config = dict(diffusers_config(params), resnet_time_scale_shift="scale_shift")
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    state = {"model.diffusion_model." + k: v for k, v in ours.state_dict().items()}
    theirs = UNet2DConditionModel(**config).eval()
    theirs.load_state_dict(convert_ldm_unet_checkpoint(state, config), strict=True)
    x, t, context = _inputs(ctx=64)
    y = torch.randn(2, 24)
    with torch.no_grad():
        assert_close(ours(x, t, context, y), theirs(x, t, context, class_labels=y).sample)


@pytest.mark.slow
def test_full_size_sdxl_matches_diffusers_at_small_latents():
    params = OmegaConf.to_container(
        OmegaConf.load("configs/inference/sd_xl_base.yaml").model.params.network_config.params
    )
    start = time.perf_counter()
    ours = UNetModel(**params)
    randomize(ours, std=0.02)
    theirs = to_diffusers(ours, params)  # shares ours' tensors: no second copy
    x, t, context = _inputs(batch=1, size=16, ctx=2048, tokens=8)
    text = torch.randn(1, 1280)
    time_ids = torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]])
    with torch.no_grad():
        out = ours(x, t, context, sdxl_vector(text, time_ids))
        ref = theirs(
            x, t, context, added_cond_kwargs={"text_embeds": text, "time_ids": time_ids}
        ).sample
    assert_close(out, ref, rtol=1e-4)
    assert time.perf_counter() - start < 300
