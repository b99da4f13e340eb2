"""Which step of a sampling run is running.

The samplers' loop marks each step (:func:`at`); networks that compute differently from
step to step (DeepCache's feature reuse) read it with :func:`current`. Outside a sampling
loop there is no current step. The mark lives in a context variable, so concurrent runs in
other threads do not see each other's steps.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_STEP: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "sgm_sampling_step", default=None
)


@contextlib.contextmanager
def at(index: int, num_steps: int) -> Iterator[None]:
    """Step ``index`` of ``num_steps`` runs inside the block."""
    token = _STEP.set((int(index), int(num_steps)))
    try:
        yield
    finally:
        _STEP.reset(token)


def current() -> tuple[int, int] | None:
    """``(index, num_steps)`` of the running step, or None outside a sampling loop."""
    return _STEP.get()
