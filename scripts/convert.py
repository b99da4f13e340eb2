"""Convert weights between sgm checkpoints and diffusers folders.

    python scripts/convert.py to_sgm path/to/diffusers_folder sd_xl_base.safetensors
    python scripts/convert.py to_diffusers checkpoints/sd_xl_base_1.0.safetensors \\
        --config configs/inference/sd_xl_base.yaml out/sdxl_diffusers

The command line is ``sgm.commands.convert`` (installed as ``sgm-convert``); ``--help``
lists every flag.
"""

import sys

from sgm.commands.convert import build_parser, convert, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
