"""Example inputs the command lines default to, shipped with the package.

``test_image.png`` (image-to-video) and ``sv4d_videos/test_video1.mp4``,
``sv4d_videos/camel.gif`` (SV4D, SV4D 2.0) are small pictures of simple shapes made by
``scripts/make_example_inputs.py`` (no third-party content; they stand in for the
original's example files under the same names). In the source checkout ``assets/`` links
here, so the original's relative default paths work from the repository root.
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent


def example_input(relative: str) -> str:
    """The default input ``relative`` (``"assets/<name>"``): as given when that path
    exists from the working folder (a checkout, or the user's own file), else the copy
    shipped in the package (when there is one)."""
    if Path(relative).exists():
        return relative
    shipped = FOLDER / Path(relative).relative_to("assets")
    return str(shipped) if shipped.exists() else relative
