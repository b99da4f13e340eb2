"""Weights to and from diffusers folders (SD 2.x, SDXL base/refiner, SVD / SVD-XT).

- :func:`to_diffusers`: sgm checkpoint + config -> a diffusers folder that
  ``DiffusionPipeline.from_pretrained`` loads.
- :func:`to_sgm`: diffusers folder -> one ``.safetensors`` in the released single-file
  layout, which the config loads strictly.

Keys follow diffusers' own single-file converters
(``diffusers.loaders.single_file_utils``) where they exist and :mod:`.svd_keys` where
they do not; the diffusers -> sgm direction is their exact inverse (:mod:`._probe`).
diffusers and transformers are imported only when a conversion runs.
"""

from __future__ import annotations

from .export import to_diffusers
from .importer import released_config, to_sgm
from .svd_keys import svd_unet_key_map, video_decoder_key_map

__all__ = ["released_config", "svd_unet_key_map", "to_diffusers", "to_sgm", "video_decoder_key_map"]
