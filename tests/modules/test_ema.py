"""LitEma: checkpoint buffer names and the warm-up decay closed form."""

import pytest
import torch
from torch import nn

from sgm.modules.ema import LitEma


def _model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.Linear(4, 2)))
    m[1][0].bias.requires_grad_(False)
    return m


def test_buffer_names_are_parameter_names_without_dots():
    ema = LitEma(_model())
    keys = list(ema.state_dict())
    assert keys == ["decay", "num_updates", "0weight", "0bias", "10weight"]
    assert ema.num_updates.dtype == torch.int32 and ema.decay.dtype == torch.float32


def test_update_follows_closed_form():
    model = _model()
    ema = LitEma(model, decay=0.9999)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    for n_update in (1, 2, 3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        shadow_before = ema.state_dict()["0weight"].clone()
        ema(model)
        decay = min(0.9999, (1 + n_update) / (10 + n_update))
        expected = shadow_before - (1 - decay) * (shadow_before - model[0].weight)
        torch.testing.assert_close(ema.state_dict()["0weight"], expected)
    assert int(ema.num_updates) == 3
    # the frozen parameter has no shadow and is never touched
    torch.testing.assert_close(model[1][0].bias, start["1.0.bias"] + 3.0)


def test_store_copy_restore_round_trip():
    model = _model()
    ema = LitEma(model)
    live = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    changed = [p.detach().clone() for p in model.parameters()]
    ema.store(model.parameters())
    ema.copy_to(model)
    torch.testing.assert_close(model[0].weight, live[0])
    ema.restore(model.parameters())
    for p, c in zip(model.parameters(), changed):
        torch.testing.assert_close(p, c)


def test_bad_decay_rejected():
    with pytest.raises(ValueError, match="between 0 and 1"):
        LitEma(_model(), decay=1.5)
