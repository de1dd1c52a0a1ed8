"""Exact nearest-neighbour search over ``tritonvision embed`` outputs (numpy only).

``tritonvision search INDEX --text "a dog on a beach"`` is this module behind a command
line: :meth:`EmbeddingIndex.open` memory-maps ``BASE.npy`` and checks ``BASE.sources.jsonl``
against it; :meth:`EmbeddingIndex.search` ranks every row by cosine with a query vector
(embedded by the caller, e.g. ``VisionClient.embed_text``) and returns :class:`SearchHit`
s. :func:`top_k` is the scan itself, for any (N, D) array.

Exact search is fine up to a few million rows: the ``.npy`` is N x D x 4 bytes on disk
(1M x 512 = 2 GiB) and is scanned chunk by chunk in bounded memory. Beyond that use a
vector index (FAISS IVF or HNSW, or a vector database).

Errors (:mod:`._errors`): :class:`IndexFileError` and :class:`DimensionMismatch`, both
:class:`~tritonvision.errors.InvalidInput`.
"""

from __future__ import annotations

from ._errors import DimensionMismatch, IndexFileError
from ._index import DEFAULT_CHUNK_BYTES, EmbeddingIndex, IndexPaths, SearchHit, top_k

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DimensionMismatch",
    "EmbeddingIndex",
    "IndexFileError",
    "IndexPaths",
    "SearchHit",
    "top_k",
]
