"""Conditioning embedders and ``GeneralConditioner`` (public path of every embedder)."""

from __future__ import annotations

from ._base import AbstractEmbModel
from ._clip import FrozenCLIPEmbedder
from ._conditioner import GeneralConditioner
from ._gaussian import GaussianEncoder
from ._misc import (
    ClassEmbedder,
    ClassEmbedderForMultiCond,
    ConcatTimestepEmbedderND,
    IdentityEncoder,
    InceptionV3,
    LowScaleEncoder,
    SpatialRescaler,
)
from ._openclip import (
    FrozenOpenCLIPEmbedder,
    FrozenOpenCLIPEmbedder2,
    FrozenOpenCLIPImageEmbedder,
)
from ._t5 import FrozenByT5Embedder, FrozenCLIPT5Encoder, FrozenT5Embedder
from ._video import (
    FrozenOpenCLIPImagePredictionEmbedder,
    VideoPredictionEmbedderWithEncoder,
)

__all__ = [
    "AbstractEmbModel",
    "ClassEmbedder",
    "ClassEmbedderForMultiCond",
    "ConcatTimestepEmbedderND",
    "FrozenByT5Embedder",
    "FrozenCLIPEmbedder",
    "FrozenCLIPT5Encoder",
    "FrozenOpenCLIPEmbedder",
    "FrozenOpenCLIPEmbedder2",
    "FrozenOpenCLIPImageEmbedder",
    "FrozenOpenCLIPImagePredictionEmbedder",
    "FrozenT5Embedder",
    "GaussianEncoder",
    "GeneralConditioner",
    "IdentityEncoder",
    "InceptionV3",
    "LowScaleEncoder",
    "SpatialRescaler",
    "VideoPredictionEmbedderWithEncoder",
]
