"""SV4D: eight novel-view videos of an object video (21 frames).

    python scripts/sampling/simple_video_sample_4d.py --input_path=video.mp4

The command line is ``sgm.commands.sample_4d`` (installed as ``sgm-sample-4d``);
``--help`` lists every flag.
"""

import sys

from sgm.commands.sample_4d import get_parser, main, sample  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
