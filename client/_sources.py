"""Every kind of image input, classified and loaded into bytes, a PIL image or an array.

Kinds (:class:`SourceKind`) and how a value is classified (no I/O, so it can run on the
event loop):

==========  ===================================================================
PATH        ``os.PathLike``, or a ``str`` that is not one of the below
URL         ``str`` with a ``scheme://`` prefix (``http``, ``https``; others are
            refused when loaded, with :class:`BlockedAddress`)
DATA_URI    ``str`` starting ``data:`` (``data:image/png;base64,...``)
BASE64      ``str`` of strict base64 (standard or URL-safe) that decodes to a known
            image signature (JPEG, PNG, GIF, WebP, BMP, TIFF, ICO, AVIF/HEIF), or
            base64-only text too long to be a path (> 4096 chars); otherwise it is a
            PATH, so ``"missing.jpg"`` gives "file not found", not a base64 error
BYTES       ``bytes`` / ``bytearray`` / ``memoryview``
IMAGE       ``PIL.Image.Image``
ARRAY       ``numpy.ndarray`` (uint8 pixels of the spec's shape are sent as they are)
==========  ===================================================================

:func:`load_source` then gets the data: it reads files in the given executor, fetches
URLs through :func:`~tritonvision.client._fetch.fetch_url` on the caller's session, and
decodes base64. Bytes, base64, data URIs and files are limited to ``max_inline_bytes``
(:class:`ImageTooLarge`; base64 is measured before it is decoded); URLs to the fetch
config's ``max_fetch_bytes``. Decoding the image itself is
:func:`~tritonvision.client._imaging.prepare_pixels`' job.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import os
import re
import stat
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeAlias

import aiohttp
import numpy as np
import numpy.typing as npt
from PIL import Image

from tritonvision.errors import ImageTooLarge, InvalidInput, describe_source

from ._fetch import FetchConfig, fetch_url

__all__ = [
    "DEFAULT_MAX_INLINE_BYTES",
    "ImageSource",
    "LoadedSource",
    "SourceKind",
    "classify_source",
    "load_source",
    "read_file",
]

DEFAULT_MAX_INLINE_BYTES = 32 * 1024 * 1024

ImageSource: TypeAlias = (
    "str | os.PathLike[str] | bytes | bytearray | memoryview | Image.Image | npt.NDArray[Any]"
)
LoadedSource: TypeAlias = "bytes | Image.Image | npt.NDArray[Any]"


class SourceKind(enum.Enum):
    """What an image input is; see the module docstring for the rules."""

    PATH = "path"
    URL = "url"
    BASE64 = "base64"
    DATA_URI = "data_uri"
    BYTES = "bytes"
    IMAGE = "image"
    ARRAY = "array"


# Two or more characters before "://", so a Windows path like C://x stays a path.
_URL_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+://")
_BASE64_TEXT = re.compile(r"^[A-Za-z0-9+/_\-\s]+={0,2}\s*$")
_WHITESPACE = str.maketrans("", "", " \t\r\n\v\f")
_PATH_MAX = 4096
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # absent on Windows, where FIFOs are not files

# Leading bytes of the formats _imaging decodes (and close relatives).
_SIGNATURES: tuple[bytes, ...] = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",  # PNG
    b"GIF87a",
    b"GIF89a",
    b"RIFF",  # WebP
    b"BM",  # BMP
    b"II*\x00",  # TIFF, little-endian
    b"MM\x00*",  # TIFF, big-endian
    b"\x00\x00\x01\x00",  # ICO
)


def _b64decode(compact: str) -> bytes:
    """Strict base64 (standard, or URL-safe ``-_``); raises on anything else."""
    if "-" in compact or "_" in compact:
        return base64.b64decode(compact, altchars=b"-_", validate=True)
    return base64.b64decode(compact, validate=True)


def _looks_like_image(head: bytes) -> bool:
    if head.startswith(_SIGNATURES):
        return True
    return head[4:8] == b"ftyp"  # AVIF / HEIF (ISO-BMFF)


def _is_base64_image(text: str) -> bool:
    stripped = text.strip()
    if len(stripped) < 8 or not _BASE64_TEXT.match(stripped[: _PATH_MAX + 1]):
        return False
    if len(stripped) > _PATH_MAX:
        return True  # no path is this long; decoding reports what is wrong with it
    compact = stripped.translate(_WHITESPACE)
    try:
        head = _b64decode(compact[:16])
    except (binascii.Error, ValueError):
        return False
    return _looks_like_image(head)


def classify_source(source: object) -> SourceKind:
    """The :class:`SourceKind` of ``source``; :class:`InvalidInput` for other types.

    Pure and cheap (no file system access, no full base64 decode).
    """
    if isinstance(source, str):
        head = source.lstrip()[:16].lower()
        if head.startswith("data:"):
            return SourceKind.DATA_URI
        if _URL_PREFIX.match(source.lstrip()[:64]):
            return SourceKind.URL
        if _is_base64_image(source):
            return SourceKind.BASE64
        return SourceKind.PATH
    if isinstance(source, os.PathLike):
        return SourceKind.PATH
    if isinstance(source, bytes | bytearray | memoryview):
        return SourceKind.BYTES
    if isinstance(source, Image.Image):
        return SourceKind.IMAGE
    if isinstance(source, np.ndarray):
        return SourceKind.ARRAY
    raise InvalidInput(
        f"{describe_source(source)}: unsupported image source type {type(source).__name__}; "
        "pass a path, URL, base64 string, data URI, bytes, PIL image or numpy array",
        source=source,
    )


def read_file(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """Read a whole file, refusing more than ``max_bytes`` (checked before and while
    reading, so a growing file cannot slip past). Blocking: run it in an executor."""
    name = describe_source(os.fspath(path))
    try:
        # O_NONBLOCK: opening a FIFO without a writer would otherwise block this worker
        # forever (a path is user input); it changes nothing for regular files.
        fd = os.open(path, os.O_RDONLY | _O_NONBLOCK)
        with open(fd, "rb") as fh:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(path)
            if not stat.S_ISREG(st.st_mode):
                # FIFOs, sockets and devices (/dev/zero, /dev/stdin...) never end or block.
                raise InvalidInput(
                    f"{name}: not a regular file (a pipe, socket or device)", source=path
                )
            size = st.st_size
            if size > max_bytes:
                raise ImageTooLarge(
                    f"{name}: file is {size} bytes, over the limit of {max_bytes}", source=path
                )
            data = fh.read(max_bytes + 1)
    except FileNotFoundError as exc:
        raise InvalidInput(f"{name}: file not found", source=path) from exc
    except IsADirectoryError as exc:
        raise InvalidInput(f"{name}: is a directory, not an image file", source=path) from exc
    except PermissionError as exc:
        raise InvalidInput(f"{name}: permission denied", source=path) from exc
    except OSError as exc:
        raise InvalidInput(
            f"{name}: cannot read file ({exc.strerror or exc})", source=path
        ) from exc
    if len(data) > max_bytes:
        raise ImageTooLarge(f"{name}: file is over the limit of {max_bytes} bytes", source=path)
    return data


def _decode_base64(text: str, *, source: object, max_bytes: int) -> bytes:
    name = describe_source(source)
    # Size first: base64 is 4 chars per 3 bytes; allow padding and some line breaks.
    if len(text) > (max_bytes + 2) // 3 * 4 * 1.05 + 16:
        raise ImageTooLarge(
            f"{name}: base64 text of {len(text)} chars decodes to more than {max_bytes} bytes",
            source=source,
        )
    compact = text.strip().translate(_WHITESPACE)
    if len(compact) > (max_bytes + 2) // 3 * 4:
        raise ImageTooLarge(
            f"{name}: base64 decodes to more than the limit of {max_bytes} bytes", source=source
        )
    try:
        data = _b64decode(compact)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{name}: invalid base64 ({exc})", source=source) from exc
    if not data:
        raise InvalidInput(f"{name}: empty base64 image", source=source)
    if len(data) > max_bytes:
        raise ImageTooLarge(
            f"{name}: base64 decodes to {len(data)} bytes, over the limit of {max_bytes}",
            source=source,
        )
    return data


def _decode_data_uri(uri: str, *, max_bytes: int) -> bytes:
    name = describe_source(uri)
    text = uri.lstrip()
    header, comma, payload = text[5:].partition(",")
    if not comma:
        raise InvalidInput(f"{name}: malformed data URI (no ',')", source=uri)
    params = [p.strip().lower() for p in header.split(";")]
    mime = params[0]
    # An omitted type is accepted (tools often drop it); a declared non-image is refused.
    if mime and not mime.startswith("image/") and mime != "application/octet-stream":
        raise InvalidInput(f"{name}: data URI type {mime!r} is not an image", source=uri)
    if "base64" not in params[1:]:
        raise InvalidInput(f"{name}: only base64 data URIs are supported", source=uri)
    return _decode_base64(payload, source=uri, max_bytes=max_bytes)


async def load_source(
    source: ImageSource,
    *,
    session: aiohttp.ClientSession | None,
    fetch_config: FetchConfig,
    executor: Executor | None,
    max_inline_bytes: int = DEFAULT_MAX_INLINE_BYTES,
    kind: SourceKind | None = None,
) -> LoadedSource:
    """Get the data behind ``source``: ``bytes`` (encoded image), or the PIL image /
    ndarray passed in, unchanged.

    ``session`` is the caller's one session (needed for URLs only); ``executor`` runs the
    file read (``None``: the loop's default executor); ``kind`` skips classification.
    Errors are typed and name the source: :class:`InvalidInput` (bad type, file not
    found, bad base64, non-image data URI), :class:`ImageTooLarge`, and for URLs the
    :class:`FetchError` family (scheme other than http/https -> :class:`BlockedAddress`).
    Base64 decoding of large inputs runs in ``executor`` too, off the event loop.
    """
    kind = classify_source(source) if kind is None else kind
    loop = asyncio.get_running_loop()
    name = describe_source(source)
    if kind is SourceKind.BYTES and isinstance(source, bytes | bytearray | memoryview):
        size = source.nbytes if isinstance(source, memoryview) else len(source)
        if size > max_inline_bytes:
            raise ImageTooLarge(
                f"{name}: {size} bytes, over the limit of {max_inline_bytes}", source=source
            )
        # A private copy: the caller may reuse a bytearray while we decode in a thread.
        return source if isinstance(source, bytes) else bytes(source)
    if kind is SourceKind.IMAGE and isinstance(source, Image.Image):
        return source
    if kind is SourceKind.ARRAY and isinstance(source, np.ndarray):
        return source
    if kind is SourceKind.PATH and isinstance(source, str | os.PathLike):
        path: str = os.fspath(source)
        data: bytes = await loop.run_in_executor(executor, read_file, path, max_inline_bytes)
        return data
    if kind is SourceKind.URL and isinstance(source, str):
        if session is None:
            raise InvalidInput(f"{name}: URL sources need an HTTP session", source=source)
        return await fetch_url(session, source.strip(), fetch_config)
    if kind is SourceKind.DATA_URI and isinstance(source, str):
        return await _off_loop(loop, executor, _decode_data_uri_source, source, max_inline_bytes)
    if kind is SourceKind.BASE64 and isinstance(source, str):
        return await _off_loop(loop, executor, _decode_b64_source, source, max_inline_bytes)
    raise InvalidInput(
        f"{name}: a {type(source).__name__} cannot be loaded as {kind.value}", source=source
    )


def _decode_b64_source(text: str, max_bytes: int) -> bytes:
    return _decode_base64(text, source=text, max_bytes=max_bytes)


def _decode_data_uri_source(uri: str, max_bytes: int) -> bytes:
    return _decode_data_uri(uri, max_bytes=max_bytes)


# Below this, decoding on the loop is cheaper than a hop to a thread.
_INLINE_DECODE_CHARS = 64 * 1024


async def _off_loop(
    loop: asyncio.AbstractEventLoop,
    executor: Executor | None,
    func: Callable[[str, int], bytes],
    text: str,
    max_bytes: int,
) -> bytes:
    if len(text) <= _INLINE_DECODE_CHARS:
        return func(text, max_bytes)
    return await loop.run_in_executor(executor, func, text, max_bytes)
