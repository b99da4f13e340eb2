"""``GeneralConditioner``: runs the configured embedders and routes their outputs."""

from __future__ import annotations

import contextlib
import logging
import types
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError, InputError
from ...util import append_dims, disabled_train, instantiate_from_config
from ._base import AbstractEmbModel

logger = logging.getLogger(__name__)

# Embedders reading these batch keys emit under the key itself (SV4D view/motion latents).
PASSTHROUGH_KEYS = ("cond_view", "cond_motion")


def keep_mask(
    n: int, ucg_rate: float, device: torch.device, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-sample Bernoulli(1 - ucg_rate) mask of shape (n,): 0 drops the condition."""
    if generator is None:
        return torch.bernoulli((1.0 - ucg_rate) * torch.ones(n, device=device))
    probs = torch.full((n,), 1.0 - ucg_rate, device=generator.device)
    return torch.bernoulli(probs, generator=generator).to(device)


class GeneralConditioner(nn.Module):
    """Builds the embedders of ``emb_models`` and merges their outputs by dimension.

    2-D outputs go to ``"vector"`` (concatenated on dim 1), 3-D to ``"crossattn"`` (dim 2),
    4-D/5-D to ``"concat"`` (dim 1), in config order; embedders reading ``cond_view`` or
    ``cond_motion`` emit under that key.
    """

    OUTPUT_DIM2KEYS = {2: "vector", 3: "crossattn", 4: "concat", 5: "concat"}
    KEY2CATDIM = {"vector": 1, "crossattn": 2, "concat": 1, "cond_view": 1, "cond_motion": 1}

    def __init__(self, emb_models: Sequence[Mapping[str, Any]]) -> None:
        super().__init__()
        embedders = [self._build_embedder(n, config) for n, config in enumerate(emb_models or [])]
        self.embedders = nn.ModuleList(embedders)

    @staticmethod
    def _build_embedder(n: int, config: Mapping[str, Any]) -> AbstractEmbModel:
        embedder = instantiate_from_config(config, key=f"conditioner.emb_models.{n}")
        if not isinstance(embedder, AbstractEmbModel):
            raise ConfigError(
                f"conditioner.emb_models.{n}: {config.get('target')} builds a "
                f"{type(embedder).__name__}, expected a subclass of AbstractEmbModel"
            )
        embedder.is_trainable = bool(config.get("is_trainable", False))
        embedder.ucg_rate = float(config.get("ucg_rate", 0.0))
        if not embedder.is_trainable:
            embedder.eval()
            embedder.train = types.MethodType(disabled_train, embedder)
            for param in embedder.parameters():
                param.requires_grad = False
        if "input_key" in config:
            embedder.input_key = config["input_key"]
        elif "input_keys" in config:
            embedder.input_keys = list(config["input_keys"])
        else:
            raise ConfigError(
                f"conditioner.emb_models.{n} ({config.get('target')}): needs "
                "'input_key' or 'input_keys'"
            )
        embedder.legacy_ucg_val = config.get("legacy_ucg_value", None)
        logger.debug(
            "embedder %d %s: trainable=%s, ucg_rate=%s, input=%s",
            n,
            type(embedder).__name__,
            embedder.is_trainable,
            embedder.ucg_rate,
            embedder.input_key or embedder.input_keys,
        )
        return embedder

    def possibly_get_ucg_val(
        self, embedder: AbstractEmbModel, batch: Mapping[str, Any]
    ) -> dict[str, Any]:
        """A copy of ``batch`` whose entries under the embedder's key are replaced by
        ``legacy_ucg_val`` with probability ``ucg_rate`` each."""
        key = embedder.input_key
        values = list(batch[key])
        if embedder.ucg_rate > 0.0:
            draws = torch.rand(len(values), generator=embedder.ucg_generator)
            values = [
                embedder.legacy_ucg_val if float(u) < embedder.ucg_rate else v
                for u, v in zip(draws, values)
            ]
        return {**batch, key: values}

    def _embed(self, embedder: AbstractEmbModel, batch: Mapping[str, Any]) -> list:
        context = contextlib.nullcontext() if embedder.is_trainable else torch.no_grad()
        with context:
            if embedder.input_key is not None:
                if embedder.legacy_ucg_val is not None:
                    batch = self.possibly_get_ucg_val(embedder, batch)
                out = embedder(_batch_value(batch, embedder.input_key))
            elif embedder.input_keys is not None:
                out = embedder(*[_batch_value(batch, k) for k in embedder.input_keys])
            else:
                raise ConfigError(f"{type(embedder).__name__} has no input_key(s)")
        if isinstance(out, torch.Tensor):
            return [out]
        if isinstance(out, (list, tuple)):
            return list(out)
        raise TypeError(
            f"{type(embedder).__name__} returned {type(out).__name__}; expected a "
            "tensor or a list/tuple of tensors"
        )

    def _out_key(self, embedder: AbstractEmbModel, emb: torch.Tensor) -> str:
        if embedder.input_key in PASSTHROUGH_KEYS:
            return embedder.input_key
        try:
            return self.OUTPUT_DIM2KEYS[emb.dim()]
        except KeyError:
            raise InputError(
                f"{type(embedder).__name__} (input {embedder.input_key!r}) produced a "
                f"{emb.dim()}-D embedding {tuple(emb.shape)}; expected 2-D to 5-D"
            ) from None

    def forward(
        self,
        batch: Mapping[str, Any],
        force_zero_embeddings: Sequence[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Embed ``batch``; embedders whose input key is in ``force_zero_embeddings`` give zeros."""
        return self._condition(batch, force_zero_embeddings)[0]

    def _condition(
        self,
        batch: Mapping[str, Any],
        force_zero_embeddings: Sequence[str] | None = None,
        zeros_like: Mapping[int, list[torch.Tensor]] | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[int, list[torch.Tensor]]]:
        """``(output, each embedder's own outputs)``. A zeroed embedder listed in
        ``zeros_like`` is not run: its zeros take the shapes of the given outputs."""
        force_zero = list(force_zero_embeddings or [])
        output: dict[str, torch.Tensor] = {}
        embedded: dict[int, list[torch.Tensor]] = {}
        for n, embedder in enumerate(self.embedders):
            zeroed = embedder.input_key is not None and embedder.input_key in force_zero
            if zeroed and zeros_like is not None and n in zeros_like:
                embedded[n] = [torch.zeros_like(emb) for emb in zeros_like[n]]
            else:
                embedded[n] = self._embed(embedder, batch)
            for emb in embedded[n]:
                out_key = self._out_key(embedder, emb)
                if embedder.ucg_rate > 0.0 and embedder.legacy_ucg_val is None:
                    keep = keep_mask(
                        emb.shape[0], embedder.ucg_rate, emb.device, embedder.ucg_generator
                    )
                    emb = append_dims(keep, emb.ndim) * emb
                if zeroed:
                    emb = torch.zeros_like(emb)
                if out_key in output:
                    emb = torch.cat((output[out_key], emb), self.KEY2CATDIM[out_key])
                output[out_key] = emb
        return output, embedded

    @contextlib.contextmanager
    def ucg_disabled(self) -> Iterator[None]:
        """Temporarily set every embedder's ``ucg_rate`` to 0."""
        rates = [embedder.ucg_rate for embedder in self.embedders]
        try:
            for embedder in self.embedders:
                embedder.ucg_rate = 0.0
            yield
        finally:
            for embedder, rate in zip(self.embedders, rates):
                embedder.ucg_rate = rate

    def get_unconditional_conditioning(
        self,
        batch_c: Mapping[str, Any],
        batch_uc: Mapping[str, Any] | None = None,
        force_uc_zero_embeddings: Sequence[str] | None = None,
        force_cond_zero_embeddings: Sequence[str] | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(c, uc)`` without dropout: ``c`` from ``batch_c``, ``uc`` from ``batch_uc``
        (default ``batch_c``) with the listed embedders zeroed.

        An embedder zeroed for ``uc`` whose ``uc`` input has the shape of its ``c`` input
        (as many prompts, or a tensor of the same shape) is not run a second time: its
        zeros take the shapes of its ``c`` outputs, which depend only on the input's shape.
        Such an embedder then draws nothing from the global random generator for ``uc``."""
        batch_uc = batch_c if batch_uc is None else batch_uc
        with self.ucg_disabled():
            c, embedded = self._condition(batch_c, force_cond_zero_embeddings)
            reusable = {
                n: embedded[n]
                for n, embedder in enumerate(self.embedders)
                if _same_input_shape(embedder.input_key, batch_c, batch_uc)
            }
            uc, _ = self._condition(batch_uc, force_uc_zero_embeddings, zeros_like=reusable)
        return c, uc


def _input_shape(value: Any) -> tuple | None:
    """What an embedder's output shape depends on: the number of prompts (a string or a
    list of strings) or a tensor's shape; None for anything else."""
    if isinstance(value, torch.Tensor):
        return ("tensor", *value.shape)
    if isinstance(value, str):
        return ("prompts", 1)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return ("prompts", len(value))
    return None


def _same_input_shape(key: str | None, a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    if key is None or key not in a or key not in b:
        return False
    shape = _input_shape(a[key])
    return shape is not None and shape == _input_shape(b[key])


def _batch_value(batch: Mapping[str, Any], key: str) -> Any:
    try:
        return batch[key]
    except KeyError:
        raise InputError(
            f"conditioner input {key!r} missing from the batch; it has {sorted(map(str, batch))}"
        ) from None
