"""Attention and transformer blocks, and the library-wide attention-backend switch.

``scaled_dot_product(q, k, v, mask=None, *, scale=None, dropout_p=0.0, backend=None)``
takes ``(B, heads, N, d)`` tensors; ``set_attention_backend("sdpa"|"xformers"|"math"|
"auto")``, the ``attention_backend(name)`` context manager or the
``SGM_ATTENTION_BACKEND`` environment variable select the backend for every layer.
"""

from __future__ import annotations

from ..util import default, exists
from ._attention_backend import (
    BACKENDS,
    attention_backend,
    get_attention_backend,
    resolve_backend,
    scaled_dot_product,
    set_attention_backend,
    xformers_available,
)
from ._attention_layers import (
    GEGLU,
    CrossAttention,
    FeedForward,
    LinearAttention,
    MemoryEfficientCrossAttention,
    Normalize,
    SelfAttention,
    SpatialSelfAttention,
    init_,
    max_neg_value,
    uniq,
)
from ._transformer import (
    ATTENTION_MODES,
    BasicTransformerBlock,
    BasicTransformerSingleLayerBlock,
    SimpleTransformer,
    SpatialTransformer,
    attention_class,
)
from .layers import zero_module

__all__ = [
    "ATTENTION_MODES",
    "BACKENDS",
    "GEGLU",
    "BasicTransformerBlock",
    "BasicTransformerSingleLayerBlock",
    "CrossAttention",
    "FeedForward",
    "LinearAttention",
    "MemoryEfficientCrossAttention",
    "Normalize",
    "SelfAttention",
    "SimpleTransformer",
    "SpatialSelfAttention",
    "SpatialTransformer",
    "attention_backend",
    "attention_class",
    "default",
    "exists",
    "get_attention_backend",
    "init_",
    "max_neg_value",
    "resolve_backend",
    "scaled_dot_product",
    "set_attention_backend",
    "uniq",
    "xformers_available",
    "zero_module",
]
