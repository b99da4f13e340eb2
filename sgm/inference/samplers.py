"""The one way to make a sampler: from a sampler config (a YAML's ``sampler_config``, or
one built from ``SamplingParams`` or a release's settings), with the run's overrides
applied to a copy of it; the config itself is never edited."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from ..config import instantiate_from_config
from ..errors import ConfigError


def _plain(config: Any) -> dict[str, Any]:
    """A deep, plain-container copy of ``config`` (an omegaconf node or a mapping)."""
    if hasattr(config, "_metadata"):  # an omegaconf node
        from omegaconf import OmegaConf

        return OmegaConf.to_container(config, resolve=True)
    return copy.deepcopy(dict(config))


def override_sampler_config(
    config: Mapping[str, Any],
    *,
    num_steps: int | None = None,
    verbose: bool | None = None,
    guider_params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A copy of the sampler ``config`` with ``num_steps``, ``verbose`` and the guider's
    ``guider_params`` (those given) set."""
    if config is None or "target" not in config:
        raise ConfigError(f"a sampler config needs a 'target', got {config!r}")
    config = _plain(config)
    params = config.setdefault("params", {}) or {}
    config["params"] = params
    if num_steps is not None:
        params["num_steps"] = int(num_steps)
    if verbose is not None:
        params["verbose"] = bool(verbose)
    if guider_params:
        guider = params.get("guider_config")
        if guider is None:
            raise ConfigError(
                f"sampler {config['target']} has no guider_config to set {sorted(guider_params)} on"
            )
        guider.setdefault("params", {}).update(guider_params)
    return config


def make_sampler(
    config: Mapping[str, Any],
    *,
    num_steps: int | None = None,
    verbose: bool | None = None,
    guider_params: Mapping[str, Any] | None = None,
) -> Any:
    """The sampler of ``config`` (overrides as :func:`override_sampler_config`)."""
    config = override_sampler_config(
        config, num_steps=num_steps, verbose=verbose, guider_params=guider_params
    )
    return instantiate_from_config(config, key="sampler_config")
