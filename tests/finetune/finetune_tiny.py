"""Shards written by the tests, and the fine-tune configs at toy widths (same structure)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from builders import open_clip_arch, register_open_clip
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
FINETUNE = ROOT / "configs" / "example_training" / "finetune"
ARCH = "sgm-test-finetune-tiny"
# two text layers: SDXL and SD 2.1 read the penultimate one
ARCH_CONFIG = open_clip_arch(embed_dim=32, text_layers=2, vision_layers=1)
VAE = {
    "attn_type": "vanilla",
    "double_z": True,
    "z_channels": 4,
    "resolution": 16,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 32,
    "ch_mult": [1, 2],
    "num_res_blocks": 1,
    "attn_resolutions": [],
    "dropout": 0.0,
}
UNET = {
    "model_channels": 32,
    "channel_mult": [1, 2],
    "attention_resolutions": [2],
    "num_res_blocks": 1,
    "num_head_channels": 16,
    "transformer_depth": 1,
    "spatial_transformer_attn_type": "softmax",
}


def register_arch(folder: Path) -> None:
    register_open_clip(folder, {ARCH: ARCH_CONFIG})


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def image_bytes(seed: int, size: tuple[int, int]) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    base = rng.integers(0, 255, (1, 1, 3))
    ramp = np.linspace(0, 1, w)[None, :, None] * rng.integers(0, 255, (1, 1, 3))
    array = np.clip(base * 0.5 + ramp * 0.5 + np.zeros((h, w, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_image_shard(path: Path, sizes: list[tuple[int, int]], drop: str | None = None) -> Path:
    """A shard of ``png`` images with ``txt`` captions (``drop``: leave that field out)."""
    with tarfile.open(path, "w") as tar:
        for i, size in enumerate(sizes):
            key = f"{i:06d}"
            if drop != "png":
                _add(tar, f"{key}.png", image_bytes(i, size))
            if drop != "txt":
                _add(tar, f"{key}.txt", f"a picture number {i % 3}".encode())
    return path


def video_bytes(n_frames: int, fps: int, size: tuple[int, int] = (24, 32), seed: int = 0) -> bytes:
    """An mp4 whose frame k is filled with the gray level 8 * k (readable frame indices)."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "1"}
        for k in range(n_frames):
            array = np.full((*size, 3), min(8 * k + seed, 255), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def write_video_shard(
    path: Path, lengths: list[int], fps: int = 24, motion: list[int] | None = None
) -> Path:
    with tarfile.open(path, "w") as tar:
        for i, n in enumerate(lengths):
            _add(tar, f"{i:06d}.mp4", video_bytes(n, fps, seed=i))
            if motion is not None:
                _add(tar, f"{i:06d}.json", json.dumps({"motion_bucket_id": motion[i]}).encode())
    return path


def _data(cfg, shards: Path, batch_size: int) -> None:
    train = cfg.data.params.train
    train.datapipeline.urls = [str(shards)]
    train.datapipeline.pipeline_config = {
        "shardshuffle": False,
        "sample_shuffle": 0,
        "resampled": True,
        "seed": 0,
    }
    train.loader = {"batch_size": batch_size, "num_workers": 0}


def tiny_image_config(name: str, shards: Path, clip_dir: Path, size: int = 16):
    """``sd_2_1`` or ``sdxl_base`` at toy widths (no checkpoint): same structure."""
    cfg = OmegaConf.load(FINETUNE / f"{name}.yaml")
    params = cfg.model.params
    params.ckpt_path = None
    params.first_stage_config.params.ddconfig = VAE
    embedders = params.conditioner_config.params.emb_models
    context = 0
    for emb in embedders:
        if emb.target.endswith("FrozenCLIPEmbedder"):
            emb.params.version = str(clip_dir)
            emb.params.layer_idx = 1  # the penultimate of two layers, as 11 of 12
            context += 32
        elif "OpenCLIP" in emb.target:
            emb.params.arch = ARCH
            emb.params.version = None
            context += 64
    net = params.network_config.params
    net.update(UNET)
    net.context_dim = context
    if net.get("adm_in_channels") is not None:
        net.adm_in_channels = 32 + 6 * 256  # pooled text (embed_dim) + three size pairs
    cfg.data.params.train.datapipeline.postprocessors[0].params.size = size
    _data(cfg, shards, 2)
    return cfg


def tiny_video_config(shards: Path, num_frames: int = 3, size: int = 16):
    """``svd`` at toy widths: same embedders, clips of ``num_frames`` frames."""
    cfg = OmegaConf.load(FINETUNE / "svd.yaml")
    params = cfg.model.params
    params.ckpt_path = None
    encoder = params.first_stage_config.params
    encoder.encoder_config.params = VAE
    encoder.decoder_config.params = {**VAE, "video_kernel_size": [3, 1, 1]}
    for emb in params.conditioner_config.params.emb_models:
        if "n_copies" in emb.params:
            emb.params.n_copies = num_frames
        if emb.input_key == "cond_frames_without_noise":
            emb.params.open_clip_embedding_config.params.arch = ARCH
            emb.params.open_clip_embedding_config.params.version = None
        if emb.input_key == "cond_frames":
            emb.params.encoder_config.params.ddconfig = VAE
    net = params.network_config.params
    net.update(UNET)
    net.context_dim = 32
    net.adm_in_channels = 3 * 256
    net.use_checkpoint = True
    params.loss_fn_config.params.sigma_sampler_config.params.num_frames = num_frames
    params.sampler_config.params.guider_config.params.num_frames = num_frames
    mapper = cfg.data.params.train.datapipeline.postprocessors[0].params
    mapper.num_frames, mapper.size, mapper.fps = num_frames, size, 6
    _data(cfg, shards, 2)
    return cfg
