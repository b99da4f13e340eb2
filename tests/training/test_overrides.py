"""Dot-list overrides: key=value only, values converted to the type the config or the
constructor signature expects, new top-level keys limited to the known sections."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sgm.config_overrides import KNOWN_SECTIONS, apply_overrides, parse_override
from sgm.errors import ConfigError
from sgm.util import load_configs

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny_train.yaml"
UNET = "model.params.network_config.params"


def _load(*overrides):
    return load_configs([TINY], list(overrides), sections=KNOWN_SECTIONS)


def test_values_take_the_configs_types():
    cfg = _load(
        "model.params.use_ema=true",
        f"{UNET}.num_res_blocks=2",
        "data.params.batch_size=4.0",
        "lightning.trainer.max_steps=7",
        "model.params.scale_factor=1",
        f"{UNET}.channel_mult=[1,2]",
    )
    assert cfg.model.params.use_ema is True
    assert cfg.model.params.network_config.params.num_res_blocks == 2
    assert type(cfg.data.params.batch_size) is int and cfg.data.params.batch_size == 4
    assert cfg.lightning.trainer.max_steps == 7
    assert type(cfg.model.params.scale_factor) is float
    assert list(cfg.model.params.network_config.params.channel_mult) == [1, 2]


def test_wrong_type_names_key_value_and_expected_type():
    with pytest.raises(ConfigError) as info:
        _load(f"{UNET}.num_res_blocks=two")
    message = str(info.value)
    assert "num_res_blocks=two" in message and "expected an integer" in message
    with pytest.raises(ConfigError, match="use_ema=maybe.*expected true or false"):
        _load("model.params.use_ema=maybe")


def test_union_typed_parameter_takes_a_list_where_the_config_has_an_int():
    # UNetModel's num_res_blocks is "int | Sequence[int]": one count per level is valid.
    cfg = _load(f"{UNET}.num_res_blocks=[1]")
    assert list(cfg.model.params.network_config.params.num_res_blocks) == [1]


def test_new_keys_are_checked_against_the_constructor():
    cfg = _load("model.params.ema_decay_rate=0.5", f"{UNET}.dropout=0")
    assert cfg.model.params.ema_decay_rate == 0.5
    assert type(cfg.model.params.network_config.params.dropout) is float
    with pytest.raises(ConfigError, match="UNetModel has no parameter 'num_res_block'"):
        _load(f"{UNET}.num_res_block=2")
    with pytest.raises(ConfigError, match="ema_decay_rate=fast.*expected a number"):
        _load("model.params.ema_decay_rate=fast")


def test_override_without_equals_is_refused():
    for text in ("model.params.use_ema", "true", ""):
        with pytest.raises(ConfigError, match="is not key=value"):
            parse_override(text)
    with pytest.raises(ConfigError, match="dotted key"):
        parse_override("model..params=1")


def test_unknown_top_level_section_lists_the_known_ones():
    with pytest.raises(ConfigError) as info:
        _load("modle.params.use_ema=true")
    assert "'modle'" in str(info.value) and "data, lightning, model" in str(info.value)
    # without a section list (library use) any new key is fine
    assert load_configs([TINY], ["extra.flag=true"]).extra.flag is True


def test_trainer_values_are_checked():
    with pytest.raises(ConfigError, match="lightning.trainer.max_steps=-5.*-1: no limit"):
        _load("lightning.trainer.max_steps=-5")
    with pytest.raises(ConfigError, match="not a Trainer argument"):
        _load("lightning.trainer.max_stepz=5")


def test_list_entries_and_null_for_optional_parameters():
    cfg = _load(
        "model.params.conditioner_config.params.emb_models.0.params.n_classes=12",
        f"{UNET}.context_dim=null",
    )
    assert cfg.model.params.conditioner_config.params.emb_models[0].params.n_classes == 12
    assert cfg.model.params.network_config.params.context_dim is None
    with pytest.raises(ConfigError, match="expected an integer .*got null"):
        _load("data.params.batch_size=null")


def test_config_whose_top_level_is_a_list(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- model: {}\n")
    with pytest.raises(ConfigError, match="list.yaml: the top level must be a mapping"):
        load_configs([path])


def test_apply_overrides_on_plain_config():
    cfg = apply_overrides(OmegaConf.create({"model": {"depth": 2}}), ["model.depth=3"])
    assert cfg.model.depth == 3
