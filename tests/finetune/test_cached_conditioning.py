"""Cached conditioning: the loss on a fixed batch from cached shards equals the loss from
the raw shards with the same random draws (the oracle: the raw path, which encodes and
embeds every step), the VAE and frozen encoders are not built, and a cache made with
another VAE, encoder or resolution is refused naming the mismatch."""

import pytest
import torch
from finetune_tiny import register_arch, tiny_image_config, write_image_shard
from omegaconf import OmegaConf

from sgm.data._webdataset import build_loader
from sgm.data.latent_cache import write_cache
from sgm.errors import ConfigError
from sgm.util import instantiate_from_config

CACHED_PIPELINE = {
    "decoders": ["pil"],
    "postprocessors": [{"target": "sgm.data.latent_cache.CachedSample"}],
    "batch_postprocessors": [{"target": "sgm.data.latent_cache.FlattenCached"}],
}


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory, tiny_clip_dir):
    register_arch(tmp_path_factory.mktemp("open_clip_arch"))
    return tiny_clip_dir


def _raw_setup(name, clip_dir, tmp_path, seed=0):
    shards = tmp_path / "shards"
    shards.mkdir(exist_ok=True)
    if not any(shards.iterdir()):
        write_image_shard(shards / "000000.tar", [(24, 40), (32, 16), (20, 20), (40, 24)])
    cfg = tiny_image_config(name, shards, clip_dir)
    # the crop positions repeat: the raw pass draws what the caching pass drew and stored
    cfg.data.params.train.datapipeline.postprocessors[0].params.seed = 0
    torch.manual_seed(seed)
    engine = instantiate_from_config(cfg.model, key="model")
    ckpt = tmp_path / f"{name}-{seed}.safetensors"
    if not ckpt.exists():
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in engine.state_dict().items()}, str(ckpt))
    cfg.model.params.ckpt_path = str(ckpt)
    return cfg, engine


def _items(cfg, batch_size):
    pipeline = OmegaConf.to_container(cfg.data.params.train.datapipeline, resolve=True)
    pipeline["pipeline_config"] = {"resampled": False, "shardshuffle": False}
    return build_loader(pipeline, {"batch_size": batch_size}, where="data")


def _cache(cfg, engine, folder):
    params = OmegaConf.to_container(cfg.model.params, resolve=True)
    return write_cache(engine, params, _items(cfg, 1), folder)


def _cached_engine(cfg, folder, size=16, **params):
    model = OmegaConf.to_container(cfg.model, resolve=True)
    model["target"] = "sgm.models.cached.DiffusionEngineFromCache"
    model["params"]["cache"] = {"path": str(folder), "size": size}
    model["params"].update(params)
    return instantiate_from_config(model, key="model")


def _cached_batch(folder, batch_size):
    pipeline = {**CACHED_PIPELINE, "urls": [str(folder)]}
    return next(iter(build_loader(pipeline, {"batch_size": batch_size})))


def _loss(engine, batch, seed):
    engine.eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        return engine.shared_step(dict(batch))[0]


def _assert_same_as_raw(engine, raw_batch, cached, cached_batch, seeds: int) -> None:
    """The loss for each of ``seeds`` seeds, and the conditioning itself (not only a loss
    that may hide it), equal from the raw and the cached batch."""
    for seed in range(seeds):
        expected = _loss(engine, raw_batch, seed)
        got = _loss(cached, cached_batch, seed)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    engine.eval(), cached.eval()
    with torch.no_grad():
        torch.manual_seed(0)
        raw_cond = engine.conditioner(dict(raw_batch))
        torch.manual_seed(0)
        cached_cond = cached.conditioner(dict(cached_batch))
    for key, value in raw_cond.items():
        torch.testing.assert_close(cached_cond[key], value, atol=1e-5, rtol=0, msg=key)


@pytest.mark.parametrize("name", ["sdxl_base", "sd_2_1"])
def test_loss_from_cached_shards_equals_the_loss_from_raw_shards(name, clip_dir, tmp_path):
    cfg, engine = _raw_setup(name, clip_dir, tmp_path)
    cfg.model.params.conditioner_config.params.emb_models[0].ucg_rate = 0.5  # draws too
    engine = instantiate_from_config(cfg.model, key="model")
    folder = _cache(cfg, engine, tmp_path / "cache")
    cached = _cached_engine(cfg, folder)
    assert cached.first_stage_model is None
    names = {n.split(".")[0] + "." + n.split(".")[1] for n, _ in cached.named_parameters()}
    assert not any(n.startswith("first_stage_model") for n in names)
    for index, emb in enumerate(cfg.model.params.conditioner_config.params.emb_models):
        built = cached.conditioner.embedders[index]
        assert (type(built).__name__ == "CachedEmbedding") == (not emb.get("is_trainable"))
    raw_batch = next(iter(_items(cfg, 3)))
    cached_batch = _cached_batch(folder, 3)
    _assert_same_as_raw(engine, raw_batch, cached, cached_batch, seeds=3)
    assert _loss(cached, cached_batch, 0) != _loss(cached, cached_batch, 1)  # draws matter


def test_cached_engine_trains(clip_dir, tmp_path):
    import pytorch_lightning as pl

    cfg, engine = _raw_setup("sdxl_base", clip_dir, tmp_path)
    folder = _cache(cfg, engine, tmp_path / "cache")
    cached = _cached_engine(cfg, folder, learning_rate=1e-3)
    pipeline = {**CACHED_PIPELINE, "urls": [str(folder)]}
    pipeline["pipeline_config"] = {"resampled": True, "seed": 0}
    loader = build_loader(pipeline, {"batch_size": 2})
    batch = _cached_batch(folder, 4)
    before = sum(_loss(cached, batch, s).item() for s in range(3))
    cached.train()
    pl.Trainer(
        max_steps=6,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(cached, loader)
    after = sum(_loss(cached, batch, s).item() for s in range(3))
    assert after < before


def test_a_cache_made_with_another_vae_encoder_or_resolution_is_refused(clip_dir, tmp_path):
    cfg, engine = _raw_setup("sdxl_base", clip_dir, tmp_path)
    folder = _cache(cfg, engine, tmp_path / "cache")
    with pytest.raises(ConfigError, match=r"made at resolution 16x16, this run trains at 24x24"):
        _cached_engine(cfg, folder, size=24)
    other = OmegaConf.merge(cfg, {})
    other.model.params.first_stage_config.params.ddconfig.ch = 16
    with pytest.raises(ConfigError, match=r"another first stage \(VAE\): its config differs"):
        _cached_engine(other, folder)
    other = OmegaConf.merge(cfg, {})
    other.model.params.conditioner_config.params.emb_models[1].params.layer = "last"
    with pytest.raises(ConfigError, match=r"another encoder for embedder 1 \(.*FrozenOpenCLIP"):
        _cached_engine(other, folder)
    other_cfg, _ = _raw_setup("sdxl_base", clip_dir, tmp_path, seed=1)  # other weights
    with pytest.raises(ConfigError, match=r"another first stage \(VAE\): .* other first_stage"):
        _cached_engine(other_cfg, folder)


def test_svd_loss_from_cached_shards_equals_the_loss_from_raw_shards(clip_dir, tmp_path):
    # SVD: the clip's frames become latents, the conditioning frame's CLIP embedding and
    # VAE latent (with its per-clip cond_aug noise, drawn once) are cached with it.
    from finetune_tiny import tiny_video_config, write_video_shard

    shards = tmp_path / "shards"
    shards.mkdir()
    write_video_shard(shards / "000000.tar", [6, 7, 5], fps=12, motion=[20, 90, 160])
    cfg = tiny_video_config(shards)
    # the clip mapper's draws (start frame, crop, cond_aug) repeat: the raw pass draws
    # what the caching pass drew and stored
    cfg.data.params.train.datapipeline.postprocessors[0].params.seed = 0
    torch.manual_seed(0)
    engine = instantiate_from_config(cfg.model, key="model")
    folder = _cache(cfg, engine, tmp_path / "cache")
    cached = _cached_engine(cfg, folder)
    assert cached.first_stage_model is None
    frozen = [type(e).__name__ for e in cached.conditioner.embedders]
    assert frozen.count("CachedEmbedding") >= 2, frozen  # CLIP image and VAE-latent embedders
    raw_batch = next(iter(_items(cfg, 2)))
    cached_batch = _cached_batch(folder, 2)
    assert cached_batch["num_video_frames"] == 3
    _assert_same_as_raw(engine, raw_batch, cached, cached_batch, seeds=2)
