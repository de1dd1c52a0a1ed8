"""Inputs: what each entry point accepts, and one source turned into the model's pixels.

The typed entry points (``embed_image``, ``embed_image_url``, ...) refuse other kinds of
input with an :class:`InvalidInput` naming the input and the method to use instead (the
``expect_*`` checks); :class:`PixelLoader` loads a source (read, fetch, base64) on the
loop and decodes + resizes it in the client's one decode pool.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import numpy as np
import numpy.typing as npt
from PIL import Image

from tritonvision.contract import PreprocessSpec
from tritonvision.errors import InvalidInput, TritonVisionError, describe_source

from ._config import ClientConfig
from ._imaging import prepare_pixels
from ._local_files import LocalFilePolicy
from ._sources import ImageSource, SourceKind, classify_source, load_source
from ._stats import StatsRecorder

__all__ = [
    "Expect",
    "PixelLoader",
    "attach_source",
    "check_batch_sources",
    "expect_base64",
    "expect_bytes",
    "expect_path",
    "expect_url",
]

Expect = Callable[[Any], tuple[Any, SourceKind]]
"""A typed entry point's check: the source (maybe normalised) and its kind, or InvalidInput."""


def _kind_name(kind: SourceKind) -> str:
    return kind.name.lower().replace("_", " ")


def expect_path(source: Any) -> tuple[Any, SourceKind]:
    if isinstance(source, os.PathLike):
        return source, SourceKind.PATH
    if not isinstance(source, str):
        raise InvalidInput(
            f"{describe_source(source)}: embed_image() takes a file path (str or os.PathLike), "
            f"not {type(source).__name__}; use embed() for any kind of input",
            source=source,
        )
    kind = classify_source(source)
    if kind in (SourceKind.URL, SourceKind.DATA_URI):
        raise InvalidInput(
            f"{describe_source(source)}: embed_image() takes a file path, this is a "
            f"{_kind_name(kind)}; use embed_image_url() / embed_image_base64() or embed()",
            source=source,
        )
    return source, SourceKind.PATH


def expect_url(source: Any) -> tuple[Any, SourceKind]:
    if not isinstance(source, str) or classify_source(source) is not SourceKind.URL:
        raise InvalidInput(
            f"{describe_source(source)}: embed_image_url() takes an http(s):// URL string; "
            "use embed() for any kind of input",
            source=source,
        )
    return source, SourceKind.URL


def expect_base64(source: Any) -> tuple[Any, SourceKind]:
    if isinstance(source, bytes | bytearray | memoryview):
        try:
            source = bytes(source).decode("ascii")
        except UnicodeDecodeError:
            raise InvalidInput(
                f"{describe_source(source)}: base64 text must be ASCII; for encoded image "
                "bytes use embed_image_bytes()",
                source=source,
            ) from None
    if not isinstance(source, str):
        raise InvalidInput(
            f"{describe_source(source)}: embed_image_base64() takes base64 text or a data: URI",
            source=source,
        )
    # No guessing here: the caller said it is base64.
    is_uri = source.lstrip()[:5].lower() == "data:"
    return source, SourceKind.DATA_URI if is_uri else SourceKind.BASE64


def expect_bytes(source: Any) -> tuple[Any, SourceKind]:
    if not isinstance(source, bytes | bytearray | memoryview):
        raise InvalidInput(
            f"{describe_source(source)}: embed_image_bytes() takes bytes, not "
            f"{type(source).__name__}; use embed() for any kind of input",
            source=source,
        )
    return source, SourceKind.BYTES


def check_batch_sources(sources: object) -> None:
    """Refuse a single source passed where an iterable of sources belongs."""
    if isinstance(sources, str | bytes | bytearray | memoryview | os.PathLike | Image.Image):
        # Iterating these would embed characters or bytes one by one.
        raise InvalidInput(
            f"{describe_source(sources)}: batch_embed_images() takes an iterable of "
            "sources (e.g. a list), not a single source; use embed() for one image",
            source=sources,
        )


def attach_source(exc: BaseException, source: object) -> None:
    """Name the input on our own errors that do not name one yet."""
    if isinstance(exc, TritonVisionError) and exc.source is None:
        exc.source = source


class PixelLoader:
    """One source to the model's uint8 pixels, with the client's session, pool and limits."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        executor: ThreadPoolExecutor,
        config: ClientConfig,
        stats: StatsRecorder,
    ) -> None:
        self._session = session
        self._executor = executor
        self._config = config
        self._stats = stats
        self._files = LocalFilePolicy(allow=config.allow_local_files, root=config.local_files_root)

    async def pixels(
        self, source: ImageSource, spec: PreprocessSpec, kind: SourceKind | None = None
    ) -> npt.NDArray[np.uint8]:
        """Load one source (fetch/read/decode base64) and preprocess it in the pool."""
        if kind is None:
            kind = classify_source(source)
        started = time.perf_counter()
        target = source
        if kind is SourceKind.PATH and isinstance(source, str | os.PathLike):
            self._files.refuse_early(source)  # before any file system call
            if self._files.touches_files:
                loop = asyncio.get_running_loop()
                target = await loop.run_in_executor(self._executor, self._files.resolve, source)
        raw = await load_source(
            target,
            session=self._session,
            fetch_config=self._config.fetch,
            executor=self._executor,
            max_inline_bytes=self._config.max_inline_bytes,
            kind=kind,
        )
        if kind is SourceKind.URL and isinstance(raw, bytes):
            self._stats.fetched(nbytes=len(raw), elapsed_s=time.perf_counter() - started)
        # Errors name the input; a path reads better as its text than as "<PosixPath>".
        label = os.fspath(source) if isinstance(source, os.PathLike) else source
        if isinstance(raw, np.ndarray) and raw.dtype == np.uint8 and raw.shape == spec.output_shape:
            # Already the model's pixels: a hop through the pool would cost more than the check.
            return self._decode(raw, spec, label)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._decode, raw, spec, label)

    def _decode(self, raw: Any, spec: PreprocessSpec, source: ImageSource) -> npt.NDArray[np.uint8]:
        started = time.perf_counter()
        try:
            return prepare_pixels(
                raw, spec, source=source, max_pixels=self._config.max_image_pixels
            )
        finally:
            self._stats.decoded(elapsed_s=time.perf_counter() - started)
