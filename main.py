"""Train from YAML configs: ``python main.py --base a.yaml b.yaml key.path=value``.

``main.SetupCallback`` and ``main.ImageLogger`` (used by configs) live in
``sgm.training.callbacks``; the command line is ``sgm.training.cli``. The command line is
parsed and checked before torch or Lightning is imported.
"""

import sys

from sgm.training.cli import get_parser, main

_CALLBACKS = ("ImageLogger", "SetupCallback", "SignalCheckpoint")

__all__ = [*_CALLBACKS, "get_parser", "main"]


def __getattr__(name: str):
    if name in _CALLBACKS:
        from sgm.training import callbacks

        return getattr(callbacks, name)
    raise AttributeError(f"module 'main' has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(main())
