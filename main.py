"""Train from YAML configs: ``python main.py --base a.yaml b.yaml key.path=value``.

``main.SetupCallback`` and ``main.ImageLogger`` (used by configs) live in
``sgm.training.callbacks``; the command line is ``sgm.training.cli``.
"""

import sys

import sgm  # noqa: F401  (must precede pytorch_lightning: installs the torchvision hook)
from sgm.training.callbacks import ImageLogger, SetupCallback, SignalCheckpoint
from sgm.training.cli import get_parser, main

__all__ = ["ImageLogger", "SetupCallback", "SignalCheckpoint", "get_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
