"""Cache a training config's latents and frozen-embedder outputs as shards.

    python scripts/data/cache_conditioning.py --base configs/example_training/finetune/sdxl_base.yaml \
        --output cache/ data.params.train.datapipeline.urls=[shards/]

Runs the config's first stage and every frozen embedder once over its training
datapipeline (each item once: no resampling, no shuffling) and writes
``cache/cache-000000.tar``, ... and ``cache/cache.json``. Train on them with
``model.target: sgm.models.cached.DiffusionEngineFromCache`` and
``model.params.cache: {path: cache/, size: [H, W]}`` and a datapipeline that reads the
cache (``sgm.data.latent_cache.CachedSample``, ``FlattenCached``); the VAE and the frozen
encoders are then neither built nor loaded.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import cli
from ..errors import ConfigError, InputError


def build_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--base",
        nargs="+",
        required=True,
        type=cli.existing_file,
        help="training config(s), merged left to right",
    )
    parser.add_argument(
        "--output",
        required=True,
        type=cli.output_folder,
        help="new (or empty) folder for the cache",
    )
    parser.add_argument(
        "--limit", type=cli.positive_int, default=None, help="cache at most this many items"
    )
    parser.add_argument(
        "--per_shard", type=cli.positive_int, default=1000, help="items per cache shard"
    )
    parser.add_argument(
        "--device", type=cli.device_arg, default="cpu", help="cpu, cuda, cuda:N or mps"
    )
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    return parser


def cache(args: argparse.Namespace) -> None:
    import itertools

    import torch
    from omegaconf import DictConfig, OmegaConf

    from ..config import load_configs
    from ..data._webdataset import build_loader
    from ..data.latent_cache import write_cache
    from ..util import instantiate_from_config

    config = load_configs(args.base, list(args.overrides))
    from ..checkpoint import check_config_checkpoints

    check_config_checkpoints(config.get("model"), "model")  # whole, and no code, first
    train = OmegaConf.select(config, "data.params.train.datapipeline")
    if not isinstance(train, DictConfig):
        raise ConfigError(
            "data.params.train.datapipeline: the config has no webdataset training "
            f"datapipeline to cache (got {train!r})"
        )
    pipeline = OmegaConf.to_container(train, resolve=True)
    pipeline["pipeline_config"] = {"resampled": False, "shardshuffle": False}
    model_params = OmegaConf.to_container(config.model.params, resolve=True)
    # The shards are checked, and the first item read, before the model is built: bad
    # data stops the command at once.
    loader = build_loader(pipeline, {"batch_size": 1, "num_workers": 0}, where="data.params.train")
    batches = iter(loader)
    first = next(batches, None)
    if first is None:
        raise InputError(f"data.params.train.datapipeline.urls: no items in {pipeline['urls']!r}")
    engine = instantiate_from_config(config.model, key="model").to(torch.device(args.device))
    items = itertools.chain([first], batches)
    out = write_cache(engine, model_params, items, args.output, args.limit, args.per_shard)
    print(f"wrote the cache into {out}")


def main(argv: Sequence[str] | None = None) -> int:
    args = cli.parse(build_parser(), argv)
    return cli.run(lambda: cache(args), prog="cache_conditioning.py")


if __name__ == "__main__":
    sys.exit(main())
