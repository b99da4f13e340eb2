"""Optimizers by config: each lowers the loss of a small regression; the step fused into
backward gives the ordinary step's weights (the oracle: torch's AdamW stepped as usual)."""

import sys

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from sgm.errors import ConfigError
from sgm.training.optimizers import FusedBackwardStep, adamw, adamw_8bit
from sgm.util import instantiate_from_config

ADAMW = {"target": "torch.optim.AdamW", "params": {"foreach": False, "weight_decay": 0.01}}


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 96, generator=g)
    y = torch.tanh(x @ torch.randn(96, 48, generator=g) / 10)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(96, 96), torch.nn.GELU(), torch.nn.Linear(96, 48))
    return model, x, y


def _loss(model, x, y):
    return torch.nn.functional.mse_loss(model(x), y)


OPTIMIZERS = {
    "adamw": lambda p: adamw(p, lr=1e-2),
    "adafactor": lambda p: torch.optim.Adafactor(p, lr=1e-2),
    "adamw_8bit": lambda p: adamw_8bit(p, lr=1e-2),
    "fused_step_adafactor": lambda p: FusedBackwardStep(
        p, lr=1e-2, optimizer={"target": "torch.optim.Adafactor"}
    ),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_each_optimizer_lowers_the_loss(name):
    model, x, y = _problem()
    optimizer = OPTIMIZERS[name](model.parameters())
    before = _loss(model, x, y).item()
    for _ in range(40):
        optimizer.zero_grad()

        def closure():
            loss = _loss(model, x, y)
            loss.backward()
            return loss

        optimizer.step(closure)
    after = _loss(model, x, y).item()
    assert after < 0.5 * before, f"{name}: loss {before:.4f} -> {after:.4f}"
    if name == "adamw":
        assert optimizer.defaults["fused"] is True  # PyTorch has the fused kernel on CPU
    if name == "adamw_8bit":  # both moments of the 96x96 weight are stored in 8 bits
        state = optimizer.state[model[0].weight]
        assert state["state1"].dtype == state["state2"].dtype == torch.uint8
    if name.startswith("fused_step"):  # each gradient is freed right after its step
        assert all(p.grad is None for p in model.parameters())


def test_fused_step_gives_the_ordinary_steps_weights_and_restores_its_state():
    ordinary, x, y = _problem()
    fused, _, _ = _problem()
    reference = torch.optim.AdamW(ordinary.parameters(), lr=1e-2, foreach=False, weight_decay=0.01)
    stepper = FusedBackwardStep(fused.parameters(), lr=1e-2, optimizer=ADAMW)
    for step in range(6):
        lr = 1e-2 / (step + 1)  # as a scheduler would set it
        reference.param_groups[0]["lr"] = stepper.param_groups[0]["lr"] = lr
        reference.zero_grad()
        _loss(ordinary, x, y).backward()
        reference.step()
        stepper.step(lambda: _loss(fused, x, y).backward())
    for a, b in zip(ordinary.parameters(), fused.parameters()):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-7)
    restored = FusedBackwardStep(_problem()[0].parameters(), lr=1e-2, optimizer=ADAMW)
    restored.load_state_dict(stepper.state_dict())
    for theirs, ours in zip(reference.state.values(), (o.state for o in restored.inner)):
        (ours,) = ours.values()
        torch.testing.assert_close(ours["exp_avg_sq"], theirs["exp_avg_sq"], rtol=0, atol=1e-9)


def test_8bit_optimizer_where_its_library_cannot_run_says_why_and_the_alternative(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if absent
    with pytest.raises(ConfigError, match=r"bitsandbytes.*cannot run here.*Adafactor"):
        adamw_8bit([torch.nn.Parameter(torch.zeros(4))], lr=1e-3)


def _tiny_engine(optimizer_config):
    config = OmegaConf.load("tests/configs/tiny_train.yaml")
    config.model.params.optimizer_config = optimizer_config
    config.model.params.learning_rate = 1e-3
    config.model.params.scheduler_config = {
        "target": "sgm.lr_scheduler.LambdaLinearScheduler",
        "params": {
            "warm_up_steps": [2],
            "cycle_lengths": [10],
            "f_start": [0.1],
            "f_max": [1.0],
            "f_min": [0.5],
        },
    }
    pl.seed_everything(0)
    model = instantiate_from_config(config.model)
    data = instantiate_from_config(config.data)
    return model, data


def _fit(model, data, tmp_path, **trainer):
    pl.seed_everything(1)
    pl.Trainer(
        max_steps=4,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        **trainer,
    ).fit(model, data)


def test_fused_step_in_lightning_matches_the_ordinary_step(tmp_path):
    ordinary, data = _tiny_engine(ADAMW)
    _fit(ordinary, data, tmp_path)
    fused, data = _tiny_engine(
        {"target": "sgm.training.optimizers.FusedBackwardStep", "params": {"optimizer": ADAMW}}
    )
    start = {k: v.clone() for k, v in fused.state_dict().items()}
    _fit(fused, data, tmp_path)
    moved = 0
    for key, value in ordinary.state_dict().items():
        torch.testing.assert_close(fused.state_dict()[key], value, rtol=0, atol=1e-6)
        moved += not torch.equal(start[key], value)
    assert moved > 10


@pytest.mark.parametrize(
    "setting", [{"accumulate_grad_batches": 2}, {"gradient_clip_val": 1.0}], ids=str
)
def test_fused_step_refuses_accumulation_and_clipping(setting, tmp_path):
    model, data = _tiny_engine(
        {"target": "sgm.training.optimizers.FusedBackwardStep", "params": {"optimizer": ADAMW}}
    )
    name = next(iter(setting))
    with pytest.raises(ConfigError, match=rf"FusedBackwardStep.*lightning\.trainer\.{name}="):
        _fit(model, data, tmp_path, **setting)
