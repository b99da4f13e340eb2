"""Former home of the legacy spatial/temporal blending helpers, now in
:mod:`sgm.modules.blending` (re-exported here for old imports)."""

from ..blending import (  # noqa: F401  (re-exported: original path)
    MERGE_STRATEGIES,
    get_alpha,
    init_merge,
    legacy_blend,
    register_mix_factor,
)
