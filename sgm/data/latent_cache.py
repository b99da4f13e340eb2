"""Cached conditioning: run a training config's first stage and frozen embedders once over
its data, write their outputs as shards, and read those shards back for training.

Each cached sample is one item of the config's datapipeline (an image, or a clip's
flattened frames) after its postprocessors, so random crops, flips and per-clip
``cond_aug`` are drawn once, at caching time, and stored with what they condition
(crop coordinates, ``cond_aug``): the cache stays consistent. The diffusion noise level
and noise are drawn at training time as before. A shard member ``<key>.safetensors`` holds
the latent (``cached_latent``), every cached embedder output (``cached_emb<i>_<j>``) and
the batch's other tensors; ``<key>.json`` its other values (captions, frame counts).
``cache.json`` records the first stage's and each cached embedder's config and weights
digests and the pixel size; ``uncond.safetensors`` the outputs for an embedder's
``legacy_ucg_value``. Train with ``sgm.models.cached.DiffusionEngineFromCache``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, InputError
from ..models.cached import (
    FIRST_STAGE_PREFIX,
    LATENT,
    META,
    MOMENTS,
    UNCOND,
    _embedder_identity,
    config_digest,
    embedder_prefix,
    embedding_key,
    is_cached,
    weights_digest,
)
from ..output_files import write_new_file
from .shard_writer import write_shard

logger = logging.getLogger(__name__)


def _encode(tensors: Mapping[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})


def _outputs(out: Any) -> list[torch.Tensor]:
    return [out] if isinstance(out, torch.Tensor) else list(out)


def _split(batch: Mapping[str, Any], skip: set[str]) -> tuple[dict, dict]:
    """The batch's tensors and its JSON-able values, without the ``skip`` keys."""
    tensors, values = {}, {}
    for key, value in batch.items():
        if key in skip or key.startswith("__"):
            continue
        if isinstance(value, torch.Tensor):
            tensors[key] = value
        elif isinstance(value, (str, int, float, bool, list, tuple)):
            values[key] = list(value) if isinstance(value, tuple) else value
    return tensors, values


@torch.no_grad()
def first_stage_outputs(engine: Any, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{cached_moments: ...}``: the first stage's unregularized output (a Gaussian
    posterior's moments, sampled at training time), chunked as ``encode_first_stage``
    chunks; ``{cached_latent: ...}`` for a first stage without a regularizer."""
    from .. import offload

    model = engine.first_stage_model
    if getattr(model, "regularization", None) is None:
        return {LATENT: engine.encode_first_stage(x)}
    x = engine._first_stage_input(x)
    with engine._first_stage_autocast(x), offload.using(model):
        outs = [model.encode(chunk, unregularized=True)[0] for chunk in engine._chunks(x)]
    return {MOMENTS: torch.cat(outs, dim=0)}


@torch.no_grad()
def cache_item(engine: Any, batch: dict, cached: list[int]) -> tuple[dict, dict]:
    """``(tensors, values)`` of one pipeline item: its latent, cached embedder outputs and
    the other batch entries the training step reads."""
    embedders = engine.conditioner.embedders
    tensors = first_stage_outputs(engine, engine.get_input(batch))
    skip = {engine.input_key}
    for index in cached:
        embedder = embedders[index]
        key = embedder.input_key
        for j, out in enumerate(_outputs(embedder(batch[key]))):
            tensors[embedding_key(index, j)] = out
        skip.add(key)
    others, values = _split(batch, skip)
    return {**others, **tensors}, values


def cache_meta(
    engine: Any, model_params: Mapping, outputs: Mapping[int, int], size: list[int], count: int
) -> dict:
    """What made a cache: config and weights digests of the first stage and each cached
    embedder, the pixel size and the item count."""
    state = engine.state_dict()
    emb_models = list(model_params["conditioner_config"]["params"]["emb_models"])
    embedders = {}
    for index, config in enumerate(emb_models):
        if is_cached(config):
            embedders[str(index)] = {
                "target": config["target"],
                "config": config_digest(_embedder_identity(dict(config))),
                "weights": weights_digest(state, embedder_prefix(index)),
                "outputs": outputs[index],
            }
    return {
        "first_stage": {
            "target": model_params["first_stage_config"]["target"],
            "config": config_digest(model_params["first_stage_config"]),
            "weights": weights_digest(state, FIRST_STAGE_PREFIX),
        },
        "embedders": embedders,
        "size": size,
        "count": count,
    }


def write_cache(
    engine: Any,
    model_params: Mapping,
    loader: Any,
    output: str | Path,
    limit: int | None = None,
    per_shard: int = 1000,
) -> Path:
    """Run ``engine``'s first stage and frozen embedders over ``loader`` (batches of one
    pipeline item) and write the shards and ``cache.json`` into the new folder ``output``."""
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise InputError(f"{output} is not empty; the cache goes into a new or empty folder")
    output.mkdir(parents=True, exist_ok=True)
    emb_models = list(model_params["conditioner_config"]["params"]["emb_models"])
    cached = [i for i, c in enumerate(emb_models) if is_cached(c)]
    outputs = {index: 0 for index in cached}
    engine.eval()
    pending, shards, count, size = [], 0, 0, None
    for batch in loader:
        if limit is not None and count >= limit:
            break
        size = size or list(engine.get_input(batch).shape[-2:])
        tensors, values = cache_item(engine, batch, cached)
        for index in cached:
            outputs[index] = sum(k.startswith(embedding_key(index, "")) for k in tensors)
        members = {"safetensors": _encode(tensors), "json": json.dumps(values).encode()}
        pending.append((f"{count:09d}", members))
        count += 1
        if len(pending) >= per_shard:
            write_shard(output / f"cache-{shards:06d}.tar", pending)
            pending, shards = [], shards + 1
    if not count:
        raise InputError("the datapipeline gave no sample to cache")
    if pending:
        write_shard(output / f"cache-{shards:06d}.tar", pending)
    _write_uncond(engine, emb_models, cached, output)
    meta = cache_meta(engine, model_params, outputs, size, count)
    write_new_file(lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1)), [output / META])
    logger.info("cached %d items into %s", count, output)
    return output


@torch.no_grad()
def _write_uncond(engine: Any, emb_models: list, cached: list[int], output: Path) -> None:
    """Outputs of each cached embedder for its ``legacy_ucg_value`` (one row)."""
    tensors = {}
    for index in cached:
        value = emb_models[index].get("legacy_ucg_value")
        if value is None:
            continue
        for j, out in enumerate(_outputs(engine.conditioner.embedders[index]([value]))):
            tensors[embedding_key(index, j)] = out[0]
    if tensors:
        data = _encode(tensors)
        write_new_file(lambda tmp: Path(tmp).write_bytes(data), [output / UNCOND])


class CachedSample:
    """Postprocessor: a cached shard sample -> its tensors and values. A member that does
    not read (a truncated or corrupt ``.safetensors``, a ``.json`` that is not JSON) is an
    ``InputError`` naming the shard, the sample and the member."""

    def __call__(self, sample: dict) -> dict:
        from safetensors import SafetensorError
        from safetensors.torch import load

        where = f"{sample.get('__url__')}, sample {sample.get('__key__')!r}"
        if "safetensors" not in sample:
            raise InputError(f"{where}: no 'safetensors' member (not a conditioning cache shard)")
        try:
            out = load(bytes(sample["safetensors"]))
        except (SafetensorError, ValueError, RuntimeError) as error:
            raise InputError(
                f"{where}: member {_member(sample, 'safetensors')} is not a readable "
                f"safetensors file (truncated or corrupt?): {_first(error)}"
            ) from None
        values = sample.get("json") or {}
        if isinstance(values, (bytes, bytearray)):
            try:
                values = json.loads(values)
            except ValueError as error:
                raise InputError(
                    f"{where}: member {_member(sample, 'json')} is not JSON: {_first(error)}"
                ) from None
        if not isinstance(values, dict):
            raise InputError(
                f"{where}: member {_member(sample, 'json')} holds "
                f"{type(values).__name__}, not a JSON object"
            )
        out.update(values)
        return out


def _member(sample: dict, ext: str) -> str:
    return f"'{sample.get('__key__')}.{ext}'"


def _first(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


class FlattenCached:
    """Batch postprocessor: ``(B, n, ...)`` stacked items -> ``(B * n, ...)`` rows (an
    image item has n = 1, a clip n = frames); lists of per-item lists are joined and
    per-item counts (``num_video_frames``) kept once."""

    def __call__(self, batch: dict) -> dict:
        out = {}
        for key, value in batch.items():
            if isinstance(value, torch.Tensor) and value.ndim >= 2:
                out[key] = value.flatten(0, 1)
            elif key == "num_video_frames":
                counts = {int(v) for v in value}
                if len(counts) != 1:
                    raise ConfigError(f"a batch mixes clips of {sorted(counts)} frames")
                out[key] = counts.pop()
            elif isinstance(value, list) and value and isinstance(value[0], list):
                out[key] = [v for item in value for v in item]
            else:
                out[key] = value
        return out
