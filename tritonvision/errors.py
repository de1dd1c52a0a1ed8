"""The tritonvision exception tree: one root for the client, the exporter and the apps.

Every error tritonvision raises derives from :class:`TritonVisionError`, so one
``except TritonVisionError`` catches them all; the subclasses let callers react
to one kind of failure. Where a built-in fits, the subclass inherits it too
(a timeout is also a ``TimeoutError``, bad input also a ``ValueError``)::

    TritonVisionError
    ├── InvalidInput (ValueError)            an argument or source the client cannot use
    │   ├── ImageTooLarge                    base64 / byte size over the configured limit
    │   └── IndexFileError, DimensionMismatch  ``tritonvision.search``: unusable index / query
    ├── FetchError                           fetching an image URL failed
    │   ├── FetchStatusError                 the server answered 4xx/5xx (``status``)
    │   ├── FetchTimeout (TimeoutError)      connect/read deadline passed
    │   ├── FetchTooLarge                    body bigger than ``max_fetch_bytes``
    │   └── BlockedAddress                   URL refused: internal address or bad scheme
    ├── DecodeError (ValueError)             the bytes are not a usable image
    │   └── DecompressionBomb                more pixels than ``max_image_pixels``
    ├── ServerError                          Triton answered an error (status, message)
    │   ├── ServerOverloaded                 503 / UNAVAILABLE / queue full: transient
    │   ├── AuthenticationError              401 / 403 / restricted API: never retried
    │   └── ProtocolError                    a malformed KServe v2 answer
    ├── ServerUnavailable (ConnectionError)  cannot reach Triton (refused, reset, DNS)
    ├── RequestTimeout (TimeoutError)        Triton did not answer within the request timeout
    ├── ModelConfigError                     the model does not publish what the client needs
    ├── RuntimeUnavailable (RuntimeError)    the client is closed or its loop thread died
    │   └── ClientClosed                     ``close()`` was called
    ├── BatchError                           ``BatchEmbedding.raise_for_errors()`` (``.errors``)
    ├── UsageError (ValueError), JobAborted  ``tritonvision.embed``: bad job input / job stopped
    └── ExportError (tritonvision.export)    the exporter could not produce or confirm a model
        ├── CheckpointError (ValueError)     the checkpoint cannot be exported as given
        ├── ExportValidationError            the ONNX model does not match PyTorch
        └── VerificationError                a live Triton model does not match PyTorch

Each message names the input it is about (``source=...``), so a failing item in a
batch of thousands can be found.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

__all__ = [
    "AuthenticationError",
    "BatchError",
    "BlockedAddress",
    "ClientClosed",
    "DecodeError",
    "DecompressionBomb",
    "FetchError",
    "FetchStatusError",
    "FetchTimeout",
    "FetchTooLarge",
    "ImageTooLarge",
    "InvalidInput",
    "ModelConfigError",
    "ProtocolError",
    "RequestTimeout",
    "RuntimeUnavailable",
    "ServerError",
    "ServerOverloaded",
    "ServerUnavailable",
    "TritonVisionError",
    "describe_source",
    "redact_credentials",
]

_MAX_SOURCE_REPR = 96
_REDACT_SCAN = 4096

# ``scheme://user:password@`` (up to the last "@" before the path): the userinfo part.
# The scheme's length is bounded so that a long run of letters (an error quoting a body)
# costs linear time, not quadratic; a longer scheme still matches through its last 32 chars.
_URL_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]{0,31}://)[^/?#\s@]*(?:@[^/?#\s@]*)*@")

# The value of a query parameter whose name looks like a credential: ``token``,
# ``access_token``, ``sig``, ``signature``, ``key``, ``api_key``, ``apikey``, ``secret``,
# ``password``, ``credential``, ``X-Amz-Signature``, ``X-Amz-Credential``,
# ``X-Amz-Security-Token``, ``X-Goog-Signature``, ``X-Goog-Credential``, ... (a name is
# words joined by ``_ . -``; its last word decides). Matched only right after ``?``, ``&``
# or ``;``: name characters are none of those, so every run is scanned once (linear time).
_SECRET_WORDS = (
    "token|sig|signature|key|apikey|secret|password|passwd|pwd|credential|credentials"
    "|auth|authorization|code|awsaccesskeyid|googleaccessid"
)
_URL_SECRET_PARAM = re.compile(
    rf"([?&;](?:[A-Za-z0-9]+[_.\-])*(?:{_SECRET_WORDS})=)[^&#;\s'\"<>]*", re.IGNORECASE
)
_REDACTED = "***"


def redact_credentials(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced by ``***``.

    Both the ``user:password@`` part (``https://***@host/``) and the values of
    credential-looking query parameters (``?X-Amz-Signature=***&x=1``, ``&token=***``)
    are redacted. Linear in ``len(text)``.
    """
    if "@" in text:
        text = _URL_USERINFO.sub(r"\1***@", text)
    if "=" in text:
        text = _URL_SECRET_PARAM.sub(rf"\1{_REDACTED}", text)
    return text


def describe_source(source: object) -> str:
    """A short, log-safe description of an input, for error messages.

    Credentials in URLs (``https://user:password@host/...``, ``?token=...``,
    ``X-Amz-Signature=...``) are redacted: messages end up in logs. The exception's
    ``source`` attribute keeps the input as it was given.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        return f"<{len(source)} bytes>"
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, str):
        length = len(source)
        if not source.startswith("data:") and "://" in source[:_REDACT_SCAN]:
            # Redacted before shortening, so a cut never leaves part of a secret visible;
            # only the head is scanned: at most its first 40 characters are shown.
            source = redact_credentials(source[:_REDACT_SCAN])
        if source.startswith("data:") or length > _MAX_SOURCE_REPR:
            return repr(source[:40] + f"...<{length} chars>")
        return repr(source)
    name = type(source).__name__
    size = getattr(source, "size", None)
    return f"<{name} size={size}>" if size is not None else f"<{name}>"


class TritonVisionError(Exception):
    """Root of every error raised by tritonvision's client.

    ``source`` is the input the error is about (a path, URL, index...), or None.
    """

    def __init__(self, message: str, *, source: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.source = source

    def __reduce__(self) -> tuple[object, ...]:
        # Keep keyword-only fields across pickling (errors cross process pools).
        return (_rebuild, (type(self), self.message, self.__dict__))


def _rebuild(cls: type[TritonVisionError], message: str, state: dict[str, object]) -> object:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class InvalidInput(TritonVisionError, ValueError):
    """An argument or image source the client cannot use."""


class ImageTooLarge(InvalidInput):
    """An inline image (bytes or base64) is bigger than the configured limit."""


class FetchError(TritonVisionError):
    """Fetching an image URL failed."""


class FetchStatusError(FetchError):
    """The image server answered with an HTTP error status."""

    def __init__(self, message: str, *, source: object = None, status: int) -> None:
        super().__init__(message, source=source)
        self.status = status


class FetchTimeout(FetchError, TimeoutError):
    """Connecting to, or reading from, an image URL took too long."""


class FetchTooLarge(FetchError):
    """An image URL's body is larger than ``max_fetch_bytes``."""


class BlockedAddress(FetchError):
    """A URL is refused by the URL policy (scheme, or an internal address)."""


class DecodeError(TritonVisionError, ValueError):
    """The bytes are not an image Pillow can decode, or the image is truncated."""


class DecompressionBomb(DecodeError):
    """The image declares more pixels than ``max_image_pixels``."""


class ServerError(TritonVisionError):
    """Triton answered a request with an error.

    ``status`` is the HTTP status (or the gRPC status code's HTTP equivalent),
    ``server_message`` Triton's own text.
    """

    def __init__(
        self,
        message: str,
        *,
        source: object = None,
        status: int,
        server_message: str = "",
        model: str | None = None,
    ) -> None:
        super().__init__(message, source=source)
        self.status = status
        self.server_message = server_message
        self.model = model


class ServerOverloaded(ServerError):
    """Triton refused work for now (503, gRPC UNAVAILABLE, queue full): worth a retry."""


class AuthenticationError(ServerError):
    """Triton (or the proxy in front of it) refused the caller: HTTP 401/403, gRPC
    UNAUTHENTICATED / PERMISSION_DENIED, or a restricted API without its header.

    Never retried: the same credentials fail the same way. Check ``ClientConfig.headers``
    (``TRITONVISION_HEADERS``, ``--header``).
    """


class ProtocolError(ServerError):
    """The server's answer is not a well-formed KServe v2 response.

    A subclass of :class:`ServerError` (the server is the party at fault);
    ``status`` is the HTTP status that came with the malformed body (0 if unknown).
    """


class ServerUnavailable(TritonVisionError, ConnectionError):
    """Triton cannot be reached (connection refused/reset, DNS failure)."""


class RequestTimeout(TritonVisionError, TimeoutError):
    """Triton did not answer within the request timeout."""


class ModelConfigError(TritonVisionError):
    """The model's config lacks what the client needs (e.g. published preprocessing)."""


class RuntimeUnavailable(TritonVisionError, RuntimeError):
    """The client's shared runtime cannot take work: closed, or its loop thread died."""


class ClientClosed(RuntimeUnavailable):
    """The client was closed; calls after ``close()`` fail at once."""


class BatchError(TritonVisionError):
    """Raised by :meth:`BatchEmbedding.raise_for_errors`: some items of a batch failed.

    ``errors`` maps input index -> the exception for that item; the exception is
    chained (``__cause__``) to the failure of the lowest failing index.
    """

    def __init__(self, message: str, *, errors: Mapping[int, BaseException]) -> None:
        super().__init__(message, source=None)
        self.errors = errors
