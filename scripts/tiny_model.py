"""Write tiny random-weight models of the releases, to try every command line without weights.

    python scripts/tiny_model.py --release sdxl_base_1.0 --out tiny/
    python scripts/tiny_model.py --release all --out tiny/

See ``sgm.commands.tiny``.
"""

import sys

from sgm.commands.tiny import main

if __name__ == "__main__":
    sys.exit(main())
