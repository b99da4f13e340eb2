"""Fine-tune data: image–caption and video-clip samples from shards the tests write."""

import io
import tarfile

import numpy as np
import pytest
import torch
from finetune_tiny import image_bytes, write_image_shard, write_video_shard
from PIL import Image

from sgm.data._webdataset import build_loader
from sgm.data.image_caption import ImageCaptionSample
from sgm.data.video_clips import FlattenVideoBatch, PerClipSigmaSampling, VideoClipSample
from sgm.errors import InputError


def _pipeline(urls, mapper, batch_postprocessors=()):
    return {
        "urls": [str(u) for u in urls],
        "decoders": ["pil"],
        "postprocessors": [mapper],
        "batch_postprocessors": list(batch_postprocessors),
    }


def test_sdxl_size_and_crop_conditioning_follow_the_image_and_the_crop(tmp_path):
    shard = write_image_shard(tmp_path / "a.tar", [(40, 64), (64, 32), (16, 16)])
    mapper = {
        "target": "sgm.data.image_caption.ImageCaptionSample",
        "params": {"size": 16, "seed": 0},
    }
    batch = next(iter(build_loader(_pipeline([shard], mapper), {"batch_size": 3})))
    assert batch["jpg"].shape == (3, 3, 16, 16)
    assert -1.0 <= batch["jpg"].min() and batch["jpg"].max() <= 1.0
    assert batch["txt"] == ["a picture number 0", "a picture number 1", "a picture number 2"]
    assert batch["original_size_as_tuple"].tolist() == [[40, 64], [64, 32], [16, 16]]
    assert batch["target_size_as_tuple"].tolist() == [[16, 16]] * 3
    # 40x64 -> 16x26 (shorter side to 16): the crop moves along the width only
    (top0, left0), (top1, left1), (top2, left2) = batch["crop_coords_top_left"].tolist()
    assert top0 == 0 and 0 <= left0 <= 26 - 16
    assert left1 == 0 and 0 <= top1 <= 32 - 16
    assert (top2, left2) == (0, 0)


def test_crop_coordinates_locate_the_crop_in_the_resized_image(tmp_path):
    image = Image.open(io.BytesIO(image_bytes(3, (20, 60))))
    sample = {"png": image, "txt": "x", "__key__": "k", "__url__": "u"}
    array = np.asarray(image.convert("RGB").resize((48, 16), Image.BICUBIC), dtype=np.float32)
    resized = torch.from_numpy(array.copy()).permute(2, 0, 1) / 127.5 - 1
    for seed in range(4):
        out = ImageCaptionSample(size=16, seed=seed)(dict(sample))
        top, left = out["crop_coords_top_left"]
        assert torch.allclose(out["jpg"], resized[:, top : top + 16, left : left + 16], atol=1e-6)
    centred = ImageCaptionSample(size=16, random_crop=False)(dict(sample))
    assert centred["crop_coords_top_left"] == [0, 16]


@pytest.mark.parametrize("field", ["txt", "png"])
def test_missing_field_names_shard_sample_and_field(tmp_path, field):
    shard = write_image_shard(tmp_path / "broken.tar", [(16, 16)], drop=field)
    mapper = {"target": "sgm.data.image_caption.ImageCaptionSample", "params": {"size": 16}}
    expected = "txt" if field == "txt" else "jpg/jpeg/png/webp"
    with pytest.raises(
        InputError,
        match=rf"broken\.tar, sample '000000': missing field "
        rf"'{expected}'",
    ):
        next(iter(build_loader(_pipeline([shard], mapper), {"batch_size": 1})))


def test_video_clips_sample_frames_at_the_target_fps(tmp_path):
    shard = write_video_shard(tmp_path / "v.tar", [30, 30], fps=24, motion=[20, 200])
    mapper = {
        "target": "sgm.data.video_clips.VideoClipSample",
        "params": {
            "num_frames": 4,
            "fps": 8,
            "size": 16,
            "seed": 1,
            "random_start": False,
            "cond_aug": 0.0,
        },
    }
    flatten = {"target": "sgm.data.video_clips.FlattenVideoBatch"}
    batch = next(iter(build_loader(_pipeline([shard], mapper, [flatten]), {"batch_size": 2})))
    assert batch["frames"].shape == (8, 3, 16, 16)
    # 24 fps source, 8 fps clip: every third frame; frame k was painted 8 * k (+ clip index)
    levels = (batch["frames"][:4].mean(dim=(1, 2, 3)) + 1) * 127.5
    assert torch.allclose(levels, torch.tensor([0.0, 24.0, 48.0, 72.0]), atol=3.0)
    assert batch["fps_id"].tolist() == [7] * 8
    assert batch["motion_bucket_id"].tolist() == [20] * 4 + [200] * 4
    assert batch["num_video_frames"] == 4
    assert batch["image_only_indicator"].shape == (2, 4)
    assert torch.equal(batch["cond_frames_without_noise"][1], batch["frames"][4])
    assert torch.equal(batch["cond_frames"], batch["cond_frames_without_noise"])  # cond_aug 0


def test_cond_aug_is_per_clip_and_noises_the_conditioning_frame(tmp_path):
    shard = write_video_shard(tmp_path / "v.tar", [8])
    with tarfile.open(shard) as tar:
        sample = {"mp4": tar.extractfile("000000.mp4").read(), "__key__": "000000"}
    out = VideoClipSample(
        num_frames=2, fps=24, size=16, seed=0, cond_aug={"p_mean": -3.0, "p_std": 0.5}
    )(sample)
    noise = (out["cond_frames"] - out["cond_frames_without_noise"]) / out["cond_aug"]
    assert 0.0 < out["cond_aug"] < 1.0
    assert abs(noise.std().item() - 1.0) < 0.1


def test_video_shorter_than_the_clip_is_reported(tmp_path):
    shard = write_video_shard(tmp_path / "short.tar", [5], fps=24)
    mapper = {
        "target": "sgm.data.video_clips.VideoClipSample",
        "params": {"num_frames": 4, "fps": 8, "size": 16},
    }
    with pytest.raises(
        InputError,
        match=r"short\.tar, sample '000000': video has 5 frames at "
        r"24 fps, shorter than the clip \(4 frames at 8 fps "
        r"need 10\)",
    ):
        next(iter(build_loader(_pipeline([shard], mapper), {"batch_size": 1})))


def test_per_clip_sigmas_and_flatten():
    sampler = PerClipSigmaSampling(
        3, {"target": "sgm.modules.diffusionmodules.sigma_sampling.EDMSampling"}
    )
    sigmas = sampler(6)
    assert sigmas[0] == sigmas[1] == sigmas[2] and sigmas[3] == sigmas[5]
    assert sigmas[0] != sigmas[3]
    with pytest.raises(InputError):
        sampler(4)
    with pytest.raises(InputError, match=r"\(B, T, C, H, W\)"):
        FlattenVideoBatch()(
            {
                "frames": torch.zeros(2, 3, 4, 4),
                "fps_id": [1, 2],
                "motion_bucket_id": [1, 2],
                "cond_aug": [0.0, 0.0],
            }
        )


def test_video_shard_without_a_video_names_the_field(tmp_path):
    shard = tmp_path / "novideo.tar"
    with tarfile.open(shard, "w") as tar:
        data = b'{"motion_bucket_id": 3}'
        info = tarfile.TarInfo("000007.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    mapper = {"target": "sgm.data.video_clips.VideoClipSample", "params": {"num_frames": 2}}
    with pytest.raises(
        InputError,
        match=r"novideo\.tar, sample '000007': missing field "
        r"'mp4/webm/mkv/mov/avi' \(it has \['json'\]\)",
    ):
        next(iter(build_loader(_pipeline([shard], mapper), {"batch_size": 1})))


def test_random_clip_starts_stay_inside_the_video(tmp_path):
    shard = write_video_shard(tmp_path / "v.tar", [20], fps=24)
    with tarfile.open(shard) as tar:
        data = tar.extractfile("000000.mp4").read()
    starts = set()
    for seed in range(12):
        out = VideoClipSample(num_frames=3, fps=4, size=8, seed=seed, cond_aug=0.0)(
            {"mp4": data, "__key__": "k"}
        )
        levels = ((out["frames"].mean(dim=(1, 2, 3)) + 1) * 127.5 / 8).round().tolist()
        assert levels[1] - levels[0] == 6 and levels[2] - levels[1] == 6  # 24 -> 4 fps
        starts.add(levels[0])
    assert starts <= set(range(0, 20 - 12)) and len(starts) > 1
