"""What the Gradio page scripts share: server flags, strict option checks, launching."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ..cli import ArgumentParser, port
from .options import DemoOptions, add_page_arguments, demo_options


def page_parser(description: str) -> ArgumentParser:
    """A parser with the model-location flags; the caller adds the page's own flags and
    then :func:`add_server_arguments`."""
    parser = ArgumentParser(description=description)
    add_page_arguments(parser)
    return parser


def add_server_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--server_name", default="127.0.0.1")
    parser.add_argument("--port", type=port, default=7860, help="TCP port, 1 .. 65535")
    parser.add_argument(
        "--share",
        action="store_true",
        help="also serve through a public Gradio link (off by default)",
    )


def serve(args: argparse.Namespace, build: Callable[[DemoOptions], Any], max_queue: int) -> None:
    """Check the options strictly (a file named on the command line must exist), build the
    page with ``build(options)`` and serve it until interrupted."""
    options = demo_options(parsed=args, strict=True)
    demo = build(options)
    demo.queue(max_size=max_queue).launch(
        share=args.share, server_name=args.server_name, server_port=args.port
    )
