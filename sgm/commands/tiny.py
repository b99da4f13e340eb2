"""Write tiny random-weight models of the releases, to try every command line without weights.

    python scripts/tiny_model.py --release sdxl_base_1.0 --out tiny/
    python scripts/sampling/simple_image_sample.py --version sdxl_base_1.0 \
        --config tiny/sdxl_base_1.0.yaml --ckpt tiny/sd_xl_base_1.0.safetensors \
        --width 64 --height 64 --steps 2 --device cpu

Each model is the release's config at toy widths (``<out>/<release>.yaml``) and a
checkpoint under the release's file name (``<out>/<ckpt name>``, so ``--checkpoints
<out>`` finds it), with the text encoders' files beside them
(``sgm.inference.tiny_models``). ``--release all`` writes one for every release. The
samples are noise-like: the weights are random.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import cli
from ..inference.releases import names


def build_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--release",
        nargs="+",
        required=True,
        choices=[*names(), "all"],
        metavar="NAME",
        help=f"release(s) to write a tiny model of, or all: {', '.join(names())}",
    )
    parser.add_argument(
        "--out",
        required=True,
        type=cli.output_folder,
        help="folder to write into (created if missing)",
    )
    parser.add_argument("--seed", type=cli.seed, default=0, help="seed of the random weights")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a tiny model already in --out"
    )
    return parser


def write(args: argparse.Namespace) -> None:
    from pathlib import Path

    from ..errors import InputError
    from ..inference.tiny_models import tiny_paths, write_tiny_release

    chosen = names() if "all" in args.release else list(dict.fromkeys(args.release))
    out = Path(args.out)
    if not args.overwrite:
        for name in chosen:
            for path in tiny_paths(name, out):
                if path.exists() or path.is_symlink():
                    raise InputError(f"{path} exists; pass --overwrite to replace it")
    for name in chosen:
        config, ckpt = write_tiny_release(name, out, seed=args.seed, overwrite=True)
        print(f"{name}: --config {config} --ckpt {ckpt}")


def main(argv: Sequence[str] | None = None) -> int:
    args = cli.parse(build_parser(), argv)
    return cli.run(lambda: write(args), prog="tiny_model.py")


if __name__ == "__main__":
    sys.exit(main())
