"""Pack a folder of images + captions (or videos) into webdataset shards for fine-tuning.

    python scripts/data/pack_shards.py my_images/ shards/            # a.jpg + a.txt, ...
    python scripts/data/pack_shards.py my_videos/ shards/ --videos   # clip.mp4 (+ clip.txt)

The command line is ``sgm.commands.pack_shards`` (installed as ``sgm-pack-shards``);
``--help`` lists every flag.
"""

import sys

from sgm.commands.pack_shards import build_parser, main, pack  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
