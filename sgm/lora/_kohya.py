"""Reading kohya / A1111 / ComfyUI / LyCORIS adapter files and checking them against a model.

A file holds, per layer, ``<layer>.<tensor>`` keys (``lora_unet_..._to_q.lora_down.weight``,
``...hada_w1_a``, ``...alpha``). :func:`plan` checks the whole file before anything
changes: every layer must name a weight of the model, have a complete set of tensors of one
supported type that fit that weight, and hold only finite numbers.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import CheckpointError
from . import _deltas
from ._kohya_names import UNET, kohya_targets, normalise
from ._made_for import describe_model, guess
from ._names import network_of
from ._patch import LayerAdapter

KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "diffusion_model.")
KOHYA_PREFIXES += ("text_encoders.",)
SUFFIXES = sorted(
    set(_deltas.LORA + _deltas.LOHA + _deltas.LOKR + _deltas.COMMON + tuple(_deltas.OTHER_TYPES)),
    key=len,
    reverse=True,
)
PEFT_PARTS = (".lora_A.", ".lora_B.", ".lora_magnitude_vector")
SHOWN = 5


@dataclass
class Plan:
    """A checked file: its adapters in layer order, metadata and the model it was made for."""

    path: str
    adapters: list[LayerAdapter]
    header: dict[str, str]
    made_for: str | None


def split(key: str) -> tuple[str, str]:
    """``(layer, tensor name)`` of a key: the longest known tensor-name ending, else the
    part after the first dot."""
    for suffix in SUFFIXES:
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], suffix
    layer, _, rest = key.partition(".")
    return layer, rest


def layout_of(keys: list[str], path: str) -> str:
    """``"kohya"`` (kohya / A1111 / ComfyUI / LyCORIS) or ``"peft"`` (diffusers / peft);
    ``CheckpointError`` for a file that mixes them."""
    kohya = [k for k in keys if k.startswith(KOHYA_PREFIXES)]
    peft = [k for k in keys if any(p in k for p in PEFT_PARTS)]
    if kohya and peft:
        raise CheckpointError(
            f"{path}: mixes adapter formats: kohya/LyCORIS keys (e.g. {kohya[0]!r}) and "
            f"diffusers/peft keys (e.g. {peft[0]!r}); save each format to its own file"
        )
    if kohya:
        return "kohya"
    if not peft and any(split(k)[1] in SUFFIXES for k in keys):
        return "kohya"
    return "peft"


def _group(path: str, tensors: Mapping[str, torch.Tensor], model: nn.Module) -> dict:
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        layer, suffix = split(key)
        if suffix in _deltas.OTHER_TYPES:
            raise CheckpointError(
                f"{path}: LyCORIS type {_deltas.OTHER_TYPES[suffix]} is not supported "
                f"(key {key!r}); supported: LoRA/LoCon, LoHa, LoKr, DoRA"
            )
        if suffix not in SUFFIXES:
            raise CheckpointError(
                f"{path}: unknown adapter tensor {suffix!r} (key {key!r}); known types: "
                "LoRA/LoCon (lora_down/lora_up), LoHa (hada_*), LoKr (lokr_*), DoRA (dora_scale)"
            )
        if not torch.isfinite(value.float()).all():
            raise CheckpointError(f"{path}: key {key!r} holds NaN or infinite values")
        layers.setdefault(normalise(layer, model), {})[suffix] = value
    if not layers:
        raise CheckpointError(f"{path}: holds no adapter weights")
    return layers


def _kind(path: str, layer: str, parts: Mapping[str, torch.Tensor]) -> str:
    names = set(parts) - set(_deltas.COMMON)
    kinds = [k for k, known in _deltas.TYPES.items() if names & set(known)]
    if len(kinds) != 1:
        found = " and ".join(kinds) if kinds else "only " + ", ".join(sorted(parts))
        raise CheckpointError(f"{path}: layer {layer!r} holds {found} tensors, not one adapter")
    kind = kinds[0]
    for group in _deltas.REQUIRED[kind]:
        if not names & group:
            raise CheckpointError(
                f"{path}: {kind} layer {layer!r} lacks {' or '.join(sorted(group))}"
            )
    for n in (1, 2):
        if kind == "LoHa" and parts["hada_w%d_a" % n].shape[-1] != parts["hada_w%d_b" % n].shape[0]:
            if f"hada_t{n}" not in parts:
                _rank_error(path, layer, parts[f"hada_w{n}_a"], parts[f"hada_w{n}_b"], "hada_w")
    if kind == "LoRA":
        down, up = parts["lora_down.weight"], parts["lora_up.weight"]
        if "lora_mid.weight" not in parts and down.shape[0] != up.shape[1]:
            _rank_error(path, layer, down, up, "lora_")
    return kind


def _rank_error(path: str, layer: str, a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    names = ("lora_down", "lora_up") if what == "lora_" else ("w_a", "w_b")
    ranks = (a.shape[0], b.shape[1]) if what == "lora_" else (a.shape[-1], b.shape[0])
    raise CheckpointError(
        f"{path}: layer {layer!r}: rank mismatch, {names[0]} {tuple(a.shape)} has rank "
        f"{ranks[0]} but {names[1]} {tuple(b.shape)} has rank {ranks[1]}"
    )


def _unmatched(path: str, missing: list[str], targets: dict, model: nn.Module, made_for) -> str:
    shown = []
    for layer in missing[:SHOWN]:
        close = difflib.get_close_matches(layer, list(targets), n=1, cutoff=0.6)
        shown.append(f"{layer} (closest here: {close[0]})" if close else layer)
    more = f" and {len(missing) - SHOWN} more" if len(missing) > SHOWN else ""
    where = f"; the file was made for {made_for}" if made_for else ""
    return (
        f"{path}: {len(missing)} adapter layer{'s' if len(missing) > 1 else ''} match no "
        f"layer of this "
        f"{describe_model(model)}: {', '.join(shown)}{more}{where}"
    )


def _targets(layers: dict, model: nn.Module) -> dict:
    from ..modules.diffusionmodules.openaimodel import UNetModel

    targets = kohya_targets(model)
    unet = [name for name in layers if name.startswith(UNET) and name not in targets]
    if unet and type(network_of(model)) is UNetModel:  # SD 1.x / 2.x files: diffusers' names
        targets = kohya_targets(model, diffusers_names=True)
    return targets


def plan(model: nn.Module, path: str | os.PathLike, tensors: dict, header: dict) -> Plan:
    """Check every layer of the file ``path`` (already read) against ``model``; nothing
    changes. Raises ``CheckpointError`` with a one-line reason naming the file."""
    path = str(path)
    made_for = guess(header, tensors)
    layers = _group(path, tensors, model)
    targets = _targets(layers, model)
    missing = [name for name in layers if name not in targets]
    if missing:
        raise CheckpointError(_unmatched(path, missing, targets, model, made_for))
    adapters = []
    for layer, parts in layers.items():
        kind = _kind(path, layer, parts)
        target = targets[layer]
        alpha = parts.get("alpha")
        alpha = None if alpha is None else float(alpha.float().reshape(-1)[0])
        dora = parts.get("dora_scale")
        factors = {k: v for k, v in parts.items() if k not in _deltas.COMMON}
        meta = {k: v.to("meta", torch.float32) for k, v in factors.items()}
        try:
            _deltas.delta(kind, meta, alpha, target.shape)
        except KeyError as error:
            raise CheckpointError(f"{path}: {kind} layer {layer!r} lacks {error}") from None
        except (ValueError, RuntimeError) as error:
            where = f" (the file was made for {made_for})" if made_for else ""
            raise CheckpointError(
                f"{path}: {kind} layer {layer!r} does not fit {target.name} "
                f"{tuple(target.shape)}: {str(error).splitlines()[0]}{where}"
            ) from None
        if dora is not None and _deltas.dora_axis(dora, target.shape) is None:
            raise CheckpointError(
                f"{path}: layer {layer!r}: dora_scale {tuple(dora.shape)} fits neither the "
                f"rows nor the columns of {target.name} {tuple(target.shape)}"
            )
        adapters.append(LayerAdapter(layer, kind, factors, alpha, dora, target))
    return Plan(path, adapters, header, made_for)


DIFFUSERS_PREFIXES = {"unet.": UNET, "text_encoder.": "lora_te1_", "text_encoder_2.": "lora_te2_"}


def from_diffusers(tensors: dict, header: dict, single_text_encoder: bool) -> dict:
    """A diffusers-layout file that has text-encoder layers (``text_encoder.`` /
    ``text_encoder_2.``), renamed to kohya's layout: ``lora_A`` -> ``lora_down``,
    ``lora_B`` -> ``lora_up``, and an ``alpha`` per layer where the header's peft config
    gives one (``<prefix>.lora_alpha``)."""
    import json

    try:
        config = json.loads(header.get("lora_adapter_metadata", "{}"))
    except ValueError:
        config = {}
    out = {}
    for key, value in tensors.items():
        prefix = next((p for p in DIFFUSERS_PREFIXES if key.startswith(p)), None)
        if prefix is None or not key.endswith((".lora_A.weight", ".lora_B.weight")):
            out[key] = value  # left for the checks to name
            continue
        kohya = DIFFUSERS_PREFIXES[prefix]
        if kohya == "lora_te1_" and single_text_encoder:
            kohya = "lora_te_"
        path, part = key[len(prefix) : -len(".weight")].rsplit(".", 1)
        if kohya != UNET and not path.startswith("text_model."):
            path = "text_model." + path  # transformers' CLIP without the text_model level
        layer = kohya + path.replace(".", "_")
        out[f"{layer}.{'lora_down' if part == 'lora_A' else 'lora_up'}.weight"] = value
        alpha = config.get(prefix + "lora_alpha")
        if alpha is not None:
            out[f"{layer}.alpha"] = torch.tensor(float(alpha))
    return out
