"""Image-to-video sampling with SVD / SVD-XT / SV3D.

    python scripts/sampling/simple_video_sample.py --input_path=image.png --version=svd_xt

The command line is ``sgm.commands.sample_video`` (installed as ``sgm-sample-video``);
``--help`` lists every flag.
"""

import sys

from sgm.commands.sample_video import VERSIONS, get_parser, main, sample  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
