"""Identical inputs of one batch are computed once: which items repeat an earlier one.

``batch_embed_images`` asks :class:`BatchDedup` twice per item:

- **by source**, before anything is loaded: the same ``str`` (path, URL, base64) or
  ``os.PathLike`` text, or the same ``bytes`` content (a BLAKE2b digest), as an earlier
  item. The repeat is neither loaded, decoded nor sent;
- **by pixels**, once decoded: the same model input as an earlier item (two files with
  the same content, a PNG and a lossless WebP of one image, the same PIL image twice).
  The repeat is not sent. (``batch_embed_texts`` asks the same of each text's UTF-8
  bytes, :meth:`BatchDedup.repeats_prepared`; a repeated text is already caught by source.)

Each repeat gets its first occurrence's row, or its error, in its own position
(:meth:`BatchDedup.fill`). Keys are 16-byte digests, so a long batch keeps no source
alive; sources over :data:`MAX_HASHED_BYTES` are only compared by pixels.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import MutableMapping

import numpy as np
import numpy.typing as npt

__all__ = ["MAX_HASHED_BYTES", "BatchDedup"]

MAX_HASHED_BYTES = 1024 * 1024
"""Largest source hashed on the event loop (bigger ones are compared by pixels only)."""


def _digest(kind: bytes, data: bytes | memoryview) -> bytes:
    return hashlib.blake2b(data, digest_size=16, person=kind).digest()


def source_key(source: object) -> bytes | None:
    """A digest naming ``source``'s content, or None for kinds compared by pixels only."""
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, str):
        if len(source) > MAX_HASHED_BYTES:
            return None
        return _digest(b"str", source.encode("utf-8", "surrogatepass"))
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source)
        if view.nbytes > MAX_HASHED_BYTES or not view.c_contiguous:
            return None
        return _digest(b"bytes", view.cast("B"))
    return None


def pixels_key(pixels: npt.NDArray[np.uint8]) -> bytes:
    """A digest of a model input: its shape, dtype and bytes."""
    array = np.ascontiguousarray(pixels)
    digest = hashlib.blake2b(digest_size=16, person=b"pixels")
    digest.update(f"{array.dtype.str}{array.shape}\0".encode())
    digest.update(array.data)  # the buffer itself: no copy
    return digest.digest()


def prepared_key(item: object) -> bytes | None:
    """A digest of a prepared model input (pixels, or a text's UTF-8 bytes); None for others."""
    if isinstance(item, np.ndarray):
        return pixels_key(item)
    if isinstance(item, bytes):
        return _digest(b"prepared", item)
    return None


class BatchDedup:
    """The repeats of one batch and the earlier item each one repeats."""

    def __init__(self) -> None:
        self._by_source: dict[bytes, int] = {}
        self._by_pixels: dict[bytes, int] = {}
        self._repeats: dict[int, int] = {}  # index -> the index it repeats

    def __len__(self) -> int:
        """Items found to repeat another so far."""
        return len(self._repeats)

    def repeats_source(self, index: int, source: object) -> bool:
        """Whether item ``index`` has the same source as an earlier item (then remembered)."""
        key = source_key(source)
        return key is not None and self._remember(self._by_source, key, index)

    def repeats_pixels(self, index: int, pixels: npt.NDArray[np.uint8]) -> bool:
        """Whether item ``index`` decoded to the same pixels as another (then remembered)."""
        return self._remember(self._by_pixels, pixels_key(pixels), index)

    def repeats_prepared(self, index: int, item: object) -> bool:
        """:meth:`repeats_pixels` for any prepared item (pixels or UTF-8 bytes)."""
        key = prepared_key(item)
        return key is not None and self._remember(self._by_pixels, key, index)

    def _remember(self, seen: dict[bytes, int], key: bytes, index: int) -> bool:
        first = seen.setdefault(key, index)
        if first == index:
            return False
        self._repeats[index] = first
        return True

    def _original(self, index: int) -> int:
        while index in self._repeats:  # a repeat of a repeat (by source, then by pixels)
            index = self._repeats[index]
        return index

    def fill(
        self,
        rows: MutableMapping[int, npt.NDArray[np.float32]],
        errors: MutableMapping[int, BaseException],
    ) -> tuple[int, list[BaseException]]:
        """Give every repeat its original's row or error.

        Returns how many rows were filled and the errors given (for the client's stats).
        """
        filled = 0
        failed: list[BaseException] = []
        for index in self._repeats:
            original = self._original(index)
            if original in rows:
                rows[index] = rows[original]
                filled += 1
            elif original in errors:
                errors[index] = errors[original]
                failed.append(errors[original])
        return filled, failed
