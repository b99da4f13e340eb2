"""A tiny DiffusionEngine (tiny UNet, identity first stage, class embedder) on CPU."""

import pytest
import torch
from omegaconf import OmegaConf

from sgm.checkpoint import load_state_dict
from sgm.errors import CheckpointError, ConfigError
from sgm.models.diffusion import DiffusionEngine
from sgm.util import instantiate_from_config

D = "sgm.modules.diffusionmodules"


def tiny_config(use_ema=True, **extra):
    params = {
        "use_ema": use_ema,
        "network_config": {
            "target": f"{D}.openaimodel.UNetModel",
            "params": {
                "in_channels": 1,
                "out_channels": 1,
                "model_channels": 32,
                "attention_resolutions": [],
                "num_res_blocks": 1,
                "channel_mult": [1],
                "num_head_channels": 32,
                "num_classes": "sequential",
                "adm_in_channels": 16,
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
                        "ucg_rate": 0.2,
                        "target": "sgm.modules.encoders.modules.ClassEmbedder",
                        "params": {"embed_dim": 16, "n_classes": 3},
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
                "num_steps": 4,
                "discretization_config": {"target": f"{D}.discretizer.EDMDiscretization"},
                "guider_config": {"target": f"{D}.guiders.VanillaCFG", "params": {"scale": 2.0}},
            },
        },
        "learning_rate": 2e-3,
    }
    params.update(extra)
    return {"target": "sgm.models.diffusion.DiffusionEngine", "params": params}


def _batch(n=8):
    g = torch.Generator().manual_seed(1)
    cls = torch.arange(n) % 3
    # three fixed 8x8 patterns, one per class
    patterns = torch.randn(3, 1, 8, 8, generator=g).sign() * 0.8
    return {"jpg": patterns[cls], "cls": cls}


def _loss(engine, batch, seed=5):
    torch.manual_seed(seed)
    with torch.no_grad():
        return float(engine.shared_step(dict(batch))[0])


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    engine = instantiate_from_config(tiny_config())
    batch = _batch()
    before = sum(_loss(engine, batch, s) for s in range(8))
    opt = engine.configure_optimizers()
    for _ in range(25):
        loss, _ = engine.shared_step(dict(batch))
        opt.zero_grad()
        loss.backward()
        opt.step()
        engine.on_train_batch_end()
    after = sum(_loss(engine, batch, s) for s in range(8))
    return engine, batch, before, after


def test_loss_decreases_with_training(trained):
    _, _, before, after = trained
    assert after < 0.9 * before


def test_ema_differs_and_ema_scope_swaps(trained):
    engine, _, _, _ = trained
    name = "diffusion_model.out.2.weight"
    live = dict(engine.model.named_parameters())[name].detach().clone()
    shadow = engine.model_ema.state_dict()[name.replace(".", "")]
    assert not torch.allclose(live, shadow)
    assert "model_ema.diffusion_modelout2weight" in engine.state_dict()
    with engine.ema_scope("test"):
        torch.testing.assert_close(dict(engine.model.named_parameters())[name], shadow)
    torch.testing.assert_close(dict(engine.model.named_parameters())[name], live)
    with pytest.raises(RuntimeError), engine.ema_scope():
        raise RuntimeError("restored even on error")
    torch.testing.assert_close(dict(engine.model.named_parameters())[name], live)


def test_sample_shape_and_seeded(trained):
    engine, batch, _, _ = trained
    c, uc = engine.conditioner.get_unconditional_conditioning(
        {"cls": torch.tensor([0, 1, 2])}, force_uc_zero_embeddings=["cls"]
    )
    a = engine.sample(
        c, uc=uc, batch_size=3, shape=(1, 8, 8), generator=torch.Generator().manual_seed(3)
    )
    b = engine.sample(
        c, uc=uc, batch_size=3, shape=(1, 8, 8), generator=torch.Generator().manual_seed(3)
    )
    assert a.shape == (3, 1, 8, 8) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b)


def test_log_images_keys(trained):
    engine, batch, _, _ = trained
    log = engine.log_images(dict(batch), N=4)
    assert set(log) == {"inputs", "reconstructions", "cls", "samples"}
    assert log["samples"].shape == (4, 1, 8, 8)
    assert log["cls"].shape == (4, 3, 8, 8)
    torch.testing.assert_close(log["reconstructions"], batch["jpg"][:4])


def test_first_stage_scaling_and_chunking():
    engine = instantiate_from_config(
        tiny_config(use_ema=False, scale_factor=0.25, en_and_decode_n_samples_a_time=3)
    )
    calls = []
    original = engine.first_stage_model.encode
    engine.first_stage_model.encode = lambda x: calls.append(len(x)) or original(x)
    x = torch.randn(7, 1, 8, 8)
    z = engine.encode_first_stage(x)
    assert calls == [3, 3, 1]
    torch.testing.assert_close(z, 0.25 * x)
    torch.testing.assert_close(engine.decode_first_stage(z), x)


def test_optimizer_scheduler_and_learning_rate_paths():
    cfg = tiny_config(use_ema=False)
    cfg["params"].pop("learning_rate")
    cfg["params"]["scheduler_config"] = {
        "target": "sgm.lr_scheduler.LambdaLinearScheduler",
        "params": {
            "warm_up_steps": [10],
            "f_start": [0.1],
            "f_max": [1.0],
            "f_min": [1.0],
            "cycle_lengths": [100],
        },
    }
    engine = instantiate_from_config(OmegaConf.create(cfg))
    with pytest.raises(ConfigError, match="learning rate"):
        engine.configure_optimizers()
    engine.learning_rate = 1e-3  # what main.py sets from base_learning_rate
    (opt,), (sched,) = engine.configure_optimizers()
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)
    assert sched["interval"] == "step"
    n_params = len(opt.param_groups[0]["params"])
    assert n_params == len(list(engine.model.parameters())) + 1  # + class embedding


def test_init_from_ckpt_strict_and_ema_keys(tmp_path, trained):
    engine, _, _, _ = trained
    path = tmp_path / "with_ema.ckpt"
    torch.save({"state_dict": engine.state_dict()}, path)
    plain = instantiate_from_config(tiny_config(use_ema=False))
    report = plain.init_from_ckpt(str(path))
    assert report.ok
    torch.testing.assert_close(
        plain.model.diffusion_model.out[2].weight, engine.model.diffusion_model.out[2].weight
    )
    bad = {k: v for k, v in load_state_dict(path).items() if "out.2" not in k}
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="missing"):
        plain.init_from_ckpt(str(tmp_path / "bad.pt"))
    built = instantiate_from_config(tiny_config(use_ema=True, ckpt_path=str(path)))
    torch.testing.assert_close(built.model_ema.num_updates, engine.model_ema.num_updates)


def test_training_needs_sampler_and_loss():
    cfg = tiny_config(use_ema=False)
    cfg["params"].pop("loss_fn_config")
    engine = instantiate_from_config(cfg)
    assert isinstance(engine, DiffusionEngine)
    with pytest.raises(ConfigError, match="loss_fn_config"):
        engine.on_train_start()


def test_ema_model_starts_from_a_checkpoint_without_ema(tmp_path, trained):
    engine, _, _, _ = trained
    plain = instantiate_from_config(tiny_config(use_ema=False))
    path = tmp_path / "no_ema.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, str(path))
    ema = instantiate_from_config(tiny_config(use_ema=True, ckpt_path=str(path)))
    torch.testing.assert_close(
        ema.model_ema.state_dict()["diffusion_modelout2weight"],
        plain.model.diffusion_model.out[2].weight,
    )
    assert int(ema.model_ema.num_updates) == 0
