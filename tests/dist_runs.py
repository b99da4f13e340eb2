"""Multi-process sampling runs for the tests: ``launch`` starts ``world_size`` processes
(torch.multiprocessing's spawn context, gloo on CPU, rank variables as torchrun sets them),
each runs one scenario of :data:`SCENARIOS` and writes what happened to ``rank<N>.json``;
the same scenario runs in the test's own process as a world of one.

Scenarios sample with tiny models or, for the run machinery alone, a seeded random image.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sgm.errors import SgmError
from sgm.inference.data_parallel import run_items
from sgm.inference.distributed import World, launcher_world, process_group
from sgm.inference.item_outputs import FolderOutput, mp4_bytes, png_bytes
from sgm.inference.work_items import WorkItem, find_images, input_items, prompt_items

JOIN_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------- failures


def _failing(make: Callable[[WorkItem], Any], world: World, fail: dict | None):
    """``make`` that, on rank ``fail["rank"]``, fails at its ``fail["after"]``-th item:
    raises, or with ``fail["hard"]`` ends the process at once."""
    if not fail or fail["rank"] != world.rank:
        return make
    count = {"n": 0}

    def wrapped(item: WorkItem) -> Any:
        if count["n"] == fail["after"]:
            if fail.get("hard"):
                os._exit(17)
            raise RuntimeError(f"injected failure at item {item.index}")
        count["n"] += 1
        return make(item)

    return wrapped


def _output(folder: Path, world: World, fmt: str, ext: str, shard_size: int):
    if fmt == "wds":
        from sgm.data.sample_shards import ShardOutput

        return ShardOutput(folder, world.rank, ext, max_count=shard_size)
    return FolderOutput(folder, f".{ext}")


def evaluate_in_halves(engine: torch.nn.Module) -> None:
    """Make ``engine``'s denoiser run the guider's batch as two calls, on its first and its
    second half (every tensor argument split by rows): in one process, the batches a
    guidance-parallel pair gives the network."""
    forward = engine.denoiser.forward

    def halves(network, x, sigma, cond, **kwargs):
        def half(value, i):
            if not torch.is_tensor(value):
                return value
            rows = value.shape[0] // 2
            return value[i * rows : (i + 1) * rows]

        outs = [
            forward(
                network,
                half(x, i),
                half(sigma, i),
                {k: half(v, i) for k, v in cond.items()},
                **{k: half(v, i) for k, v in kwargs.items()},
            )
            for i in (0, 1)
        ]
        return torch.cat(outs)

    engine.denoiser.forward = halves


# ---------------------------------------------------------------------------- scenarios


def random_images(world: World, folder: str, count: int, fail=None, fmt="files", **run) -> dict:
    """``count`` items whose "sample" is ``torch.rand`` under the item's seed."""
    items = prompt_items([_prompt(f"p{i}") for i in range(count)], seed=run.pop("seed", 7))

    def make(item: WorkItem) -> torch.Tensor:
        return torch.rand(3, 8, 8)

    def encode(item: WorkItem, image: torch.Tensor) -> bytes:
        return png_bytes(image, {"seed": item.seed}, watermark=False)

    output = _output(Path(folder), world, fmt, "png", run.pop("shard_size", 2))
    params = {"kind": "random", **run.pop("params", {})}
    report = run_items(
        items, _failing(make, world, fail), encode, output, params, world, progress=False, **run
    )
    return report.__dict__


def _prompt(text: str):
    from sgm.inference.work_items import Prompt

    return Prompt(text)


def images(
    world: World,
    folder: str,
    config: str,
    ckpt: str,
    prompts: list[str],
    steps: int = 2,
    pairs: bool = False,
    tensors: str | None = None,
    halves: bool = False,
    fail=None,
    **run,
) -> dict:
    """Text-to-image with the tiny SDXL-like engine at 16x16; with ``pairs``,
    guidance-parallel. ``tensors``: a folder where rank 0 of each pair saves the latents;
    ``halves``: the network sees the guider's batch in halves (:func:`evaluate_in_halves`)."""
    from sgm.inference.api import SamplingParams, SamplingPipeline
    from sgm.inference.cfg_parallel import SplitGuider, check_cfg_parallel, pair_group

    pipeline = SamplingPipeline(config=config, ckpt=ckpt, device="cpu", dtype="fp32")
    if halves:
        evaluate_in_halves(pipeline.model)
    params = SamplingParams(
        width=16, height=16, steps=steps, orig_width=16, orig_height=16, scale=3.0
    )
    if pairs:
        check_cfg_parallel(world, pipeline._sampler(params).guider)
        group = pair_group(world)
        pipeline.guider_wrapper = lambda guider: SplitGuider(guider, group, world.rank % 2)
    items = prompt_items([_prompt(p) for p in prompts], seed=11)

    def make(item: WorkItem) -> torch.Tensor:
        images, latents = pipeline.text_to_image(
            params, item.prompt, seed=item.seed, return_latents=True
        )
        if tensors is not None and world.rank % 2 == 0:
            torch.save(latents, Path(tensors, f"{item.index}.pt"))
        return images[0]

    def encode(item: WorkItem, image: torch.Tensor) -> bytes:
        return png_bytes(image, {"prompt": item.prompt, "seed": item.seed})

    output = FolderOutput(folder, ".png")
    run_params = {"steps": steps, "scale": 3.0, "size": [16, 16]}
    report = run_items(
        items,
        _failing(make, world, fail),
        encode,
        output,
        run_params,
        world,
        pairs=pairs,
        progress=False,
        **run,
    )
    return report.__dict__


def videos(
    world: World,
    folder: str,
    config: str,
    ckpt: str,
    arch_dir: str,
    inputs: str,
    pairs: bool = False,
    tensors: str | None = None,
    halves: bool = False,
    fmt: str = "files",
    **run,
) -> dict:
    """Image-to-video with the tiny SVD engine (3 frames, 2 steps) on each input image;
    ``tensors``, ``halves`` as in :func:`images` (the latents: the last step's)."""
    from open_clip.factory import add_model_config

    from sgm.inference.cfg_parallel import SplitGuider, check_cfg_parallel, pair_group
    from sgm.inference.video import build_value_dict, load_video_model, prepare_svd_image

    add_model_config(arch_dir)
    model = load_video_model(config, ckpt, "cpu", num_frames=3, num_steps=2, dtype="fp32")
    if halves:
        evaluate_in_halves(model)
    if pairs:
        check_cfg_parallel(world, model.sampler.guider)
        model.sampler.guider = SplitGuider(model.sampler.guider, pair_group(world), world.rank % 2)
    items = input_items(find_images(inputs), seed=3)

    def make(item: WorkItem) -> torch.Tensor:
        from PIL import Image

        from sgm.inference.video import sample_video

        with Image.open(item.input) as image:
            cond = prepare_svd_image(image.convert("RGB"))
        generator = torch.Generator().manual_seed(item.seed)
        values = build_value_dict(cond, 0.02, generator=generator)
        steps: list[dict] = []
        frames = sample_video(
            model, values, 3, generator=generator, decoding_t=2, callback=steps.append
        )
        if tensors is not None and world.rank % 2 == 0:  # the last step's latents
            torch.save(steps[-1]["denoised"], Path(tensors, f"{item.index}.pt"))
        return frames

    def encode(item: WorkItem, frames: torch.Tensor) -> bytes:
        return mp4_bytes(frames, fps=6)

    output = _output(Path(folder), world, fmt, "mp4", 2)
    report = run_items(
        items, make, encode, output, {"frames": 3}, world, pairs=pairs, progress=False, **run
    )
    return report.__dict__


SCENARIOS: dict[str, Callable[..., dict]] = {
    "random_images": random_images,
    "images": images,
    "videos": videos,
}


# ---------------------------------------------------------------------------- launching


def _child(scenario: str, rank: int, world_size: int, port: int, out: str, kwargs: dict):
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    world = launcher_world()
    result: dict[str, Any]
    try:
        with process_group(world, "cpu", timeout_s=60):
            result = {"ok": True, "report": SCENARIOS[scenario](world, **kwargs)}
    except SgmError as error:
        result = {"ok": False, "error": str(error), "type": type(error).__name__}
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))


def launch(scenario: str, world_size: int, out: str | Path, **kwargs: Any) -> list[dict]:
    """Run ``scenario`` on ``world_size`` processes; each rank's result (``exitcode`` too;
    a rank that wrote nothing has ``{"ok": None}``)."""
    import torch.multiprocessing as mp

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rank*.json"):
        old.unlink()
    port = free_port()
    context = mp.get_context("spawn")
    processes = [
        context.Process(target=_child, args=(scenario, r, world_size, port, str(out), kwargs))
        for r in range(world_size)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(JOIN_TIMEOUT_S)
    results = []
    for rank, process in enumerate(processes):
        if process.is_alive():
            process.kill()
            process.join()
        path = out / f"rank{rank}.json"
        result = json.loads(path.read_text()) if path.exists() else {"ok": None}
        results.append({**result, "exitcode": process.exitcode})
    return results


def run_here(scenario: str, **kwargs: Any) -> dict:
    """``scenario`` in this process, a world of one, on 1 thread as every launched rank (a
    CPU kernel's sums may round differently on another thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return SCENARIOS[scenario](World(), **kwargs)
    finally:
        torch.set_num_threads(threads)
