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


def build_parser() -> ArgumentParser:
    from sgm.demo.options import add_page_arguments

    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    add_page_arguments(parser)
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
    parser.add_argument("--server_name", default="127.0.0.1")
    parser.add_argument("--port", type=positive_int, default=7860)
    parser.add_argument(
        "--share",
        action="store_true",
        help="also serve through a public Gradio link (off by default)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def serve() -> None:
        from sgm.demo.gradio_svd import SvdApp, build_demo
        from sgm.demo.options import demo_options

        options = demo_options(parsed=args)
        app = SvdApp(
            options, steps=args.num_steps, decoding_t=args.decoding_t, low_vram=args.low_vram
        )
        demo = build_demo(app)
        demo.queue(max_size=20).launch(
            share=args.share, server_name=args.server_name, server_port=args.port
        )

    return run(serve, prog="gradio_app.py")


if __name__ == "__main__":
    sys.exit(main())
