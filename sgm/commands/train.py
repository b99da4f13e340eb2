"""Train from YAML configs: ``sgm-train --base a.yaml b.yaml key.path=value`` (the
checkout's ``python main.py ...``).

The flags and their checks are ``sgm.training.cli``; they run before torch or Lightning
is imported.
"""

import sys

from ..training.cli import get_parser, main

__all__ = ["get_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
