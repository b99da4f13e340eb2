"""One sampling run of a ``DiffusionEngine``: condition a batch, denoise with a sampler,
decode the latents.

:class:`EngineRun` is the one place where the conditioner, the denoiser, a sampler and the
first stage meet. Every way of sampling goes through it: text-to-image, img2img, the
refiner hand-off, Turbo, SVD / SV3D, SV4D's windows, ``DiffusionEngine.sample``, the
training image log and the toy evaluation::

    with EngineRun(engine, device, dtype, decoding_t=7) as run:
        c, uc = run.condition(batch, force_uc_zero=["cond_frames"], num=1)
        z = run.sample(sampler, noise, c, uc, denoiser=run.video_denoiser(14))
        frames = run.decode(z)

Inside the block: no autograd, autocast in the compute precision, the EMA weights (when
asked), the parts of an offloaded engine moved to the device while they run
(``sgm.offload``), and the first stage en-/decoding ``decoding_t`` / ``encoding_t``
samples at a time. Leaving the block puts the engine back as it was.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch

from .. import offload, precision
from ..devices import device_of
from ..errors import InputError
from ..modules import token_merging
from ..modules.diffusionmodules import deepcache as feature_reuse
from ..modules.diffusionmodules import tgate as attention_gate
from ..modules.diffusionmodules.deepcache import DeepCache
from ..modules.diffusionmodules.tgate import TGate
from ..modules.token_merging import TokenMerging

Cond = dict[str, Any]
Denoiser = Callable[..., torch.Tensor]
# conditioning keys whose rows are not one per sample (cross-attention context keeps its batch)
PER_SAMPLE_EXCEPT = ("crossattn",)


def engine_device(engine: torch.nn.Module) -> torch.device:
    """The device an engine runs on: its offloader's (``sgm.offload``) if it has one, else
    that of its first parameter or buffer (cpu if it has none)."""
    offloaded = offload.execution_device(engine)
    return offloaded if offloaded is not None else device_of(engine)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (as the first stage decodes them) to [0, 1], clamped."""
    return torch.clamp((images + 1.0) / 2.0, min=0.0, max=1.0)


class EngineRun:
    """Conditioning, denoising, sampling and first-stage coding of ``engine`` on ``device``.

    Args:
        engine: a ``DiffusionEngine`` (anything with ``conditioner``, ``denoiser``,
            ``model`` and ``encode_first_stage`` / ``decode_first_stage``).
        device: where the run computes (default: the engine's device).
        dtype: compute precision (``sgm.precision.parse_dtype`` names or a dtype; default:
            the engine's ``compute_dtype``, else the device's default).
        autocast: open autocast in ``dtype`` (False runs in the weights' precision).
        ema: sample with the EMA weights of an engine that keeps them.
        decoding_t: latents decoded at a time (default: the engine's setting).
        encoding_t: conditioning frames encoded at a time by the embedders that take the
            setting (default: theirs).
        deepcache: reuse the network's deep features between steps (``DeepCache``
            settings; None: every step runs the whole network).
        tome: merge tokens in the network's transformer blocks (``TokenMerging``
            settings; None: no merging).
        tgate: stop recomputing attention after a gate step (``TGate`` settings; None:
            every step computes it). Not with ``deepcache``.
    """

    def __init__(
        self,
        engine: Any,
        device: torch.device | str | None = None,
        dtype: str | torch.dtype | None = None,
        *,
        autocast: bool = True,
        ema: bool = True,
        decoding_t: int | None = None,
        encoding_t: int | None = None,
        deepcache: DeepCache | None = None,
        tome: TokenMerging | None = None,
        tgate: TGate | None = None,
    ) -> None:
        self.engine = engine
        self.device = torch.device(device) if device is not None else engine_device(engine)
        self.dtype = dtype if dtype is not None else getattr(engine, "compute_dtype", None)
        self.autocast = autocast
        self.ema = ema
        self.decoding_t = decoding_t
        self.encoding_t = encoding_t
        self.deepcache = deepcache
        self.tome = tome
        self.tgate = tgate
        if deepcache is not None and tgate is not None:
            raise InputError("DeepCache and T-GATE cannot be combined; choose one")
        network = getattr(getattr(engine, "model", None), "diffusion_model", None)
        for option in (deepcache, tome, tgate):
            if option is not None:
                option.check_network(network)
        self._stack: contextlib.ExitStack | None = None

    # ------------------------------------------------------------------ the block

    def __enter__(self) -> EngineRun:
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(torch.no_grad())
            if self.autocast:
                stack.enter_context(precision.autocast(self.device, self.dtype))
            if self.ema and hasattr(self.engine, "ema_scope"):
                stack.enter_context(self.engine.ema_scope())
            stack.enter_context(offload.released(self.engine))
            stack.enter_context(self.chunking())
            stack.enter_context(feature_reuse.enabled(self.deepcache))
            stack.enter_context(token_merging.enabled(self.tome))
            stack.enter_context(attention_gate.enabled(self.tgate))
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, *exc: Any) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.__exit__(*exc)

    def chunking(self) -> contextlib.AbstractContextManager[None]:
        """The run's ``decoding_t`` / ``encoding_t`` set on the engine and its embedders
        inside the block, restored after."""
        return _chunks(self.engine, self.decoding_t, self.encoding_t)

    # ------------------------------------------------------------------ conditioning

    def condition(
        self,
        batch: Mapping[str, Any],
        batch_uc: Mapping[str, Any] | None = None,
        force_uc_zero: Iterable[str] = (),
        num: int | None = None,
        per_sample_except: Iterable[str] = PER_SAMPLE_EXCEPT,
        repeat_per_frame: tuple[int, Iterable[str]] | None = None,
    ) -> tuple[Cond, Cond]:
        """The conditional and unconditional conditioning of ``batch``.

        ``batch_uc`` is the unconditional batch (default: the conditioner's own);
        ``force_uc_zero`` the embedders whose unconditional output is zeroed. With
        ``num``, every tensor except ``per_sample_except`` keeps its first ``num`` rows, on
        the run's device. ``repeat_per_frame=(T, keys)`` repeats each row of those keys
        ``T`` times (a video's frames share its conditioning).
        """
        c, uc = self.engine.conditioner.get_unconditional_conditioning(
            batch, batch_uc=batch_uc, force_uc_zero_embeddings=list(force_uc_zero)
        )
        if num is not None:
            skip = set(per_sample_except)
            for key in c:
                if key not in skip and torch.is_tensor(c[key]):
                    c[key], uc[key] = (y[key][:num].to(self.device) for y in (c, uc))
        if repeat_per_frame is not None:
            frames, keys = repeat_per_frame
            for cond in (c, uc):
                for key in keys:
                    if key in cond:
                        cond[key] = cond[key].repeat_interleave(frames, dim=0)
        return c, uc

    # ------------------------------------------------------------------ denoising

    def denoiser(self, **network_kwargs: Any) -> Denoiser:
        """``D(x, sigma, cond)`` of the engine; ``network_kwargs`` go to the network."""
        engine = self.engine

        def denoise(x: torch.Tensor, sigma: torch.Tensor, cond: Mapping) -> torch.Tensor:
            return engine.denoiser(engine.model, x, sigma, cond, **network_kwargs)

        return denoise

    def video_denoiser(self, num_frames: int, indicator: float = 0.0) -> Denoiser:
        """A video network's denoiser: ``num_frames`` frames a video and an image-only
        indicator of ``indicator`` per frame, for however many videos the guider batches."""
        engine = self.engine

        def denoise(x: torch.Tensor, sigma: torch.Tensor, cond: Mapping) -> torch.Tensor:
            rows = torch.full((x.shape[0] // num_frames, num_frames), indicator, device=x.device)
            return engine.denoiser(
                engine.model, x, sigma, cond, image_only_indicator=rows, num_video_frames=num_frames
            )

        return denoise

    def sample(
        self,
        sampler: Any,
        noise: torch.Tensor,
        c: Cond,
        uc: Cond | None = None,
        *,
        denoiser: Denoiser | None = None,
        generator: torch.Generator | None = None,
        callback: Callable[[dict], Any] | None = None,
        **sampler_kwargs: Any,
    ) -> torch.Tensor:
        """Latents from ``sampler`` started at ``noise`` (on the run's device); the
        denoiser defaults to :meth:`denoiser`. ``generator`` and ``callback`` reach samplers
        that take them; ``sampler_kwargs`` go to the sampler, except ``step_inputs``, which
        runs the sampler's ``sample_steps`` loop instead."""
        if self.tgate is not None:
            self.tgate.check_sampler(sampler, sampler_kwargs.get("num_steps"))
        kwargs = dict(sampler_kwargs)
        accepted = inspect.signature(sampler).parameters
        if generator is not None and "generator" in accepted:
            kwargs["generator"] = generator
        if callback is not None:
            kwargs["callback"] = callback
        x = noise.to(self.device)
        step_inputs = kwargs.pop("step_inputs", None)
        if step_inputs is not None:
            return sampler.sample_steps(step_inputs, x, cond=c, uc=uc, **kwargs)
        return sampler(denoiser or self.denoiser(), x, cond=c, uc=uc, **kwargs)

    # ------------------------------------------------------------------ first stage

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None):
        """Latents of ``images`` in [-1, 1]. With a ``generator``, the first stage's
        posterior sample comes from the global random generator forked and seeded from
        ``generator`` (which does not advance), so a seed gives the same latents and the
        caller's global random state is left as it was."""
        images = images.to(self.device)
        if generator is None:
            with self._first_stage():
                return self.engine.encode_first_stage(images)
        probe = torch.Generator(device=generator.device)
        probe.set_state(generator.get_state())
        seed = int(torch.randint(2**62, (1,), generator=probe, device=generator.device))
        on_host = images.device.type == "cpu"  # the global CPU generator is always forked
        with torch.random.fork_rng(
            devices=[] if on_host else [images.device], device_type=images.device.type
        ):
            torch.manual_seed(seed)
            with self._first_stage():
                return self.engine.encode_first_stage(images)

    def decode(self, latents: torch.Tensor, decoding_t: int | None = None) -> torch.Tensor:
        """Images in [-1, 1] (unclamped) from latents, ``decoding_t`` (default: the run's)
        at a time."""
        chunks = _chunks(self.engine, decoding_t, None)
        with self._first_stage(), chunks:
            return self.engine.decode_first_stage(latents)

    def _first_stage(self) -> contextlib.AbstractContextManager[None]:
        """A CPU run's first stage computes in float32 whatever the compute dtype."""
        if self.device.type == "cpu":
            return precision.float32(self.device)
        return contextlib.nullcontext()


@contextlib.contextmanager
def _chunks(engine: Any, decoding_t: int | None, encoding_t: int | None) -> Iterator[None]:
    settings: list[tuple[Any, int]] = []
    if decoding_t is not None:
        settings.append((engine, decoding_t))
    if encoding_t is not None:
        for embedder in getattr(engine.conditioner, "embedders", []):
            if hasattr(embedder, "en_and_decode_n_samples_a_time"):
                settings.append((embedder, encoding_t))
    saved = [owner.en_and_decode_n_samples_a_time for owner, _ in settings]
    try:
        for owner, value in settings:
            owner.en_and_decode_n_samples_a_time = value
        yield
    finally:
        for (owner, _), value in zip(settings, saved, strict=True):
            owner.en_and_decode_n_samples_a_time = value
