"""Exact cosine top-k over a ``tritonvision embed`` output, in bounded memory.

An index is the pair of files ``tritonvision embed -o BASE`` writes (the layout's home is
``tritonvision.embed._outputs``; a unit test pins the two together)::

    BASE.npy              (N, D) float32, one row per embedded input
    BASE.sources.jsonl    line i is {"row": i, "source": KEY}: the input of row i

The ``.npy`` is memory-mapped, never read whole: a search scans it in chunks of rows, so
the resident memory is one chunk (:data:`DEFAULT_CHUNK_BYTES`) plus the k best so far,
whatever N is; the operating system's page cache holds what it can of the file. The
sources file is not parsed up front either: opening the index records each line's byte
offset (8 bytes a row) and a hit's source is read from its line when it is returned.

Why exact and numpy: up to a few million rows a scan takes well under a second to a few
seconds and needs no index build, no extra dependency and no approximation. Beyond that a
vector index (FAISS IVF or HNSW, or a vector database) is the right tool; this module
stays a brute-force scan on purpose.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tritonvision.contract import ERRORS_SUFFIX, NPY_SUFFIX, PARQUET_SUFFIX, SOURCES_SUFFIX
from tritonvision.errors import InvalidInput

from ._errors import DimensionMismatch, IndexFileError

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "EmbeddingIndex",
    "IndexPaths",
    "SearchHit",
    "top_k",
]

DEFAULT_CHUNK_BYTES = 64 * 1024 * 1024
"""Bytes of rows scanned at once (131072 rows at D = 128, 32768 at D = 512)."""

# What a user may pass as INDEX besides BASE: any of embed's output names.
_KNOWN_SUFFIXES = (SOURCES_SUFFIX, ERRORS_SUFFIX, NPY_SUFFIX, PARQUET_SUFFIX)
_READ_BLOCK = 1 << 20


@dataclass(frozen=True)
class SearchHit:
    """One result: 1-based ``rank``, the index ``row``, cosine ``score``, the row's ``source``."""

    rank: int
    row: int
    score: float
    source: str


@dataclass(frozen=True)
class IndexPaths:
    """The two files of an index, both derived from ``base`` (``BASE``)."""

    base: Path

    @classmethod
    def from_option(cls, index: str | os.PathLike[str]) -> IndexPaths:
        """``BASE``, ``BASE.npy`` or another of embed's output names -> the index's paths."""
        path = Path(os.path.expanduser(os.fspath(index)))
        name = path.name
        for suffix in _KNOWN_SUFFIXES:
            if name.lower().endswith(suffix) and len(name) > len(suffix):
                path = path.with_name(name[: -len(suffix)])
                break
        return cls(path)

    @property
    def npy(self) -> Path:
        return self.base.with_name(self.base.name + NPY_SUFFIX)

    @property
    def sources(self) -> Path:
        return self.base.with_name(self.base.name + SOURCES_SUFFIX)


def _line_offsets(path: Path) -> npt.NDArray[np.int64]:
    """Byte offset of each line's start, plus one past the end: ``len - 1`` lines.

    A last line without its newline counts; blank lines do not occur in embed's output
    and are counted like any other (the row check at read time catches a stray one).
    """
    starts: list[npt.NDArray[np.int64]] = [np.zeros(1, dtype=np.int64)]
    size = 0
    last = b"\n"
    with open(path, "rb") as f:
        while block := f.read(_READ_BLOCK):
            newlines = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == ord("\n"))
            starts.append(newlines.astype(np.int64) + size + 1)
            size += len(block)
            last = block[-1:]
    offsets = np.concatenate(starts)
    if last != b"\n":  # an unterminated last line ends at the end of the file
        offsets = np.append(offsets, np.int64(size))
    return offsets


def top_k(
    vectors: npt.ArrayLike,
    query: npt.ArrayLike,
    k: int,
    *,
    chunk_rows: int | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The ``k`` rows of ``vectors`` (N, D) most cosine-similar to ``query`` (D,), best first.

    Returns ``(rows, scores)``, at most ``min(k, N)`` of each. Rows need not be normalised
    (an export with ``--no-normalize``): each chunk's row norms are computed as it is
    scanned. Rows whose cosine is undefined (NaN or infinite values, all zeros) are
    skipped. Equal scores rank the lower row first, so a result never depends on the chunk
    size. ``vectors`` may be a memory map: only ``chunk_rows`` rows (default: as many as fit
    in :data:`DEFAULT_CHUNK_BYTES`) are in memory at once.

    Raises :class:`~tritonvision.errors.InvalidInput` for a bad ``k``, ``chunk_rows`` or
    query (not one vector of D finite values with a non-zero norm).
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise InvalidInput(f"k must be a positive integer, got {k!r}")
    data = vectors if isinstance(vectors, np.ndarray) else np.asarray(vectors)
    if data.ndim != 2:
        raise InvalidInput(f"vectors must be 2-D (N, D), got shape {data.shape}")
    rows_total, dim = (int(n) for n in data.shape)
    q = _unit_query(query, dim)
    if chunk_rows is None:
        chunk_rows = max(1, DEFAULT_CHUNK_BYTES // max(1, dim * 4))
    elif isinstance(chunk_rows, bool) or chunk_rows < 1:
        raise InvalidInput(f"chunk_rows must be a positive integer, got {chunk_rows!r}")

    best_rows = np.empty(0, dtype=np.int64)
    best_scores = np.empty(0, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for start in range(0, rows_total, chunk_rows):
            block = np.asarray(data[start : start + chunk_rows], dtype=np.float32)
            dots = block @ q
            norms = np.sqrt(np.einsum("ij,ij->i", block, block))
            scores = dots / norms
            valid = np.flatnonzero(np.isfinite(scores) & (norms > 0))
            rows = np.concatenate([best_rows, valid.astype(np.int64) + start])
            candidates = np.concatenate([best_scores, scores[valid]])
            best_rows, best_scores = _best(rows, candidates, k)
    return best_rows, np.clip(best_scores, -1.0, 1.0).astype(np.float32)


def _unit_query(query: npt.ArrayLike, dim: int) -> npt.NDArray[np.float32]:
    q = np.asarray(query, dtype=np.float32)
    if q.ndim == 2 and q.shape[0] == 1:
        q = q[0]
    if q.ndim != 1:
        raise InvalidInput(f"the query must be one vector (D,), got shape {q.shape}")
    if q.shape[0] != dim:
        raise InvalidInput(f"the query has {q.shape[0]} dimensions, the vectors {dim}")
    norm = float(np.linalg.norm(q.astype(np.float64)))
    if not np.isfinite(norm) or norm == 0.0:
        raise InvalidInput(f"the query vector has no direction (norm {norm})")
    return (q / np.float32(norm)).astype(np.float32)


def _best(
    rows: npt.NDArray[np.int64], scores: npt.NDArray[np.float32], k: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The k best of ``(rows, scores)``, sorted: higher score first, then lower row."""
    if len(scores) > k:
        # Keep everything tied with the k-th best: argpartition alone would pick among
        # equal scores arbitrarily, and the lower row must win.
        kth = scores[np.argpartition(scores, len(scores) - k)[len(scores) - k]]
        keep = scores >= kth
        rows, scores = rows[keep], scores[keep]
    order = np.lexsort((rows, -scores))[:k]
    return rows[order], scores[order]


class EmbeddingIndex:
    """A ``tritonvision embed`` output opened for search: the memory-mapped rows and the
    line offsets of their sources. Open with :meth:`open`; searching is read-only and
    thread-safe.
    """

    def __init__(
        self,
        paths: IndexPaths,
        vectors: npt.NDArray[np.floating[Any]],
        offsets: npt.NDArray[np.int64],
    ) -> None:
        self.paths = paths
        self._vectors = vectors
        self._offsets = offsets

    @classmethod
    def open(cls, index: str | os.PathLike[str]) -> EmbeddingIndex:
        """Open ``BASE`` / ``BASE.npy``: map the rows, check the sources file agrees.

        Raises :class:`IndexFileError` (naming the file) when either file is missing or
        unreadable, the array is not 2-D floating point, or the row and line counts differ.
        """
        paths = IndexPaths.from_option(index)
        hint = f"(made by `tritonvision embed ... -o {paths.base}`)"
        try:
            vectors = np.load(paths.npy, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise IndexFileError(
                f"index file {paths.npy} does not exist {hint}", path=paths.npy
            ) from None
        except (OSError, ValueError) as exc:
            raise IndexFileError(
                f"index file {paths.npy} is not a readable .npy array: {exc}", path=paths.npy
            ) from exc
        if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.floating):
            raise IndexFileError(
                f"index file {paths.npy} holds a {vectors.dtype} array of shape "
                f"{vectors.shape}; an index is (N, D) float32",
                path=paths.npy,
            )
        try:
            offsets = _line_offsets(paths.sources)
        except FileNotFoundError:
            raise IndexFileError(
                f"sources file {paths.sources} does not exist {hint}; it names the input "
                f"of each row of {paths.npy}",
                path=paths.sources,
            ) from None
        except OSError as exc:
            raise IndexFileError(
                f"sources file {paths.sources} cannot be read: {exc}", path=paths.sources
            ) from exc
        lines = len(offsets) - 1
        if lines != vectors.shape[0]:
            raise IndexFileError(
                f"{paths.npy} has {vectors.shape[0]} rows but {paths.sources} has {lines} "
                "lines; they must come from the same `tritonvision embed` run",
                path=paths.sources,
            )
        return cls(paths, vectors, offsets)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.paths.npy} rows={self.rows} dim={self.dim}>"

    @property
    def rows(self) -> int:
        """N, the number of rows."""
        return int(self._vectors.shape[0])

    @property
    def dim(self) -> int:
        """D, the embedding dimension a query must have."""
        return int(self._vectors.shape[1])

    @property
    def vectors(self) -> npt.NDArray[np.floating[Any]]:
        """The rows, memory-mapped read-only."""
        return self._vectors

    def source(self, row: int) -> str:
        """The input that ``row`` was embedded from (one line of the sources file)."""
        if not 0 <= row < self.rows:
            raise IndexError(f"row {row} is outside {self.paths.npy} (0..{self.rows - 1})")
        start, stop = int(self._offsets[row]), int(self._offsets[row + 1])
        with open(self.paths.sources, "rb") as f:
            f.seek(start)
            raw = f.read(stop - start)
        where = f"{self.paths.sources} line {row + 1}"
        try:
            entry = json.loads(raw)
        except ValueError as exc:
            raise IndexFileError(f"{where} is not JSON: {exc}", path=self.paths.sources) from exc
        if not isinstance(entry, dict) or entry.get("row") != row:
            raise IndexFileError(
                f'{where} should be {{"row": {row}, "source": ...}}, got {raw[:200]!r}',
                path=self.paths.sources,
            )
        source = entry.get("source")
        if not isinstance(source, str):
            raise IndexFileError(f"{where} has no string 'source'", path=self.paths.sources)
        return source

    def search(
        self, query: npt.ArrayLike, k: int = 10, *, chunk_rows: int | None = None
    ) -> list[SearchHit]:
        """The ``k`` rows nearest ``query`` by cosine, best first (fewer if N < k).

        ``query`` is one vector of D values; it is normalised here, and so is each row
        (see :func:`top_k` for the scan and its memory). Raises :class:`DimensionMismatch`
        when the query's length is not D: it was embedded by another model than the index.
        """
        shape = np.shape(query)
        got = int(shape[-1]) if shape else 0
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[0] != 1) or got != self.dim:
            raise DimensionMismatch(
                f"the query has shape {shape} but {self.paths.npy} holds {self.dim}-dimensional "
                "rows: embed the query with the model that made the index (--model, "
                "--text-model)",
                path=self.paths.npy,
                expected=self.dim,
                got=got,
            )
        rows, scores = top_k(self._vectors, query, k, chunk_rows=chunk_rows)
        return [
            SearchHit(rank=rank, row=int(row), score=float(score), source=self.source(int(row)))
            for rank, (row, score) in enumerate(zip(rows, scores, strict=True), start=1)
        ]
