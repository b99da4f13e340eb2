"""ImageLogger schedule, grids, and atomic non-overwriting PNG writes."""

import numpy as np
import torch
from PIL import Image

from sgm.training.callbacks import ImageLogger
from sgm.training.images import make_grid, save_png, to_uint8


def test_log_schedule_doubles_then_follows_frequency():
    logger = ImageLogger(batch_frequency=8, max_images=4)
    assert [s for s in range(0, 25) if logger.check_frequency(s)] == [1, 2, 4, 8, 16, 24]
    fixed = ImageLogger(
        batch_frequency=8, max_images=4, increase_log_steps=False, log_first_step=True
    )
    assert [s for s in range(0, 25) if fixed.check_frequency(s)] == [0, 8, 16, 24]


def test_grid_layout():
    images = torch.arange(5, dtype=torch.float32).view(5, 1, 1, 1).expand(5, 1, 2, 3)
    grid = make_grid(images, nrow=2, padding=1, pad_value=-1.0)
    assert grid.shape == (3, 3 * 3 + 1, 2 * 4 + 1)
    # image k sits at row k // 2, column k % 2, after one pixel of padding
    for k in range(5):
        top, left = 1 + (k // 2) * 3, 1 + (k % 2) * 4
        assert torch.all(grid[:, top : top + 2, left : left + 3] == k)
    assert torch.all(grid[:, 7:9, 5:8] == -1.0)  # the empty sixth cell


def test_save_png_never_overwrites(tmp_path):
    array = to_uint8(torch.rand(3, 4, 5))
    first = save_png(array, tmp_path / "grid.png")
    second = save_png(array, tmp_path / "grid.png")
    assert first.name == "grid.png" and second.name == "grid-1.png"
    np.testing.assert_array_equal(np.asarray(Image.open(second)), array)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid-1.png", "grid.png"]
