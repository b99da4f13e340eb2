"""The former name of :mod:`sgm.inference.sv4d_job` (the SV4D command lines' flags are in
:mod:`sgm.commands.sv4d_args`). Importing it gives that module itself, so a name set on
one is seen through the other."""

import sys

from . import sv4d_job

sys.modules[__name__] = sv4d_job
