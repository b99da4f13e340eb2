"""Data-parallel sampling: items per second of one run at world size 1 and at world size 2
(``torchrun --nproc_per_node``, gloo, 1 thread per rank), as a ratio (2.0 is perfect
scaling), and whether both runs wrote the same bytes.

The workload is ``benchmarks/sample_sdxl.py``'s scaled-down SDXL base (UNet
``model_channels`` 64, small text towers, random weights), text-to-image through
``SamplingPipeline`` and ``sgm.inference.data_parallel.run_items`` with a manifest, PNG
files and the watermark, as the image command line runs it. The time counts from the
moment every rank has its model loaded to the end of the run (the manifest merged).

    python benchmarks/distributed.py                  # 8 items, 128 px, 4 steps
    python benchmarks/distributed.py --items 16 --size 256 --steps 10
"""

from __future__ import annotations

# sgm must be imported before torchvision and diffusers.
# isort: skip_file

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import sgm  # noqa: F401

# isort: split
import torch

PROMPTS = ["a lighthouse at dawn", "a red fox in snow", "a bowl of ramen", "a tall ship"]


def prepare(workdir: str) -> None:
    """Config and random-weight checkpoint of the scaled-down SDXL, written once."""
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    from _pipeline import randomize
    from sample_sdxl import make_config, register_text_towers

    from sgm.convert._engine import build_engine

    shape = SimpleNamespace(full=False, model_channels=64, vae_channels=32)
    config = make_config(shape, register_text_towers(workdir))
    OmegaConf.save(config, os.path.join(workdir, "config.yaml"))
    engine = build_engine(config, device="cpu").eval()
    randomize(engine, seed=0)
    state = {k: v.contiguous() for k, v in engine.state_dict().items()}
    save_file(state, os.path.join(workdir, "model.safetensors"))


def child(args: argparse.Namespace) -> None:
    """One rank of a run (started by torchrun)."""
    import torch.distributed as dist

    from sample_sdxl import register_text_towers

    from sgm.inference.api import SamplingParams, SamplingPipeline
    from sgm.inference.data_parallel import run_items
    from sgm.inference.distributed import launcher_world, process_group
    from sgm.inference.item_outputs import FolderOutput, png_bytes
    from sgm.inference.work_items import Prompt, prompt_items

    torch.set_num_threads(1)
    register_text_towers(args.workdir)
    world = launcher_world()
    pipe = SamplingPipeline(
        config=os.path.join(args.workdir, "config.yaml"),
        ckpt=os.path.join(args.workdir, "model.safetensors"),
        device="cpu",
        dtype="fp32",
    )
    params = SamplingParams(
        width=args.size,
        height=args.size,
        steps=args.steps,
        scale=5.0,
        orig_width=args.size,
        orig_height=args.size,
    )
    prompts = [Prompt(PROMPTS[i % len(PROMPTS)]) for i in range(args.items)]
    items = prompt_items(prompts, seed=42)

    def make(item):
        return pipe.text_to_image(params, item.prompt, seed=item.seed)[0]

    def encode(item, image):
        return png_bytes(image, {"prompt": item.prompt, "seed": item.seed})

    with process_group(world, "cpu"):
        if dist.is_initialized():
            dist.barrier()
        start = time.perf_counter()
        run_items(
            items,
            make,
            encode,
            FolderOutput(args.output, ".png"),
            {"size": args.size, "steps": args.steps, "scale": 5.0},
            world,
            progress=False,
            beat_s=1.0,
        )
        seconds = time.perf_counter() - start
    if world.is_main:
        Path(args.output, "seconds.json").write_text(json.dumps(seconds))


def run_world(args: argparse.Namespace, world_size: int, output: str) -> float:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={world_size}",
        __file__,
        "--child",
        "--workdir",
        args.workdir,
        "--output",
        output,
        "--items",
        str(args.items),
        "--size",
        str(args.size),
        "--steps",
        str(args.steps),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(command, check=True, env=env, capture_output=True, text=True)
    return json.loads(Path(output, "seconds.json").read_text())


def digests(folder: str) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(folder).glob("*.png"))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory(prefix="sgm-bench-dist-") as workdir:
        args.workdir = workdir
        prepare(workdir)
        rates = {}
        for world_size in (1, 2):
            output = os.path.join(workdir, f"out{world_size}")
            rates[world_size] = args.items / run_world(args, world_size, output)
        same = digests(os.path.join(workdir, "out1")) == digests(os.path.join(workdir, "out2"))
    print(f"command: python benchmarks/distributed.py {' '.join(sys.argv[1:])}".rstrip())
    print(
        f"scaled-down SDXL, {args.items} items, {args.size} px, {args.steps} steps, CFG 5, "
        "1 thread per rank, gloo"
    )
    print(f"world size 1: {rates[1]:.3f} items/s")
    print(f"world size 2: {rates[2]:.3f} items/s")
    print(f"ratio (2 / 1): {rates[2] / rates[1]:.3f}")
    print(f"outputs identical: {same}")


if __name__ == "__main__":
    main()
