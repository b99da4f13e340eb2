"""Vector quantizers (VQ-VAE bottlenecks): nearest-code, Gumbel-softmax, EMA codebook."""

from __future__ import annotations

import logging
import warnings
from abc import abstractmethod
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .base import AbstractRegularizer, measure_perplexity

logger = logging.getLogger(__name__)


class AbstractQuantizer(AbstractRegularizer):
    """Quantizer with optional remapping of indices to a subset of used codes.

    ``remap`` names a ``.npy`` file of used code indices; codes outside it map to
    ``unknown_index`` (``"random"``, ``"extra"`` for one extra token, or an int).
    """

    def _init_remap(self, remap: str | None, n_codes: int, unknown_index) -> None:
        self.remap = remap
        if remap is not None:
            self.register_buffer("used", torch.tensor(np.load(remap)))
            self.re_embed = self.used.shape[0]
        else:
            self.used = None
            self.re_embed = n_codes
        if unknown_index == "extra":
            self.unknown_index = self.re_embed
            self.re_embed = self.re_embed + 1
        elif unknown_index == "random" or isinstance(unknown_index, int):
            self.unknown_index = unknown_index
        else:
            raise ValueError(
                f"unknown_index must be 'random', 'extra' or an int, got {unknown_index!r}"
            )

    def remap_to_used(self, inds: torch.Tensor) -> torch.Tensor:
        """Full-codebook indices (B, ...) -> positions in ``used``."""
        if self.used is None:
            raise ValueError("remap_to_used needs a quantizer built with remap=<file.npy>")
        ishape = inds.shape
        inds = inds.reshape(ishape[0], -1)
        used = self.used.to(inds)
        match = (inds[:, :, None] == used[None, None, ...]).long()
        new = match.argmax(-1)
        unknown = match.sum(2) < 1
        if self.unknown_index == "random":
            new[unknown] = torch.randint(
                0, self.re_embed, size=new[unknown].shape, device=new.device
            )
        else:
            new[unknown] = self.unknown_index
        return new.reshape(ishape)

    def unmap_to_all(self, inds: torch.Tensor) -> torch.Tensor:
        """Positions in ``used`` (B, ...) -> full-codebook indices."""
        if self.used is None:
            raise ValueError("unmap_to_all needs a quantizer built with remap=<file.npy>")
        ishape = inds.shape
        inds = inds.reshape(ishape[0], -1).clone()
        used = self.used.to(inds)
        if self.re_embed > self.used.shape[0]:
            inds[inds >= self.used.shape[0]] = 0
        back = torch.gather(used[None, :].expand(inds.shape[0], -1), 1, inds)
        return back.reshape(ishape)

    @abstractmethod
    def get_codebook_entry(self, indices: torch.Tensor, shape: tuple | None = None) -> torch.Tensor:
        raise NotImplementedError()

    def get_trainable_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.parameters()


class GumbelQuantizer(AbstractQuantizer):
    """Gumbel-softmax quantizer (Jang et al., 2016) with a KL-to-uniform prior loss."""

    def __init__(
        self,
        num_hiddens: int,
        embedding_dim: int,
        n_embed: int,
        straight_through: bool = True,
        kl_weight: float = 5e-4,
        temp_init: float = 1.0,
        remap: str | None = None,
        unknown_index: str | int = "random",
        loss_key: str = "loss/vq",
    ):
        super().__init__()
        self.loss_key = loss_key
        self.embedding_dim = embedding_dim
        self.n_embed = n_embed
        self.straight_through = straight_through
        self.temperature = temp_init
        self.kl_weight = kl_weight
        self.proj = nn.Conv2d(num_hiddens, n_embed, 1)
        self.embed = nn.Embedding(n_embed, embedding_dim)
        self._init_remap(remap, n_embed, unknown_index)

    def forward(
        self, z: torch.Tensor, temp: float | None = None, return_logits: bool = False
    ) -> tuple[torch.Tensor, dict]:
        hard = self.straight_through if self.training else True
        temp = self.temperature if temp is None else temp
        logits = self.proj(z)
        if self.remap is not None:
            full_zeros = torch.zeros_like(logits)
            logits = logits[:, self.used, ...]
        soft_one_hot = F.gumbel_softmax(logits, tau=temp, dim=1, hard=hard)
        if self.remap is not None:
            full_zeros[:, self.used, ...] = soft_one_hot
            soft_one_hot = full_zeros
        z_q = torch.einsum("b n h w, n d -> b d h w", soft_one_hot, self.embed.weight)
        qy = F.softmax(logits, dim=1)
        kl = self.kl_weight * torch.sum(qy * torch.log(qy * self.n_embed + 1e-10), dim=1).mean()
        out = {self.loss_key: kl, "indices": soft_one_hot.argmax(dim=1)}
        if return_logits:
            out["logits"] = logits
        return z_q, out

    def get_codebook_entry(self, indices: torch.Tensor, shape: tuple | None = None) -> torch.Tensor:
        """Flat indices (b*h*w,) and ``shape=(b, h, w, c)`` -> (b, c, h, w)."""
        if shape is None:
            raise ValueError("GumbelQuantizer.get_codebook_entry needs shape=(b, h, w, c)")
        b, h, w, _ = shape
        indices = rearrange(indices, "(b h w) -> b h w", b=b, h=h, w=w)
        if self.remap is not None:
            indices = self.unmap_to_all(indices)
        one_hot = F.one_hot(indices, num_classes=self.n_embed).permute(0, 3, 1, 2).float()
        return torch.einsum("b n h w, n d -> b d h w", one_hot, self.embed.weight)


class VectorQuantizer(AbstractQuantizer):
    """Nearest-codebook-entry bottleneck of VQ-VAE (van den Oord et al., 2017).

    Loss: ``beta * ||z - sg[e]||^2 + ||sg[z] - e||^2``; gradients pass straight
    through to ``z``. Indices are logged as ``min_encoding_indices``.
    """

    def __init__(
        self,
        n_e: int,
        e_dim: int,
        beta: float = 0.25,
        remap: str | None = None,
        unknown_index: str | int = "random",
        sane_index_shape: bool = False,
        log_perplexity: bool = False,
        embedding_weight_norm: bool = False,
        loss_key: str = "loss/vq",
    ):
        super().__init__()
        self.n_e = n_e
        self.e_dim = e_dim
        self.beta = beta
        self.loss_key = loss_key
        if not embedding_weight_norm:
            self.embedding = nn.Embedding(n_e, e_dim)
            self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                self.embedding = torch.nn.utils.weight_norm(nn.Embedding(n_e, e_dim), dim=1)
        self._init_remap(remap, n_e, unknown_index)
        self.sane_index_shape = sane_index_shape
        self.log_perplexity = log_perplexity

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, dict]:
        do_reshape = z.ndim == 4
        if do_reshape:
            z = rearrange(z, "b c h w -> b h w c").contiguous()
        elif z.ndim > 4:
            raise ValueError(f"VectorQuantizer takes 2-4 dim inputs, got shape {tuple(z.shape)}")
        z_flat = z.reshape(-1, self.e_dim)
        weight = self.embedding.weight
        dist = (
            z_flat.pow(2).sum(dim=1, keepdim=True)
            + weight.pow(2).sum(dim=1)
            - 2 * z_flat @ weight.t()
        )
        indices = torch.argmin(dist, dim=1)
        z_q = self.embedding(indices).view(z.shape)
        log = {}
        if self.log_perplexity:
            perplexity, cluster_usage = measure_perplexity(indices.detach(), self.n_e)
            log.update({"perplexity": perplexity, "cluster_usage": cluster_usage})
        log[self.loss_key] = self.beta * torch.mean((z_q.detach() - z) ** 2) + torch.mean(
            (z_q - z.detach()) ** 2
        )
        z_q = z + (z_q - z).detach()
        if do_reshape:
            z_q = rearrange(z_q, "b h w c -> b c h w").contiguous()
        if self.remap is not None:
            indices = self.remap_to_used(indices.reshape(z.shape[0], -1)).reshape(-1, 1)
        if self.sane_index_shape:
            if do_reshape:
                indices = indices.reshape(z_q.shape[0], z_q.shape[2], z_q.shape[3])
            else:
                indices = indices.reshape(z_q.shape[0], -1)
        log["min_encoding_indices"] = indices
        return z_q, log

    def get_codebook_entry(self, indices: torch.Tensor, shape: tuple | None = None) -> torch.Tensor:
        """Codebook vectors for ``indices``; with ``shape=(b, h, w, c)`` -> (b, c, h, w)."""
        if self.remap is not None:
            if shape is None:
                raise ValueError("get_codebook_entry with remap needs shape=(b, h, w, c)")
            indices = self.unmap_to_all(indices.reshape(shape[0], -1)).reshape(-1)
        z_q = self.embedding(indices)
        if shape is not None:
            z_q = z_q.view(shape).permute(0, 3, 1, 2).contiguous()
        return z_q


class EmbeddingEMA(nn.Module):
    """Codebook updated by exponential moving averages of assigned vectors."""

    def __init__(self, num_tokens: int, codebook_dim: int, decay: float = 0.99, eps: float = 1e-5):
        super().__init__()
        self.decay = decay
        self.eps = eps
        weight = torch.randn(num_tokens, codebook_dim)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.cluster_size = nn.Parameter(torch.zeros(num_tokens), requires_grad=False)
        self.embed_avg = nn.Parameter(weight.clone(), requires_grad=False)
        self.update = True

    def forward(self, embed_id: torch.Tensor) -> torch.Tensor:
        return F.embedding(embed_id, self.weight)

    def cluster_size_ema_update(self, new_cluster_size: torch.Tensor) -> None:
        self.cluster_size.data.mul_(self.decay).add_(new_cluster_size, alpha=1 - self.decay)

    def embed_avg_ema_update(self, new_embed_avg: torch.Tensor) -> None:
        self.embed_avg.data.mul_(self.decay).add_(new_embed_avg, alpha=1 - self.decay)

    def weight_update(self, num_tokens: int) -> None:
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + num_tokens * self.eps) * n
        self.weight.data.copy_(self.embed_avg / smoothed.unsqueeze(1))


class EMAVectorQuantizer(AbstractQuantizer):
    """Vector quantizer whose codebook follows EMAs of the encodings (VQ-VAE-2)."""

    def __init__(
        self,
        n_embed: int,
        embedding_dim: int,
        beta: float,
        decay: float = 0.99,
        eps: float = 1e-5,
        remap: str | None = None,
        unknown_index: str | int = "random",
        loss_key: str = "loss/vq",
    ):
        super().__init__()
        self.codebook_dim = embedding_dim
        self.num_tokens = n_embed
        self.beta = beta
        self.loss_key = loss_key
        self.embedding = EmbeddingEMA(n_embed, embedding_dim, decay, eps)
        self._init_remap(remap, n_embed, unknown_index)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, dict]:
        z = rearrange(z, "b c h w -> b h w c")
        z_flat = z.reshape(-1, self.codebook_dim)
        weight = self.embedding.weight
        dist = z_flat.pow(2).sum(1, keepdim=True) + weight.pow(2).sum(1) - 2 * z_flat @ weight.t()
        indices = torch.argmin(dist, dim=1)
        z_q = self.embedding(indices).view(z.shape)
        encodings = F.one_hot(indices, self.num_tokens).type(z.dtype)
        avg_probs = torch.mean(encodings, dim=0)
        perplexity = torch.exp(-torch.sum(avg_probs * torch.log(avg_probs + 1e-10)))
        if self.training and self.embedding.update:
            self.embedding.cluster_size_ema_update(encodings.sum(0))
            self.embedding.embed_avg_ema_update(encodings.transpose(0, 1) @ z_flat)
            self.embedding.weight_update(self.num_tokens)
        loss = self.beta * F.mse_loss(z_q.detach(), z)
        z_q = rearrange(z + (z_q - z).detach(), "b h w c -> b c h w")
        return z_q, {
            self.loss_key: loss,
            "encodings": encodings,
            "encoding_indices": indices,
            "perplexity": perplexity,
        }

    def get_codebook_entry(self, indices: torch.Tensor, shape: tuple | None = None) -> torch.Tensor:
        """Codebook vectors for ``indices``; with ``shape=(b, h, w, c)`` -> (b, c, h, w)."""
        z_q = self.embedding(indices)
        if shape is not None:
            z_q = z_q.view(shape).permute(0, 3, 1, 2).contiguous()
        return z_q


class VectorQuantizerWithInputProjection(VectorQuantizer):
    """Vector quantizer with a linear projection in (and optionally out) of the codebook."""

    def __init__(
        self,
        input_dim: int,
        n_codes: int,
        codebook_dim: int,
        beta: float = 1.0,
        output_dim: int | None = None,
        **kwargs,
    ):
        super().__init__(n_codes, codebook_dim, beta, **kwargs)
        self.proj_in = nn.Linear(input_dim, codebook_dim)
        self.output_dim = output_dim
        self.proj_out = (
            nn.Linear(codebook_dim, output_dim) if output_dim is not None else nn.Identity()
        )

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, dict]:
        in_shape = z.shape
        rearr = False
        if z.ndim > 3:
            rearr = self.output_dim is not None
            z = rearrange(z, "b c ... -> b (...) c")
        z_q, log = super().forward(self.proj_in(z))
        z_q = self.proj_out(z_q)
        if rearr:
            if len(in_shape) == 4:
                z_q = rearrange(z_q, "b (h w) c -> b c h w", w=in_shape[-1])
            elif len(in_shape) == 5:
                z_q = rearrange(z_q, "b (t h w) c -> b c t h w", w=in_shape[-1], h=in_shape[-2])
            else:
                raise ValueError(f"cannot restore an input of shape {tuple(in_shape)}")
        return z_q, log
