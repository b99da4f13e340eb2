"""SVD-XT 1.1 image-to-video page (Gradio).

    python scripts/demo/gradio_app.py [--checkpoints DIR] [--device cuda] [--share]

Reads ``checkpoints/svd_xt_1_1.safetensors`` (nothing is downloaded; the page says where
the file goes when it is missing) and writes ``outputs/demo/{count:06d}.mp4``. The page
is served on localhost only unless ``--share`` / ``--server_name`` say otherwise.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from sgm.cli import ArgumentParser, positive_int, run
from sgm.demo.gradio_launch import add_server_arguments, page_parser, serve


def build_parser() -> ArgumentParser:
    parser = page_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--num_steps", type=positive_int, default=30)
    parser.add_argument(
        "--decoding_t",
        type=positive_int,
        default=7,
        help="frames decoded at a time (lower uses less memory)",
    )
    parser.add_argument(
        "--low_vram",
        action="store_true",
        help="keep the model on the host, move parts to the device as they run",
    )
    add_server_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def build(options):
        from sgm.demo.gradio_svd import SvdApp, build_demo

        app = SvdApp(
            options, steps=args.num_steps, decoding_t=args.decoding_t, low_vram=args.low_vram
        )
        return build_demo(app)

    return run(lambda: serve(args, build, max_queue=20), prog="gradio_app.py")


if __name__ == "__main__":
    sys.exit(main())
