"""The one ``tritonvision`` command.

One module per subcommand (``tritonvision/cli/<command>.py``), each with
``register(subparsers)`` that adds its parser and sets ``func``; shared exit codes,
argument types and the server-URL rule live in :mod:`._common`. Handlers import the heavy
parts (torch, onnx, the embed job) only when they run, so ``tritonvision --help`` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from ._common import EXIT_INTERRUPTED

__all__ = ["COMMANDS", "build_parser", "main"]

# In the order ``--help`` lists them.
COMMANDS: tuple[str, ...] = (
    "export",
    "verify",
    "serve",
    "embed",
    "search",
    "demo",
    "bench",
    "deploy",
)


def build_parser() -> argparse.ArgumentParser:
    from tritonvision import __version__

    parser = argparse.ArgumentParser(
        prog="tritonvision",
        description="Export vision encoders to Triton, serve them, embed and search images.",
    )
    parser.add_argument("--version", action="version", version=f"tritonvision {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        module = importlib.import_module(f"{__name__}.{command}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tritonvision``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
