"""Autoencoder engines: checkpoint loading, chunked and tiled coding, training configs, training."""

import math
import sys
import warnings
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sgm.errors import CheckpointError
from sgm.models._autoencoder_tiling import apply_tiled
from sgm.models.autoencoder import (
    AEIntegerWrapper,
    AutoencoderKLModeOnly,
    AutoencoderLegacyVQ,
    AutoencodingEngine,
    IdentityFirstStage,
)
from sgm.modules.autoencoding.lpips.loss.lpips import LPIPS
from sgm.util import instantiate_from_config

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "modules" / "diffusionmodules"))
from test_vae_parity import _diffusers_vae, _randomize  # noqa: E402

DD = dict(
    double_z=True,
    z_channels=4,
    resolution=64,
    in_channels=3,
    out_ch=3,
    ch=32,
    ch_mult=[1, 2, 2],
    num_res_blocks=1,
    attn_resolutions=[],
    dropout=0.0,
)
IDENTITY = {"target": "torch.nn.Identity"}


def _kl(**kwargs):
    return _randomize(
        AutoencoderKLModeOnly(embed_dim=4, ddconfig=DD, lossconfig=IDENTITY, **kwargs)
    ).eval()


def test_ckpt_path_loads_bare_or_first_stage_prefixed_files(tmp_path):
    source = _kl()
    bare = tmp_path / "vae.safetensors"
    from safetensors.torch import save_file

    save_file(source.state_dict(), str(bare))
    embedded = tmp_path / "model.ckpt"
    state = {f"first_stage_model.{k}": v for k, v in source.state_dict().items()}
    state["model.diffusion_model.x"] = torch.zeros(1)
    torch.save({"state_dict": state}, embedded)
    for path in (bare, embedded):
        loaded = AutoencoderKLModeOnly(
            embed_dim=4, ddconfig=DD, lossconfig=IDENTITY, ckpt_path=str(path)
        )
        for key, value in source.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key


def test_ckpt_path_with_wrong_architecture_is_refused(tmp_path):
    path = tmp_path / "vae.pt"
    torch.save(_kl().state_dict(), path)
    with pytest.raises(CheckpointError, match="encoder"):
        AutoencoderKLModeOnly(
            embed_dim=4, ddconfig={**DD, "ch": 64}, lossconfig=IDENTITY, ckpt_path=str(path)
        )


def test_chunked_coding_equals_batched_coding():
    plain, chunked = _kl(), _kl(max_batch_size=2)
    x, z = torch.randn(5, 3, 32, 32), torch.randn(5, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(
            chunked.encode(x), plain.encode(x), atol=1e-5, rtol=0
        )  # conv kernels differ per batch size by ~1e-6
        torch.testing.assert_close(
            chunked.decode(z), plain.decode(z), atol=1e-5, rtol=0
        )  # conv kernels differ per batch size by ~1e-6


def test_chunked_video_decoding_keeps_clips_whole():
    dec = {
        "target": "sgm.modules.autoencoding.temporal_ae.VideoDecoder",
        "params": {**DD, "ch_mult": [1, 2], "video_kernel_size": [3, 1, 1]},
    }
    enc = {
        "target": "sgm.modules.diffusionmodules.model.Encoder",
        "params": {**DD, "ch_mult": [1, 2]},
    }
    reg = {"target": "sgm.modules.autoencoding.regularizers.DiagonalGaussianRegularizer"}
    kwargs = dict(
        encoder_config=enc, decoder_config=dec, loss_config=IDENTITY, regularizer_config=reg
    )
    plain = _randomize(AutoencodingEngine(**kwargs)).eval()
    chunked = AutoencodingEngine(**kwargs, max_batch_size=4).eval()
    chunked.load_state_dict(plain.state_dict())
    z = torch.randn(6, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(
            chunked.decode(z, timesteps=3), plain.decode(z, timesteps=3), atol=1e-5, rtol=0
        )  # conv kernels differ per batch size by ~1e-6


def test_tiling_with_one_tile_is_the_plain_pass():
    model = _kl()
    x, z = torch.randn(1, 3, 64, 64), torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.decode_tiled(z, tile_size=16), model.decode(z))
        torch.testing.assert_close(model.encode_tiled(x, tile_size=64), model.encode(x))


def test_tile_blending_is_exact_for_a_local_function():
    """Blended tiles reproduce any map whose receptive field fits in the overlap."""
    conv = torch.nn.Conv2d(4, 3, 3, padding=1)

    def local(z):  # f4 upsampling decoder with a receptive field of 1 latent pixel
        return conv(torch.nn.functional.interpolate(z, scale_factor=4.0, mode="nearest"))

    z = torch.randn(2, 4, 37, 29)
    with torch.no_grad():
        torch.testing.assert_close(apply_tiled(local, z, 12, 4, 4), local(z), atol=1e-5, rtol=1e-5)
        pooled = lambda x: torch.nn.functional.avg_pool2d(x, 4)  # noqa: E731
        x = torch.randn(1, 3, 96, 80)
        torch.testing.assert_close(apply_tiled(pooled, x, 32, 8, 1 / 4, align=4), pooled(x))


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_tiled_vae_error_is_no_worse_than_diffusers_tiling():
    """Tiles normalise with their own GroupNorm statistics, so tiling is approximate.

    Documented tolerance: on identical weights the mean absolute deviation from the
    plain pass is at most that of diffusers' tiled_decode / tiled encoder (the
    widely used reference), and bounded in absolute terms.
    """
    model = _kl()
    cls, config, converted = _diffusers_vae(model.state_dict(), DD, image_size=64)
    ref = cls(**config).eval()
    ref.load_state_dict(converted)
    z = torch.nn.functional.interpolate(torch.randn(1, 4, 8, 8), size=(40, 40), mode="bicubic")
    x = torch.nn.functional.interpolate(torch.randn(1, 3, 16, 16), size=(160, 160), mode="bicubic")
    with torch.no_grad():
        full = model.decode(z)
        ours = (model.decode_tiled(z, tile_size=16, overlap=4) - full).abs().mean()
        theirs = (ref.tiled_decode(z).sample - full).abs().mean()
        assert ours <= theirs * 1.05 and ours < 0.75 * full.std()
        moments = model.encode_moments(x)
        ours_enc = (
            (apply_tiled(model.encode_moments, x, 64, 16, 1 / 4, align=4) - moments).abs().mean()
        )
        theirs_enc = (ref._tiled_encode(x) - moments).abs().mean()
        assert ours_enc <= theirs_enc * 1.05 and ours_enc < 0.5 * moments.std()


def test_tiling_rejects_misaligned_sizes():
    model = _kl()
    with pytest.raises(ValueError, match="multiples"):
        model.encode_tiled(torch.randn(1, 3, 66, 64), tile_size=32)
    with pytest.raises(ValueError, match="overlap"):
        model.decode_tiled(torch.randn(1, 4, 16, 16), tile_size=8, overlap=8)


def test_identity_first_stage_and_integer_wrapper():
    ident = IdentityFirstStage()
    x = torch.randn(2, 3, 4, 4)
    assert ident.encode(x) is x and ident.decode(x) is x
    vq = _randomize(
        AutoencoderLegacyVQ(
            embed_dim=4,
            n_embed=16,
            ddconfig={**DD, "double_z": False},
            sane_index_shape=True,
            lossconfig=IDENTITY,
        )
    ).eval()
    wrapper = AEIntegerWrapper(vq, shape=(8, 8)).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        codes = wrapper.encode(images)
        assert codes.shape == (2, 64) and codes.dtype == torch.long
        z_q = vq.encode(images)
        torch.testing.assert_close(wrapper.decode(codes), vq.decode(z_q), atol=1e-5, rtol=1e-5)


@pytest.fixture
def lpips_weights(tmp_path, monkeypatch):
    path = tmp_path / "lpips_random.pt"
    torch.save(LPIPS(pretrained=False).state_dict(), path)
    monkeypatch.setenv("SGM_LPIPS_WEIGHTS", str(path))
    return path


CONFIGS = ROOT / "configs" / "example_training" / "autoencoder" / "kl-f4"


@pytest.mark.parametrize(
    "name, factor, z_channels, has_attention",
    [("imagenet-attnfree-logvar.yaml", 4, 4, False), ("imagenet-kl_f8_8chn.yaml", 8, 8, True)],
)
def test_training_configs_build_with_their_values(
    lpips_weights, name, factor, z_channels, has_attention
):
    cfg = OmegaConf.load(CONFIGS / name)
    assert cfg.model.base_learning_rate == 4.5e-6
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore", UserWarning)  # loading real LPIPS weights into meta params
        model = instantiate_from_config(cfg.model)
    state = model.state_dict()
    assert state["encoder.conv_out.weight"].shape[0] == 2 * z_channels
    assert state["decoder.conv_in.weight"].shape[1] == z_channels
    assert ("encoder.mid.attn_1.q.weight" in state) == has_attention
    assert any(k.startswith("loss.discriminator.main.") for k in state)
    assert model.loss.logvar.requires_grad and model.loss.perceptual_weight == 0.25
    # The same config at tiny width runs: f4 / f8 latents with z_channels channels.
    params = OmegaConf.to_container(cfg.model.params.encoder_config.params)
    params.update(ch=32, num_res_blocks=1, attn_type="vanilla" if has_attention else "none")
    cfg.model.params.encoder_config.params = params
    tiny = instantiate_from_config(cfg.model).eval()
    with torch.no_grad():
        z = tiny.encode(torch.randn(1, 3, 32, 32))
        assert z.shape == (1, z_channels, 32 // factor, 32 // factor)
        assert tiny.decode(z).shape == (1, 3, 32, 32)


class _Images(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"jpg": torch.rand(3, 32, 32, generator=g) * 2 - 1}


@pytest.mark.filterwarnings("ignore:You called `self.log:UserWarning")
@pytest.mark.filterwarnings("ignore::UserWarning:pytorch_lightning")
def test_tiny_engine_trains_with_discriminator_starting_mid_run():
    import pytorch_lightning as pl

    dd = {**DD, "ch_mult": [1, 2], "resolution": 32}
    model = AutoencodingEngine(
        encoder_config={"target": "sgm.modules.diffusionmodules.model.Encoder", "params": dd},
        decoder_config={"target": "sgm.modules.diffusionmodules.model.Decoder", "params": dd},
        regularizer_config={
            "target": "sgm.modules.autoencoding.regularizers.DiagonalGaussianRegularizer"
        },
        loss_config={
            "target": "sgm.modules.autoencoding.losses.GeneralLPIPSWithDiscriminator",
            "params": {
                "disc_start": 3,
                "perceptual_weight": 0.25,
                "learn_logvar": True,
                "disc_num_layers": 2,
                "regularization_weights": {"kl_loss": 1e-6},
                "lpips_kwargs": {"pretrained": False},
            },
        },
        disc_start_iter=3,
    )
    model.learning_rate = 1e-3
    disc_before = [p.detach().clone() for p in model.loss.discriminator.parameters()]
    enc_before = model.encoder.conv_in.weight.detach().clone()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=6,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, torch.utils.data.DataLoader(_Images(), batch_size=1))
    metrics = trainer.callback_metrics
    assert trainer.global_step == 6
    assert math.isfinite(metrics["train/loss/total"]) and math.isfinite(metrics["train/loss/disc"])
    assert metrics["train/scalars/d_weight"] > 0  # the GAN term is active by the end
    assert not torch.equal(model.encoder.conv_in.weight, enc_before)
    assert any(
        not torch.equal(a, b) for a, b in zip(disc_before, model.loss.discriminator.parameters())
    )
