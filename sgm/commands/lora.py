"""Look into adapter files, and bake adapters into a full checkpoint.

    python scripts/lora.py inspect style.safetensors [--json]
    python scripts/lora.py bake --config configs/inference/sd_xl_base.yaml \\
        --ckpt checkpoints/sd_xl_base_1.0.safetensors \\
        --lora style.safetensors:0.8 --lora detail.safetensors:0.5 sdxl_styled.safetensors

``inspect`` prints a file's format (kohya / A1111 / ComfyUI or diffusers / peft), adapter
types (LoRA, LoCon, DoRA, LoHa, LoKr), ranks, alphas, targets (network, text encoders),
the base model it was made for and its metadata (kohya's ``ss_*`` keys). ``bake`` applies
every ``--lora PATH[:SCALE]`` to the checkpoint's model and writes a new checkpoint with
exactly the base checkpoint's keys and dtypes (the released layout, no adapter names),
which every loader of the base model reads. Every file is checked before any work;
outputs are written atomically and never overwrite anything.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ..cli import (
    ArgumentParser,
    add_lora_arg,
    check,
    existing_file,
    new_output,
    parse,
    run,
    setup_logging,
)

logger = logging.getLogger(__name__)


def new_safetensors(text: str) -> Path:
    """A new ``.safetensors`` path (nothing is overwritten)."""
    path = new_output(text)
    if path.suffix != ".safetensors":
        raise argparse.ArgumentTypeError(f"{path}: the output must end in .safetensors")
    return path


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="lora.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{inspect,bake}")
    inspect = commands.add_parser("inspect", help="what an adapter file holds")
    inspect.add_argument("file", type=existing_file, help="adapter .safetensors file")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of text")
    bake = commands.add_parser(
        "bake",
        help="apply adapters to a checkpoint and write a new one",
        description="Apply every --lora to the checkpoint's model and write a new checkpoint "
        "with the base checkpoint's keys and dtypes.",
    )
    bake.add_argument("output", type=new_safetensors, help="new .safetensors file")
    bake.add_argument("--config", type=existing_file, required=True, help="model config")
    bake.add_argument("--ckpt", type=existing_file, required=True, help="base checkpoint")
    add_lora_arg(bake)
    return parser


def inspect_file(args: argparse.Namespace) -> None:
    from ..lora._inspect import describe_file, format_summary

    info = describe_file(args.file)
    print(json.dumps(info, indent=2) if args.json else format_summary(info))


def bake(
    config: str | Path,
    ckpt: str | Path,
    loras: Sequence[tuple[str | Path, float]],
    output: str | Path,
) -> Path:
    """Write ``output``: the checkpoint ``ckpt`` (model of ``config``) with every
    ``(adapter file, scale)`` of ``loras`` folded in; same keys and dtypes as ``ckpt``."""
    from safetensors.torch import save_file

    from ..checkpoint import check_weights_file, load_state_dict, load_state_dict_into
    from ..convert._engine import build_engine, load_config
    from ..lora import apply_lora_specs, fuse_lora, plan_file
    from ..output_files import write_new_file

    check(bool(loras), "bake needs at least one --lora PATH[:SCALE]")
    for path in (ckpt, *(p for p, _ in loras)):  # whole and safe to read, before any build
        check_weights_file(path)
    engine = build_engine(load_config(config), device="cpu")
    base = load_state_dict(ckpt)
    load_state_dict_into(engine, base, strict=True, source=str(ckpt))
    for path, _ in loras:  # every file checked before the first is applied
        plan_file(engine, path)
    names = apply_lora_specs(engine, loras)
    fuse_lora(engine)
    state = engine.state_dict()
    out = {}
    for key, value in base.items():
        new = state.get(key, value)
        out[key] = new.detach().to("cpu", value.dtype).contiguous()
    metadata = {
        "format": "pt",
        "sgm_baked_lora": json.dumps([{"file": Path(p).name, "scale": float(s)} for p, s in loras]),
    }
    written = write_new_file(lambda tmp: save_file(out, tmp, metadata=metadata), [output])
    logger.info("baked %d adapters (%s) into %s", len(names), ", ".join(names), written)
    return written


def _work(args: argparse.Namespace) -> None:
    if args.command == "inspect":
        inspect_file(args)
    else:
        print(bake(args.config, args.ckpt, args.lora, args.output))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    setup_logging(args.verbose)
    return run(lambda: _work(args), prog="lora.py")


if __name__ == "__main__":
    sys.exit(main())
