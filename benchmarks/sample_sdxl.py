"""Whole text-to-image runs: sgm (prompt -> Euler + CFG -> VAE decode) vs diffusers'
StableDiffusionXLPipeline on the same weights, sigmas, noise and prompt.

CPU (default): the SDXL base architecture (configs/inference/sd_xl_base.yaml) scaled
down: UNet ``model_channels`` 64 (transformer depths [1, 2, 10] kept), a 12-layer
CLIP-L-like and a 32-layer bigG-like text tower of small width, the VAE at ``ch`` 32.
Random weights are saved to a ``.safetensors`` file, exported with
``sgm.convert.to_diffusers`` and loaded by both sides from those files (sgm through
``SamplingPipeline``, diffusers through ``from_pretrained``). ``--gpu``: the real sizes
in fp16 on CUDA, random weights built on the device, the diffusers pipeline built in
memory from the same tensors (same converters).

    python benchmarks/sample_sdxl.py --quick          # < 2 minutes on 2 cores
    python benchmarks/sample_sdxl.py --steps 10 --size 256 --repeats 5
    python benchmarks/sample_sdxl.py --gpu --steps 30 --size 1024
"""

from __future__ import annotations

# sgm must be imported before torchvision and diffusers.
# isort: skip_file

import argparse
import json
import os
import sys
import tempfile

import sgm  # noqa: F401  (must precede diffusers)

# isort: split
import torch
from omegaconf import OmegaConf

from sgm.inference.releases import config_path

from _pipeline import (
    child_report,
    compile_diffusers,
    diffusers_pipeline,
    interleaved,
    add_speedup_flags,
    max_abs_diff,
    option_ratio,
    peak_in_fresh_process,
    peak_of_run,
    randomize,
    speedup_runs,
    summary,
    without_run_cache,
)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CONFIG = str(config_path("sdxl_base_1.0"))  # the release registry's packaged config
PROMPT = "a photograph of an astronaut riding a horse on the moon"
BIGG = "sgm-bench-bigg"
# Scaled-down text towers: real depths, small widths.
CLIP_L = {
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 12,
    "num_attention_heads": 2,
}
BIGG_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 192, "heads": 3, "layers": 32}
BIGG_ARCH = {
    "embed_dim": 192,
    "text_cfg": BIGG_TEXT,
    "vision_cfg": {"image_size": 224, "layers": 1, "width": 64, "head_width": 32, "patch_size": 32},
}
TOLERANCE = 2e-3  # max abs difference of the [0, 1] images (fp32); fp16: 5e-2


def register_text_towers(workdir: str) -> str:
    """The bigG-like open_clip architecture (registered in this process) and a local
    CLIP-L-like transformers folder; returns that folder."""
    from open_clip.factory import add_model_config
    from transformers import CLIPTextConfig

    arch_dir = os.path.join(workdir, "open_clip")
    clip_dir = os.path.join(workdir, "clip_l")
    if not os.path.isdir(arch_dir):
        os.makedirs(arch_dir)
        with open(os.path.join(arch_dir, f"{BIGG}.json"), "w") as f:
            json.dump(BIGG_ARCH, f)
        CLIPTextConfig(
            vocab_size=49408,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=CLIP_L["hidden_size"],
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
            **CLIP_L,
        ).save_pretrained(clip_dir)
    add_model_config(arch_dir)
    return clip_dir


def make_config(args, clip_dir: str | None):
    """sd_xl_base.yaml, scaled down unless ``--full``."""
    config = OmegaConf.load(CONFIG)
    params = config.model.params
    unet = params.network_config.params
    unet.use_checkpoint = False
    if args.full:
        return config
    embedders = params.conditioner_config.params.emb_models
    embedders[0].params.version = clip_dir
    embedders[0].params.layer_idx = CLIP_L["num_hidden_layers"] - 1
    embedders[1].params.update(arch=BIGG, version=None)
    unet.model_channels = args.model_channels
    unet.context_dim = CLIP_L["hidden_size"] + BIGG_TEXT["width"]
    unet.adm_in_channels = BIGG_ARCH["embed_dim"] + 6 * 256
    unet.spatial_transformer_attn_type = "softmax"
    dd = params.first_stage_config.params.ddconfig
    dd.ch = args.vae_channels
    dd.attn_type = "vanilla"
    return config


def prepare_files(args, workdir: str) -> None:
    """Config, random-weight checkpoint and its diffusers export, written once."""
    from safetensors.torch import save_file

    from sgm.convert import to_diffusers
    from sgm.convert._engine import build_engine

    config = make_config(args, register_text_towers(workdir))
    OmegaConf.save(config, os.path.join(workdir, "config.yaml"))
    engine = build_engine(config, device="cpu").eval()
    randomize(engine, seed=0)
    state = {k: v.contiguous() for k, v in engine.state_dict().items()}
    save_file(state, os.path.join(workdir, "model.safetensors"))
    to_diffusers(
        os.path.join(workdir, "model.safetensors"),
        os.path.join(workdir, "config.yaml"),
        os.path.join(workdir, "diffusers"),
    )


def load_from_files(args, workdir: str, side: str):
    register_text_towers(workdir)
    if side == "sgm":
        from sgm.inference.api import SamplingPipeline

        pipe = SamplingPipeline(
            config=os.path.join(workdir, "config.yaml"),
            ckpt=os.path.join(workdir, "model.safetensors"),
            device=args.device,
            dtype=args.sgm_dtype,
            use_fp16=False,
            compile_model=args.compile in ("sgm", "both"),
        )
        return pipe.model
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(
        os.path.join(workdir, "diffusers"), add_watermarker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(args.device)


def build_in_memory(args, workdir: str):
    """``--gpu``: engine with random weights on the device, and its diffusers twin."""
    from sgm import precision
    from sgm.convert._engine import build_engine, engine_params

    config = make_config(args, None if args.full else register_text_towers(workdir))
    engine = build_engine(config, device=args.device).eval()
    randomize(engine, seed=0)
    pipe = diffusers_pipeline(engine, engine_params(config), torch.device(args.device), args.dtype)
    pipe.set_progress_bar_config(disable=True)
    if args.dtype != torch.float32:
        engine.conditioner.to(dtype=args.dtype)
        precision.cast_network(engine, args.dtype)
    engine.compute_dtype = args.dtype
    if args.compile in ("sgm", "both"):  # as load_engine(compile_model=True) does
        from sgm.inference.engines import compile_engine

        compile_engine(engine, freeze=True)
    return engine.requires_grad_(False), pipe


def make_runs(args, engine, pipe):
    """The two whole runs (same prompt, sigmas, noise, guidance, sizes)."""
    from sgm.inference.helpers import do_sample
    from sgm.modules.diffusionmodules.sampling import EulerEDMSampler

    diff = "sgm.modules.diffusionmodules"
    sampler = EulerEDMSampler(
        num_steps=args.steps,
        discretization_config={"target": f"{diff}.discretizer.LegacyDDPMDiscretization"},
        guider_config={"target": f"{diff}.guiders.VanillaCFG", "params": {"scale": args.guidance}},
    )
    sigmas = sampler.discretization(args.steps).tolist()  # descending, final 0
    h = w = args.size
    noise = torch.randn(1, 4, h // 8, w // 8, generator=torch.Generator().manual_seed(1))
    value_dict = {
        "prompt": PROMPT,
        "negative_prompt": "",
        "orig_height": h,
        "orig_width": w,
        "crop_coords_top": 0,
        "crop_coords_left": 0,
        "target_height": h,
        "target_width": w,
    }
    device = torch.device(args.device)
    if pipe is not None:
        # sgm starts from noise * sqrt(1 + sigma_0^2); diffusers multiplies the given
        # latents by init_noise_sigma, which is that value for "leading" spacing (the
        # spacing itself is unused when sigmas are given).
        pipe.scheduler = type(pipe.scheduler).from_config(
            pipe.scheduler.config, timestep_spacing="leading"
        )
    latents = noise.to(device, getattr(pipe, "dtype", torch.float32))
    captured = {}

    def keep_latents(p, i, t, kwargs):
        captured["latents"] = kwargs["latents"]
        return kwargs

    def run_sgm(**speedups):
        return do_sample(
            engine,
            sampler,
            value_dict,
            1,
            h,
            w,
            4,
            8,
            force_uc_zero_embeddings=["txt"],
            noise=noise.to(device),
            return_latents=True,
            dtype=args.sgm_dtype,
            **speedups,
        )

    def run_diffusers():
        with torch.no_grad():
            image = pipe(
                PROMPT,
                height=h,
                width=w,
                sigmas=sigmas,
                guidance_scale=args.guidance,
                latents=latents,
                output_type="pt",
                callback_on_step_end=keep_latents,
            ).images
        return image, captured["latents"]

    if args.no_run_cache:
        run_sgm = without_run_cache(run_sgm)
    return {"sgm": run_sgm, "diffusers": run_diffusers}


def check_same(runs, args) -> None:
    (img_a, lat_a), (img_b, lat_b) = runs["sgm"](), runs["diffusers"]()
    lat_diff, lat_scale = max_abs_diff(lat_a, lat_b)
    img_diff, _ = max_abs_diff(img_a, img_b)
    tol = TOLERANCE if args.sgm_dtype == "fp32" else 5e-2
    print(
        f"same output: latents max abs diff {lat_diff:.2e} (scale {lat_scale:.2e}), "
        f"image max abs diff {img_diff:.2e} (tolerance {tol:g}, image in [0, 1], "
        f"std {float(img_b.float().std()):.3f})"
    )
    if not img_diff <= tol:
        message = f"outputs differ by {img_diff:.2e} > {tol:g}"
        if args.sgm_dtype == "fp32":  # exact arithmetic: a real difference, stop
            sys.exit(f"{message}: timings would compare different work")
        # half precision: rounding differences grow over the steps (random weights)
        print(f"WARNING: {message} (half precision); timing anyway")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small and few: < 2 min on 2 cores")
    parser.add_argument("--gpu", action="store_true", help="real sizes, fp16, CUDA")
    parser.add_argument(
        "--in-memory",
        action="store_true",
        help="build both sides in memory, as --gpu does (no files)",
    )
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--size", type=int, default=None, help="image side in pixels")
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--model-channels", type=int, default=64)
    parser.add_argument("--vae-channels", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--compile",
        choices=["none", "sgm", "both"],
        default="none",
        help="torch.compile network and VAE decoder (weights frozen in): sgm's (compile_model) or both",
    )
    parser.add_argument(
        "--no-run-cache",
        action="store_true",
        help="sgm computes the text keys/values and [uc, c] batches at every step",
    )
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="CPU: sgm computes in bfloat16 (autocast; first stage float32), "
        "diffusers stays float32 (the output check allows 5e-2)",
    )
    add_speedup_flags(parser)
    parser.add_argument("--child", choices=["sgm", "diffusers"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.full = args.gpu
    args.device = "cuda" if args.gpu else "cpu"
    args.dtype = torch.float16 if args.gpu else torch.float32
    args.sgm_dtype = "fp16" if args.gpu else "bf16" if args.bf16 else "fp32"
    args.in_memory = args.in_memory or args.gpu
    preset = (1024, 30, 5) if args.gpu else (128, 4, 3) if args.quick else (256, 10, 5)
    args.size = args.size or preset[0]
    args.steps = args.steps or preset[1]
    args.repeats = args.repeats or preset[2]
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        engine_or_pipe = load_from_files(args, args.workdir, args.child)
        if args.child == "diffusers" and args.compile == "both":
            compile_diffusers(engine_or_pipe)
        pair = (engine_or_pipe, None) if args.child == "sgm" else (None, engine_or_pipe)
        child_report(make_runs(args, *pair)[args.child], torch.device(args.device))
        return
    with tempfile.TemporaryDirectory(prefix="sgm_bench_sdxl_") as workdir:
        if args.in_memory:
            engine, pipe = build_in_memory(args, workdir)
        else:
            prepare_files(args, workdir)
            engine = load_from_files(args, workdir, "sgm")
            pipe = load_from_files(args, workdir, "diffusers")
        if args.compile == "both":
            compile_diffusers(pipe)
        n_params = sum(p.numel() for p in engine.model.parameters())
        print(
            f"SDXL base architecture{'' if args.full else ' scaled down'} (UNet "
            f"{n_params / 1e6:.0f}M params), {args.size}x{args.size} px, {args.steps} "
            f"Euler steps, CFG {args.guidance}, {args.dtype}, {args.device}, "
            f"{args.threads} threads, compile={args.compile}, median of {args.repeats}"
        )
        runs = make_runs(args, engine, pipe)
        speedup = speedup_runs(args, args.steps)
        if speedup is not None:
            label, kwargs = speedup
            run = runs["sgm"]
            option_ratio(label, run, lambda: run(**kwargs), args.repeats, torch.device(args.device))
            return
        check_same(runs, args)
        seconds, peaks = interleaved(runs, args.repeats, torch.device(args.device), warmup=0)
        # CUDA: the allocator's peaks during the timed runs; CPU: resident set
        if not peaks and args.in_memory:
            peaks = {name: peak_of_run(fn, torch.device(args.device)) for name, fn in runs.items()}
        elif not peaks:
            argv = sys.argv[1:] + ["--workdir", workdir]
            del engine, pipe, runs
            peaks = {
                name: peak_in_fresh_process(__file__, argv, name) for name in ("sgm", "diffusers")
            }
        print(summary(seconds, peaks))


if __name__ == "__main__":
    main()
