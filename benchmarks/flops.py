"""FLOPs of one network forward: sgm vs diffusers, at the released sizes.

Both networks are built on the ``meta`` device (no memory, no weights) from the same
released config, and ``torch.utils.flop_counter.FlopCounterMode`` counts the matmuls and
convolutions of one forward. Equal counts mean neither side computes more than the other;
dividing by an accelerator's peak rate gives the compute floor of a sampling run.

    python benchmarks/flops.py                 # every network, released sizes
    python benchmarks/flops.py --peak-tflops 312      # A100 floors
"""

from __future__ import annotations

# sgm must be imported before torchvision and diffusers.
# isort: skip_file

import argparse
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import sgm  # noqa: F401  (must precede diffusers)

# isort: split
import torch
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TIME_EMBED_DIM = 256


@dataclass
class Workload:
    name: str
    build: Callable[[], tuple[Callable[[], object], Callable[[], object]]]
    description: str


def count(fn: Callable[[], object]) -> int:
    """Total FLOPs of ``fn()`` (matmuls, convolutions, attention)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def _network_params(release: str) -> dict:
    """The network params of a release's packaged config (``sgm.inference.releases``)."""
    from sgm.inference.releases import config_path

    cfg = OmegaConf.load(config_path(release))
    return OmegaConf.to_container(cfg.model.params.network_config.params)


def image_unet(release: str, latent: int, context: int, adm: int | None, batch: int = 1):
    """sgm UNetModel and diffusers UNet2DConditionModel of a released image config."""

    def build():
        from diffusers import UNet2DConditionModel
        from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm

        from sgm.modules.diffusionmodules.openaimodel import UNetModel

        from sgm.inference.releases import config_path

        cfg = OmegaConf.to_container(OmegaConf.load(config_path(release)))
        params = cfg["model"]["params"]["network_config"]["params"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dconfig = create_unet_diffusers_config_from_ldm(cfg, {}, image_size=latent * 8)
            ours = UNetModel(**params).eval()
            theirs = UNet2DConditionModel(**dconfig).eval()
        x = torch.randn(batch, 4, latent, latent)
        t = torch.full((batch,), 500.0)
        ctx = torch.randn(batch, 77, context)
        if adm is None:
            return (lambda: ours(x, t, ctx)), (lambda: theirs(x, t, ctx))
        text, time_ids = torch.randn(batch, 1280), torch.randn(batch, (adm - 1280) // 256)
        y = torch.randn(batch, adm)
        extra = {"text_embeds": text, "time_ids": time_ids}
        return (lambda: ours(x, t, ctx, y)), (lambda: theirs(x, t, ctx, added_cond_kwargs=extra))

    return build


def video_unet(frames: int, height: int, width: int):
    """sgm VideoUNet and diffusers UNetSpatioTemporalConditionModel of SVD(-XT)."""

    def build():
        from diffusers import UNetSpatioTemporalConditionModel

        from sgm.modules.diffusionmodules.video_model import VideoUNet

        params = _network_params("svd")
        params.update(use_checkpoint=False)
        mc, mult = params["model_channels"], params["channel_mult"]
        n = len(mult)
        ours = VideoUNet(**params).eval()
        theirs = UNetSpatioTemporalConditionModel(
            in_channels=params["in_channels"],
            out_channels=params["out_channels"],
            block_out_channels=tuple(mc * m for m in mult),
            down_block_types=("CrossAttnDownBlockSpatioTemporal",) * (n - 1)
            + ("DownBlockSpatioTemporal",),
            up_block_types=("UpBlockSpatioTemporal",)
            + ("CrossAttnUpBlockSpatioTemporal",) * (n - 1),
            layers_per_block=params["num_res_blocks"],
            cross_attention_dim=params["context_dim"],
            addition_time_embed_dim=TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=params["adm_in_channels"],
            num_attention_heads=tuple(mc * m // params["num_head_channels"] for m in mult),
        ).eval()
        # diffusers makes its mix factors with torch.Tensor([...]), which ignores the
        # default device: move them to where everything else is.
        theirs = theirs.to(torch.get_default_device())
        f, c = frames, params["in_channels"]
        x = torch.randn(1, f, c, height, width)
        t = torch.full((1,), 250.0)
        ctx = torch.randn(1, 1, params["context_dim"])
        ids = torch.randn(1, 3)
        y = torch.randn(f, params["adm_in_channels"])

        def run_ours():
            return ours(
                x.flatten(0, 1),
                t.repeat_interleave(f),
                context=ctx.repeat_interleave(f, dim=0),
                y=y,
                num_video_frames=f,
                image_only_indicator=torch.zeros(1, f),
            )

        return run_ours, (lambda: theirs(x, t, ctx, ids))

    return build


def vae_decoder(latent: int):
    """sgm AutoencoderKL decode and diffusers AutoencoderKL decode (SDXL's VAE)."""

    def build():
        from diffusers import AutoencoderKL
        from diffusers.loaders.single_file_utils import create_vae_diffusers_config_from_ldm

        from sgm.util import instantiate_from_config

        from sgm.inference.releases import config_path

        cfg = OmegaConf.load(config_path("sdxl_base_1.0"))
        first_stage = cfg.model.params.first_stage_config
        ours = instantiate_from_config(first_stage).eval()
        plain = {"model": {"params": {"first_stage_config": OmegaConf.to_container(first_stage)}}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = AutoencoderKL(
                **create_vae_diffusers_config_from_ldm(plain, {}, image_size=latent * 8)
            ).eval()
        z = torch.randn(1, 4, latent, latent)
        return (lambda: ours.decode(z)), (lambda: theirs.decode(z).sample)

    return build


WORKLOADS = [
    Workload(
        "sd2.1 unet",
        image_unet("sd2.1_768", 96, 1024, None),
        "768x768, batch 1",
    ),
    Workload(
        "sdxl unet",
        image_unet("sdxl_base_1.0", 128, 2048, 2816),
        "1024x1024, batch 1",
    ),
    Workload("svd-xt unet", video_unet(25, 72, 128), "25 frames 576x1024"),
    Workload("sdxl vae decode", vae_decoder(128), "1024x1024"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run the workloads whose name contains this")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0,
        help="accelerator's dense fp16/bf16 rate (H100 SXM: 989)",
    )
    args = parser.parse_args()
    totals = {}
    print(
        f"{'network':<18}{'size':<22}{'sgm TFLOP':>11}{'diffusers':>11}{'ratio':>8}{'floor ms':>10}"
    )
    for workload in WORKLOADS:
        if args.only and args.only not in workload.name:
            continue
        with torch.device("meta"):
            run_ours, run_theirs = workload.build()
            ours, theirs = count(run_ours), count(run_theirs)
        floor_ms = ours / (args.peak_tflops * 1e12) * 1e3
        totals[workload.name] = ours
        print(
            f"{workload.name:<18}{workload.description:<22}{ours / 1e12:11.3f}"
            f"{theirs / 1e12:11.3f}{ours / theirs:8.4f}{floor_ms:10.2f}"
        )
    # Whole runs: every step runs the network on the conditional and unconditional batch.
    runs = {
        "SDXL 1024x1024, 30 steps, CFG": 30 * 2 * totals.get("sdxl unet", 0)
        + totals.get("sdxl vae decode", 0),
        "SVD-XT 25 frames 576x1024, 25 steps, CFG": 25 * 2 * totals.get("svd-xt unet", 0),
    }
    for name, flop in runs.items():
        if flop:
            print(
                f"compute floor of {name} at {args.peak_tflops:g} TFLOP/s: "
                f"{flop / (args.peak_tflops * 1e12):.2f} s (network{' + decode' if 'SDXL' in name else ''})"
            )


if __name__ == "__main__":
    main()
