"""Guiders against hand-computed scales and the [uc, c] batch layout."""

import pytest
import torch
from omegaconf import ListConfig

from sgm.modules.diffusionmodules.guiders import (
    IdentityGuider,
    LinearPredictionGuider,
    SpatiotemporalPredictionGuider,
    TrapezoidPredictionGuider,
    TrianglePredictionGuider,
    VanillaCFG,
)


def _pair(batch, value_u, value_c, shape=(2, 2)):
    return torch.cat([torch.full((batch, *shape), value_u), torch.full((batch, *shape), value_c)])


def test_vanilla_cfg_value():
    out = VanillaCFG(7.5)(_pair(3, 1.0, 3.0), torch.ones(6))
    torch.testing.assert_close(out, torch.full((3, 2, 2), 16.0))  # 1 + 7.5 * (3 - 1)


def test_vanilla_cfg_prepare_inputs_doubles_guided_keys():
    x, s = torch.randn(2, 4, 3, 3), torch.tensor([1.0, 2.0])
    c = {
        "crossattn": torch.ones(2, 5, 8),
        "vector": torch.ones(2, 6),
        "concat": torch.ones(2, 4, 3, 3),
        "num_video_frames": 14,
    }
    uc = {k: (v * 0 if torch.is_tensor(v) else v) for k, v in c.items()}
    x2, s2, c2 = VanillaCFG(2.0).prepare_inputs(x, s, c, uc)
    assert torch.equal(x2, torch.cat([x, x])) and torch.equal(s2, torch.cat([s, s]))
    for k in ("crossattn", "vector", "concat"):
        assert c2[k].shape[0] == 4
        assert torch.all(c2[k][:2] == 0) and torch.all(c2[k][2:] == 1)  # [uc, c]
    assert c2["num_video_frames"] == 14


def test_vanilla_cfg_rejects_unguided_key_that_differs():
    c = {"crossattn": torch.ones(1, 2, 3), "image_only_indicator": torch.ones(1, 2)}
    uc = {"crossattn": torch.zeros(1, 2, 3), "image_only_indicator": torch.zeros(1, 2)}
    with pytest.raises(ValueError, match="image_only_indicator"):
        VanillaCFG(2.0).prepare_inputs(torch.zeros(1, 1), torch.ones(1), c, uc)
    uc["image_only_indicator"] = torch.ones(1, 2)
    _, _, c2 = VanillaCFG(2.0).prepare_inputs(torch.zeros(1, 1), torch.ones(1), c, uc)
    assert c2["image_only_indicator"] is c["image_only_indicator"]


def test_identity_guider_passes_through():
    x, s, c = torch.randn(2, 3), torch.ones(2), {"crossattn": torch.ones(2, 1, 4)}
    x2, s2, c2 = IdentityGuider().prepare_inputs(x, s, c, {"crossattn": None})
    assert x2 is x and s2 is s and c2 == c and c2 is not c
    assert IdentityGuider()(x, s) is x


def _per_frame(guider, num_frames, batch=2):
    """Output for x_u = 0, x_c = 1: exactly the per-frame scale, per video."""
    out = guider(_pair(batch * num_frames, 0.0, 1.0, shape=(1,)), None)
    out = out.view(batch, num_frames)
    assert torch.equal(out[0], out[1])
    return out[0].tolist()


def test_linear_prediction_guider_scales_and_layout():
    g = LinearPredictionGuider(max_scale=2.0, num_frames=3, min_scale=1.0)
    assert _per_frame(g, 3) == pytest.approx([1.0, 1.5, 2.0])
    # x_u = 1, x_c = 3 in a (b t) layout: 1 + scale * 2
    out = g(_pair(3, 1.0, 3.0, shape=(4,)), None)
    torch.testing.assert_close(out[:, 0], torch.tensor([3.0, 4.0, 5.0]))


def test_linear_guider_doubles_additional_keys():
    g = LinearPredictionGuider(2.0, 2, additional_cond_keys=ListConfig(["cond_view"]))
    c = {
        "cond_view": torch.ones(2, 4),
        "cond_motion": torch.ones(2, 4),
        "vector": torch.ones(2, 3),
    }
    uc = {
        "cond_view": torch.zeros(2, 4),
        "cond_motion": torch.zeros(2, 4),
        "vector": torch.zeros(2, 3),
    }
    _, _, c2 = g.prepare_inputs(torch.zeros(2, 1), torch.ones(2), c, uc)
    assert c2["cond_view"].shape[0] == 4 and torch.all(c2["cond_view"][:2] == 0)
    assert c2["vector"].shape[0] == 4
    assert c2["cond_motion"] is c["cond_motion"]
    assert LinearPredictionGuider(2.0, 2, additional_cond_keys="a").additional_cond_keys == ["a"]


def test_per_frame_scale_reaches_the_device_once(monkeypatch):
    # Each copy of the scale to an accelerator is a host->device transfer inside the sampling
    # loop; the meta device stands in for one. Steps after the first must not copy again.
    g = LinearPredictionGuider(max_scale=2.0, num_frames=3)
    copies = []
    original_to = torch.Tensor.to

    def recording_to(self, *args, **kwargs):
        if self is g.scale:
            copies.append(args or kwargs)
        return original_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", recording_to)
    x = torch.zeros(12, 4, device="meta")
    for _ in range(5):
        assert g(x, None).device.type == "meta"
    assert len(copies) == 1
    g.scale = torch.full((1, 3), 7.0)  # a new scale is used, not the stale copy
    assert _per_frame(g, 3) == [7.0, 7.0, 7.0]


def test_linear_guider_rejects_batch_not_multiple_of_frames():
    with pytest.raises(ValueError, match="num_frames=3"):
        LinearPredictionGuider(2.0, 3)(torch.zeros(8, 1), None)


@pytest.mark.parametrize(
    "period,fusing,wave",
    [
        (1.0, "max", [0, 0.5, 1, 0.5, 0]),
        (1, "max", [0, 0.5, 1, 0.5, 0]),
        (0.5, "max", [0, 1, 0, 1, 0]),
        ([1.0, 0.5], "max", [0, 1, 1, 1, 0]),
        ([1.0, 0.5], "mean", [0, 0.75, 0.5, 0.75, 0]),
        (ListConfig([1.0, 0.5]), "multiply", [0, 0.5, 0, 0.5, 0]),
    ],
)
def test_triangle_prediction_guider(period, fusing, wave):
    g = TrianglePredictionGuider(3.0, 5, min_scale=1.0, period=period, period_fusing=fusing)
    assert _per_frame(g, 5) == pytest.approx([1 + 2 * w for w in wave])


def test_triangle_rejects_unknown_fusing():
    with pytest.raises(ValueError, match="period_fusing='median'"):
        TrianglePredictionGuider(3.0, 5, period_fusing="median")


def test_trapezoid_prediction_guider():
    g = TrapezoidPredictionGuider(2.5, 10, min_scale=1.0, edge_perc=0.2)
    assert _per_frame(g, 10) == pytest.approx([1, 2.5, 1, 1, 1, 1, 1, 1, 2.5, 1])
    g = TrapezoidPredictionGuider(3.0, 10, min_scale=1.0, edge_perc=0.3)
    assert _per_frame(g, 10) == pytest.approx([1, 2, 3, 1, 1, 1, 1, 3, 2, 1])


def test_spatiotemporal_prediction_guider():
    # 2 times x 3 views: 0.5 * time ramp [0, 1] + 0.5 * view triangle [0, 1, 0].
    g = SpatiotemporalPredictionGuider(3.0, 6, num_views=3, min_scale=1.0)
    assert _per_frame(g, 6) == pytest.approx([1, 2, 1, 2, 3, 2])
    with pytest.raises(ValueError, match="num_views=4"):
        SpatiotemporalPredictionGuider(3.0, 6, num_views=4)
