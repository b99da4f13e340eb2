"""Error types raised for bad user input: configs, checkpoints, data."""

from __future__ import annotations


class SgmError(Exception):
    """Base class of every error this library raises on purpose."""


class ConfigError(SgmError, ValueError):
    """A config names something that cannot be imported or built."""


class CheckpointError(SgmError, RuntimeError):
    """A checkpoint file is unreadable, refused, or does not match the model."""


class InputError(SgmError, ValueError):
    """An input (image, prompt, argument) is outside what the model accepts."""
