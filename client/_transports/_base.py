"""What every transport shares: the :class:`Transport` interface, :class:`InferOutcome`,
Triton URL parsing, and :func:`translate_errors`, the one place where aiohttp, asyncio and
OS exceptions of a Triton call become the client's typed errors.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import numpy.typing as npt

from tritonvision.errors import (
    InvalidInput,
    RequestTimeout,
    ServerError,
    ServerUnavailable,
    TritonVisionError,
)

from .._protocol import InputTensor, ModelConfig, classify_server_error

__all__ = ["InferOutcome", "Transport", "parse_server_url", "translate_errors"]


@dataclass(frozen=True)
class InferOutcome:
    """What one inference request returned, and what it cost on the wire."""

    outputs: Mapping[str, npt.NDArray[Any]]
    bytes_sent: int


class Transport(abc.ABC):
    """How the client talks to Triton. Implementations hold no per-call state."""

    scheme: str
    host: str
    # ``host:port`` the client's HTTP session must reach although it is usually a private
    # address (the URL policy exempts it); None when Triton is not reached over that session.
    session_endpoint: str | None

    @abc.abstractmethod
    async def open(self, stack: AsyncExitStack, session: aiohttp.ClientSession) -> None:
        """Create loop-bound resources on the running loop; register their cleanup."""

    @abc.abstractmethod
    async def model_config(self, model: str, version: str, *, timeout_s: float) -> ModelConfig:
        """The model's configuration as Triton reports it."""

    @abc.abstractmethod
    async def infer(
        self,
        model: str,
        version: str,
        inputs: Sequence[InputTensor],
        outputs: Sequence[str],
        *,
        timeout_s: float,
    ) -> InferOutcome:
        """Run one inference request (``timeout_s`` also goes to Triton as ``timeout``)."""


def parse_server_url(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of a Triton URL; raises :class:`InvalidInput` if unusable."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https", "grpc", "grpcs"):
        raise InvalidInput(
            f"Triton URL must start with http://, https:// or grpc://, got {url!r}", source=url
        )
    try:
        port = parts.port
    except ValueError:
        raise InvalidInput(f"Triton URL has an invalid port: {url!r}", source=url) from None
    if not parts.hostname:
        raise InvalidInput(f"Triton URL has no host: {url!r}", source=url)
    default_port = {"http": 8000, "https": 443, "grpc": 8001, "grpcs": 443}[scheme]
    return scheme, parts.hostname, port or default_port


@contextmanager
def translate_errors(*, model: str | None = None, source: object = None) -> Iterator[None]:
    """Turn aiohttp / asyncio / OS failures of a Triton call into typed errors.

    Always ``raise ... from exc``; our own errors and ``asyncio.CancelledError``
    (a ``BaseException``) pass through untouched, and so does anything unknown. The gRPC
    transport maps tritonclient's and grpc's exceptions first (``_grpc.grpc_errors``).
    """
    where = f" (model {model!r})" if model else ""
    try:
        yield
    except TritonVisionError:
        raise
    except aiohttp.ClientResponseError as exc:
        raise classify_server_error(exc.status, exc.message, model=model, source=source) from exc
    except aiohttp.ConnectionTimeoutError as exc:
        raise ServerUnavailable(
            f"connecting to Triton timed out{where}: {exc}", source=source
        ) from exc
    except TimeoutError as exc:  # aiohttp's read/total timeouts, asyncio.timeout
        raise RequestTimeout(
            f"Triton did not answer within the request timeout{where}", source=source
        ) from exc
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError) as exc:
        raise ServerUnavailable(f"cannot reach Triton{where}: {exc!r}", source=source) from exc
    except aiohttp.InvalidURL as exc:
        raise InvalidInput(f"invalid Triton URL: {exc}", source=source) from exc
    except aiohttp.ClientError as exc:
        raise ServerError(
            f"unusable answer from Triton{where}: {exc!r}", status=0, model=model, source=source
        ) from exc
    except OSError as exc:
        raise ServerUnavailable(f"cannot reach Triton{where}: {exc!r}", source=source) from exc
