"""instantiate_from_config, get_obj_from_str, config merging and small helpers."""

import pytest
import torch
from omegaconf import OmegaConf

from sgm.errors import ConfigError
from sgm.util import (
    append_dims,
    default,
    get_configs_path,
    get_obj_from_str,
    get_string_from_tuple,
    instantiate_from_config,
    load_configs,
)


class Leaf:
    def __init__(self, size, scale=1.0):
        self.size, self.scale = size, scale


class Node:
    def __init__(self, child_config, children=()):
        self.child = instantiate_from_config(child_config)
        self.children = [instantiate_from_config(c) for c in children]


LEAF = f"{__name__}.Leaf"
NODE = f"{__name__}.Node"


def test_builds_target_with_params():
    obj = instantiate_from_config(
        {"target": "torch.nn.Linear", "params": {"in_features": 3, "out_features": 2}}
    )
    assert isinstance(obj, torch.nn.Linear) and obj.weight.shape == (2, 3)


def test_params_are_optional():
    assert isinstance(instantiate_from_config({"target": "torch.nn.Identity"}), torch.nn.Identity)


@pytest.mark.parametrize("special", ["__is_first_stage__", "__is_unconditional__"])
def test_special_values_give_none(special):
    assert instantiate_from_config(special) is None


def test_nested_configs_from_omegaconf():
    cfg = OmegaConf.create(
        {
            "target": NODE,
            "params": {
                "child_config": {"target": LEAF, "params": {"size": 4}},
                "children": [{"target": LEAF, "params": {"size": 1, "scale": 2.0}}],
            },
        }
    )
    node = instantiate_from_config(cfg)
    assert node.child.size == 4 and node.children[0].scale == 2.0


def test_missing_target():
    with pytest.raises(ConfigError, match="expected key `target`"):
        instantiate_from_config({"params": {}})


def test_bad_module_names_the_nested_location():
    cfg = OmegaConf.create(
        {
            "target": NODE,
            "params": {"child_config": {"target": "sgm.modules.foo.Bar"}},
        }
    )
    with pytest.raises(ConfigError) as info:
        instantiate_from_config(cfg, key="model")
    assert str(info.value) == (
        "model.params.child_config: cannot import 'sgm.modules.foo.Bar' (no module sgm.modules.foo)"
    )


def test_bad_attribute_in_list_location():
    cfg = {
        "target": NODE,
        "params": {
            "child_config": {"target": LEAF, "params": {"size": 1}},
            "children": [{"target": "torch.nn.NoSuchLayer"}],
        },
    }
    with pytest.raises(
        ConfigError,
        match=r"model\.params\.children\.0: cannot import 'torch\.nn\.NoSuchLayer' \(module torch\.nn has no attribute 'NoSuchLayer'\)",
    ):
        instantiate_from_config(cfg, key="model")


def test_unknown_parameter_lists_accepted_ones():
    with pytest.raises(ConfigError) as info:
        instantiate_from_config({"target": LEAF, "params": {"size": 1, "sclae": 2}})
    message = str(info.value)
    assert "'sclae'" in message and "accepted: size, scale" in message


def test_missing_required_parameter():
    with pytest.raises(ConfigError, match="size"):
        instantiate_from_config({"target": LEAF, "params": {}})


def test_get_obj_from_str():
    assert get_obj_from_str("torch.nn.Linear") is torch.nn.Linear
    with pytest.raises(ConfigError, match="dotted path"):
        get_obj_from_str("Linear")


def test_load_configs_merges_left_to_right_with_overrides(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("model:\n  params:\n    lr: 1.0\n    depth: 2\nname: a\n")
    b.write_text("model:\n  params:\n    lr: 0.5\n")
    cfg = load_configs([a, b], ["model.params.depth=3", "extra.flag=true"])
    assert cfg.model.params.lr == 0.5
    assert cfg.model.params.depth == 3
    assert cfg.name == "a" and cfg.extra.flag is True


def test_load_configs_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*missing.yaml"):
        load_configs([tmp_path / "missing.yaml"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_configs([bad])


def test_helpers():
    x = torch.ones(3)
    assert append_dims(x, 4).shape == (3, 1, 1, 1)
    with pytest.raises(ValueError):
        append_dims(torch.ones(1, 1, 1), 2)
    assert default(None, lambda: 5) == 5 and default(1, 5) == 1
    assert get_string_from_tuple("('jpg',)") == "jpg"


def test_configs_path_exists():
    assert get_configs_path().endswith("configs")
