"""Both engines build their optimizer from ``{target, params}``, with ``params`` null or
missing meaning the optimizer's own defaults (the oracle: torch's optimizer built directly)."""

import pytest
import torch
from omegaconf import OmegaConf

from sgm.util import instantiate_from_config

D = "sgm.modules.diffusionmodules"

DIFFUSION = f"""
target: sgm.models.diffusion.DiffusionEngine
params:
  learning_rate: 0.01
  network_config:
    target: {D}.openaimodel.UNetModel
    params: {{in_channels: 1, out_channels: 1, model_channels: 32, attention_resolutions: [],
              num_res_blocks: 1, channel_mult: [1], num_head_channels: 32}}
  denoiser_config:
    target: {D}.denoiser.Denoiser
    params:
      scaling_config: {{target: {D}.denoiser_scaling.EDMScaling}}
  first_stage_config: {{target: sgm.models.autoencoder.IdentityFirstStage}}
"""

AUTOENCODER = """
target: sgm.models.autoencoder.AutoencoderKL
params:
  embed_dim: 2
  lossconfig: {target: torch.nn.Identity}
  ddconfig: {double_z: true, z_channels: 2, resolution: 16, in_channels: 3, out_ch: 3, ch: 32,
             ch_mult: [1], num_res_blocks: 1, attn_resolutions: [], dropout: 0.0}
"""

OPTIMIZERS = {
    "params null": "{target: torch.optim.Adam, params: null}",
    "params missing": "{target: torch.optim.Adam}",
}


def _optimizers(model):
    model.learning_rate = 0.01
    opts = model.configure_optimizers()
    return opts if isinstance(opts, list) else [opts]


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS.values()), ids=list(OPTIMIZERS))
@pytest.mark.parametrize("engine", [DIFFUSION, AUTOENCODER], ids=["diffusion", "autoencoder"])
def test_optimizer_params_null_or_missing_take_the_defaults(engine, optimizer):
    config = OmegaConf.create(engine)
    config.params.optimizer_config = OmegaConf.create(optimizer)
    model = instantiate_from_config(config)
    opts = _optimizers(model)
    assert len(opts) == 1 and type(opts[0]) is torch.optim.Adam
    reference = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=0.01)
    ours, theirs = opts[0].param_groups[0], reference.param_groups[0]
    assert {k: v for k, v in ours.items() if k != "params"} == {
        k: v for k, v in theirs.items() if k != "params"
    }
    trained = {id(p) for p in opts[0].param_groups[0]["params"]}
    network = model.model if hasattr(model, "denoiser") else model.encoder
    assert {id(p) for p in network.parameters()} <= trained


@pytest.mark.parametrize("engine", [DIFFUSION, AUTOENCODER], ids=["diffusion", "autoencoder"])
def test_optimizer_params_reach_the_optimizer(engine):
    config = OmegaConf.create(engine)
    config.params.optimizer_config = {
        "target": "torch.optim.Adam",
        "params": {"betas": [0.5, 0.9], "weight_decay": 0.1},
    }
    (opt,) = _optimizers(instantiate_from_config(config))
    group = opt.param_groups[0]
    assert tuple(group["betas"]) == (0.5, 0.9) and group["weight_decay"] == 0.1
    assert group["lr"] == 0.01
