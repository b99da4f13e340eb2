"""The run manifest and the run loop in one process: records with sha256 (against hashlib),
part files merged in index order, a kill mid-write tolerated, a manifest from another run
refused naming the first differing parameter, resume making exactly the missing items,
unrecorded files never overwritten, --overwrite, webdataset shards read back with tarfile."""

from __future__ import annotations

import hashlib
import json
import tarfile

import pytest
import torch
from dist_runs import run_here

from sgm.errors import InputError
from sgm.inference.data_parallel import RunFailed, run_items
from sgm.inference.distributed import World
from sgm.inference.item_outputs import FolderOutput, png_bytes
from sgm.inference.manifest import Manifest, first_difference
from sgm.inference.work_items import Prompt, prompt_items


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_hash_the_files(tmp_path):
    report = run_here("random_images", folder=str(tmp_path), count=5)
    assert report == {"made": 5, "made_all": 5, "skipped": 0, "total": 5}
    records = _lines(tmp_path / "manifest.jsonl")
    assert [r["index"] for r in records] == list(range(5))
    for record in records:
        data = (tmp_path / record["file"]).read_bytes()
        assert record["sha256"] == hashlib.sha256(data).hexdigest()
        assert record["file"] == f"{record['index']:09d}.png"
        assert record["seed"] == 7 + record["index"] and record["prompt"] == f"p{record['index']}"
        assert record["params"] == {"kind": "random"}
    assert not list(tmp_path.glob("manifest.rank*"))  # parts merged away


def test_item_seed_is_the_global_seed(tmp_path):
    """Item k's image is torch.rand under seed 7 + k (the run seeds the global RNG)."""
    import numpy as np
    from PIL import Image

    run_here("random_images", folder=str(tmp_path), count=3)
    torch.manual_seed(9)
    expected = (torch.rand(3, 8, 8) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    with Image.open(tmp_path / "000000002.png") as image:
        assert np.array_equal(np.asarray(image), expected)


def test_rerun_skips_everything_and_remakes_a_changed_file(tmp_path):
    run_here("random_images", folder=str(tmp_path), count=4)
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.png")}
    assert run_here("random_images", folder=str(tmp_path), count=4)["skipped"] == 4
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.png")} == before
    good = (tmp_path / "000000002.png").read_bytes()
    (tmp_path / "000000002.png").write_bytes(b"damaged")
    (tmp_path / "000000003.png").unlink()
    report = run_here("random_images", folder=str(tmp_path), count=4)
    assert (report["made"], report["skipped"]) == (2, 2)
    assert (tmp_path / "000000002.png").read_bytes() == good
    assert len(_lines(tmp_path / "manifest.jsonl")) == 4


def test_changed_parameter_is_refused(tmp_path):
    run_here("random_images", folder=str(tmp_path), count=2, params={"steps": 2, "scale": 5.0})
    with pytest.raises(InputError) as error:
        run_here("random_images", folder=str(tmp_path), count=2, params={"steps": 2, "scale": 6})
    message = str(error.value)
    assert "scale=5.0" in message and "scale=6" in message and "--overwrite" in message
    assert "\n" not in message
    with pytest.raises(InputError, match="written with steps=<unset>|written with steps=2"):
        run_here("random_images", folder=str(tmp_path), count=2, params={"scale": 5.0})
    # another item at the same index (a changed prompts file or base seed)
    with pytest.raises(InputError, match="item 0 was made with seed=7, this run has seed=8"):
        run_here(
            "random_images",
            folder=str(tmp_path),
            count=2,
            seed=8,
            params={"steps": 2, "scale": 5.0},
        )
    with pytest.raises(InputError, match="records item 1, which this run does not have"):
        run_here("random_images", folder=str(tmp_path), count=1, params={"steps": 2, "scale": 5.0})


def test_overwrite_makes_everything_again(tmp_path):
    run_here("random_images", folder=str(tmp_path), count=2, params={"scale": 5.0})
    report = run_here(
        "random_images", folder=str(tmp_path), count=2, params={"scale": 6.0}, overwrite=True
    )
    assert report["made"] == 2
    assert {r["params"]["scale"] for r in _lines(tmp_path / "manifest.jsonl")} == {6.0}


def test_unrecorded_output_is_never_overwritten(tmp_path):
    (tmp_path / "000000001.png").write_bytes(b"someone else's")
    with pytest.raises(InputError, match="000000001.png exists but the manifest does not record"):
        run_here("random_images", folder=str(tmp_path), count=2)
    assert (tmp_path / "000000001.png").read_bytes() == b"someone else's"
    assert not (tmp_path / "000000000.png").exists()  # refused before any work


def test_unreadable_manifest_names_file_and_line(tmp_path):
    (tmp_path / "manifest.jsonl").write_text('{"index": 0}\nnot json\n')
    with pytest.raises(InputError, match=r"manifest\.jsonl, line 2: unreadable"):
        Manifest(tmp_path).read()


def test_part_cut_off_mid_write_drops_the_last_line(tmp_path):
    manifest = Manifest(tmp_path)
    manifest.append(3, [{"index": 4, "sha256": "a"}, {"index": 1, "sha256": "b"}])
    with open(manifest.part(3), "ab") as part:
        part.write(b'{"index": 9, "sha2')
    assert sorted(manifest.read()) == [1, 4]
    manifest.merge()
    assert [r["index"] for r in _lines(tmp_path / "manifest.jsonl")] == [1, 4]
    assert manifest.parts() == []


def test_first_difference_in_order():
    assert first_difference({"a": 1, "b": (1, 2)}, {"a": 1, "b": [1, 2]}) is None
    assert first_difference({"a": 1, "b": 2, "z": 0}, {"b": 3, "a": 2}) == "b"
    assert first_difference({"a": 1, "z": 0}, {"a": 1}) == "z"


def test_failing_item_is_reported_and_the_rest_kept(tmp_path):
    with pytest.raises(RunFailed) as error:
        run_here("random_images", folder=str(tmp_path), count=4, fail={"rank": 0, "after": 2})
    message = str(error.value)
    assert message.startswith("rank 0 failed: RuntimeError: injected failure at item 2")
    assert "2 of 4 items are not made" in message
    report = run_here("random_images", folder=str(tmp_path), count=4)
    assert (report["made"], report["skipped"]) == (2, 2)


def test_pairs_need_an_even_world(tmp_path):
    with pytest.raises(InputError, match="world size 3 is odd"):
        run_items([], None, None, FolderOutput(tmp_path, ".png"), {}, World(0, 3), pairs=True)


def test_webdataset_shards_resume(tmp_path):
    with pytest.raises(RunFailed):
        run_here(
            "random_images", folder=str(tmp_path), count=5, fmt="wds", fail={"rank": 0, "after": 3}
        )
    # a full shard of 2, then the item made before the failure flushed as a shard of its own
    shards = sorted(p.name for p in tmp_path.glob("*.tar"))
    assert shards == ["shard-r00000-000000.tar", "shard-r00000-000001.tar"]
    report = run_here("random_images", folder=str(tmp_path), count=5, fmt="wds")
    assert (report["made"], report["skipped"]) == (2, 3)
    shards = sorted(tmp_path.glob("*.tar"))
    assert [p.name for p in shards][-1] == "shard-r00000-000002.tar"
    members = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                members[member.name] = tar.extractfile(member).read()
    assert sorted(members) == [f"{i:09d}.{ext}" for i in range(5) for ext in ("json", "png")]
    fresh = tmp_path / "files"
    run_here("random_images", folder=str(fresh), count=5)
    for i in range(5):
        assert members[f"{i:09d}.png"] == (fresh / f"{i:09d}.png").read_bytes()
        meta = json.loads(members[f"{i:09d}.json"])
        assert (meta["index"], meta["seed"], meta["prompt"]) == (i, 7 + i, f"p{i}")
    records = _lines(tmp_path / "manifest.jsonl")
    assert [(r["index"], r["member"]) for r in records] == [(i, f"{i:09d}.png") for i in range(5)]


def test_png_bytes_carry_metadata():
    import io

    from PIL import Image

    data = png_bytes(torch.rand(3, 8, 8), {"prompt": "a fox", "seed": 3}, watermark=False)
    with Image.open(io.BytesIO(data)) as image:
        assert image.text == {"prompt": "a fox", "seed": "3"}
    with pytest.raises(InputError, match=r"expected a \(3, H, W\) image"):
        png_bytes(torch.rand(1, 3, 8, 8))


def test_prompt_items_record_every_field(tmp_path):
    items = prompt_items([Prompt("a", negative_prompt="b", width=64, height=32)], seed=1)
    assert items[0].describe() == {
        "index": 0,
        "seed": 1,
        "prompt": "a",
        "negative_prompt": "b",
        "width": 64,
        "height": 32,
        "sample": 0,
    }
