"""Convert weights between sgm checkpoints and diffusers folders.

    python scripts/convert.py to_sgm path/to/diffusers_folder sd_xl_base.safetensors
    sgm-convert to_sgm path/to/diffusers_folder sd_xl_base.safetensors   # installed
    python scripts/convert.py to_diffusers checkpoints/sd_xl_base_1.0.safetensors \\
        --config configs/inference/sd_xl_base.yaml out/sdxl_diffusers

Families: SD 2.x, SDXL base and refiner, SVD / SVD-XT. ``to_sgm`` picks the released
config from the folder's model_index.json unless ``--config`` is given. Outputs are
written atomically and never overwrite anything.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..cli import ArgumentParser, existing_file, new_output, run, setup_logging


def diffusers_folder(text: str) -> Path:
    """A folder holding a diffusers model (model_index.json)."""
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is not a folder")
    if not (path / "model_index.json").is_file():
        raise argparse.ArgumentTypeError(f"{path} has no model_index.json (not a diffusers folder)")
    return path


def new_path(text: str) -> Path:
    """A path that does not exist yet (nothing is overwritten), in a folder that can take
    it (``sgm.cli.new_output``: a symlink to nothing is refused by name)."""
    return new_output(text)


def new_safetensors(text: str) -> Path:
    path = new_path(text)
    if path.suffix != ".safetensors":
        raise argparse.ArgumentTypeError(f"{path}: the output must end in .safetensors")
    return path


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="convert.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    directions = parser.add_subparsers(
        dest="direction", required=True, metavar="{to_sgm,to_diffusers}"
    )
    to_sgm = directions.add_parser(
        "to_sgm",
        help="diffusers folder -> one sgm .safetensors (released layout)",
        description="Convert a diffusers folder to one .safetensors that the config "
        "loads strictly.",
    )
    to_sgm.add_argument("folder", type=diffusers_folder, help="diffusers model folder")
    to_sgm.add_argument("output", type=new_safetensors, help="new .safetensors file")
    to_sgm.add_argument(
        "--config",
        type=existing_file,
        default=None,
        help="sgm model config (default: the released config of the folder's family)",
    )
    to_diffusers = directions.add_parser(
        "to_diffusers",
        help="sgm checkpoint + config -> diffusers folder",
        description="Convert an sgm checkpoint to a diffusers folder that "
        "DiffusionPipeline.from_pretrained loads.",
    )
    to_diffusers.add_argument("checkpoint", type=existing_file, help=".safetensors or .ckpt")
    to_diffusers.add_argument("output", type=new_path, help="new diffusers folder")
    to_diffusers.add_argument(
        "--config",
        type=existing_file,
        required=True,
        help="the sgm model config the checkpoint belongs to",
    )
    return parser


def convert(args: argparse.Namespace) -> None:
    from ..convert import to_diffusers, to_sgm

    if args.direction == "to_sgm":
        path = to_sgm(args.folder, args.output, config=args.config)
    else:
        path = to_diffusers(args.checkpoint, args.config, args.output)
    print(path)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run(lambda: convert(args), prog="convert.py")


if __name__ == "__main__":
    sys.exit(main())
