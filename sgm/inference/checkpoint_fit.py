"""Whether a checkpoint file fits a config, checked before the model is built.

The file's keys and shapes come from its header (``.safetensors``) or a weights-only,
memory-mapped read (``.ckpt``: nothing in it runs); the config's come from its engine
built on the meta device (no memory, no weights). A file that does not fit fails in
seconds with the per-prefix report of the strict load, and names the released models
whose layout it has, if any::

    check_fits(config.model, "checkpoints/sd_xl_base_1.0.safetensors")

The packaged configs' state dicts are stored (``release_layouts.json.gz``, written by
``python -m sgm.inference.checkpoint_fit``; a test keeps it equal to the configs): a
packaged config is then checked without building anything, and a file that fits none
is compared with every release at once.
"""

from __future__ import annotations

import copy
import functools
import gzip
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..checkpoint import (
    LEGACY_PREFIXES,
    LEGACY_SCHEDULE_KEYS,
    OPTIONAL_KEY_SUFFIXES,
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIXES,
    compare_shapes,
    load_state_dict,
    remap_legacy_keys,
    safetensors_header,
)
from ..checkpoint_files import read_pickled_state
from ..config import instantiate_from_config
from ..errors import CheckpointError

logger = logging.getLogger(__name__)

Shapes = dict[str, tuple[int, ...]]
EMA = "model_ema."
# Configs whose layouts are fingerprinted, relative to the packaged configs folder.
LAYOUT_FOLDERS = ("inference", "sampling")


def checkpoint_shapes(path: str | os.PathLike) -> Shapes:
    """Key -> shape of a checkpoint file, without reading its tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return _safetensors_shapes(path)
    if suffix in PICKLE_SUFFIXES:
        state = read_pickled_state(path)
    else:
        state = load_state_dict(path)  # its error: an unsupported format
    return {k: tuple(v.shape) for k, v in state.items()}


def _safetensors_shapes(path: Path) -> Shapes:
    """The header of a ``.safetensors`` file as key -> shape (a truncated file is refused:
    its header is checked against the file's size)."""
    return {key: tuple(entry["shape"]) for key, entry in safetensors_header(path).items()}


def _without_checkpoints(config: Any) -> Any:
    """A copy of a config tree without ``ckpt_path`` entries or a sampler (neither has
    a place in the state dict; a checkpoint would be read into meta tensors)."""
    if isinstance(config, Mapping):
        return {
            k: _without_checkpoints(v)
            for k, v in config.items()
            if k not in ("ckpt_path", "sampler_config")
        }
    if isinstance(config, (list, tuple)):
        return [_without_checkpoints(v) for v in config]
    return config


def expected_shapes(model_config: Any) -> tuple[Shapes, str] | None:
    """(key -> shape, class name) of the engine ``model_config`` builds, built on the meta
    device; None where it cannot be built there (the real build then says why) or loads
    checkpoints its own way (an autoencoder)."""
    import torch

    from ..models.diffusion import DiffusionEngine

    try:
        with torch.device("meta"):
            model = instantiate_from_config(_without_checkpoints(_plain(model_config)), key="model")
    except Exception as error:  # noqa: BLE001  (the real build reports it)
        logger.debug("no checkpoint check on meta: %s", error)
        return None
    if hasattr(model, "init_from_ckpt") and not isinstance(model, DiffusionEngine):
        return None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}, type(model).__name__


def _normalized(shapes: Mapping[str, tuple[int, ...]]) -> Shapes:
    """The layout a strict load compares: legacy prefixes renamed, schedule buffers, EMA
    weights and the buffers a module fills in itself left out."""
    out = {}
    for key, shape in shapes.items():
        for old, new in LEGACY_PREFIXES:
            if key.startswith(old):
                key = new + key[len(old) :]
        if key in LEGACY_SCHEDULE_KEYS or key.startswith(EMA):
            continue
        if ("." + key).endswith(OPTIONAL_KEY_SUFFIXES):
            continue
        out[key] = tuple(shape)
    return out


def fingerprint(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """A short hash of a state dict's normalized keys and shapes."""
    text = "\n".join(f"{k} {list(s)}" for k, s in sorted(_normalized(shapes).items()))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def config_fingerprint(model_config: Any) -> str:
    """A short hash of a model config as far as it shapes the state dict."""
    text = json.dumps(_without_checkpoints(_plain(model_config)), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _plain(config: Any) -> Any:
    try:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(config, resolve=True)
    except ValueError:  # not an OmegaConf object
        return copy.deepcopy(config)


def configs_root() -> Path:
    return Path(__file__).resolve().parents[1] / "configs"


LAYOUTS_FILE = Path(__file__).with_name("release_layouts.json.gz")


def build_layouts() -> dict:
    """Every packaged inference/sampling config built on the meta device: ``configs``
    (relative path -> its ``config_fingerprint`` and state id) and ``states`` (id ->
    ``[[key, shape], ...]``). Slow: for writing ``LAYOUTS_FILE``."""
    from ..config import load_configs

    table: dict = {"configs": {}, "states": {}}
    for folder in LAYOUT_FOLDERS:
        for path in sorted((configs_root() / folder).glob("*.yaml")):
            model_config = load_configs([path]).model
            built = expected_shapes(model_config)
            if built is None:
                continue
            rows = [[key, list(shape)] for key, shape in built[0].items()]
            state = hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:20]
            table["states"][state] = rows
            table["configs"][f"{folder}/{path.name}"] = {
                "config": config_fingerprint(model_config),
                "state": state,
                "name": built[1],
            }
    return table


@functools.cache
def stored_layouts() -> dict:
    """The table :func:`build_layouts` wrote into ``LAYOUTS_FILE``."""
    with gzip.open(LAYOUTS_FILE, "rt") as handle:
        return json.load(handle)


def _stored_shapes(state: str) -> Shapes:
    return {key: tuple(shape) for key, shape in stored_layouts()["states"][state]}


def matching_layouts(shapes: Mapping[str, tuple[int, ...]]) -> tuple[list[str], list[str]]:
    """(released models, packaged configs) whose state-dict layout ``shapes`` has."""
    mark = fingerprint(shapes)
    configs = [
        config
        for config, entry in stored_layouts()["configs"].items()
        if fingerprint(_stored_shapes(entry["state"])) == mark
    ]
    try:
        from .releases import releases
    except ImportError:  # pragma: no cover  (the registry is part of the package)
        return [], configs
    return [r.name for r in releases() if r.config in configs], configs


def _fits_instead(shapes: Mapping[str, tuple[int, ...]]) -> str:
    names, configs = matching_layouts(shapes)
    if not configs:
        return "; it fits none of the released models either"
    where = f" (configs {', '.join(configs)})"
    return f"; its keys and shapes are those of {', '.join(names) or 'the configs'}{where}"


def _expected(model_config: Any) -> tuple[Shapes, str] | None:
    """The stored state dict of a packaged config, else one built on meta."""
    mark = config_fingerprint(model_config)
    for entry in stored_layouts()["configs"].values():
        if entry["config"] == mark:
            return _stored_shapes(entry["state"]), entry["name"]
    return expected_shapes(model_config)


def check_fits(model_config: Any, ckpt: str | os.PathLike) -> None:
    """``CheckpointError`` with the per-prefix report, before anything is built, when the
    keys and shapes of ``ckpt`` do not fit the engine of ``model_config`` as its strict
    load would find them; it names the released models the file fits instead."""
    found = checkpoint_shapes(ckpt)
    built = _expected(model_config)
    if built is None:
        return
    expected, name = built
    found = remap_legacy_keys(found, expected)
    if any(k.startswith(EMA) for k in expected):
        if not any(k.startswith(EMA) for k in found):  # the EMA starts from the weights
            expected = {k: v for k, v in expected.items() if not k.startswith(EMA)}
    else:
        found = {k: v for k, v in found.items() if not k.startswith(EMA)}
    report = compare_shapes(expected, found)
    if report.ok:
        return
    raise CheckpointError(
        f"{ckpt} does not match {name}: {report.counts()}{_fits_instead(found)}",
        details=report.lines(max_lines=100),
    )


def write_layouts(path: Path = LAYOUTS_FILE) -> None:
    """Write :func:`build_layouts` to ``path`` (gzip'd JSON, the same bytes each time)."""
    text = json.dumps(build_layouts(), sort_keys=True, separators=(",", ":"))
    path.write_bytes(gzip.compress(text.encode(), mtime=0))


if __name__ == "__main__":
    write_layouts()
