"""Transports move KServe v2 requests to Triton and bytes back; no protocol logic here.

``http://`` / ``https://`` URLs use :class:`~._http.HttpTransport` over the client's one
``aiohttp.ClientSession``; ``grpc://`` uses :class:`~._grpc.GrpcTransport` with one
``tritonclient.grpc.aio`` client (one channel). Both are opened lazily, on the client's
loop, inside a coroutine, and registered on the client's ``AsyncExitStack``.

The interface and the shared error translation live in ``_base``; this package only
re-exports them and picks a transport for a URL.
"""

from __future__ import annotations

from collections.abc import Mapping

from ._base import InferOutcome, Transport, parse_server_url, translate_errors

__all__ = [
    "InferOutcome",
    "Transport",
    "make_transport",
    "parse_server_url",
    "translate_errors",
]


def make_transport(
    url: str, *, connect_timeout_s: float, headers: Mapping[str, str] | None = None
) -> Transport:
    """The transport for a Triton URL (scheme picks HTTP/REST or gRPC).

    ``headers`` go with every request to Triton (gRPC: as metadata) and nowhere else.
    """
    scheme, host, port = parse_server_url(url)
    if scheme in ("http", "https"):
        from ._http import HttpTransport

        return HttpTransport(url, connect_timeout_s=connect_timeout_s, headers=headers)
    # Imported here: only gRPC mode needs it (it is the one module touching grpc errors).
    from ._grpc import GrpcTransport

    return GrpcTransport(host, port, ssl=scheme == "grpcs", headers=headers)
