"""SamplingParams refuse values the samplers and networks cannot use, naming the field."""

from types import SimpleNamespace

import pytest
import torch

from sgm.errors import InputError
from sgm.inference.api import Discretization, Sampler, SamplingParams, SamplingPipeline
from sgm.inference.params_check import check_sampling_params, size_multiple
from sgm.modules.diffusionmodules.openaimodel import UNetModel


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("width", 1020, "multiple of 8"),
        ("height", 0, ">= 1"),
        ("steps", 0, ">= 1"),
        ("steps", 2.5, "an integer"),
        ("scale", float("nan"), "finite"),
        ("img2img_strength", 0.0, "(0, 1]"),
        ("img2img_strength", 1.5, "(0, 1]"),
        ("sigma_min", -1.0, "> 0"),
        ("order", 0, ">= 1"),
        ("sampler", "EulerSampler", "EulerEDMSampler"),
        ("width", "1024", "an integer"),
    ],
)
def test_bad_field_is_named(field, value, words):
    with pytest.raises(InputError) as info:
        SamplingParams(**{field: value})
    message = str(info.value)
    assert message.startswith(f"SamplingParams.{field}=") and words in message


def test_enum_names_are_accepted_and_sigmas_ordered():
    params = SamplingParams(sampler="EulerEDMSampler", discretization="EDMDiscretization")
    assert params.sampler is Sampler.EULER_EDM and params.discretization is Discretization.EDM
    with pytest.raises(InputError, match="sigma_max=1.0 must be above sigma_min=2.0"):
        SamplingParams(sigma_min=2.0, sigma_max=1.0)


def _unet(levels: int) -> UNetModel:
    torch.manual_seed(0)
    return UNetModel(
        in_channels=4,
        model_channels=32,
        out_channels=4,
        num_res_blocks=1,
        attention_resolutions=[],
        channel_mult=[1] * levels,
        num_head_channels=32,
    )


@pytest.mark.parametrize("width, fits", [(96, True), (80, False), (104, False), (128, True)])
def test_size_multiple_is_where_the_unet_stops_working(width, fits):
    """A UNet with 3 levels halves the latent twice: sides must be multiples of 8 * 4."""
    unet = _unet(3)
    engine = SimpleNamespace(model=SimpleNamespace(diffusion_model=unet))
    multiple = size_multiple(engine, 8)
    assert multiple == 32
    latent = torch.zeros(1, 4, 96 // 8, width // 8)
    if fits:
        check_sampling_params(SamplingParams(width=width, height=96), multiple)
        assert unet(latent, torch.zeros(1)).shape == latent.shape
    else:
        with pytest.raises(InputError, match=f"SamplingParams.width={width}: .*multiple of 32"):
            check_sampling_params(SamplingParams(width=width, height=96), multiple)
        with pytest.raises(RuntimeError):  # what the user met before: deep in the UNet
            unet(latent, torch.zeros(1))


def test_pipeline_checks_params_changed_after_construction():
    engine = SimpleNamespace(model=SimpleNamespace(diffusion_model=_unet(2)))
    pipeline = SimpleNamespace(model=engine, specs=SimpleNamespace(factor=8))
    params = SamplingParams(width=64, height=64, steps=4)
    SamplingPipeline._check(pipeline, params)
    params.steps = 0
    with pytest.raises(InputError, match="SamplingParams.steps=0"):
        SamplingPipeline._check(pipeline, params)
    params.steps, params.width = 4, 72
    with pytest.raises(InputError, match="width=72: must be a multiple of 16"):
        SamplingPipeline._check(pipeline, params)
    with pytest.raises(InputError, match="image of 40x64: .*multiples of 16"):
        SamplingPipeline._check(pipeline, SamplingParams(), torch.zeros(1, 3, 64, 40), sized=False)


def test_few_step_samplers_are_selected_by_name():
    """LCM and trailing timesteps reach the sampler from SamplingParams (their numbers are
    checked against diffusers in tests/modules/diffusionmodules/test_distilled_sampling.py)."""
    import torch

    from sgm.errors import InputError
    from sgm.inference.sampling_params import SamplingParams, get_sampler_config
    from sgm.modules.diffusionmodules.discretizer import LegacyDDPMDiscretization
    from sgm.modules.diffusionmodules.distilled import LCMDiscretization, LCMSampler

    lcm = get_sampler_config(
        SamplingParams(
            sampler="LCMSampler",
            discretization="LCMDiscretization",
            guider="IdentityGuider",
            steps=4,
        )
    )
    assert isinstance(lcm, LCMSampler) and isinstance(lcm.discretization, LCMDiscretization)
    assert torch.equal(lcm.discretization(4), LCMDiscretization()(4))
    # 3 steps: where the original's spacing and the trailing one part
    trailing = get_sampler_config(SamplingParams(timestep_spacing="trailing", steps=3))
    assert torch.equal(
        trailing.discretization(3), LegacyDDPMDiscretization(timestep_spacing="trailing")(3)
    )
    original = get_sampler_config(SamplingParams(steps=3)).discretization(3)
    assert not torch.equal(trailing.discretization(3), original)
    with pytest.raises(InputError, match="applies to LegacyDDPMDiscretization only"):
        get_sampler_config(
            SamplingParams(discretization="EDMDiscretization", timestep_spacing="trailing")
        )
