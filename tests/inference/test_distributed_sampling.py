"""Sampling runs on two processes (gloo on CPU, started through torch.multiprocessing with
torchrun's variables): the same bytes as one process for images and videos, no item twice
or missing, a killed or failing rank named by every survivor and the rerun making exactly
what is missing, idle ranks, webdataset shards per rank, and guidance-parallel sampling
equal to the single-process samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import CONFIGS, save_state, tiny_image_config, wake_zero_weights
from dist_runs import launch, run_here

pytestmark = pytest.mark.slow  # every test starts processes that import torch (> 10 s each)

PROMPTS = ["a red fox", "a lighthouse", "a cat"]


def _files(folder: Path, pattern: str = "*.png") -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).glob(pattern))}


def _manifest(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (Path(folder) / "manifest.jsonl").read_text().splitlines()]


def _ok(results):
    assert all(r["ok"] for r in results), results
    return [r["report"] for r in results]


def test_two_ranks_make_the_bytes_of_one_and_idle_ranks_finish(tmp_path):
    run_here("random_images", folder=str(tmp_path / "one"), count=5)
    reports = _ok(
        launch("random_images", 2, tmp_path / "res", folder=str(tmp_path / "two"), count=5)
    )
    assert [r["made"] for r in reports] == [3, 2] and {r["made_all"] for r in reports} == {5}
    two = _files(tmp_path / "two")
    assert list(two) == [f"{i:09d}.png" for i in range(5)]
    assert two == _files(tmp_path / "one")
    assert [r["index"] for r in _manifest(tmp_path / "two")] == list(range(5))
    assert _manifest(tmp_path / "two") == _manifest(tmp_path / "one")
    # more ranks than items: the idle ranks finish cleanly
    reports = _ok(launch("random_images", 3, tmp_path / "res", folder=str(tmp_path / "3"), count=2))
    assert [r["made"] for r in reports] == [1, 1, 0]
    first_two = {f"{i:09d}.png" for i in range(2)}
    assert _files(tmp_path / "3") == {
        k: v for k, v in _files(tmp_path / "one").items() if k in first_two
    }


def test_killed_rank_is_named_and_the_rerun_makes_exactly_the_rest(tmp_path):
    folder = tmp_path / "run"
    results = launch(
        "random_images",
        2,
        tmp_path / "res",
        folder=str(folder),
        count=5,
        fail={"rank": 1, "after": 1, "hard": True},
        beat_s=0.1,
        dead_after_s=3.0,
    )
    assert results[1]["exitcode"] == 17 and results[1]["ok"] is None  # killed, wrote nothing
    assert results[0]["ok"] is False and results[0]["type"] == "RunFailed"
    assert results[0]["error"].startswith("rank 1 died")
    assert "1 of 5 items are not made" in results[0]["error"]
    made = _files(folder)
    assert sorted(made) == [f"{i:09d}.png" for i in (0, 1, 2, 4)]  # rank 0 finished its share
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")}
    reports = _ok(launch("random_images", 2, tmp_path / "res", folder=str(folder), count=5))
    assert {r["made_all"] for r in reports} == {1} and {r["skipped"] for r in reports} == {4}
    assert {
        p.name: p.stat().st_mtime_ns for p in folder.glob("*.png") if p.name in stamps
    } == stamps
    run_here("random_images", folder=str(tmp_path / "one"), count=5)
    assert _files(folder) == _files(tmp_path / "one")
    assert len(_manifest(folder)) == 5


def test_failing_rank_in_webdataset_run_and_resume_on_one_rank(tmp_path):
    import tarfile

    folder = tmp_path / "wds"
    results = launch(
        "random_images",
        2,
        tmp_path / "res",
        folder=str(folder),
        count=5,
        fmt="wds",
        fail={"rank": 1, "after": 1},
    )
    for result in results:
        assert result["ok"] is False
        assert result["error"].startswith(
            "rank 1 failed: RuntimeError: injected failure at item 3;"
        )
    names = sorted(p.name for p in folder.glob("*.tar"))
    assert names == [
        "shard-r00000-000000.tar",
        "shard-r00000-000001.tar",
        "shard-r00001-000000.tar",
    ]
    report = run_here("random_images", folder=str(folder), count=5, fmt="wds")  # world of one
    assert (report["made"], report["skipped"]) == (1, 4)
    members = {}
    for shard in folder.glob("*.tar"):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                assert member.name not in members  # no item twice
                members[member.name] = tar.extractfile(member).read()
    run_here("random_images", folder=str(tmp_path / "one"), count=5)
    assert {k: v for k, v in members.items() if k.endswith(".png")} == _files(tmp_path / "one")


# ---------------------------------------------------------------------------- tiny models


def _close_to_scale(reference: Path, paired: Path, count: int, tolerance: float) -> None:
    """Each sample within ``tolerance`` of the reference's scale (its largest magnitude)."""
    for index in range(count):
        expected = torch.load(reference / f"{index}.pt")
        actual = torch.load(paired / f"{index}.pt")
        assert expected.shape == actual.shape
        assert (expected - actual).abs().max() <= tolerance * expected.abs().max()


def _check_guidance_parallel(tmp_path: Path, scenario: str, count: int, **common) -> list:
    """A guidance-parallel pair's latents against one process's: within 1e-5 of the output
    scale of the single process whose network sees the guider's batch in the same two
    halves; within 1e-3 of the batched one (a half batch's float sums round apart, at the
    first step's noise scale: sigma_max 700 for SVD)."""
    for name in ("batched", "halves", "pair"):
        (tmp_path / name).mkdir()
    run_here(scenario, folder=str(tmp_path / "o1"), tensors=str(tmp_path / "batched"), **common)
    run_here(
        scenario,
        folder=str(tmp_path / "o2"),
        tensors=str(tmp_path / "halves"),
        halves=True,
        **common,
    )
    reports = _ok(
        launch(
            scenario,
            2,
            tmp_path / "res",
            folder=str(tmp_path / "cfg"),
            pairs=True,
            tensors=str(tmp_path / "pair"),
            **common,
        )
    )
    _close_to_scale(tmp_path / "halves", tmp_path / "pair", count, 1e-5)
    _close_to_scale(tmp_path / "batched", tmp_path / "pair", count, 1e-3)
    return reports


@pytest.fixture(scope="module")
def image_model(tiny_clip_dir, tmp_path_factory):
    """(config path, checkpoint path) of the tiny SDXL-like engine, every layer awake."""
    from omegaconf import OmegaConf

    from sgm.util import instantiate_from_config

    folder = tmp_path_factory.mktemp("dist_image")
    config = tiny_image_config("sdxl", tiny_clip_dir, name="inference_tiny")
    torch.manual_seed(0)
    engine = instantiate_from_config(config.model)
    wake_zero_weights(engine.model, std=0.02)
    OmegaConf.save(config, folder / "config.yaml")
    return str(folder / "config.yaml"), str(save_state(engine, folder / "tiny.safetensors"))


def test_images_on_two_ranks(image_model, tmp_path):
    config, ckpt = image_model
    common = dict(config=config, ckpt=ckpt, prompts=PROMPTS)
    run_here("images", folder=str(tmp_path / "one"), **common)
    _ok(launch("images", 2, tmp_path / "res", folder=str(tmp_path / "two"), **common))
    assert len(_files(tmp_path / "one")) == 3
    assert _files(tmp_path / "two") == _files(tmp_path / "one")


def test_images_guidance_parallel(image_model, tmp_path):
    config, ckpt = image_model
    common = dict(config=config, ckpt=ckpt, prompts=PROMPTS)
    reports = _check_guidance_parallel(tmp_path, "images", 3, **common)
    assert [r["made"] for r in reports] == [3, 0]  # the pair's first rank writes
    assert sorted(_files(tmp_path / "cfg")) == [f"{i:09d}.png" for i in range(3)]


def test_guidance_changes_the_tiny_image(image_model):
    """The guidance-parallel comparison is not vacuous: the two halves differ."""
    from sgm.inference.api import SamplingParams, SamplingPipeline

    pipeline = SamplingPipeline(config=image_model[0], ckpt=image_model[1], device="cpu")
    images = [
        pipeline.text_to_image(
            SamplingParams(width=16, height=16, steps=2, orig_width=16, orig_height=16, scale=s),
            PROMPTS[0],
            seed=11,
        )
        for s in (1.0, 3.0)
    ]
    assert (images[0] - images[1]).abs().max() > 1e-3


@pytest.fixture(scope="module")
def video_model(video_arch_dir, tmp_path_factory):
    from sgm.inference.video import load_video_model

    folder = tmp_path_factory.mktemp("dist_video")
    torch.manual_seed(0)
    model = load_video_model(CONFIGS / "video_tiny_svd.yaml", None, "cpu", 3, 2)
    wake_zero_weights(model.model, std=0.02)
    ckpt = save_state(model, folder / "tiny.safetensors")
    inputs = folder / "inputs"
    inputs.mkdir()
    from PIL import Image

    for i in range(3):
        pixels = np.random.RandomState(i).randint(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(inputs / f"view{i}.png")
    return dict(
        config=str(CONFIGS / "video_tiny_svd.yaml"),
        ckpt=str(ckpt),
        arch_dir=str(video_arch_dir),
        inputs=str(inputs),
    )


def test_videos_on_two_ranks(video_model, tmp_path):
    run_here("videos", folder=str(tmp_path / "one"), **video_model)
    _ok(launch("videos", 2, tmp_path / "res", folder=str(tmp_path / "two"), **video_model))
    one = _files(tmp_path / "one", "*.mp4")
    assert len(one) == 3 and _files(tmp_path / "two", "*.mp4") == one


def test_videos_guidance_parallel(video_model, tmp_path):
    """LinearPredictionGuider (per-frame scales) split over a pair."""
    _check_guidance_parallel(tmp_path, "videos", 3, **video_model)
    assert len(_files(tmp_path / "cfg", "*.mp4")) == 3
