"""SV4D 2.0: novel-view videos of an object video (4 views, or 8 with the 8-view model).

    python scripts/sampling/simple_video_sample_4d2.py --input_path=video.mp4

The command line is ``sgm.commands.sample_4d2`` (installed as ``sgm-sample-4d2``);
``--help`` lists every flag.
"""

import sys

from sgm.commands.sample_4d2 import get_parser, main, sample  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
