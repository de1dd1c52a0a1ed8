"""Bulk embedding on Ray Data: Triton-served vision encoders over datasets of any size.

Install with ``pip install 'tritonvision[ray]'``. Importing this module imports Ray;
``import tritonvision.client`` never does.

:class:`TritonEmbedder` is a callable class for ``Dataset.map_batches`` run as an actor
pool; each actor owns one :class:`~tritonvision.client.VisionClient` (one event loop,
one ``aiohttp`` session) for its whole life::

    import ray
    from tritonvision.ray import TritonEmbedder

    ds = ray.data.read_binary_files("images/", include_paths=True)
    ds = ds.map_batches(
        TritonEmbedder,
        fn_constructor_kwargs={"url": "http://triton:8000", "model": "vision_encoder"},
        compute=ray.data.ActorPoolStrategy(size=4),
        batch_size=256,
    )
    ds.write_parquet("embeddings/")

:func:`embed_dataset` does the same in one call. Every output batch keeps the input
columns and adds ``embedding`` (float32, ``D`` values per row, NaN for a failed row) and
``error`` (None, or ``"ErrorType: message"``). Rows are never dropped or reordered.
See docs/SCALING.md for sizing a cluster.
"""

from __future__ import annotations

try:
    import ray.data  # noqa: F401 - fail here, with the install hint, not deep in a worker
except ImportError as exc:  # pragma: no cover - CI installs the extra
    raise ImportError("tritonvision.ray needs Ray Data: pip install 'tritonvision[ray]'") from exc

from ._dataset import DEFAULT_BATCH_SIZE, embed_dataset
from ._embedder import EMBEDDING_COLUMN, ERROR_COLUMN, PROBE_COLUMNS, TritonEmbedder

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "EMBEDDING_COLUMN",
    "ERROR_COLUMN",
    "PROBE_COLUMNS",
    "TritonEmbedder",
    "embed_dataset",
]
