"""Released configs, full size on the meta device: every diffusers component the
conversion builds has exactly the keys and shapes its traced table produces, the table
is a bijection, and only the documented engine keys have no place in diffusers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sgm.convert._components import layout
from sgm.convert._encoders import flat_text_keys
from sgm.convert._engine import build_engine, engine_params, load_config, shapes
from sgm.convert._folders import build_model
from sgm.convert._probe import check_bijection, trace
from sgm.convert.export import unplaced_keys

pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

ROOT = Path(__file__).resolve().parents[2]
SD2_TEXT = "conditioner.embedders.0.model."
SVD_CLIP = "conditioner.embedders.0.open_clip.model."
SVD_AE = "conditioner.embedders.3.encoder."
CASES = {
    "configs/inference/sd_2_1.yaml": (
        "sd2",
        {SD2_TEXT + "text_projection", SD2_TEXT + "logit_scale"},
        (SD2_TEXT + "transformer.resblocks.23.",),
        12,
    ),
    "configs/inference/sd_xl_base.yaml": (
        "sdxl_base",
        {"conditioner.embedders.1.model.logit_scale"},
        (),
        0,
    ),
    "configs/inference/sd_xl_refiner.yaml": (
        "sdxl_refiner",
        {"conditioner.embedders.0.model.logit_scale"},
        (),
        0,
    ),
    "scripts/sampling/configs/svd_xt.yaml": (
        "svd",
        {
            SVD_CLIP + k
            for k in (
                "positional_embedding",
                "text_projection",
                "logit_scale",
                "token_embedding.weight",
                "ln_final.weight",
                "ln_final.bias",
            )
        },
        (SVD_AE + "decoder.", SVD_AE + "post_quant_conv."),
        140,
    ),
}


@pytest.mark.parametrize("config", CASES)
def test_released_config_layout(config):
    family, single, groups, group_count = CASES[config]
    cfg = load_config(ROOT / config)
    engine = build_engine(cfg)
    engine_shapes = shapes(engine.state_dict())
    plan = layout(engine, engine_params(cfg))
    assert plan.family == family
    for component in plan.components:
        table = trace(component.convert, engine_shapes)
        model = build_model(component)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        produced = {k: e.shape for k, e in table.items()}
        if component.class_name.startswith("CLIPText"):
            produced = {
                k: v.shape
                for k, v in flat_text_keys(
                    model, {k: torch.empty(s, device="meta") for k, s in produced.items()}
                ).items()
            }
        assert produced == expected, component.name
        sources = {e.source for e in table.values()}
        check_bijection(table, engine_shapes, set(engine_shapes) - sources)
    unplaced = set(unplaced_keys(plan, engine_shapes))
    grouped = {k for k in unplaced if k.startswith(groups)} if groups else set()
    assert unplaced - grouped == single
    assert len(grouped) == group_count
