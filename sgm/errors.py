"""Error types raised for bad user input: configs, checkpoints, data."""

from __future__ import annotations

from collections.abc import Sequence


class SgmError(Exception):
    """Base class of every error this library raises on purpose.

    ``details``: lines that back the message up (a per-prefix key report, ...); they
    follow the message in ``str(error)``, and command lines show the first few of them.
    """

    def __init__(self, *args: object, details: Sequence[str] = ()) -> None:
        super().__init__(*args)
        self.details = tuple(details)

    def __str__(self) -> str:
        text = super().__str__()
        return "\n".join((text, *self.details)) if self.details else text


class ConfigError(SgmError, ValueError):
    """A config names something that cannot be imported or built."""


class CheckpointError(SgmError, RuntimeError):
    """A checkpoint file is unreadable, refused, or does not match the model."""


class InputError(SgmError, ValueError):
    """An input (image, prompt, argument) is outside what the model accepts."""
