"""The state a sampling speed-up keeps for one run (DeepCache's features, T-GATE's
attention outputs, token merging's settings), held in a context variable: runs in other
threads neither see nor disturb it, and it is dropped when the run's block ends."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

Run = TypeVar("Run")


class RunScope(Generic[Run]):
    """``enabled(options)`` puts ``make(options)`` in effect for a block (options None, or
    ``make`` returning None: off) and calls ``clear(run)`` on leaving it; ``active()`` is
    the run in effect, if any."""

    def __init__(
        self,
        name: str,
        make: Callable[[Any], Run | None],
        clear: Callable[[Run], None] | None = None,
    ) -> None:
        self._var: contextvars.ContextVar[Run | None] = contextvars.ContextVar(name, default=None)
        self._make, self._clear = make, clear

    @contextlib.contextmanager
    def enabled(self, options: Any) -> Iterator[None]:
        run = None if options is None else self._make(options)
        token = self._var.set(run)
        try:
            yield
        finally:
            self._var.reset(token)
            if run is not None and self._clear is not None:
                self._clear(run)

    def active(self) -> Run | None:
        return self._var.get()
