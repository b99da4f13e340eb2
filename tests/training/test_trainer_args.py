"""main.py's table of Trainer arguments against the installed pytorch_lightning.Trainer."""

import inspect

import pytest
import pytorch_lightning as pl
import torch

from sgm import config_trainer as trainer_args

QUIET = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


def test_table_lists_exactly_the_trainer_arguments():
    names = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}
    assert set(trainer_args.CHECKS) == names - set(trainer_args.RESERVED)
    assert set(trainer_args.RESERVED) <= names


# Values Lightning's own constructor refuses: the table must refuse them first.
LIGHTNING_REFUSES = [
    ("max_steps", -5),
    ("max_epochs", -2),
    ("num_nodes", 0),
    ("limit_train_batches", 1.5),
    ("overfit_batches", -1),
    ("gradient_clip_algorithm", "bogus"),
    ("precision", "8"),
    ("max_time", "1h"),
    ("devices", "x"),
    ("reload_dataloaders_every_n_epochs", -1),
    ("fast_dev_run", -1),
]
# Values Lightning accepts: the table accepts them unchanged.
LIGHTNING_ACCEPTS = [
    ("max_steps", -1),
    ("max_steps", 0),
    ("max_steps", 10),
    ("max_epochs", None),
    ("max_epochs", -1),
    ("limit_train_batches", 0.5),
    ("limit_train_batches", 10),
    ("devices", 1),
    ("devices", "auto"),
    ("precision", "32-true"),
    ("precision", 32),
    ("precision", "bf16-mixed"),
    ("max_time", "00:00:01:00"),
    ("fast_dev_run", True),
    ("fast_dev_run", 2),
    ("gradient_clip_algorithm", "norm"),
    ("accelerator", "cpu"),
]


@pytest.mark.parametrize("name,value", LIGHTNING_REFUSES)
def test_refuses_what_lightning_refuses(name, value):
    with pytest.raises(Exception):
        pl.Trainer(**{name: value}, **QUIET)
    with pytest.raises(ValueError, match="expected"):
        trainer_args.check_value(name, value)


@pytest.mark.parametrize("name,value", LIGHTNING_ACCEPTS)
def test_accepts_what_lightning_accepts(name, value):
    pl.Trainer(**{name: value}, **QUIET)
    assert trainer_args.check_value(name, value) == value


@pytest.mark.parametrize(
    "name,value",
    [
        ("max_steps", "abc"),
        ("max_steps", 2.5),
        ("accumulate_grad_batches", 0),
        ("log_every_n_steps", 0),
        ("enable_progress_bar", "no"),
    ],
)
def test_refuses_values_lightning_would_fail_on_later(name, value):
    with pytest.raises(ValueError, match="expected"):
        trainer_args.check_value(name, value)


def test_accelerator_availability_matches_torch():
    assert trainer_args.accelerator_available("cpu")
    assert trainer_args.accelerator_available("cuda") == torch.cuda.is_available()
    with pytest.raises(ValueError, match="expected one of"):
        trainer_args.check_value("accelerator", "quantum")
