"""Text-to-image, image-to-image and refiner sampling for the released image models."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from .. import precision
from ..devices import resolve_device
from ..errors import ConfigError, InputError
from .engines import load_engine
from .helpers import (
    Img2ImgDiscretizationWrapper,
    Txt2NoisyDiscretizationWrapper,
    do_img2img,
    do_sample,
)
from .params_check import check_image_size, check_sampling_params, size_multiple
from .releases import configs_dir, for_architecture
from .sampling_params import (  # noqa: F401  (importable from here)
    Discretization,
    Guider,
    Sampler,
    SamplingParams,
    Thresholder,
    deepcache_of,
    get_discretization_config,
    get_guider_config,
    get_sampler_config,
    tgate_of,
    tome_of,
)
from .specs import (  # noqa: F401  (importable from here)
    SD_XL_BASE_RATIOS,
    ModelArchitecture,
    SamplingSpec,
    infer_spec,
    model_specs,
)

logger = logging.getLogger(__name__)


def _read_config(config: Any) -> Any:
    from omegaconf import OmegaConf

    if isinstance(config, (str, os.PathLike)):
        if not Path(config).is_file():
            raise ConfigError(f"model config not found: {config}")
        return OmegaConf.load(config)
    return OmegaConf.create(config) if isinstance(config, dict) else config


class SamplingPipeline:
    """Build a released (or custom) image model and sample from it.

    Args:
        model_id: a ``ModelArchitecture``; its config and checkpoint names come from
            the release registry (``sgm.inference.releases``).
        model_path: folder holding the checkpoint files.
        config_path: folder holding the inference configs (default: the packaged
            ``sgm/configs/inference``).
        device: ``"auto"`` picks the accelerator if any, else cpu.
        use_fp16: keep the conditioner's and the network's weights in the half
            ``dtype`` (only on an accelerator; EMA shadows and the first stage stay
            float32).
        dtype: compute precision, ``"auto"`` (fp16 on CUDA, fp32 elsewhere), ``"fp32"``,
            ``"fp16"`` or ``"bf16"`` (``sgm.precision``); the first stage runs in
            float32 when the config says ``disable_first_stage_autocast``.
        offload: low-VRAM mode: conditioner, network and first stage wait on the host
            and move to ``device`` one at a time, while they run (``sgm.offload``).
        config, ckpt: a custom model config (path, mapping or OmegaConf) and
            checkpoint, instead of ``model_id``.
        spec: sizes and flags for a custom model (default: read from its config).
        lora: LoRA adapters to apply, as ``(path, scale)`` pairs (``sgm.lora``).
        compile_model: compile the network and the VAE decoder with ``torch.compile``,
            weights frozen in (``engines.compile_engine``; in place, so state-dict keys
            stay the same). The first sampling run pays the compilation.
    """

    def __init__(
        self,
        model_id: ModelArchitecture | str | None = None,
        model_path: str | os.PathLike = "checkpoints",
        config_path: str | os.PathLike | None = None,
        device: str | torch.device = "auto",
        use_fp16: bool = True,
        config: Any = None,
        ckpt: str | os.PathLike | None = None,
        spec: SamplingSpec | None = None,
        lora: list[tuple[str | os.PathLike, float]] | None = None,
        dtype: str | torch.dtype | None = "auto",
        offload: bool = False,
        compile_model: bool = False,
    ) -> None:
        self.device = torch.device(resolve_device(device))
        self.dtype = precision.parse_dtype(dtype, self.device)
        self.offload = bool(offload)
        self.compile_model = bool(compile_model)
        if model_id is not None:
            self.specs = self._released_spec(model_id)
            if config_path is None:
                config_path = configs_dir() / "inference"
            config = Path(config_path, self.specs.config) if config is None else config
            ckpt = Path(model_path, self.specs.ckpt) if ckpt is None else ckpt
        elif config is None or ckpt is None:
            raise InputError("SamplingPipeline needs model_id, or both config= and ckpt=")
        self.config = _read_config(config)
        self.ckpt = str(ckpt)
        self.lora = list(lora or [])
        self.specs = spec or getattr(self, "specs", None) or infer_spec(self.config, ckpt)
        half = self.dtype in precision.HALF_DTYPES
        self.use_fp16 = bool(use_fp16) and half and self.device.type != "cpu"
        if use_fp16 and not self.use_fp16:  # news only where half precision was asked for
            logger.log(
                logging.INFO if half else logging.DEBUG,
                "use_fp16 ignored (%s on %s): weights stay float32",
                self.dtype,
                self.device,
            )
        self.model = self._load_model()

    @staticmethod
    def _released_spec(model_id: ModelArchitecture | str) -> SamplingSpec:
        """The spec of a released model (``sgm.inference.releases``)."""
        return model_specs[for_architecture(model_id).architecture]

    def _load_model(self) -> torch.nn.Module:
        return load_engine(
            self.config,
            self.ckpt,
            self.device,
            dtype=self.dtype,
            half_weights=self.use_fp16,
            half_conditioner=self.use_fp16,
            offload_weights=self.offload,
            lora=self.lora,
            compile_model=self.compile_model,
            missing_hint=" (download it there, or pass model_path= / ckpt=)",
        )

    def _value_dict(
        self, params: SamplingParams, prompt: str, negative_prompt: Any, height: int, width: int
    ) -> dict[str, Any]:
        value_dict = asdict(params)
        value_dict.update(
            prompt=prompt, negative_prompt=negative_prompt, target_width=width, target_height=height
        )
        return value_dict

    # set to wrap every sampler's guider (guidance-parallel: sgm.inference.cfg_parallel)
    guider_wrapper: Callable[[Any], Any] | None = None

    def _sampler(self, params: SamplingParams, img2img: bool = False) -> Any:
        sampler = get_sampler_config(params)
        if self.guider_wrapper is not None:
            sampler.guider = self.guider_wrapper(sampler.guider)
        if img2img and params.img2img_strength < 1.0:
            sampler.discretization = Img2ImgDiscretizationWrapper(
                sampler.discretization, strength=params.img2img_strength
            )
        return sampler

    def _force_zero(self) -> list[str]:
        return [] if self.specs.is_legacy else ["txt"]

    @property
    def is_turbo(self) -> bool:
        """A distilled few-step model (no guidance): sampled by ``sgm.inference.turbo``."""
        return not self.specs.is_guided

    def text_to_image(
        self,
        params: SamplingParams,
        prompt: str,
        negative_prompt: str = "",
        samples: int = 1,
        return_latents: bool = False,
        seed: int | None = None,
        refiner_strength: float | None = None,
        callback: Callable[[dict], Any] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``samples`` images ``(N, 3, H, W)`` in [0, 1] for ``prompt``.

        ``callback`` gets the sampler's dictionary ``{"i", "sigma", "sigma_hat", "x",
        "denoised"}`` after each step (progress bars, previews).

        Turbo models take ``params.steps`` (1..4) unguided steps and ignore the sampler
        settings. ``refiner_strength`` stops the sampling at the noise level where a
        refiner with that ``img2img_strength`` and as many steps starts
        (``Txt2NoisyDiscretizationWrapper``): hand the latents (``return_latents``) to
        :meth:`refiner` with ``add_noise=False``, or use :func:`text_to_image_refined`.
        """
        self._check(params)
        if self.is_turbo:
            from .turbo import sample_turbo

            if refiner_strength is not None:
                raise InputError("Turbo models do not hand off to a refiner")
            return sample_turbo(
                self.model,
                prompt,
                params.steps,
                params.height,
                params.width,
                _turbo_seed(seed),
                samples,
                self.specs.channels,
                self.specs.factor,
                return_latents=return_latents,
                callback=callback,
            )
        sampler = self._sampler(params)
        if refiner_strength is not None:
            sampler.discretization = Txt2NoisyDiscretizationWrapper(
                sampler.discretization,
                strength=refiner_strength,
                original_steps=params.steps,
            )
        value_dict = self._value_dict(params, prompt, negative_prompt, params.height, params.width)
        return do_sample(
            self.model,
            sampler,
            value_dict,
            samples,
            params.height,
            params.width,
            self.specs.channels,
            self.specs.factor,
            force_uc_zero_embeddings=self._force_zero(),
            return_latents=return_latents,
            seed=seed,
            callback=callback,
            deepcache=deepcache_of(params),
            tome=tome_of(params),
            tgate=tgate_of(params),
        )

    def _check(
        self, params: SamplingParams, image: torch.Tensor | None = None, sized: bool = True
    ) -> None:
        """``InputError`` for bad ``params`` (``sized``: their width and height are the
        output's) or an ``image`` whose sides do not fit the model, before any sampling."""
        multiple = size_multiple(self.model, self.specs.factor)
        check_sampling_params(params, multiple if sized else self.specs.factor)
        if image is not None:
            check_image_size(image, multiple)

    @staticmethod
    def _batch_of(image: torch.Tensor, samples: int) -> torch.Tensor:
        if image.ndim == 3:
            image = image[None]
        if image.ndim != 4 or image.shape[0] not in (1, samples):
            raise InputError(
                f"image must be (3, H, W), (1, 3, H, W) or ({samples}, C, H, W); "
                f"got {tuple(image.shape)}"
            )
        return image.expand(samples, *image.shape[1:])

    def image_to_image(
        self,
        params: SamplingParams,
        image: torch.Tensor,
        prompt: str,
        negative_prompt: str = "",
        samples: int = 1,
        return_latents: bool = False,
        seed: int | None = None,
        callback: Callable[[dict], Any] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Re-sample ``image`` (in [-1, 1]) from the lowest ``img2img_strength`` sigmas;
        ``callback`` as in :meth:`text_to_image`."""
        self._check(params, image, sized=False)
        image = self._batch_of(image, samples)
        height, width = image.shape[-2:]
        value_dict = self._value_dict(params, prompt, negative_prompt, height, width)
        return do_img2img(
            image,
            self.model,
            self._sampler(params, img2img=True),
            value_dict,
            samples,
            force_uc_zero_embeddings=self._force_zero(),
            return_latents=return_latents,
            seed=seed,
            callback=callback,
            deepcache=deepcache_of(params),
            tome=tome_of(params),
            tgate=tgate_of(params),
        )

    def refiner(
        self,
        params: SamplingParams,
        image: torch.Tensor,
        prompt: str,
        negative_prompt: str | None = None,
        samples: int = 1,
        return_latents: bool = False,
        seed: int | None = None,
        add_noise: bool = True,
        callback: Callable[[dict], Any] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Refine base-model latents ``image`` (aesthetic scores 6.0 / 2.5); ``callback``
        as in :meth:`text_to_image`.

        The refiner re-noises the latents to its first sigma (``params.img2img_strength``
        of the schedule), unless ``add_noise=False``: latents from a base stopped with
        ``refiner_strength`` already hold that noise.
        """
        self._check(params, sized=False)
        image = self._batch_of(image, samples)
        height, width = (int(s) * self.specs.factor for s in image.shape[-2:])
        value_dict = {
            "orig_width": width,
            "orig_height": height,
            "target_width": width,
            "target_height": height,
            "prompt": prompt,
            "negative_prompt": negative_prompt,
            "crop_coords_top": 0,
            "crop_coords_left": 0,
            "aesthetic_score": 6.0,
            "negative_aesthetic_score": 2.5,
        }
        return do_img2img(
            image,
            self.model,
            self._sampler(params, img2img=True),
            value_dict,
            samples,
            skip_encode=True,
            return_latents=return_latents,
            seed=seed,
            add_noise=add_noise,
            callback=callback,
            deepcache=deepcache_of(params),
            tome=tome_of(params),
            tgate=tgate_of(params),
        )


def _turbo_seed(seed: int | None) -> int:
    """Turbo noise comes from NumPy seeds; without one, draw it from torch's global stream
    (so ``torch.manual_seed`` still reproduces a run)."""
    if seed is not None:
        return int(seed)
    return int(torch.randint(0, 2**31 - 1, ()).item())


def text_to_image_refined(
    base: SamplingPipeline,
    refiner: SamplingPipeline,
    params: SamplingParams,
    prompt: str,
    negative_prompt: str = "",
    samples: int = 1,
    seed: int | None = None,
    refiner_strength: float = 0.15,
    refiner_params: SamplingParams | None = None,
    return_latents: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """SDXL's two-stage sampling: the base denoises down to the level where the refiner
    (``img2img_strength = refiner_strength``) starts, and the refiner finishes it.

    ``refiner_params`` (default: ``params``) sets the refiner's sampler; its number of
    steps should match the base's, or the two noise levels differ.
    """
    if not 0.0 < float(refiner_strength) <= 1.0:
        raise InputError(f"refiner strength must be in (0, 1], got {refiner_strength!r}")
    _, latents = base.text_to_image(
        params,
        prompt,
        negative_prompt,
        samples,
        return_latents=True,
        seed=seed,
        refiner_strength=refiner_strength,
    )
    second = replace(refiner_params or params, img2img_strength=refiner_strength)
    return refiner.refiner(
        second,
        latents,
        prompt,
        negative_prompt,
        samples,
        return_latents=return_latents,
        seed=seed,
        add_noise=False,
    )
