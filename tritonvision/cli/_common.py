"""What every ``tritonvision`` subcommand shares: exit codes, argument types, the server URL.

Exit codes (all commands)::

    0  success
    1  the job ran but some of it failed (items not embedded, a mismatch found)
    2  bad usage or input, or the server cannot be used
    130 interrupted (Ctrl-C); 128 + N for signal N
"""

from __future__ import annotations

import argparse
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_SERVER",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_SIGNAL_BASE",
    "EXIT_USAGE",
    "SubParsers",
    "add_server_argument",
    "normalize_server_url",
    "positive_float",
    "positive_int",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SIGNAL_BASE = 128
EXIT_INTERRUPTED = EXIT_SIGNAL_BASE + 2  # SIGINT

DEFAULT_SERVER = "http://127.0.0.1:8000"

_SCHEMES = ("http", "https", "grpc", "grpcs")

SubParsers = argparse._SubParsersAction  # type: ignore[type-arg]


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
    if parts.scheme.lower() not in _SCHEMES:
        raise ValueError(
            f"server URL {text!r}: scheme must be one of {', '.join(_SCHEMES)} "
            "(or give a bare host:port for HTTP)"
        )
    if not parts.hostname:
        raise ValueError(f"server URL {text!r} has no host")
    try:
        parts.port  # noqa: B018  (validates the port)
    except ValueError:
        raise ValueError(f"server URL {text!r} has an invalid port") from None
    return value.rstrip("/")


def _server_url_type(text: str) -> str:
    try:
        return normalize_server_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_server_argument(
    parser: argparse.ArgumentParser, *, default: str | None = DEFAULT_SERVER
) -> None:
    """``--server URL``: Triton's HTTP or gRPC URL; a bare host:port means http://host:port."""
    parser.add_argument(
        "--server",
        type=_server_url_type,
        default=default,
        metavar="URL",
        help=(
            "Triton URL: http://HOST:PORT or grpc://HOST:PORT; a bare HOST:PORT means "
            "http://HOST:PORT" + (" (default %(default)s)" if default else "")
        ),
    )


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
