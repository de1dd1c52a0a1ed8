"""The one ``tritonvision`` command: export, verify, serve, embed, demo, bench.

Each subcommand lives with its concern (``export/_cli.py``, ``serve/_cli.py``, ...) and
registers itself here; heavy imports (torch, onnx) stay inside the handlers.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# (module, function) pairs that add a subcommand; a missing optional piece is skipped.
_SUBCOMMANDS: tuple[tuple[str, str], ...] = (
    ("tritonvision.export._cli", "add_export_parser"),
    ("tritonvision.export._cli", "add_verify_parser"),
    ("tritonvision.serve._cli", "add_serve_parser"),
    ("tritonvision.client._cli", "add_embed_parser"),
    ("tritonvision._demo", "add_demo_parser"),
    ("tritonvision._bench_cli", "add_bench_parser"),
)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="tritonvision",
        description="Export vision encoders to Triton, serve them locally, embed images.",
    )
    parser.add_argument("--version", action="version", version=f"tritonvision {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name, function in _SUBCOMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("tritonvision"):
                continue
            raise
        getattr(module, function)(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
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
        return 130


if __name__ == "__main__":
    sys.exit(main())
