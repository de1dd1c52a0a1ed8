"""``tritonvision verify``: a thin face over :func:`tritonvision.export.verify_server` and,
when the server has the text tower (``NAME_texts``), ``verify_text_server``.

Exit codes (:mod:`._common`): 0 every served model checked agrees with PyTorch; 1 one does
not, or could not be checked (not ready, unreachable); 2 bad options or checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from tritonvision.contract import DEFAULT_MODEL, texts_name

from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    SubParsers,
    add_header_argument,
    add_server_argument,
    merge_headers,
)
from .export import UNTRAINED_WARNING

__all__ = ["register"]

# verify_server talks to Triton through tritonclient.http, without TLS.
_SCHEMES = ("http",)


def register(subparsers: SubParsers) -> argparse.ArgumentParser:
    """Add ``verify`` to the ``tritonvision`` subcommands."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "verify",
        help="compare a live Triton encoder with PyTorch on sample images",
        description=(
            "Embed sample images through a running Triton (HTTP) and through PyTorch on the "
            "same pixels; when the server also has NAME_texts (export --text), embed sample "
            "sentences (short, over-long, non-ASCII) through it and through transformers; exit 1 "
            "if they differ beyond the encoder family's tolerance."
        ),
    )
    add_server_argument(parser, schemes=_SCHEMES)
    add_header_argument(parser)
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help=(
            "checkpoint the model was exported from (default: the source the model publishes "
            "when that directory is here, else the built-in default)"
        ),
    )
    parser.add_argument("--name", default=DEFAULT_MODEL, help="encoder model name (%(default)s)")
    parser.add_argument(
        "--no-text",
        dest="text",
        action="store_false",
        help="skip the text tower (default: check NAME_texts when the server has it)",
    )
    parser.set_defaults(func=run_verify)
    return parser


def run_verify(args: argparse.Namespace) -> int:
    """The ``verify`` handler; returns the exit code (see the module docstring)."""
    from tritonvision.client import ClientConfig
    from tritonvision.errors import InvalidInput
    from tritonvision.export import (
        CheckpointError,
        VerificationError,
        VerifyReport,
        verify_server,
        verify_text_server,
    )

    try:
        # Headers for Triton only: TRITONVISION_HEADERS, then each --header (which wins).
        headers = merge_headers(ClientConfig.from_env().headers, args.headers)
    except InvalidInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    def image() -> VerifyReport | None:
        return verify_server(
            args.server, checkpoint=args.checkpoint, name=args.name, headers=headers
        )

    def text() -> VerifyReport | None:
        return verify_text_server(
            args.server,
            checkpoint=args.checkpoint,
            name=args.name,
            headers=headers,
            optional=True,
        )

    checks: list[Callable[[], VerifyReport | None]] = [image, text] if args.text else [image]
    code = EXIT_OK
    for check in checks:
        try:
            report = check()
        except CheckpointError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except VerificationError as exc:
            print(f"verify FAILED: {exc}", file=sys.stderr)
            if exc.report is not None:
                for sample, cosine in zip(exc.report.images, exc.report.cosines, strict=True):
                    print(f"  {sample}: cosine {cosine:.7f}", file=sys.stderr)
            code = EXIT_FAILED
            continue
        if report is None:
            print(f"no {texts_name(args.name)} on the server: text tower not checked")
            continue
        print(report.describe())
        print(f"served source: {report.served_source}; reference: {report.reference_source}")
        if report.reference_source.startswith("builtin:"):
            print(UNTRAINED_WARNING)
    return code
