"""T-GATE (Liu et al., 2024): stop recomputing attention once the image plan is settled.

Cross-attention output converges early in sampling. T-GATE splits the run at a *gate
step* ``g``:

- **semantics planning** (steps ``< g - 1``): classifier-free guidance as usual and
  cross-attention computed; self-attention computed for the ``warm_up`` first steps,
  kept at step ``warm_up`` and at every ``sp_interval``-th step after it, and reused on
  the steps between;
- **the gate** (step ``g - 1``): guidance as usual; every attention layer keeps its
  output, averaged over the unconditional and conditional halves of the batch;
- **fidelity improving** (steps ``>= g``): the network runs once per step, on the
  unconditional conditioning alone (no guidance: the kept cross-attention already
  carries the prompt); cross-attention hands back its kept output, self-attention is
  recomputed (and kept) on every ``fi_interval``-th step and reused between.

Steps count from 0 as in the ``tgate`` package's scheduler; a layer is cross-attention
when it is called with a context. Without guidance (``IdentityGuider``) there are no
halves: the gate keeps the outputs as they are and the single conditional pass goes on.
The step comes from the samplers' loop (``sgm.modules.sampling_step``); every network
call of a step (a Heun correction too) follows that step's plan, and a network called
outside a sampling loop computes everything. Nothing changes unless a run enables it::

    with tgate.enabled(TGate(gate_step=10)):
        samples = sampler(denoiser, noise, cond, uc)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from ...errors import InputError
from .. import sampling_step
from ..run_scope import RunScope
from .guiders import GUIDED_KEYS, IdentityGuider, VanillaCFG

Action = Literal["compute", "cache", "reuse"]


@dataclass(frozen=True)
class Plan:
    """What one step does: ``cross`` / ``self_attn`` say whether each kind of attention
    is computed, computed and kept, or reused (computed when nothing fits is kept);
    ``guidance``: the guided (doubled) batch runs; ``average``: kept outputs are the
    mean of the batch's unconditional and conditional halves."""

    cross: Action
    self_attn: Action
    guidance: bool = True
    average: bool = False


@dataclass(frozen=True)
class TGate:
    """T-GATE settings.

    Args:
        gate_step: the step count after which cross-attention is reused (1 .. the number
            of steps; the gate itself is step ``gate_step - 1``).
        sp_interval: before the gate, self-attention is recomputed every this many steps.
        fi_interval: after the gate, self-attention is recomputed every this many steps.
        warm_up: the first steps, which compute self-attention without keeping it.
    """

    gate_step: int
    sp_interval: int = 5
    fi_interval: int = 1
    warm_up: int = 2

    def __post_init__(self) -> None:
        for name in ("gate_step", "sp_interval", "fi_interval", "warm_up"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InputError(f"tgate {name} must be an integer, got {value!r}")
        for name in ("gate_step", "sp_interval", "fi_interval"):
            if getattr(self, name) < 1:
                raise InputError(f"tgate {name} must be at least 1, got {getattr(self, name)}")
        if self.warm_up < 0:
            raise InputError(f"tgate warm_up must be 0 or more, got {self.warm_up}")

    def plan(self, step: int) -> Plan:
        """The plan of step ``step`` (from 0)."""
        gate = self.gate_step - 1
        if step < gate:
            if step < self.warm_up:
                kept: Action = "compute"
            elif step == self.warm_up or step % self.sp_interval == 0:
                kept = "cache"
            else:
                kept = "reuse"
            return Plan("compute", kept)
        if step == gate:
            return Plan("cache", "cache", average=True)
        return Plan("reuse", "cache" if step % self.fi_interval == 0 else "reuse", False)

    def schedule(self, num_steps: int) -> tuple[Plan, ...]:
        """The plans of a run of ``num_steps`` steps."""
        self.check_steps(num_steps)
        return tuple(self.plan(i) for i in range(num_steps))

    def check_steps(self, num_steps: int) -> None:
        """``InputError`` unless the gate falls within ``num_steps`` steps."""
        if self.gate_step > num_steps:
            raise InputError(
                f"tgate gate step {self.gate_step} is beyond the {num_steps} sampling steps"
            )

    def check_guider(self, guider: Any) -> bool:
        """Whether ``guider`` guides (a ``VanillaCFG``); ``InputError`` for guiders T-GATE
        cannot split into unconditional and conditional halves."""
        if isinstance(guider, VanillaCFG):
            return True
        if isinstance(guider, IdentityGuider):
            return False
        raise InputError(
            f"tgate needs classifier-free guidance (VanillaCFG) or none; "
            f"the sampler's guider is {type(guider).__name__}"
        )

    def check_sampler(self, sampler: Any, num_steps: int | None = None) -> None:
        """The checks of a run of ``sampler`` (``num_steps``: default its own), before it
        starts: the gate within the steps and a guider T-GATE can take."""
        num_steps = sampler.num_steps if num_steps is None else num_steps
        if num_steps is not None:
            self.check_steps(int(num_steps))
        self.check_guider(sampler.guider)

    def check_network(self, network: Any) -> None:
        """``InputError`` unless ``network`` has cross-attention (a context to attend to
        and attention layers) and runs eagerly (a compiled forward traces the plain
        attention, which would leave the passes after the gate without the prompt)."""
        name = type(network).__name__
        if not any(_is_attention(m) for m in network.modules()):
            raise InputError(f"tgate needs cross-attention; {name} has no attention layers")
        if getattr(network, "context_dim", None) is None:
            raise InputError(f"tgate needs cross-attention; {name} takes no context")
        if _is_compiled(network.forward):
            raise InputError(f"tgate needs an eager network; {name}'s forward is compiled")


def _is_attention(module: torch.nn.Module) -> bool:
    return all(hasattr(module, n) for n in ("to_q", "to_k", "to_v", "to_out"))


def _is_compiled(forward: Any) -> bool:
    # torch.compile marks the function it returns; sgm's frozen forward holds one
    return any(
        hasattr(f, "_torchdynamo_orig_callable")
        for f in (forward, getattr(forward, "_compiled", None))
    )


@dataclass
class _Run:
    options: TGate
    kept: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    plan: Plan | None = None  # the plan of the network call in progress
    checked: set[int] = field(default_factory=set)


_SCOPE: RunScope[_Run] = RunScope("sgm_tgate", _Run, clear=lambda run: run.kept.clear())


def enabled(options: TGate | None) -> contextlib.AbstractContextManager[None]:
    """Sampling runs inside the block follow ``options`` (None: no gate). The kept
    attention outputs are dropped on leaving."""
    return _SCOPE.enabled(options)


def active() -> _Run | None:
    """The T-GATE run in effect, if any."""
    return _SCOPE.active()


def unconditional(cond: Mapping[str, Any], uc: Mapping[str, Any]) -> dict[str, Any]:
    """The unconditional half of the batch ``VanillaCFG`` builds: ``uc`` for the guided
    keys, ``cond`` for the rest."""
    return {k: uc[k] if k in GUIDED_KEYS else v for k, v in cond.items()}


def denoise(
    run: _Run,
    guider: Any,
    x: torch.Tensor,
    denoiser: Callable[..., torch.Tensor],
    sigma: torch.Tensor,
    cond: Mapping[str, Any],
    uc: Mapping[str, Any],
    **kwargs: Any,
) -> torch.Tensor:
    """A sampler's denoised estimate under T-GATE: guided up to the gate, then one
    unconditional pass; the attention layers follow the step's plan."""
    step = sampling_step.current()
    if step is None:
        return guider(denoiser(*guider.prepare_inputs(x, sigma, cond, uc), **kwargs), sigma)
    index, num_steps = step
    if num_steps not in run.checked:
        run.options.check_steps(num_steps)
        run.checked.add(num_steps)
    guided = run.options.check_guider(guider)
    plan = run.options.plan(index)
    if index == 0:  # a new run: nothing kept from an earlier one
        run.kept.clear()
    if not guided:
        plan = Plan(plan.cross, plan.self_attn)
    if not plan.guidance and not any(kind == "cross" for _, kind in run.kept):
        raise InputError(
            f"tgate kept no cross-attention at its gate (step {run.options.gate_step - 1}): "
            "the network has none or runs compiled"
        )
    run.plan = plan
    try:
        if plan.guidance:
            return guider(denoiser(*guider.prepare_inputs(x, sigma, cond, uc), **kwargs), sigma)
        return denoiser(x, sigma, unconditional(cond, uc), **kwargs)
    finally:
        run.plan = None


def attend(
    run: _Run,
    module: torch.nn.Module,
    x: torch.Tensor,
    context: torch.Tensor | None,
    compute: Callable[[], torch.Tensor],
) -> torch.Tensor:
    """An attention layer's output under the plan of the network call in progress:
    ``compute()``, also kept, or the kept output (``x``: the layer's input tokens)."""
    plan = run.plan
    if plan is None:
        return compute()
    kind = "self" if context is None else "cross"
    action = plan.self_attn if context is None else plan.cross
    key = (id(module), kind)
    if action == "reuse":
        kept = run.kept.get(key)
        if kept is not None and kept.shape == (*x.shape[:-1], module.to_out[0].out_features):
            return kept.clone()  # the transformer block adds its residual in place
        return compute()
    out = compute()
    if action == "cache":
        if plan.average:
            uncond, conditional = out.chunk(2)
            run.kept[key] = (uncond + conditional) / 2
        else:
            run.kept[key] = out.clone()
    return out
