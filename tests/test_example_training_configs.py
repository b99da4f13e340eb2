"""Every training config under configs/example_training/ (toy, imagenet, txt2img) builds."""

import tarfile
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from sgm.util import instantiate_from_config, load_configs

ROOT = Path(__file__).resolve().parents[1]
TRAINING = ROOT / "configs" / "example_training"
TOY = sorted((TRAINING / "toy").glob("*.yaml"))
LATENT = [
    TRAINING / n
    for n in (
        "imagenet-f8_cond.yaml",
        "txt2img-clipl.yaml",
        "txt2img-clipl-legacy-ucg-training.yaml",
    )
]


@contextmanager
def parameters_on_meta():
    """Create every nn.Parameter on the meta device (buffers stay real): no weight memory."""
    original = torch.nn.Module.register_parameter

    def register(module, name, param):
        if param is not None and param.device.type != "meta":
            param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    torch.nn.Module.register_parameter = register
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original


@pytest.mark.parametrize("path", TOY, ids=lambda p: p.stem)
def test_toy_config_builds_and_takes_a_step(path):
    cfg = load_configs([path], ["data.params.batch_size=2", "data.params.num_workers=0"])
    model = instantiate_from_config(cfg.model, key="model")
    data = instantiate_from_config(cfg.data, key="data")
    batch = next(iter(data.train_dataloader()))
    size = 8 if "digits" in path.stem else (32 if "cifar" in path.stem else 28)
    channels = 3 if "cifar" in path.stem else 1
    assert batch["jpg"].shape == (2, channels, size, size)
    loss, _ = model.shared_step(batch)
    assert torch.isfinite(loss)
    assert cfg.lightning.callbacks.image_logger.target == "main.ImageLogger"
    unet = cfg.model.params.network_config.params
    label_emb = "model.diffusion_model.label_emb.0.0.weight"
    if unet.get("num_classes") == "sequential":
        assert model.state_dict()[label_emb].shape == (
            4 * unet.model_channels,
            unet.adm_in_channels,
        )
    assert model.use_ema == bool(cfg.model.params.get("use_ema", False))


@pytest.mark.parametrize("path", LATENT, ids=lambda p: p.stem)
def test_latent_config_builds_on_meta(path, tmp_path):
    cfg = load_configs(
        [path],
        [
            "model.params.first_stage_config.params.ckpt_path=null",
            f"data.params.train.datapipeline.urls=[{tmp_path}]",
        ],
    )
    with parameters_on_meta():
        model = instantiate_from_config(cfg.model, key="model")
    sd = model.state_dict()
    unet = cfg.model.params.network_config.params
    assert sd["model.diffusion_model.label_emb.0.0.weight"].shape == (
        4 * unet.model_channels,
        unet.adm_in_channels,
    )
    assert (
        sd["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"].shape[1]
        == unet.context_dim
    )
    assert sd["first_stage_model.encoder.conv_in.weight"].shape == (128, 3, 3, 3)
    assert sd["denoiser.sigmas"].shape == (1000,)
    assert model.scale_factor == pytest.approx(0.13025)
    tarfile.open(tmp_path / "000000.tar", "w").close()  # an empty shard: shards are checked
    data = instantiate_from_config(cfg.data, key="data")
    assert data.train_config["loader"]["batch_size"] == 64
