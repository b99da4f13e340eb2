"""SV4D novel-view video page (Gradio).

    python scripts/demo/gradio_app_sv4d.py [--checkpoints DIR] [--device cuda] [--share]

Reads ``checkpoints/sv4d.safetensors`` and ``checkpoints/sv3d_u.safetensors`` (nothing is
downloaded; the page says where a missing file goes) and writes
``outputs/demo/sv4d/{n:06d}_t000.mp4`` (SV3D's views of the first frame) and
``{n:06d}_grid.mp4`` (the input view and the eight novel views, 3 x 3). A small local model
runs with ``--configs DIR`` (configs under the released names) or ``--config/--ckpt``
(the SV4D model). Served on localhost only unless ``--share`` / ``--server_name`` say
otherwise.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from sgm.cli import ArgumentParser, multiple_of, run
from sgm.demo.gradio_launch import add_server_arguments, page_parser, serve
from sgm.inference.releases import releases

SV3D_VERSIONS = [r.name for r in releases("video") if r.is_sv3d]


def build_parser() -> ArgumentParser:
    parser = page_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--img_size", type=multiple_of(64), default=576)
    parser.add_argument("--sv3d_version", choices=SV3D_VERSIONS, default="sv3d_u")
    parser.add_argument(
        "--low_vram",
        action="store_true",
        help="keep the models on the host, move parts to the device as they run",
    )
    add_server_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def build(options):
        from sgm.demo.gradio_sv4d import Sv4dApp, build_demo

        app = Sv4dApp(
            options, img_size=args.img_size, sv3d_version=args.sv3d_version, low_vram=args.low_vram
        )
        return build_demo(app)

    return run(lambda: serve(args, build, max_queue=4), prog="gradio_app_sv4d.py")


if __name__ == "__main__":
    sys.exit(main())
