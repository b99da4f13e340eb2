"""Decode latency and peak memory: sgm AutoencoderKL vs diffusers AutoencoderKL.

The SD/SDXL VAE (first_stage_config of configs/inference/sd_xl_base.yaml), weights shared
through diffusers' own ``convert_ldm_vae_checkpoint``. Besides a plain decode it times a
batch decoded one sample at a time: sgm's ``max_batch_size=1`` chunking against
diffusers' ``enable_slicing()``.

    python benchmarks/vae.py --size 16 --batch 4 --repeats 5 --threads 2
"""

from __future__ import annotations

# sgm must be imported before torchvision and diffusers.
# isort: skip_file

import argparse
import sys
import warnings

import sgm  # noqa: F401  (must precede diffusers)

# isort: split
import torch
from omegaconf import OmegaConf

from sgm.inference.releases import config_path

from _common import interleaved, memory_in_fresh_process, print_summary, report_memory

CONFIG = str(config_path("sdxl_base_1.0"))  # the release registry's packaged config


def build(args):
    from diffusers import AutoencoderKL as DiffusersAutoencoderKL
    from diffusers.loaders.single_file_utils import (
        convert_ldm_vae_checkpoint,
        create_vae_diffusers_config_from_ldm,
    )

    from sgm.util import instantiate_from_config

    config = OmegaConf.load(CONFIG)
    first_stage = config.model.params.first_stage_config
    first_stage.params.ddconfig.ch = args.ch
    torch.manual_seed(0)
    ours = instantiate_from_config(first_stage).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in ours.modules():
            for name, p in module.named_parameters(recurse=False):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
                if isinstance(module, torch.nn.GroupNorm) and name == "weight":
                    p.add_(1.0)
    ckpt = {f"first_stage_model.{k}": v for k, v in ours.state_dict().items()}
    original = OmegaConf.to_container(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dconfig = create_vae_diffusers_config_from_ldm(original, ckpt, image_size=256)
        converted = convert_ldm_vae_checkpoint(ckpt, dconfig)
    theirs = DiffusersAutoencoderKL(**dconfig).eval()
    theirs.load_state_dict(converted, strict=True)
    return ours, theirs


def make_runs(args, ours, theirs):
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(1, 4, args.size, args.size, generator=g)
    zb = torch.randn(args.batch, 4, args.size, args.size, generator=g)

    def ours_decode(z, chunk):
        def run():
            ours.max_batch_size = chunk
            return ours.decode(z)

        return run

    def theirs_decode(z, sliced):
        def run():
            theirs.use_slicing = sliced
            return theirs.decode(z).sample

        return run

    runs = {"sgm": ours_decode(z1, None), "diffusers": theirs_decode(z1, False)}
    if args.batch > 1:
        runs["sgm chunked (mbs=1)"] = ours_decode(zb, 1)
        runs["diffusers sliced"] = theirs_decode(zb, True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ch", type=int, default=128, help="base channels (128 = SD/SDXL)")
    parser.add_argument("--size", type=int, default=16, help="latent height = width")
    parser.add_argument("--batch", type=int, default=4, help="batch of the chunked/sliced runs")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    ours, theirs = build(args)
    runs = make_runs(args, ours, theirs)
    if args.memory_of:
        report_memory(runs[args.memory_of])
        return
    n_params = sum(p.numel() for p in ours.parameters())
    batched = f" and B={args.batch} (one at a time)" if args.batch > 1 else ""
    print(
        f"SD/SDXL VAE, ch={args.ch} ({n_params / 1e6:.1f}M params), decode latents "
        f"Bx4x{args.size}x{args.size} -> {8 * args.size}px, B=1{batched}, float32, "
        f"{args.threads} threads, median of {args.repeats}"
    )
    results = interleaved(runs, args.repeats)
    peaks = {name: memory_in_fresh_process(__file__, sys.argv[1:], name) for name in runs}
    pairs = [("sgm", "diffusers")]
    if args.batch > 1:
        pairs.append(("sgm chunked (mbs=1)", "diffusers sliced"))
    print_summary(results, peaks, pairs)


if __name__ == "__main__":
    main()
