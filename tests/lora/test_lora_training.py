"""Training an adapter through DiffusionEngine's lora_config, checkpoints, resume, export."""

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from lora_tiny import batch, engine_config, randomize
from omegaconf import OmegaConf

from sgm.errors import CheckpointError, ConfigError
from sgm.lora import load_lora, lora_parameters
from sgm.lora.training import LoraExport
from sgm.util import instantiate_from_config

LORA = {"rank": 4, "alpha": 4}


@pytest.fixture(scope="module", autouse=True)
def base_ckpt(tmp_path_factory):
    """A "released" base model: random weights everywhere (the zero-initialised output
    layers too, or no gradient would reach the attention layers)."""
    from safetensors.torch import save_file

    global BASE
    torch.manual_seed(0)
    engine = instantiate_from_config(engine_config(None))
    randomize(engine.model, std=0.05)
    BASE = tmp_path_factory.mktemp("base") / "base.safetensors"
    save_file({k: v.contiguous() for k, v in engine.state_dict().items()}, str(BASE))
    return BASE


def build(lora=LORA, seed=0, **extra):
    torch.manual_seed(seed)
    return instantiate_from_config(engine_config(lora, ckpt_path=str(BASE), **extra))


def base_weights(engine):
    """The engine's weights under their unwrapped names (adapter tensors left out)."""
    return {
        k.replace(".base_layer", ""): v.clone()
        for k, v in engine.state_dict().items()
        if ".lora_" not in k
    }


def test_only_adapter_tensors_change_and_gradients_pass_checkpointing():
    engine = build()
    before = {k: v.clone() for k, v in engine.state_dict().items()}
    opt = engine.configure_optimizers()
    params = {id(p) for g in opt.param_groups for p in g["params"]}
    assert params == {id(p) for p in lora_parameters(engine)}
    for step in range(3):
        opt.zero_grad()
        torch.manual_seed(step)
        loss, _ = engine.shared_step(batch())
        loss.backward()
        opt.step()
    after = engine.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    adapters = {k for k in after if ".lora_A." in k or ".lora_B." in k}
    assert changed and changed <= adapters
    assert any(".lora_B." in k for k in changed)  # B starts at zero: gradients reached it


def _trainer(tmp_path, max_steps, callbacks=()):
    return pl.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
    )


def _loader():
    data = batch()
    return torch.utils.data.DataLoader(
        [{k: v[i] for k, v in data.items()} for i in range(6)], batch_size=3
    )


def test_checkpoints_hold_only_the_adapter_and_resume(tmp_path):
    engine = build()
    ckpt = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=2
    )
    export = LoraExport(every_n_train_steps=2, dirpath=str(tmp_path / "lora"))
    _trainer(tmp_path, 3, [ckpt, export]).fit(engine, _loader())
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]
    assert state and all(".lora_A." in k or ".lora_B." in k for k in state)
    assert [p.name for p in export.written] == [
        "step-0000002.lora.safetensors",
        "step-0000003.lora.safetensors",
    ]
    # the exported adapter on a fresh base engine reproduces the trained network
    plain = build(lora=None)
    load_lora(plain, export.written[-1])
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([3.0, 700.0])
    c = torch.randn(2, 1, 24)
    with torch.no_grad():
        expected = engine.model.diffusion_model(x, t, context=c)
        got = plain.model.diffusion_model(x, t, context=c)
    assert torch.allclose(got, expected, atol=1e-6)
    # resuming continues from the adapter, on the base weights the config builds
    resumed = build()
    seen = {}

    class Snapshot(pl.Callback):
        def on_train_start(self, trainer, module):
            seen.update({k: v.clone() for k, v in module.state_dict().items() if k in state})

    trainer = _trainer(tmp_path, 5, [Snapshot()])
    trainer.fit(resumed, _loader(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert trainer.global_step == 5
    assert seen.keys() == state.keys()
    assert all(torch.equal(seen[k], state[k]) for k in state)
    assert base_weights(resumed).keys() == base_weights(engine).keys()
    for key, value in base_weights(engine).items():
        assert torch.equal(value, base_weights(resumed)[key]), key


def test_resume_from_a_checkpoint_without_the_adapter_is_refused(tmp_path):
    plain = build(lora=None)
    checkpoint = {"state_dict": plain.state_dict()}
    with pytest.raises(CheckpointError, match="is not an adapter weight"):
        build().on_load_checkpoint(checkpoint)
    with pytest.raises(CheckpointError, match="lacks adapter weight"):
        build().on_load_checkpoint({"state_dict": {}})


def test_lora_with_ema_is_refused():
    with pytest.raises(ConfigError, match="use_ema"):
        build(use_ema=True)


def test_engine_without_lora_config_is_unchanged():
    engine = build(lora=None)
    assert engine.lora_config is None
    assert not lora_parameters(engine)
    assert len(engine.trainable_parameters()) == len(list(engine.model.parameters())) + 1


VIDEO = OmegaConf.load(
    Path(__file__).parents[1] / "configs" / "video_tiny_svd.yaml"
).model.params.network_config


def test_video_unet_temporal_layers_are_an_option(tmp_path):
    from sgm.lora import add_lora, save_lora

    torch.manual_seed(0)
    spatial = add_lora(instantiate_from_config(VIDEO), {"rank": 2})
    assert spatial and not any("time_stack" in n for n in spatial)
    net = instantiate_from_config(VIDEO)
    both = add_lora(net, {"rank": 2, "temporal": True})
    temporal = [n for n in both if ".time_stack." in n]
    assert set(spatial) <= set(both) and temporal
    assert all(n.endswith(("to_q", "to_k", "to_v", "to_out.0")) for n in temporal)
    with pytest.raises(ConfigError, match="temporal layers are left out"):
        add_lora(instantiate_from_config(VIDEO), {"rank": 2, "target_modules": ["time_mixer"]})
    with torch.no_grad():
        for p in lora_parameters(net):
            p.normal_(0, 0.1)
    path = save_lora(net, tmp_path / "video.lora.safetensors")
    fresh = instantiate_from_config(VIDEO)
    fresh.load_state_dict(
        {k.replace(".base_layer", ""): v for k, v in net.state_dict().items() if ".lora_" not in k}
    )
    load_lora(fresh, path)
    x = torch.randn(2, 8, 8, 8)
    kwargs = dict(
        context=torch.randn(2, 1, 32),
        y=torch.randn(2, 768),
        num_video_frames=2,
        image_only_indicator=torch.zeros(1, 2),
    )
    with torch.no_grad():
        assert torch.allclose(
            fresh(x, torch.tensor([1.0, 2.0]), **kwargs),
            net(x, torch.tensor([1.0, 2.0]), **kwargs),
            atol=1e-5,
        )


def test_sampling_pipeline_lora_parameter(tmp_path):
    from sgm.inference.api import SamplingPipeline, SamplingSpec
    from sgm.lora import save_lora

    trained = build()
    with torch.no_grad():
        for p in lora_parameters(trained):
            p.normal_(0, 0.2)
    path = save_lora(trained, tmp_path / "a.lora.safetensors")
    spec = SamplingSpec(8, 8, 1, 1, True, "", str(BASE), False)
    config = {"model": engine_config(None)}
    plain = SamplingPipeline(config=config, ckpt=BASE, device="cpu", spec=spec)
    half = SamplingPipeline(
        config=config, ckpt=BASE, device="cpu", spec=spec, lora=[(path, 0.5), (path, 0.5)]
    )
    x, t, c = torch.randn(2, 1, 8, 8), torch.tensor([3.0, 700.0]), torch.randn(2, 1, 24)
    with torch.no_grad():
        expected = trained.model.diffusion_model(x, t, context=c)
        base = plain.model.model.diffusion_model(x, t, context=c)
        got = half.model.model.diffusion_model(x, t, context=c)
    assert (expected - base).abs().max() > 1e-2
    assert torch.allclose(got, expected, atol=1e-5)
    assert not any(p.requires_grad for p in half.model.parameters())


def test_training_can_start_from_an_exported_adapter(tmp_path):
    from sgm.lora import save_lora

    trained = build(lora={"rank": 4, "alpha": 8})
    with torch.no_grad():
        for p in lora_parameters(trained):
            p.normal_(0, 0.2)
    path = save_lora(trained, tmp_path / "start.lora.safetensors")
    again = build(lora={"rank": 4, "alpha": 2, "init_from": str(path)})
    x, t, c = torch.randn(2, 1, 8, 8), torch.tensor([3.0, 700.0]), torch.randn(2, 1, 24)
    with torch.no_grad():
        assert torch.allclose(
            again.model.diffusion_model(x, t, context=c),
            trained.model.diffusion_model(x, t, context=c),
            atol=1e-5,
        )
    assert all(p.requires_grad for p in lora_parameters(again))
    with pytest.raises(ConfigError, match="has rank 4, lora_config.rank is 2"):
        build(lora={"rank": 2, "init_from": str(path)})
