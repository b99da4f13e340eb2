"""sgm.config: params reach constructors as plain, resolved containers; the run's configs
reach the setup callback as the DictConfigs they are."""

import argparse

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from sgm.config import instantiate_from_config, to_plain
from sgm.errors import ConfigError


class Recorder:
    def __init__(self, sizes, options, child_config=None, config=None):
        self.sizes, self.options, self.config = sizes, options, config
        self.child = instantiate_from_config(child_config) if child_config else None


RECORDER = f"{__name__}.Recorder"


def test_params_arrive_as_plain_resolved_containers():
    cfg = OmegaConf.create(
        {
            "width": 8,
            "model": {
                "target": RECORDER,
                "params": {
                    "sizes": [1, "${width}"],
                    "options": {"width": "${width}", "nested": {"depth": 2}},
                    "child_config": {
                        "target": "torch.nn.Linear",
                        "params": {"in_features": "${width}", "out_features": 3},
                    },
                },
            },
        }
    )
    obj = instantiate_from_config(cfg.model, key="model")
    assert type(obj.sizes) is list and obj.sizes == [1, 8]
    assert type(obj.options) is dict and type(obj.options["nested"]) is dict
    assert obj.options == {"width": 8, "nested": {"depth": 2}}
    assert isinstance(obj.child, torch.nn.Linear) and obj.child.weight.shape == (3, 8)


def test_omegaconf_nodes_inside_a_plain_mapping_are_converted_too():
    sizes = OmegaConf.create([2, 3])
    obj = instantiate_from_config(
        {"target": RECORDER, "params": {"sizes": sizes, "options": {"a": OmegaConf.create({})}}}
    )
    assert type(obj.sizes) is list and obj.sizes == [2, 3]
    assert type(obj.options["a"]) is dict


def test_extra_arguments_are_passed_as_they_are():
    run_config = OmegaConf.create({"a": 1, "b": "${a}"})
    obj = instantiate_from_config(
        {"target": RECORDER, "params": {"sizes": [], "options": {}}},
        extra={"config": run_config},
    )
    assert obj.config is run_config  # not converted: interpolations kept
    assert OmegaConf.to_yaml(obj.config).splitlines() == ["a: 1", "b: ${a}"]


def test_unresolvable_params_name_their_location():
    cfg = OmegaConf.create(
        {"target": RECORDER, "params": {"sizes": "${nowhere.width}", "options": {}}}
    )
    with pytest.raises(ConfigError, match=r"^model\.params: cannot resolve the config: .*nowhere"):
        instantiate_from_config(cfg, key="model")
    cfg = OmegaConf.create({"target": RECORDER, "params": {"sizes": "???", "options": {}}})
    with pytest.raises(ConfigError, match=r"^model\.params: cannot resolve the config: .*sizes"):
        instantiate_from_config(cfg, key="model")


def test_to_plain_keeps_plain_containers_and_objects():
    weight = torch.zeros(2)
    plain = {"a": [1, {"b": weight}], "c": (1, 2)}
    assert to_plain(plain) is plain
    mixed = {"a": OmegaConf.create({"b": 1}), "c": (OmegaConf.create([1]), weight)}
    converted = to_plain(mixed)
    assert converted == {"a": {"b": 1}, "c": ([1], weight)}
    assert type(converted["c"]) is tuple and converted["c"][1] is weight


def test_setup_callback_gets_the_run_configs_as_dictconfigs(tmp_path):
    from sgm.training.callbacks import SetupCallback
    from sgm.training.paths import RunPaths
    from sgm.training.run import build_callbacks, callback_configs

    config = OmegaConf.create({"model": {"target": "x.Y", "params": {"lr": "${model.base}"}}})
    lightning = OmegaConf.create({"callbacks": {"image_logger": {"params": {"max_images": 2}}}})
    paths = RunPaths(
        "now", "run", str(tmp_path), str(tmp_path / "c"), str(tmp_path / "g"), None, []
    )
    opt = argparse.Namespace(resume="", debug=False)
    callbacks = build_callbacks(callback_configs(opt, paths, lightning, False), config, lightning)
    (setup,) = [c for c in callbacks if isinstance(c, SetupCallback)]
    assert setup.config is config and setup.lightning_config is lightning
    assert isinstance(setup.config, DictConfig)
    logger = next(c for c in callbacks if type(c).__name__ == "ImageLogger")
    assert logger.max_images == 2
