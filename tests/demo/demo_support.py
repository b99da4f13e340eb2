"""Paths shared by the demo page tests."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "tests" / "inference") not in sys.path:  # tiny_image_models
    sys.path.insert(0, str(REPO / "tests" / "inference"))
