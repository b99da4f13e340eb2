"""Reading weights files: ``.safetensors`` and weights-only pickles into flat state
dicts, and checking a file whole (header against size, pickles that would run code)
without reading its tensors. ``sgm.checkpoint`` loads what these read into models."""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CheckpointError

if TYPE_CHECKING:
    import torch

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or ``.ckpt``/``.pt`` file into a flat state dict.

    Pickled files are read with ``torch.load(weights_only=True)``; a Lightning
    checkpoint is unwrapped from its ``state_dict`` entry.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return _load_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        return _unwrap(_load_pickle(path), path)
    raise CheckpointError(
        f"{path}: unsupported checkpoint format {suffix!r}; expected one of "
        f"{', '.join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)}"
    )


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"{path}: not a readable safetensors file (truncated or corrupt?): {error}"
        ) from None


def _read_safetensors_header(path: Path) -> list[str]:
    return list(safetensors_header(path))


MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit


def safetensors_header(path: str | os.PathLike) -> dict[str, dict]:
    """The tensors of a ``.safetensors`` file (key -> its header entry: ``dtype``,
    ``shape``, ``data_offsets``), read from its header alone and checked against the
    file's size: a truncated or corrupt file raises ``CheckpointError`` naming it."""
    import json
    import struct

    path = Path(path)
    bad = f"{path}: not a readable safetensors file (truncated or corrupt?)"
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{bad}: {size} bytes")
            (length,) = struct.unpack("<Q", head)
            if length > min(size - 8, MAX_HEADER_BYTES):
                raise CheckpointError(f"{bad}: its header claims {length} bytes")
            raw = handle.read(length)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot be read: {error.strerror or error}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
        entries = {k: v for k, v in header.items() if k != "__metadata__"}
        end = 0
        for entry in entries.values():
            if not all(isinstance(n, int) and n >= 0 for n in entry["shape"]):
                raise ValueError("a shape that is not a list of sizes")
            end = max(end, *(int(n) for n in entry["data_offsets"]))
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise CheckpointError(f"{bad}: {type(error).__name__} in its header") from None
    data = size - 8 - length
    if end > data:
        raise CheckpointError(
            f"{bad}: its header needs {end} bytes of tensor data, the file holds {data}"
        )
    return entries


# Messages of torch's weights-only unpickler that mean "this file asks to import or call
# Python code"; any other unpickling failure means the bytes are not a valid checkpoint.
CODE_MARKERS = (
    "GLOBAL",
    "global",
    "unrecognized function",
    "Can only create new object",
    "Can only build",
)


def _load_pickle(path: Path, mmap: bool = False) -> object:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        if any(marker in _first_line(error) for marker in CODE_MARKERS) and _well_formed(path):
            raise CheckpointError(
                f"{path}: holds Python objects beyond tensors and plain containers, "
                "which would run arbitrary code when loaded; refused to load it. "
                "Convert it to .safetensors, or re-save only its state_dict."
            ) from None
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or corrupt?): {_first_line(error)}"
        ) from None
    except RuntimeError as error:
        if mmap and "mmap" in str(error):  # older, non-zip files cannot be mapped
            return _load_pickle(path, mmap=False)
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or corrupt?): {_first_line(error)}"
        ) from None
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001  (any failure to parse: bad bytes)
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or corrupt?): "
            f"{type(error).__name__}: {_first_line(error)}"
        ) from None


MAX_PICKLE_BYTES = 64 * 2**20  # the pickles of a checkpoint; its tensors lie beside them


def _well_formed(path: Path) -> bool:
    """Whether the pickles of ``path`` parse from start to end (every opcode known, each
    stream ending in STOP): only then does a refused global mean the file asks to run
    code, rather than damaged bytes that happen to read as such a request."""
    import io
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"]
                if len(names) != 1 or archive.getinfo(names[0]).file_size > MAX_PICKLE_BYTES:
                    return False
                streams, count = io.BytesIO(archive.read(names[0])), 1
        else:  # the older format: magic number, protocol, system info, then the data
            with open(path, "rb") as handle:
                streams, count = io.BytesIO(handle.read(MAX_PICKLE_BYTES)), 4
        size = len(streams.getbuffer())
        for _ in range(count):
            for _op in pickletools.genops(streams):
                pass
            if streams.tell() >= size:
                break
        return True
    except Exception:  # noqa: BLE001  (any failure to parse: damaged bytes)
        return False


def _first_line(error: BaseException) -> str:
    """The reason inside torch's wordy messages: the unpickler's own error, else the
    first sentence (never torch's advice to load with ``weights_only=False``)."""
    text = str(error).strip()
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else type(error).__name__
    return first.split(". ")[0].rstrip(".")


def check_weights_file(path: str | os.PathLike) -> None:
    """Check, without reading its tensors, that ``path`` is a whole weights file that can
    be loaded: a ``.safetensors`` header that its data covers, or a pickle that reads
    with tensors and plain containers only (memory-mapped; nothing in it runs).
    ``CheckpointError`` names the file: missing, truncated, corrupt, or asking to run
    code. Files of other suffixes are not checked."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        safetensors_header(path)
    elif suffix in PICKLE_SUFFIXES:
        _load_pickle(path, mmap=True)


def check_weights_folder(folder: str | os.PathLike) -> None:
    """:func:`check_weights_file` for every weights file in ``folder`` and below (a
    diffusers or Hugging Face model folder), so that a damaged one is named itself rather
    than through the loader that would read the folder."""
    folder = Path(folder)
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES and path.is_file():
            check_weights_file(path)


CONFIG_CHECKPOINT_KEYS = ("ckpt_path", "ckpt_engine")


def check_config_checkpoints(config: object, where: str = "") -> None:
    """:func:`check_weights_file` for every checkpoint a config names
    (``CONFIG_CHECKPOINT_KEYS``, e.g. ``model.params.ckpt_path``), so that a fine-tuning
    run refuses a truncated file or a pickle that would run code before anything is built.
    ``CheckpointError`` names the file and the config key."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(config, (DictConfig, ListConfig)):
        config = OmegaConf.to_container(config, resolve=False)
    for key, value in _config_entries(config, where):
        if key.rsplit(".", 1)[-1] in CONFIG_CHECKPOINT_KEYS and isinstance(value, str):
            try:
                check_weights_file(value)
            except CheckpointError as error:
                raise CheckpointError(f"{key}: {error}") from None
    check_local_encoders(config)


def _config_entries(node: object, where: str) -> Iterable[tuple[str, object]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            name = f"{where}.{key}" if where else str(key)
            yield name, value
            yield from _config_entries(value, name)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _config_entries(value, f"{where}[{index}]")


TRAINING_STATE_KEYS = ("state_dict", "optimizer_states", "loops")


def check_training_checkpoint(path: str | os.PathLike) -> dict[str, int]:
    """Check that ``path`` is a Lightning training checkpoint that ``--resume`` can use.

    It is read like every checkpoint (tensors and plain containers only, memory-mapped
    where possible); weights-only files (``.safetensors``, a bare ``state_dict``) are
    refused with the way to start from them instead. Returns its epoch and global step.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    start_instead = (
        "to start a new run from these weights, pass model.params.ckpt_path="
        f"{path} instead of resuming"
    )
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        _read_safetensors_header(path)
        raise CheckpointError(
            f"{path}: a .safetensors file holds weights only, no optimizer or step state "
            f"to resume training from; {start_instead}"
        )
    state = _load_pickle(path, mmap=True)
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"{path}: expected a Lightning checkpoint (a mapping), found {type(state).__name__}"
        )
    missing = [key for key in TRAINING_STATE_KEYS if key not in state]
    if missing:
        raise CheckpointError(
            f"{path}: not a training checkpoint (no {', '.join(missing)}): it holds weights "
            f"only; {start_instead}"
        )
    return {"epoch": int(state.get("epoch", 0)), "global_step": int(state.get("global_step", 0))}


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    import torch

    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{path}: expected a state dict of tensors; {len(bad)} entries are not "
            f"tensors (e.g. {bad[0]!r})"
        )
    return dict(obj)


def read_pickled_state(path: str | os.PathLike, mmap: bool = True) -> dict[str, torch.Tensor]:
    """The flat state dict of a weights-only pickle, memory-mapped where the format
    allows (its tensors are then read only when touched)."""
    path = Path(path)
    return _unwrap(_load_pickle(path, mmap=mmap), path)


ENCODER_TARGETS = "sgm.modules.encoders."


def check_local_encoders(config: Any) -> None:
    """Check whole, before any model is built, the local weights the encoders of
    ``config`` (an ``OmegaConf`` config or a plain tree) will read: every weights file in a
    ``version`` folder (a CLIP or T5 text model in the Hugging Face layout, as the tiny
    models' ``clip_text/``) and a ``version`` weights file (open_clip).
    ``CheckpointError`` names the damaged file itself (truncated, or a pickle that would
    run code). Versions that are architecture names are not files and are skipped."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(config, (DictConfig, ListConfig)):
        config = OmegaConf.to_container(config, resolve=False)
    for version in _encoder_versions(config):
        path = Path(version)
        if path.is_dir():
            check_weights_folder(path)
        elif path.is_file():
            check_weights_file(path)


def _encoder_versions(node: Any) -> list[str]:
    if isinstance(node, list):
        return [v for item in node for v in _encoder_versions(item)]
    if not isinstance(node, dict):
        return []
    found = []
    params = node.get("params")
    if str(node.get("target", "")).startswith(ENCODER_TARGETS) and isinstance(params, dict):
        version = params.get("version")
        if isinstance(version, str) and version:
            found.append(version)
    for value in node.values():
        found.extend(_encoder_versions(value))
    return found


def check_model_files(config: str | os.PathLike, ckpt: str | os.PathLike) -> None:
    """Before a model is built: its checkpoint and the local weights its config's encoders
    read, each whole and free of pickled code (``CheckpointError`` naming the file); the
    config must be UTF-8 YAML (``ConfigError`` naming it)."""
    from .config import load_yaml

    check_weights_file(ckpt)
    check_local_encoders(load_yaml(config))
