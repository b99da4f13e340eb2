"""Look into adapter files, and bake adapters into a full checkpoint.

    python scripts/lora.py inspect style.safetensors
    python scripts/lora.py bake --config configs/inference/sd_xl_base.yaml \
        --ckpt checkpoints/sd_xl_base_1.0.safetensors --lora style.safetensors:0.8 out.safetensors

See ``sgm.commands.lora``.
"""

import sys

from sgm.commands.lora import main

if __name__ == "__main__":
    sys.exit(main())
