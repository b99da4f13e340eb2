"""Tiny networks and engines for the LoRA tests (attention at every level, seconds on CPU)."""

from __future__ import annotations

import warnings

import torch

D = "sgm.modules.diffusionmodules"

UNET = dict(  # SD 2.x structure: linear projections, cross-attention, no class vector
    in_channels=4,
    out_channels=4,
    model_channels=32,
    attention_resolutions=[1, 2],
    num_res_blocks=1,
    channel_mult=[1, 2],
    num_head_channels=16,
    use_linear_in_transformer=True,
    transformer_depth=1,
    context_dim=24,
)
OTHER_UNET = {**UNET, "context_dim": 40}  # same layer names, other widths


def randomize(model: torch.nn.Module, std: float = 0.1, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def unet(params: dict = UNET, seed: int = 0):
    from sgm.modules.diffusionmodules.openaimodel import UNetModel

    torch.manual_seed(seed)
    return randomize(UNetModel(**params), seed=seed)


def unet_inputs(batch: int = 2, context_dim: int = 24, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 8, 8, generator=g)
    t = torch.tensor([10.0, 500.0][:batch])
    context = torch.randn(batch, 5, context_dim, generator=g)
    return x, t, context


def engine_config(lora_config: dict | None = None, use_checkpoint: bool = True, **extra):
    """A DiffusionEngine: tiny UNet with cross-attention fed by a class embedder."""
    params = {
        "network_config": {
            "target": f"{D}.openaimodel.UNetModel",
            "params": {
                **UNET,
                "in_channels": 1,
                "out_channels": 1,
                "use_checkpoint": use_checkpoint,
            },
        },
        "denoiser_config": {
            "target": f"{D}.denoiser.Denoiser",
            "params": {
                "scaling_config": {
                    "target": f"{D}.denoiser_scaling.EDMScaling",
                    "params": {"sigma_data": 0.5},
                }
            },
        },
        "conditioner_config": {
            "target": "sgm.modules.GeneralConditioner",
            "params": {
                "emb_models": [
                    {
                        "is_trainable": True,
                        "input_key": "cls",
                        "ucg_rate": 0.0,
                        "target": "sgm.modules.encoders.modules.ClassEmbedder",
                        "params": {"embed_dim": 24, "n_classes": 3, "add_sequence_dim": True},
                    }
                ]
            },
        },
        "first_stage_config": {"target": "sgm.models.autoencoder.IdentityFirstStage"},
        "loss_fn_config": {
            "target": f"{D}.loss.StandardDiffusionLoss",
            "params": {
                "loss_weighting_config": {
                    "target": f"{D}.loss_weighting.EDMWeighting",
                    "params": {"sigma_data": 0.5},
                },
                "sigma_sampler_config": {"target": f"{D}.sigma_sampling.EDMSampling"},
            },
        },
        "sampler_config": {
            "target": f"{D}.sampling.EulerEDMSampler",
            "params": {
                "num_steps": 3,
                "discretization_config": {"target": f"{D}.discretizer.EDMDiscretization"},
                "guider_config": {"target": f"{D}.guiders.IdentityGuider"},
            },
        },
        "learning_rate": 1e-2,
    }
    if lora_config is not None:
        params["lora_config"] = lora_config
    params.update(extra)
    return {"target": "sgm.models.diffusion.DiffusionEngine", "params": params}


def batch(n: int = 6) -> dict:
    g = torch.Generator().manual_seed(1)
    cls = torch.arange(n) % 3
    patterns = torch.randn(3, 1, 8, 8, generator=g).sign() * 0.8
    return {"jpg": patterns[cls], "cls": cls}


def to_diffusers(ours: torch.nn.Module, params: dict):
    """diffusers' UNet2DConditionModel holding ``ours``' weights via diffusers' converter."""
    import torchvision  # noqa: F401  (before diffusers' transformers chain)
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        create_unet_diffusers_config_from_ldm,
    )

    original = {
        "model": {
            "params": {
                "network_config": {"params": params},
                "first_stage_config": {"params": {"ddconfig": {"ch_mult": [1, 2, 4, 4]}}},
            }
        }
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = create_unet_diffusers_config_from_ldm(original, {}, image_size=512)
    state = {"model.diffusion_model." + k: v for k, v in ours.state_dict().items()}
    converted = convert_ldm_unet_checkpoint(state, config)
    theirs = UNet2DConditionModel(**config)
    theirs.load_state_dict(converted, strict=True)
    return theirs.eval()
