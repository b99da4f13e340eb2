"""scripts/data/pack_shards.py: folders of images + captions or videos -> shards."""

import importlib.util
import tarfile
from pathlib import Path

import pytest
from finetune_tiny import image_bytes, video_bytes

from sgm.data._webdataset import build_loader

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "data" / "pack_shards.py"


@pytest.fixture(scope="module")
def pack():
    spec = importlib.util.spec_from_file_location("pack_shards", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _images(folder: Path) -> Path:
    (folder / "sub").mkdir(parents=True)
    for i, name in enumerate(["a", "b", "sub/c"]):
        (folder / f"{name}.png").write_bytes(image_bytes(i, (20, 30)))
        (folder / f"{name}.txt").write_text(f"caption {name}")
    (folder / "broken.jpg").write_bytes(b"not an image at all")
    (folder / "broken.txt").write_text("x")
    (folder / "nocaption.png").write_bytes(image_bytes(9, (8, 8)))
    return folder


def test_images_are_packed_unreadable_reported_and_skipped(pack, tmp_path, capsys):
    source = _images(tmp_path / "images")
    out = tmp_path / "shards"
    assert pack([str(source), str(out), "--max_samples_per_shard", "2", "--quiet"]) == 0
    printed = capsys.readouterr()
    assert "broken.jpg: unreadable" in printed.out + printed.err
    assert "nocaption.png: no caption file nocaption.txt" in printed.out + printed.err
    assert "wrote 3 samples into 2 shard(s)" in printed.out
    shards = sorted(out.glob("*.tar"))
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar"]
    assert not list(out.glob(".tmp*"))
    with tarfile.open(shards[0]) as tar:
        assert tar.getnames() == [
            "000000000.png",
            "000000000.json",
            "000000000.txt",
            "000000001.png",
            "000000001.json",
            "000000001.txt",
        ]
    mapper = {"target": "sgm.data.image_caption.ImageCaptionSample", "params": {"size": 8}}
    pipeline = {"urls": [str(out)], "decoders": ["pil"], "postprocessors": [mapper]}
    batch = next(iter(build_loader(pipeline, {"batch_size": 3})))
    assert batch["txt"] == ["caption a", "caption b", "caption sub/c"]
    assert batch["original_size_as_tuple"].tolist() == [[20, 30]] * 3


def test_existing_shards_are_never_replaced(pack, tmp_path, capsys):
    source = _images(tmp_path / "images")
    out = tmp_path / "shards"
    out.mkdir()
    (out / "shard-000000.tar").write_bytes(b"keep")
    assert pack([str(source), str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds shard-*.tar" in err
    assert (out / "shard-000000.tar").read_bytes() == b"keep"


def test_bad_input_exits_2_and_creates_nothing(pack, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "bad.png").write_bytes(b"zzz")
    (empty / "bad.txt").write_text("x")
    out = tmp_path / "never"
    assert pack([str(empty), str(out), "--quiet"]) == 2
    assert "no readable files" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit) as exit_info:
        pack([str(tmp_path / "missing"), str(out)])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        pack([str(empty), str(out), "--max_samples_per_shard", "0"])
    assert not out.exists()


def test_videos_are_packed_and_decode_as_clips(pack, tmp_path):
    source = tmp_path / "videos"
    source.mkdir()
    (source / "one.mp4").write_bytes(video_bytes(12, 24))
    (source / "two.mp4").write_bytes(video_bytes(12, 24, seed=1))
    (source / "bad.mp4").write_bytes(b"\x00" * 100)
    out = tmp_path / "shards"
    assert pack([str(source), str(out), "--videos", "--quiet"]) == 0
    mapper = {
        "target": "sgm.data.video_clips.VideoClipSample",
        "params": {"num_frames": 3, "fps": 12, "size": 8},
    }
    pipeline = {"urls": [str(out)], "decoders": ["pil"], "postprocessors": [mapper]}
    batch = next(iter(build_loader(pipeline, {"batch_size": 2})))
    assert batch["frames"].shape == (2, 3, 3, 8, 8)
