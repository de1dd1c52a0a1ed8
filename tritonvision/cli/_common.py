"""What every ``tritonvision`` subcommand shares: exit codes, argument types, the server URL.

Exit codes (all commands)::

    0  success
    1  the job ran but some of it failed (items not embedded, a mismatch found)
    2  bad usage or input, or the server cannot be used
    130 interrupted (Ctrl-C); 128 + N for signal N
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, TypeAlias
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_SERVER",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_SIGNAL_BASE",
    "EXIT_USAGE",
    "SERVER_SCHEMES",
    "SubParsers",
    "add_header_argument",
    "add_server_argument",
    "merge_headers",
    "normalize_server_url",
    "positive_float",
    "positive_int",
    "usage_error",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SIGNAL_BASE = 128
EXIT_INTERRUPTED = EXIT_SIGNAL_BASE + 2  # SIGINT

DEFAULT_SERVER = "http://127.0.0.1:8000"

SERVER_SCHEMES: tuple[str, ...] = ("http", "https", "grpc", "grpcs")
"""The URL schemes ``--server`` takes (a command may take fewer)."""

# What ``register(subparsers)`` receives; argparse's class is generic only to type checkers.
if TYPE_CHECKING:
    SubParsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    SubParsers = argparse._SubParsersAction


def normalize_server_url(text: str) -> str:
    """A Triton URL from what a user typed; the one rule for every ``--server``.

    - ``http://``, ``https://``, ``grpc://`` and ``grpcs://`` URLs are kept as given (less a
      trailing ``/``);
    - a bare ``host:port`` or ``host`` (no ``scheme://``) means HTTP: ``http://host:port``;
    - anything else (another scheme, no host, a bad port) raises ``ValueError`` naming it.
    """
    value = text.strip()
    if not value:
        raise ValueError("server URL is empty")
    if "://" not in value:
        value = "http://" + value
    parts = urlsplit(value)
    if parts.scheme.lower() not in SERVER_SCHEMES:
        raise ValueError(
            f"server URL {text!r}: scheme must be one of {', '.join(SERVER_SCHEMES)} "
            "(or give a bare host:port for HTTP)"
        )
    if not parts.hostname:
        raise ValueError(f"server URL {text!r} has no host")
    try:
        parts.port  # noqa: B018  (validates the port)
    except ValueError:
        raise ValueError(f"server URL {text!r} has an invalid port") from None
    return value.rstrip("/")


def _server_url_type(schemes: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        try:
            url = normalize_server_url(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        scheme = urlsplit(url).scheme.lower()
        if scheme not in schemes:
            raise argparse.ArgumentTypeError(
                f"server URL {text!r}: this command takes {' or '.join(f'{s}://' for s in schemes)}"
                " URLs only"
            )
        return url

    return parse


def add_server_argument(
    parser: argparse.ArgumentParser,
    *,
    default: str | None = DEFAULT_SERVER,
    schemes: tuple[str, ...] = SERVER_SCHEMES,
) -> None:
    """``--server URL``: Triton's HTTP or gRPC URL; a bare host:port means http://host:port.

    The value is normalised by :func:`normalize_server_url`; ``schemes`` narrows the
    schemes a command can use (``verify`` talks HTTP only), refused at parse time.
    """
    unknown = set(schemes) - set(SERVER_SCHEMES)
    if not schemes or unknown:
        raise ValueError(f"schemes must be some of {SERVER_SCHEMES}, got {schemes!r}")
    if schemes == SERVER_SCHEMES:
        shape = "http://HOST:PORT or grpc://HOST:PORT"
    else:
        shape = " or ".join(f"{s}://HOST:PORT" for s in schemes)
    if "http" in schemes:
        shape += "; a bare HOST:PORT means http://HOST:PORT"
    parser.add_argument(
        "--server",
        type=_server_url_type(schemes),
        default=default,
        metavar="URL",
        help=f"Triton URL: {shape}" + (" (default %(default)s)" if default else ""),
    )


def _header_type(text: str) -> tuple[str, str]:
    from tritonvision.client import parse_header  # the one rule, shared with the environment
    from tritonvision.errors import InvalidInput

    try:
        return parse_header(text)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_header_argument(parser: argparse.ArgumentParser) -> None:
    """``--header 'Name: value'`` (repeatable): sent to Triton with every request.

    For an authenticating proxy or a restricted Triton; never sent to image URLs. Secrets
    are better passed in ``TRITONVISION_HEADERS`` (one ``Name: value`` per line), which a
    process listing does not show; ``--header`` wins over it for the same name.
    """
    parser.add_argument(
        "--header",
        dest="headers",
        action="append",
        type=_header_type,
        default=[],
        metavar="'NAME: VALUE'",
        help=(
            "HTTP header (gRPC metadata) sent to Triton with every request, e.g. "
            "'Authorization: Bearer TOKEN' (repeatable; never sent to image URLs; "
            "prefer TRITONVISION_HEADERS for secrets)"
        ),
    )


def merge_headers(base: Mapping[str, str], extra: Iterable[tuple[str, str]]) -> dict[str, str]:
    """``base`` with ``extra`` headers added; a name in both (any case) takes ``extra``'s."""
    merged = dict(base)
    for name, value in extra:
        for old in [k for k in merged if k.lower() == name.lower()]:
            del merged[old]
        merged[name] = value
    return merged


def usage_error(command: str, message: str) -> int:
    """Print ``tritonvision COMMAND: error: MESSAGE`` to stderr; returns :data:`EXIT_USAGE`."""
    print(f"tritonvision {command}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def positive_int(text: str) -> int:
    """An argparse type: an integer > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value
