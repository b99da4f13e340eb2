"""Huge images: files whose header claims an enormous size (decompression bombs).

Every image read goes through ``sgm.image_files``, which checks the size a header claims
before anything is decoded: a single file is refused with one line naming it and the
size it claims; folders being packed or checked report such a file and skip it; a
training shard skips the sample with a warning naming it.

The files are made here cheaply: a valid PNG header (IHDR with its CRC) and a few bytes
of data claiming 60000 x 60000 pixels (Pillow itself refuses that size), a GIF whose
screen claims as much, and a real, decodable 1-bit PNG of 9000 x 9000 pixels (a few
kilobytes; below Pillow's own limit, above ours).
"""

from __future__ import annotations

import io
import math
import struct
import tarfile
import zlib
from pathlib import Path

import pytest
from cli_contract_support import IMAGE, SV4D, SV4D2, VIDEO, check_row, row_id
from PIL import Image

from sgm import image_files
from sgm.errors import InputError

HUGE = 60000  # per side: 3.6 billion pixels claimed
BIG = 9000  # per side: 81 million pixels, decodable (1-bit), above image_files.MAX_PIXELS


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` RGB pixels, with almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _chunk(b"IEND", b"")
    )


def big_png(width: int = BIG, height: int = BIG) -> bytes:
    """A complete, decodable 1-bit grayscale PNG (all black), a few kilobytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\0" * (1 + math.ceil(width / 8))
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row * 500) for _ in range(height // 500))
    data += packer.compress(row * (height % 500)) + packer.flush()
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")
    )


def gif_claiming(width: int, height: int) -> bytes:
    """A GIF whose logical screen claims ``width x height``, holding one 1x1 frame."""
    screen = struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    frame = b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return b"GIF89a" + screen + frame + b";"


def _good_png(path: Path, size=(64, 64), colour=(40, 90, 200)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


@pytest.fixture(scope="module")
def extra_materials(tmp_path_factory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("huge_images")
    (tmp / "bomb.png").write_bytes(png_claiming(HUGE, HUGE))
    (tmp / "big.png").write_bytes(big_png())
    (tmp / "bomb.gif").write_bytes(gif_claiming(HUGE, HUGE))
    frames = tmp / "bomb_frames"
    frames.mkdir()
    for i in (0, 2):
        _good_png(frames / f"{i:03d}.png")
    (frames / "001.png").write_bytes(png_claiming(HUGE, HUGE))
    return {
        "bomb_png": str(tmp / "bomb.png"),
        "big_png": str(tmp / "big.png"),
        "bomb_gif": str(tmp / "bomb.gif"),
        "bomb_frames": str(frames),
        "bomb_frame": str(frames / "001.png"),
    }


ROWS: list[tuple[str, str, list[str], str]] = [
    (VIDEO, "huge image", ["--input_path={bomb_png}"], "{bomb_png}"),
    (VIDEO, "huge image", ["--input_path={big_png}"], "{big_png}"),
    (VIDEO, "huge image", ["--input_path={bomb_frames}"], "{bomb_frame}"),
    (SV4D, "huge image", ["--input_path={bomb_frames}"], "{bomb_frame}"),
    (SV4D, "huge image", ["--input_path={bomb_gif}"], "{bomb_gif}"),
    (SV4D2, "huge image", ["--input_path={bomb_frames}"], "{bomb_frame}"),
    (SV4D2, "huge image", ["--input_path={bomb_gif}"], "{bomb_gif}"),
    (IMAGE, "huge image", ["--init_image={bomb_png}"], "{bomb_png}"),
    (IMAGE, "huge image", ["--init_image={big_png}"], "{big_png}"),
]


@pytest.mark.parametrize("row", ROWS, ids=[row_id(r) for r in ROWS])
def test_huge_image_is_refused_with_one_line(row, materials, tmp_path):
    check_row(row, materials, tmp_path / "cwd")


# --------------------------------------------------------------------------- the reader


def test_reader_refuses_claimed_sizes_above_the_limit_naming_file_and_size(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(HUGE, HUGE))
    big = tmp_path / "big.png"
    big.write_bytes(big_png())
    gif = tmp_path / "bomb.gif"
    gif.write_bytes(gif_claiming(HUGE, HUGE))
    for path, side in ((bomb, HUGE), (big, BIG), (gif, HUGE)):
        for read in (image_files.read_image, image_files.check_image_file):
            with pytest.raises(image_files.ImageTooLarge) as error:
                read(path)
            message = str(error.value)
            assert message.startswith(f"{path}: the header claims {side}x{side} pixels")
            assert "67,108,864" in message and "\n" not in message
    with pytest.raises(image_files.ImageTooLarge, match=r"^upload: the header claims 9000x9000"):
        image_files.read_image(big.read_bytes(), "upload")  # bytes are read the same way
    with pytest.raises(image_files.ImageTooLarge, match=r"^field: the header claims 60000x60000"):
        image_files.read_image(io.BytesIO(bomb.read_bytes()), "field")


def test_reader_limit_is_inclusive_and_adjustable():
    limit = image_files.MAX_PIXELS
    assert limit == 8192 * 8192
    image_files.check_size(8192, 8192, "x")  # exactly the limit: allowed
    with pytest.raises(image_files.ImageTooLarge, match=r"^x: the header claims 8193x8192"):
        image_files.check_size(8193, 8192, "x")
    image_files.check_size(100, 100, "x", max_pixels=10_000)
    with pytest.raises(InputError, match="101x100"):
        image_files.check_size(101, 100, "x", max_pixels=10_000)
    with pytest.raises(InputError, match=r"^clip: 21 frames of 4000x4000 pixels"):
        image_files.check_size(4000, 4000, "clip", frames=21)
    image_files.check_size(4000, 4000, "one frame")


def test_reader_leaves_normal_images_unchanged(tmp_path):
    for mode, size in (("RGB", (70, 100)), ("RGBA", (33, 17)), ("L", (8, 8)), ("P", (5, 9))):
        original = Image.effect_noise(size, 40).convert(mode)
        path = tmp_path / f"{mode}.png"
        original.save(path)
        read = image_files.read_image(path)
        assert read.mode == original.mode and read.size == original.size
        assert read.tobytes() == original.tobytes()
        assert image_files.check_image_file(path) == size
    (tmp_path / "notes.png").write_text("not an image\n")
    with pytest.raises(InputError, match=r"^notes: not a readable image"):
        image_files.read_image(tmp_path / "notes.png", "notes")


# --------------------------------------------------------------------------- frames, videos


def test_mp4_size_is_checked_before_any_frame_is_read(tmp_path, monkeypatch):
    import imageio_ffmpeg

    from sgm.inference import video_io

    requested = []

    def fake_frames(path, pix_fmt="rgb24"):
        yield {"size": (HUGE, HUGE), "fps": 25.0, "duration": 2.0}
        requested.append("frame")
        yield b"\0" * 12

    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\0" * 64)
    monkeypatch.setattr(imageio_ffmpeg, "read_frames", fake_frames)
    with pytest.raises(image_files.ImageTooLarge, match=rf"^{clip}: the header claims 60000x"):
        video_io.read_frames(clip, 21)
    assert requested == []


def test_frames_read_together_are_held_to_the_sequence_limit(tmp_path, monkeypatch):
    from sgm.inference import video_io

    for i in range(4):
        _good_png(tmp_path / f"{i:03d}.png")
    monkeypatch.setattr(image_files, "MAX_SEQUENCE_PIXELS", 64 * 64 * 3)
    assert len(video_io.read_frames(tmp_path, 3)) == 3
    with pytest.raises(InputError, match=rf"^{tmp_path}: 4 frames of 64x64 pixels"):
        video_io.read_frames(tmp_path, 21)


# --------------------------------------------------------------------------- folders


def test_pack_reports_and_skips_huge_images_and_packs_the_others(tmp_path, capsys):
    from sgm.commands.pack_shards import main

    source = tmp_path / "images"
    source.mkdir()
    for name in ("a", "c"):
        _good_png(source / f"{name}.png")
    (source / "b.png").write_bytes(png_claiming(HUGE, HUGE))
    (source / "d.png").write_bytes(big_png())
    for name in "abcd":
        (source / f"{name}.txt").write_text(f"caption {name}\n")
    assert main([str(source), str(tmp_path / "shards"), "--quiet"]) == 0
    printed = capsys.readouterr()
    out = printed.out + printed.err
    assert "Traceback" not in out
    assert f"{source / 'b.png'}: the header claims 60000x60000 pixels" in out
    assert f"{source / 'd.png'}: the header claims 9000x9000 pixels" in out
    assert "wrote 2 samples" in out and "skipped 2 file(s)" in out
    with tarfile.open(tmp_path / "shards" / "shard-000000.tar") as tar:
        paths = [m.name for m in tar.getmembers() if m.name.endswith(".png")]
    assert len(paths) == 2


def test_detect_reports_a_huge_image_as_unreadable_and_exits_1(tmp_path, capsys):
    from sgm.commands.detect import main

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(HUGE, HUGE))
    big = tmp_path / "big.png"
    big.write_bytes(big_png())
    assert main([str(tmp_path)]) == 1  # the documented status: some files unreadable
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err
    lines = printed.out.strip().splitlines()
    assert lines[0].startswith(f"{big}: unreadable (the header claims 9000x9000 pixels")
    assert lines[1].startswith(f"{bomb}: unreadable (the header claims 60000x60000 pixels")
    assert lines[-1].endswith("2 unreadable")


# --------------------------------------------------------------------------- demo uploads


def test_gradio_svd_upload_is_refused_naming_the_file(tmp_path):
    from sgm.demo.gradio_svd import SvdApp
    from sgm.demo.options import DemoOptions

    bomb = tmp_path / "upload.png"
    bomb.write_bytes(png_claiming(HUGE, HUGE))
    (tmp_path / "svd_xt_1_1.safetensors").write_bytes(b"")  # present: the upload is next
    app = SvdApp(DemoOptions(checkpoints=tmp_path), width=64, height=64, frames=3, steps=2)
    assert app.problem is None
    for handle in (app.resize, lambda image: app.sample(image, 1, False)):
        with pytest.raises(InputError, match=r"upload\.png: the header claims 60000x60000"):
            handle(str(bomb))
    assert app.model is None


def test_gradio_sv4d_upload_is_refused_naming_the_file(tmp_path):
    from sgm.demo.gradio_sv4d import Sv4dApp
    from sgm.demo.options import DemoOptions

    gif = tmp_path / "upload.gif"
    gif.write_bytes(gif_claiming(HUGE, HUGE))
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    app = Sv4dApp(DemoOptions(checkpoints=checkpoints), img_size=64)
    for files in (app.sv4d_files, app.sv3d_files):
        files.ckpt.write_bytes(b"")
    assert app.problem is None
    with pytest.raises(InputError, match=r"upload\.gif: the header claims 60000x60000"):
        app.sample(str(gif))
    assert app.models == {}


# --------------------------------------------------------------------------- training data


def _shard(path: Path, images: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for key, data in images.items():
            for ext, member in (("png", data), ("txt", f"caption {key}".encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(member)
                tar.addfile(info, io.BytesIO(member))
    return path


def test_training_shard_sample_with_a_huge_image_is_skipped_with_a_warning(tmp_path):
    from sgm.data.dataset import StableDataModuleFromConfig

    good = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(good, format="PNG")
    shard = _shard(
        tmp_path / "shard-000000.tar",
        {"s000": good.getvalue(), "s001": big_png(), "s002": good.getvalue()},
    )
    config = {
        "datapipeline": {
            "urls": [str(shard)],
            "decoders": ["pil"],
            "postprocessors": [
                {"target": "sgm.data.image_caption.ImageCaptionSample", "params": {"size": 16}}
            ],
        },
        "loader": {"batch_size": 4, "num_workers": 0},
    }
    with pytest.warns(UserWarning) as warned:
        batches = list(StableDataModuleFromConfig(train=config).train_dataloader())
    assert [key for batch in batches for key in batch["__key__"]] == ["s000", "s002"]
    messages = [str(w.message) for w in warned if "s001" in str(w.message)]
    assert len(messages) == 1, [str(w.message) for w in warned]
    assert str(shard) in messages[0] and "the header claims 9000x9000 pixels" in messages[0]


def test_image_caption_sample_refuses_undecoded_huge_image_naming_the_sample():
    from sgm.data.image_caption import ImageCaptionSample

    sample = {"__key__": "s001", "__url__": "shard-000000.tar", "png": big_png(), "txt": b"a"}
    with pytest.raises(InputError) as error:
        ImageCaptionSample(size=16)(sample)
    message = str(error.value)
    assert message.startswith("shard shard-000000.tar, sample 's001': field 'png': the header")
    assert "9000x9000" in message


def _mp4(frames: int, size: tuple[int, int] = (48, 64)) -> bytes:
    """A small mp4 (``size``: height, width) written with PyAV."""
    import av
    import numpy as np

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for k in range(frames):
            array = np.full((*size, 3), 8 * k, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def test_training_video_frame_size_is_checked_before_decoding(monkeypatch):
    pytest.importorskip("av")
    from sgm.data.video_clips import VideoClipSample

    sample = {"__key__": "clip7", "__url__": "videos-000000.tar", "mp4": _mp4(6)}
    monkeypatch.setattr(image_files, "MAX_PIXELS", 32 * 32)
    with pytest.raises(InputError) as error:
        VideoClipSample(num_frames=2, fps=8, size=16, seed=0)(dict(sample))
    message = str(error.value)
    assert message.startswith("shard videos-000000.tar, sample 'clip7': field 'mp4': ")
    assert "the header claims 64x48 pixels (3,072)" in message and "not decoded" in message
    assert "\n" not in message
    monkeypatch.setattr(image_files, "MAX_PIXELS", 64 * 48)  # the limit is inclusive
    clip = VideoClipSample(num_frames=2, fps=8, size=16, seed=0)(dict(sample))
    assert clip["frames"].shape[0] == 2


def test_training_video_frames_held_at_once_are_held_to_the_sequence_limit(monkeypatch):
    pytest.importorskip("av")
    from sgm.data.video_clips import VideoClipSample

    sample = {"__key__": "clip8", "__url__": "videos-000001.tar", "mp4": _mp4(6)}
    monkeypatch.setattr(image_files, "MAX_SEQUENCE_PIXELS", 64 * 48 * 3)
    clip = VideoClipSample(num_frames=3, fps=8, size=16, random_start=False, seed=0)
    assert clip(dict(sample))["frames"].shape[0] == 3
    with pytest.raises(InputError) as error:
        VideoClipSample(num_frames=4, fps=8, size=16, random_start=False, seed=0)(dict(sample))
    message = str(error.value)
    assert message.startswith("shard videos-000001.tar, sample 'clip8': field 'mp4': 4 frames")
    assert "64x48 pixels" in message
