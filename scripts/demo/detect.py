"""Check images for sgm's invisible watermark.

    python scripts/demo/detect.py outputs/ "samples/*.png" photo.jpg

The command line is ``sgm.commands.detect`` (installed as ``sgm-detect``); ``--help``
says what it prints and its exit statuses.
"""

import sys

from sgm.commands.detect import check_arguments, check_file, detect, expand, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
