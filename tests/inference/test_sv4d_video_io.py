"""SV4D input videos: every container, ping-pong padding, the object-centred crop on white
against its geometry, and background removal refusing to download."""

from __future__ import annotations

import importlib.machinery
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from sgm.errors import InputError
from sgm.inference import video_io


def _frames(n: int = 6, size=(80, 60)) -> list[Image.Image]:
    """An orange box on white moving right by 2 pixels a frame."""
    out = []
    for i in range(n):
        frame = Image.new("RGB", size, "white")
        ImageDraw.Draw(frame).rectangle((20 + 2 * i, 15, 39 + 2 * i, 44), fill=(240, 120, 10))
        out.append(frame)
    return out


def test_gif_mp4_folder_and_glob_give_the_same_frames(tmp_path):
    from sgm.inference.video import save_video

    frames = _frames()
    frames[0].save(tmp_path / "clip.gif", save_all=True, append_images=frames[1:])
    stack = torch.stack([torch.from_numpy(np.array(f)).permute(2, 0, 1) for f in frames])
    save_video(stack.float() / 255, tmp_path / "clip.mp4", fps=10)
    (tmp_path / "frames").mkdir()
    for i, frame in enumerate(frames):
        frame.save(tmp_path / "frames" / f"{i:03d}.png")
    (tmp_path / "frames" / "readme.txt").write_text("not a frame")

    gif = video_io.read_frames(tmp_path / "clip.gif", 21)
    mp4 = video_io.read_frames(tmp_path / "clip.mp4", 4)
    folder = video_io.read_frames(tmp_path / "frames", 21)
    pattern = video_io.read_frames(str(tmp_path / "frames" / "00[0-2].png"), 21)
    assert [len(gif), len(mp4), len(folder), len(pattern)] == [6, 4, 6, 3]
    assert gif[0].mode == "RGBA" and folder[0].mode == "RGB"  # gifs read as RGBA
    for got in (gif, folder, pattern):
        for a, b in zip(got, frames):
            assert np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b))
    # H.264 is lossy: the box is still where it was
    error = np.abs(np.asarray(mp4[3], dtype=int) - np.asarray(frames[3], dtype=int))
    assert error.mean() < 4


def test_bad_inputs_name_the_culprit(tmp_path):
    (tmp_path / "bad.gif").write_bytes(b"GIF89a-truncated")
    (tmp_path / "empty").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    Image.new("RGB", (9, 8)).save(tmp_path / "b.png")
    cases = {
        tmp_path / "none.mp4": "not found",
        tmp_path / "bad.gif": "cannot decode",
        tmp_path / "empty": "holds no",
        tmp_path / "a.png": "not a .gif/.mp4 video",
        tmp_path / "*.jpg": "matches no files",
        tmp_path / "?.png": "differ in size",
    }
    for path, reason in cases.items():
        with pytest.raises(InputError, match=reason) as error:
            video_io.read_frames(str(path), 21)
        assert path.name in str(error.value)


def test_ping_pong_padding():
    assert video_io.ping_pong([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], 21) == (
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11] + [11, 10, 9, 8, 7, 6, 5, 4, 3]
    )
    assert video_io.ping_pong([0, 1, 2], 8) == [0, 1, 2, 2, 1, 0, 0, 1]
    assert video_io.ping_pong(list(range(30)), 21) == list(range(21))


@pytest.mark.parametrize("ratio", [0.917, 0.5])
def test_crop_centres_the_object_on_white(ratio):
    """A 20 x 30 box in an 80 x 60 frame, moving over 6 frames: the square holding it
    in every frame around the centre (40, 30) has half side max(40-20, 30-15, 50-40,
    45-30) = 20; padded to int(40 / ratio) and resized, the box spans
    (box extent) * size / side pixels around the centre."""
    size = 64
    out = video_io.preprocess_frames(_frames(), size, ratio)
    assert out.shape == (6, size, size, 3) and out.dtype == np.uint8
    side = int(40 / ratio)
    scale = size / side
    for t, frame in enumerate(out):
        mask = np.abs(frame.astype(int) - [240, 120, 10]).sum(-1) < 60
        rows, cols = np.nonzero(mask)
        # crop rows 10..50 (centre 30), cols 20..60 (centre 40) put at side//2 - 20
        offset = side // 2 - 20
        expected_top = (15 - 10 + offset) * scale
        expected_left = (20 + 2 * t - 20 + offset) * scale
        assert abs(rows.min() - expected_top) <= 1.5
        assert abs(cols.min() - expected_left) <= 1.5
        assert abs(rows.max() + 1 - (expected_top + 30 * scale)) <= 1.5
        assert abs(cols.max() + 1 - (expected_left + 20 * scale)) <= 1.5
    assert (out[:, 0, 0] == 255).all() and (out[:, -1, -1] == 255).all()


def test_transparent_background_crops_like_white():
    rgb = _frames()
    rgba = []
    for frame in rgb:
        alpha = (np.asarray(frame).mean(-1) <= 250).astype(np.uint8) * 255
        rgba.append(Image.fromarray(np.dstack([np.asarray(frame), alpha]), "RGBA"))
    a = video_io.preprocess_frames(rgb, 64, 0.9).astype(int)
    b = video_io.preprocess_frames(rgba, 64, 0.9).astype(int)
    # same square, same place; only the resampled edge pixels blend differently
    for x, y in zip(a, b):
        box_x = np.nonzero((255 - x).sum(-1) > 30)
        box_y = np.nonzero((255 - y).sum(-1) > 30)
        for ax_x, ax_y in zip(box_x, box_y):
            assert abs(ax_x.min() - ax_y.min()) <= 1 and abs(ax_x.max() - ax_y.max()) <= 1
    assert (np.abs(a - b).max(-1) > 2).mean() < 0.05


def test_frames_to_tensor_range():
    frames = np.array([[[[0, 255, 128]]]], dtype=np.uint8)
    tensor = video_io.frames_to_tensor(frames)
    assert tensor.shape == (1, 3, 1, 1)
    assert torch.allclose(tensor.flatten(), torch.tensor([-1.0, 1.0, 128 / 255 * 2 - 1]), atol=1e-6)


def test_background_removal_needs_rembg_and_a_local_model(tmp_path, monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "models"))
    monkeypatch.setitem(sys.modules, "rembg", None)  # not importable
    with pytest.raises(InputError, match="rembg package"):
        video_io.check_background_removal()

    calls = []
    fake = types.ModuleType("rembg")
    fake.__spec__ = importlib.machinery.ModuleSpec("rembg", None)

    def new_session(name):
        import os

        # rembg skips its download when the checksum check is off and the file is there
        calls.append(("session", name, os.environ.get("MODEL_CHECKSUM_DISABLED")))
        return "session"

    def remove(image, session=None, alpha_matting=False):
        calls.append(("remove", image.mode, session, alpha_matting))
        return image

    fake.new_session = new_session

    fake.remove = remove
    monkeypatch.setitem(sys.modules, "rembg", fake)
    with pytest.raises(InputError, match="u2net.onnx") as error:
        video_io.check_background_removal()
    assert str(tmp_path / "models") in str(error.value)
    assert calls == []

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "u2net.onnx").write_bytes(b"weights")
    monkeypatch.delenv("MODEL_CHECKSUM_DISABLED", raising=False)
    frames = [Image.new("RGB", (4, 4)), Image.new("RGBA", (4, 4))]
    out = video_io.remove_background(frames)
    assert calls == [("session", "u2net", "1"), ("remove", "RGBA", "session", True)]
    assert out[1] is frames[1]  # frames with alpha are kept
    import os

    assert "MODEL_CHECKSUM_DISABLED" not in os.environ
