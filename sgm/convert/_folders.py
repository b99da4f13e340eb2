"""Reading and writing the component folders of a diffusers model."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import CheckpointError, InputError
from ._components import Component
from ._encoders import flat_text_keys, nested_text_keys

_CONFIG_CLASSES = {
    "CLIPTextModel": "CLIPTextConfig",
    "CLIPTextModelWithProjection": "CLIPTextConfig",
    "CLIPVisionModelWithProjection": "CLIPVisionConfig",
}
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def _classes(component: Component) -> tuple[type, type | None]:
    if component.library == "diffusers":
        import diffusers

        return getattr(diffusers, component.class_name), None
    import transformers

    return (
        getattr(transformers, component.class_name),
        getattr(transformers, _CONFIG_CLASSES[component.class_name]),
    )


def build_model(component: Component) -> nn.Module:
    """The component's diffusers/transformers model, on the meta device."""
    cls, config_cls = _classes(component)
    with torch.device("meta"):
        if config_cls is None:
            return cls(**component.config)
        return cls(config_cls(**component.config))


def save_component(
    component: Component, converted: Mapping[str, torch.Tensor], folder: Path
) -> None:
    """Load ``converted`` strictly into the component's model and save it to ``folder``."""
    model = build_model(component)
    if component.class_name.startswith("CLIPText"):
        converted = flat_text_keys(model, converted)
    model.load_state_dict(dict(converted), strict=True, assign=True)
    model.save_pretrained(folder)


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"{path} not found")
    from ..config import read_text_file

    text = read_text_file(path, InputError)  # one line naming a file that is not text
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not readable JSON: {error}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


def check_component(folder: Path, component: Component) -> None:
    """The folder holds this component: config.json of the expected class, and weights."""
    where = folder / component.name
    if not where.is_dir():
        raise InputError(f"{where}: component folder missing ({component.class_name} expected)")
    config = read_json(where / "config.json")
    found = config.get("_class_name") or (config.get("architectures") or [None])[0]
    if found != component.class_name:
        raise InputError(
            f"{where}: {found or 'unknown class'} is not supported here "
            f"(expected {component.class_name})"
        )
    if not any(p.suffix in WEIGHT_SUFFIXES for p in where.iterdir()):
        raise InputError(f"{where}: no weights file (.safetensors or .bin)")


_SAFETENSORS_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}


def stored_dtype(where: Path) -> torch.dtype:
    """The floating dtype the component's weights are stored in (float32 if unknown)."""
    from safetensors import safe_open

    for path in sorted(where.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                dtype = _SAFETENSORS_DTYPES.get(f.get_slice(key).get_dtype())
                if dtype is not None:
                    return dtype
    return torch.float32


def load_component(folder: Path, component: Component) -> dict[str, torch.Tensor]:
    """The component's weights, through its own library's loader, in the key layout
    the converters use; any missing or mismatched weight is an error."""
    cls, _ = _classes(component)
    where = folder / component.name
    dtype = {"torch_dtype" if component.library == "diffusers" else "dtype": stored_dtype(where)}
    try:
        model, info = cls.from_pretrained(
            str(where), local_files_only=True, output_loading_info=True, **dtype
        )
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        message = " ".join(str(error).split())[:300]
        raise CheckpointError(f"{where}: cannot load {component.class_name}: {message}") from None
    bad = [
        k
        for k in [*info.get("missing_keys", []), *info.get("unexpected_keys", [])]
        if not k.endswith("position_ids")
    ]
    bad += [k for k, *_ in info.get("mismatched_keys", [])]
    if bad:
        raise CheckpointError(f"{where}: weights missing or of the wrong shape: {sorted(bad)[:5]}")
    state = model.state_dict()
    if component.class_name.startswith("CLIPText"):
        state = nested_text_keys(model, state)
    return {k: v for k, v in state.items() if not k.endswith("position_ids")}


def check_new_output(path: Path, what: str) -> None:
    """``path`` does not exist and its parent folder is writable (or creatable)."""
    if path.exists() or path.is_symlink():
        raise InputError(f"{path} exists; choose a new {what} (nothing is overwritten)")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise InputError(f"{path}: {parent} is not writable")
            return


@contextmanager
def new_folder(path: Path) -> Iterator[Path]:
    """A temporary folder beside ``path`` that becomes ``path`` when the block succeeds;
    on any error it is removed and ``path`` never appears."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
    try:
        yield tmp
        check_new_output(path, "output folder")
        os.chmod(tmp, 0o777 & ~_umask())
        os.rename(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
