"""Text-to-image and image-to-image sampling with SD 2.1, SDXL (base, refiner) and Turbo.

    python scripts/sampling/simple_image_sample.py --version sdxl_base_1.0 \\
        --prompt "a lighthouse at dawn" --num_samples 2 --refiner

The command line is ``sgm.commands.sample_image`` (installed as ``sgm-sample-image``);
``--help`` lists every flag.
"""

import sys

from sgm.commands.sample_image import (  # noqa: F401  (the script's names)
    REFINERS,
    TURBO,
    VERSIONS,
    build_parser,
    main,
    sample,
    validate,
)

if __name__ == "__main__":
    sys.exit(main())
