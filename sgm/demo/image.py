"""Text-to-image, image-to-image, refiner and Turbo requests of the image demo pages:
which file each model needs, checked requests, and the sampling calls (through
``sgm.inference.api.SamplingPipeline``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch

from .. import values
from ..errors import InputError
from ..inference.api import (
    SD_XL_BASE_RATIOS,
    Discretization,
    Guider,
    Sampler,
    SamplingParams,
    SamplingPipeline,
    SamplingSpec,
    infer_spec,
    model_specs,
    text_to_image_refined,
)
from ..inference.releases import configs_dir, get_release, releases
from .options import DemoOptions, ModelFiles, model_files

_IMAGE = [r for r in releases("image") if r.label]
# the pages' model names (from the release registry) -> ModelArchitecture
IMAGE_VERSIONS = {r.label: r.architecture for r in _IMAGE if not r.is_turbo}
TURBO_VERSIONS = {r.label: r.architecture for r in _IMAGE if r.is_turbo}
REFINER_FOR = {r.label: get_release(r.refiner).label for r in _IMAGE if r.refiner}
DEFAULT_PROMPT = "Astronaut in a jungle, cold color palette, muted colors, detailed, 8k"
TURBO_PROMPT = "A cinematic shot of a baby racoon wearing an intricate italian priest robe."
SDXL_SIZES = list(SD_XL_BASE_RATIOS.values())


@dataclass(frozen=True)
class ImageModel:
    """A model of the image pages: its files and sampling spec."""

    version: str
    files: ModelFiles
    spec: SamplingSpec


def released_config_dir() -> str:
    """The packaged ``configs/inference`` folder."""
    return str(configs_dir() / "inference")


def image_model(version: str, options: DemoOptions, selected: bool = True) -> ImageModel:
    """The files and spec of ``version`` (a key of IMAGE_VERSIONS or TURBO_VERSIONS).

    The latent factor is read from the config, so small local configs keep their own."""
    from omegaconf import OmegaConf

    from ..errors import ConfigError

    arch = {**IMAGE_VERSIONS, **TURBO_VERSIONS}.get(version)
    if arch is None:
        known = ", ".join([*IMAGE_VERSIONS, *TURBO_VERSIONS])
        raise InputError(f"unknown model version {version!r}; expected one of {known}")
    spec = model_specs[arch]
    files = model_files(version, spec.config, spec.ckpt, released_config_dir(), options, selected)
    try:
        factor = infer_spec(OmegaConf.load(files.config), files.ckpt).factor
    except Exception as error:  # a config that does not describe an image model
        raise ConfigError(f"{files.config}: not an image model config ({error})") from None
    return ImageModel(
        version, files, replace(spec, factor=factor, ckpt=str(files.ckpt), config=str(files.config))
    )


def load_pipeline(
    model: ImageModel, device: str = "auto", low_vram: bool = False
) -> SamplingPipeline:
    """Build ``model`` on ``device``; ``low_vram`` keeps its parts on the host between uses
    (and halves the network's weights on an accelerator)."""
    return SamplingPipeline(
        config=str(model.files.config),
        ckpt=model.files.ckpt,
        spec=model.spec,
        device=device,
        offload=low_vram,
    )


@dataclass
class ImageRequest:
    """What the page asks for; :func:`check_request` validates it before any sampling."""

    prompt: str = DEFAULT_PROMPT
    negative_prompt: str = ""
    width: int = 1024
    height: int = 1024
    steps: int = 50
    sampler: str = Sampler.EULER_EDM.value
    discretization: str = Discretization.LEGACY_DDPM.value
    guider: str = Guider.VANILLA.value
    scale: float = 5.0
    seed: int = 42
    num_samples: int = 1
    strength: float = 0.75
    sigma_min: float = 0.03
    sigma_max: float = 14.61
    rho: float = 3.0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = 999.0
    s_noise: float = 1.0
    eta: float = 1.0
    order: int = 4
    refiner_strength: float = 0.15
    finish_with_refiner: bool = True
    deepcache: int = 0
    tgate: int = 0
    tome: float = 0.0


def check_request(
    request: ImageRequest, image: Any = None, refiner: bool = False
) -> SamplingParams:
    """The ``SamplingParams`` of a valid request, else an ``InputError`` naming the field."""
    values.seed(request.seed)
    values.whole("number of samples", request.num_samples, 1)
    if not isinstance(request.prompt, str):
        raise InputError("prompt must be text")
    for name in ("width", "height", "steps", "order", "deepcache", "tgate"):
        values.whole(name, getattr(request, name), 0)
    for name in ("scale", "strength", "refiner_strength", "sigma_min", "sigma_max", "rho"):
        values.finite(name, getattr(request, name))
    for name in ("s_churn", "s_tmin", "s_tmax", "s_noise", "eta", "tome"):
        values.finite(name, getattr(request, name))
    if image is not None and not 0.0 < float(request.strength) <= 1.0:
        raise InputError(f"img2img strength must be in (0, 1], got {request.strength!r}")
    if refiner and not 0.0 < float(request.refiner_strength) <= 1.0:
        raise InputError(f"refiner strength must be in (0, 1], got {request.refiner_strength!r}")
    fields = (
        "width",
        "height",
        "steps",
        "sampler",
        "discretization",
        "guider",
        "scale",
        "sigma_min",
        "sigma_max",
        "rho",
        "s_churn",
        "s_tmin",
        "s_tmax",
        "s_noise",
        "eta",
        "order",
        "deepcache",
        "tgate",
        "tome",
    )
    if request.deepcache > 1 and request.tgate:
        raise InputError("DeepCache and T-GATE cannot be combined; choose one")
    if request.tgate and request.tgate > request.steps:
        raise InputError(f"T-GATE gate step {request.tgate} is beyond the {request.steps} steps")
    chosen = {name: getattr(request, name) for name in fields}
    if image is not None:
        chosen["img2img_strength"] = float(request.strength)
    return SamplingParams(**chosen, orig_width=request.width, orig_height=request.height)


def init_image_tensor(image: Any, device: Any = "cpu") -> torch.Tensor:
    """An uploaded image (file-like, path or PIL) as ``(1, 3, H, W)`` in [-1, 1], sides cut
    to multiples of 64; an unreadable file is an ``InputError``."""
    from PIL import Image

    from ..image_files import check_size, read_image
    from ..inference.helpers import get_input_image_tensor

    if image is None:
        raise InputError("img2img needs an input image: upload one first")
    if not isinstance(image, Image.Image):  # its header's size is checked before decoding
        image = read_image(image, f"input image {getattr(image, 'name', image)}").convert("RGB")
    check_size(*image.size, "input image")
    return get_input_image_tensor(image, device)


@contextlib.contextmanager
def seeded(seed: int, device: Any) -> Iterator[None]:
    """Seed the global generators (restored afterwards) for the draws a pipeline does not
    take from its own seeded generator (e.g. the first stage's posterior sample in img2img)."""
    device = torch.device(device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def generate(
    base: SamplingPipeline,
    request: ImageRequest,
    image: torch.Tensor | None = None,
    refiner: SamplingPipeline | None = None,
) -> dict[str, torch.Tensor]:
    """Sample a checked request; returns ``{"samples": (N, 3, H, W)}`` in [0, 1] and, with a
    refiner, the base's images as ``"base"``. Everything is checked before sampling."""
    params = check_request(request, image, refiner is not None)
    with seeded(request.seed, base.device):
        return _generate(base, request, params, image, refiner)


def _generate(
    base: SamplingPipeline,
    request: ImageRequest,
    params: SamplingParams,
    image: torch.Tensor | None,
    refiner: SamplingPipeline | None,
) -> dict[str, torch.Tensor]:
    negative = request.negative_prompt
    n, seed = int(request.num_samples), int(request.seed)
    if image is not None:
        if refiner is not None:
            raise InputError("the refiner follows text-to-image only; switch it off for img2img")
        samples = base.image_to_image(params, image, request.prompt, negative, n, seed=seed)
        return {"samples": samples}
    if refiner is None:
        return {"samples": base.text_to_image(params, request.prompt, negative, n, seed=seed)}
    refiner._check(replace(params, img2img_strength=float(request.refiner_strength)), sized=False)
    if request.finish_with_refiner:
        out = text_to_image_refined(
            base,
            refiner,
            params,
            request.prompt,
            negative,
            n,
            seed=seed,
            refiner_strength=float(request.refiner_strength),
        )
        return {"samples": out}
    first, latents = base.text_to_image(
        params, request.prompt, negative, n, return_latents=True, seed=seed
    )
    second = replace(params, img2img_strength=float(request.refiner_strength))
    out = refiner.refiner(second, latents, request.prompt, negative, n, seed=seed)
    return {"samples": out, "base": first}


def turbo_request(prompt: str, steps: int, seed: int, width: int, height: int) -> ImageRequest:
    """A Turbo request (1..4 steps, no guidance) checked before sampling."""
    from ..inference.turbo import check_turbo_steps

    check_turbo_steps(steps)
    request = ImageRequest(
        prompt=prompt,
        steps=int(steps),
        seed=int(seed),
        width=width,
        height=height,
        guider=Guider.IDENTITY.value,
    )
    check_request(request)
    return request


def to_pil(samples: torch.Tensor) -> list[Any]:
    """``(N, 3, H, W)`` in [0, 1] as PIL images."""
    from PIL import Image

    array = (samples.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).cpu().numpy()) for a in array]
