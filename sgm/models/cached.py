"""Training from cached conditioning: latents and frozen-embedder outputs read from shards.

``sgm.data.latent_cache`` runs a config's first stage and frozen embedders once over its
data and writes their outputs as shards (with ``cache.json``: what made them).
:class:`DiffusionEngineFromCache` takes the same params as ``DiffusionEngine`` plus
``cache: {path, size}``; it builds neither the first stage nor the cached embedders (a
:class:`CachedEmbedding` hands their stored outputs to the conditioner, which still
applies the embedders' ``ucg_rate``), and refuses a cache made with another first stage,
another embedder, or another resolution, naming which.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import LoadReport, load_state_dict, load_state_dict_into
from ..errors import ConfigError
from ..modules.encoders._base import AbstractEmbModel
from .diffusion import DiffusionEngine

logger = logging.getLogger(__name__)

META = "cache.json"
UNCOND = "uncond.safetensors"
LATENT = "cached_latent"
MOMENTS = "cached_moments"
FIRST_STAGE_PREFIX = "first_stage_model."


def embedding_key(index: int, output: int | str) -> str:
    """Batch key of output ``output`` of embedder ``index``."""
    return f"cached_emb{index}_{output}"


def config_digest(config: Any) -> str:
    """sha256 of a config (target and params), order-independent."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def weights_digest(state: Mapping[str, torch.Tensor], prefix: str) -> str | None:
    """sha256 of the tensors under ``prefix`` as float32 (the same for a checkpoint in
    fp16/bf16 and the module it was loaded into); None if there are none."""
    digest = hashlib.sha256()
    keys = sorted(k for k in state if k.startswith(prefix))
    for key in keys:
        value = state[key].detach().to("cpu")
        value = value.float() if value.is_floating_point() else value
        digest.update(key[len(prefix) :].encode())
        digest.update(value.contiguous().numpy().tobytes())
    return digest.hexdigest() if keys else None


def is_cached(config: Mapping) -> bool:
    """Whether an embedder (its config entry) is replaced by its cached outputs: frozen,
    and not a pass-through of the conditioner."""
    from ..modules.encoders._conditioner import PASSTHROUGH_KEYS

    return not config.get("is_trainable", False) and config.get("input_key") not in (
        PASSTHROUGH_KEYS
    )


def embedder_prefix(index: int) -> str:
    return f"conditioner.embedders.{index}."


class CachedEmbedding(AbstractEmbModel):
    """Stands in for a frozen embedder: returns its outputs read from the cache. With a
    ``legacy_ucg_value`` embedder's ``ucg_rate``, rows are replaced by the cached
    outputs of that value with that probability."""

    def __init__(self, index: int, outputs: int, uncond: Sequence[torch.Tensor] | None = None):
        super().__init__()
        self.is_trainable = False
        self.input_keys = [embedding_key(index, j) for j in range(outputs)]
        self.uncond = list(uncond) if uncond is not None else None
        self.legacy_rate = 0.0

    def forward(self, *outputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if self.legacy_rate > 0 and self.uncond is not None:
            rows = outputs[0].shape[0]
            drop = torch.rand(rows, generator=self.ucg_generator) < self.legacy_rate
            drop = drop.to(outputs[0].device)
            outputs = tuple(
                torch.where(drop.view(-1, *[1] * (o.ndim - 1)), u.to(o).expand_as(o), o)
                for o, u in zip(outputs, self.uncond)
            )
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def read_meta(path: str | Path) -> dict:
    meta_path = Path(path) / META
    if not meta_path.is_file():
        raise ConfigError(
            f"model.params.cache.path {path}: no {META} (not a conditioning cache; make one "
            "with scripts/data/cache_conditioning.py)"
        )
    from ..config import read_text_file

    try:
        return json.loads(read_text_file(meta_path))
    except json.JSONDecodeError as error:
        raise ConfigError(f"{meta_path}: not readable JSON: {error}") from None


def check_configs(meta: Mapping, first_stage_config: Any, emb_models: Sequence, size) -> None:
    """Refuse a cache whose first stage, embedders or resolution differ from these."""
    where = f"cache {meta.get('path', '')}".strip()
    if meta["first_stage"]["config"] != config_digest(first_stage_config):
        raise ConfigError(f"{where} was made with another first stage (VAE): its config differs")
    cached = {str(i) for i, c in enumerate(emb_models) if is_cached(c)}
    if set(meta["embedders"]) != cached:
        raise ConfigError(
            f"{where} holds embedders {sorted(meta['embedders'])}, this config caches "
            f"{sorted(cached)}: another conditioner"
        )
    for index, entry in meta["embedders"].items():
        config = dict(emb_models[int(index)])
        if entry["config"] != config_digest(_embedder_identity(config)):
            raise ConfigError(
                f"{where} was made with another encoder for embedder {index} "
                f"({config.get('target')}, input {config.get('input_key')!r}): config differs"
            )
    if size is not None and list(meta["size"]) != _size(size):
        raise ConfigError(
            f"{where} was made at resolution {meta['size'][0]}x{meta['size'][1]}, this run "
            f"trains at {_size(size)[0]}x{_size(size)[1]} (model.params.cache.size)"
        )


def _size(size: int | Sequence[int]) -> list[int]:
    return [int(size), int(size)] if isinstance(size, int) else [int(s) for s in size]


def _embedder_identity(config: Mapping) -> dict:
    """What defines an embedder's outputs (not its dropout rate)."""
    keep = ("target", "params", "input_key", "input_keys")
    return {k: config[k] for k in keep if k in config}


class DiffusionEngineFromCache(DiffusionEngine):
    """``DiffusionEngine`` trained on cached latents and frozen-embedder outputs; no first
    stage and no frozen encoders are built or loaded (see the module docstring)."""

    def __init__(self, *args: Any, cache: Mapping | None = None, **kwargs: Any):
        if not cache or "path" not in cache:
            raise ConfigError("model.params.cache needs a 'path' (the cache folder)")
        self.cache_path = Path(cache["path"])
        meta = read_meta(self.cache_path)
        meta["path"] = str(self.cache_path)
        conditioner = dict(kwargs.get("conditioner_config") or {})
        emb_models = list((conditioner.get("params") or {}).get("emb_models") or [])
        check_configs(meta, kwargs.get("first_stage_config"), emb_models, cache.get("size"))
        self.cache_meta = meta
        kwargs["conditioner_config"] = self._stand_ins(conditioner, emb_models)
        super().__init__(*args, **kwargs)
        for index, rate in self._legacy_rates.items():
            self.conditioner.embedders[index].legacy_rate = rate

    def _stand_ins(self, conditioner: dict, emb_models: list) -> dict:
        uncond = {}
        if (self.cache_path / UNCOND).is_file():
            from ..checkpoint import load_state_dict  # a truncated file is named

            uncond = load_state_dict(self.cache_path / UNCOND)
        models = []
        for index, config in enumerate(emb_models):
            if str(index) not in self.cache_meta["embedders"]:
                models.append(config)
                continue
            outputs = int(self.cache_meta["embedders"][str(index)]["outputs"])
            stored = [uncond.get(embedding_key(index, j)) for j in range(outputs)]
            legacy = config.get("legacy_ucg_value") is not None
            models.append(
                {
                    "target": f"{__name__}.CachedEmbedding",
                    "params": {
                        "index": index,
                        "outputs": outputs,
                        "uncond": stored if legacy else None,
                    },
                    "input_keys": [embedding_key(index, j) for j in range(outputs)],
                    "ucg_rate": 0.0 if legacy else config.get("ucg_rate", 0.0),
                    "is_trainable": False,
                }
            )
            if legacy:
                models[-1]["legacy_rate"] = float(config.get("ucg_rate", 0.0))
        rates = {i: m.pop("legacy_rate") for i, m in enumerate(models) if "legacy_rate" in m}
        self._legacy_rates = rates
        return {
            **conditioner,
            "params": {**(conditioner.get("params") or {}), "emb_models": models},
        }

    def _init_first_stage(self, config: Mapping) -> None:
        """No first stage: only its (parameter-free) regularizer, which draws each step's
        latents from the cached posterior moments as encoding would."""
        from ..util import instantiate_from_config

        self.first_stage_model = None
        with torch.device("meta"):
            regularization = getattr(instantiate_from_config(config), "regularization", None)
        if regularization is not None and any(True for _ in regularization.parameters()):
            raise ConfigError("the first stage's regularizer has parameters; it cannot be cached")
        self.cache_regularizer = [regularization]  # a list: not a submodule, no state

    def _cached_prefixes(self) -> list[str]:
        return [FIRST_STAGE_PREFIX] + [
            embedder_prefix(int(i)) for i in self.cache_meta["embedders"]
        ]

    def init_from_ckpt(self, path: str, strict: bool = True) -> LoadReport:
        """Load ``path`` without the cached parts; their weights must be the cache's."""
        state_dict = load_state_dict(path)
        self.check_weights(state_dict, str(path))
        prefixes = tuple(self._cached_prefixes())
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(prefixes)}
        ignore = () if self.use_ema else ("model_ema.",)
        report = load_state_dict_into(
            self, state_dict, strict=strict, ignore_unexpected=ignore, source=str(path)
        )
        logger.info("Restored from %s (cached parts skipped)", path)
        return report

    def check_weights(self, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
        """Refuse weights of a first stage or embedder other than the cache's."""
        where = f"cache {self.cache_path}"
        expected = self.cache_meta["first_stage"].get("weights")
        if expected is not None and weights_digest(state_dict, FIRST_STAGE_PREFIX) != expected:
            raise ConfigError(
                f"{where} was made with another first stage (VAE): {source} "
                "holds other first_stage_model weights"
            )
        for index, entry in self.cache_meta["embedders"].items():
            got = weights_digest(state_dict, embedder_prefix(int(index)))
            if entry.get("weights") is not None and got != entry["weights"]:
                raise ConfigError(
                    f"{where} was made with another encoder for embedder {index}: {source} "
                    f"holds other conditioner.embedders.{index} weights"
                )

    def shared_step(self, batch: dict) -> tuple[torch.Tensor, dict]:
        if LATENT not in batch and MOMENTS not in batch:
            raise ConfigError(
                f"batch has no {MOMENTS!r} or {LATENT!r}: DiffusionEngineFromCache reads cached shards "
                "(sgm.data.latent_cache.CachedSample in the datapipeline)"
            )
        batch["global_step"] = self.global_step
        return self(self.cached_latents(batch), batch)

    def cached_latents(self, batch: Mapping) -> torch.Tensor:
        """Latents of a cached batch: drawn from the stored posterior moments chunk by
        chunk (the random draws of ``encode_first_stage``), or stored as they are."""
        if MOMENTS not in batch:
            return batch[LATENT]
        (regularization,) = self.cache_regularizer
        outs = [regularization(chunk)[0] for chunk in self._chunks(batch[MOMENTS])]
        return self.scale_factor * torch.cat(outs, dim=0)

    def decode_first_stage(self, z: torch.Tensor) -> torch.Tensor:
        raise ConfigError(
            "no first stage: this model trains from cached conditioning (disable image "
            "logging, or sample with the released config)"
        )

    encode_first_stage = decode_first_stage
