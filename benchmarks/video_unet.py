"""Forward latency and peak memory: sgm VideoUNet vs diffusers UNetSpatioTemporalConditionModel.

Both networks hold the same tensors (the sgm -> diffusers SVD key map of
``sgm.convert.svd_keys``, which the parity tests use too) and see the same inputs, dtype and
thread count. The architecture is SVD's (scripts/sampling/configs/svd.yaml) with
``model_channels`` reduced so it fits a CPU.

    python benchmarks/video_unet.py --model-channels 64 --frames 8 --height 16 --width 16
"""

from __future__ import annotations

# sgm must be imported before torchvision and diffusers.
# isort: skip_file

import argparse
import os
import sys

import sgm  # noqa: F401  (must precede diffusers)

# isort: split
import torch
from omegaconf import OmegaConf

from sgm.inference.releases import config_path

from _common import interleaved, memory_in_fresh_process, print_summary, report_memory

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CONFIG = str(config_path("svd"))
from sgm.convert.svd_keys import svd_unet_key_map as make_key_map  # noqa: E402

TIME_EMBED_DIM = 256  # fps_id, motion_bucket_id, cond_aug: 3 x 256 = adm_in_channels


def build(args):
    from diffusers import UNetSpatioTemporalConditionModel

    from sgm.modules.diffusionmodules.video_model import VideoUNet

    params = OmegaConf.to_container(OmegaConf.load(CONFIG).model.params.network_config.params)
    params.update(model_channels=args.model_channels, use_checkpoint=False)
    torch.manual_seed(0)
    ours = VideoUNet(**params).eval()
    with torch.no_grad():
        for name, p in ours.named_parameters():
            p.normal_(0, 1.0 if name.endswith("mix_factor") else 0.02)
    mc, mult, nrb = params["model_channels"], params["channel_mult"], params["num_res_blocks"]
    n = len(mult)
    theirs = UNetSpatioTemporalConditionModel(
        in_channels=params["in_channels"],
        out_channels=params["out_channels"],
        block_out_channels=tuple(mc * m for m in mult),
        down_block_types=("CrossAttnDownBlockSpatioTemporal",) * (n - 1)
        + ("DownBlockSpatioTemporal",),
        up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * (n - 1),
        layers_per_block=nrb,
        cross_attention_dim=params["context_dim"],
        addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=params["adm_in_channels"],
        num_attention_heads=tuple(mc * m // params["num_head_channels"] for m in mult),
    ).eval()
    convert = make_key_map(nrb)
    theirs.load_state_dict({convert(k): v for k, v in ours.state_dict().items()}, strict=True)
    # sgm normalises every residual block with eps 1e-5; diffusers uses 1e-6 in some.
    ours_modules = dict(ours.named_modules())
    inverse = {convert(k): k for k in ours.state_dict()}
    for name, module in theirs.named_modules():
        if isinstance(module, torch.nn.GroupNorm):
            module.eps = ours_modules[inverse[f"{name}.weight"].rsplit(".", 1)[0]].eps
    if args.dtype != torch.float32:
        ours, theirs = ours.to(args.dtype), theirs.to(args.dtype)
    return ours, theirs, params


def make_inputs(args, ours, theirs, params):
    from sgm.modules.diffusionmodules.util import timestep_embedding

    g = torch.Generator().manual_seed(0)
    b, f, dt = 1, args.frames, args.dtype
    x = torch.randn(b, f, params["in_channels"], args.height, args.width, generator=g).to(dt)
    t = torch.full((b,), 250.0)
    ctx = torch.randn(b, 1, params["context_dim"], generator=g).to(dt)
    ids = torch.tensor([[6.0, 127.0, 0.02]] * b)
    y = torch.cat([timestep_embedding(ids[:, i], TIME_EMBED_DIM) for i in range(3)], 1).to(dt)

    def run_ours():
        out = ours(
            x.flatten(0, 1),
            t.repeat_interleave(f),
            context=ctx.repeat_interleave(f, dim=0),
            y=y.repeat_interleave(f, dim=0),
            num_video_frames=f,
            image_only_indicator=torch.zeros(b, f, dtype=dt),
        )
        return out.reshape(b, f, *out.shape[1:])

    def run_theirs():
        return theirs(x, t, ctx, ids.to(dt)).sample

    return {"sgm": run_ours, "diffusers": run_theirs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-channels", type=int, default=64)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--height", type=int, default=16, help="latent height")
    parser.add_argument("--width", type=int, default=16, help="latent width")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--memory-of", choices=["sgm", "diffusers"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    argv = sys.argv[1:]
    args.dtype = getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)

    ours, theirs, params = build(args)
    runs = make_inputs(args, ours, theirs, params)
    if args.memory_of:
        report_memory(runs[args.memory_of])
        return
    n_params = sum(p.numel() for p in ours.parameters())
    print(
        f"SVD architecture, model_channels={args.model_channels} ({n_params / 1e6:.0f}M "
        f"params), latents 1x{args.frames}x{params['in_channels']}x{args.height}x{args.width}, "
        f"{args.dtype}, {args.threads} threads, median of {args.repeats}"
    )
    results = interleaved(runs, args.repeats)
    peaks = {name: memory_in_fresh_process(__file__, argv, name) for name in runs}
    print_summary(results, peaks, [("sgm", "diffusers")])


if __name__ == "__main__":
    main()
