"""Cache a training config's latents and frozen-embedder outputs as shards (train without
building the VAE or the frozen encoders).

    python scripts/data/cache_conditioning.py --base configs/example_training/finetune/sdxl_base.yaml \
        --output cache/ data.params.train.datapipeline.urls=[shards/]

The command line is ``sgm.commands.cache_conditioning``; ``--help`` lists every flag.
"""

import sys

from sgm.commands.cache_conditioning import main

if __name__ == "__main__":
    sys.exit(main())
