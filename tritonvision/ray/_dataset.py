"""``embed_dataset``: :class:`TritonEmbedder` over a dataset as an actor pool, in one call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ray.data

from tritonvision.contract import DEFAULT_MODEL
from tritonvision.errors import InvalidInput

from ._embedder import DEFAULT_COLUMN, TritonEmbedder
from ._options import normalise_urls, split_client_options

__all__ = ["DEFAULT_BATCH_SIZE", "embed_dataset"]

# Rows per map_batches call: large enough that Ray's per-batch overhead is small next to
# the inference, small enough that every actor gets several batches of a modest dataset.
DEFAULT_BATCH_SIZE = 256


def embed_dataset(
    ds: ray.data.Dataset,
    url: str | Sequence[str],
    *,
    model: str = DEFAULT_MODEL,
    column: str = DEFAULT_COLUMN,
    concurrency: int | tuple[int, int] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_cpus: float = 1.0,
    ray_remote_args: Mapping[str, Any] | None = None,
    **client_options: Any,
) -> ray.data.Dataset:
    """``ds`` with ``embedding`` and ``error`` columns added (lazily: nothing runs yet).

    Args:
        url: one Triton URL or a list of replicas (the actors are spread over them).
        concurrency: actors in the pool: a number, or ``(min, max)`` to autoscale.
            Default: one per URL.
        batch_size: rows per call of one actor.
        num_cpus: CPUs reserved per actor (client-side decoding runs in the actor).
        ray_remote_args: more ``map_batches`` resource arguments (``memory``, ...).
        **client_options: client keywords and ``ClientConfig`` fields (see
            :class:`TritonEmbedder`), checked here, before any actor starts.
    """
    urls = normalise_urls(url)
    split_client_options(client_options)  # fail in the driver, not in every actor
    if batch_size < 1:
        raise InvalidInput(f"batch_size must be >= 1, got {batch_size!r}")
    if concurrency is None:
        compute = ray.data.ActorPoolStrategy(size=len(urls))
    elif isinstance(concurrency, int):
        if concurrency < 1:
            raise InvalidInput(f"concurrency must be >= 1, got {concurrency!r}")
        compute = ray.data.ActorPoolStrategy(size=concurrency)
    else:
        low, high = concurrency
        if not 1 <= low <= high:
            raise InvalidInput(f"concurrency must be (min, max) with 1 <= min <= max: {low, high}")
        compute = ray.data.ActorPoolStrategy(min_size=low, max_size=high)
    return ds.map_batches(
        TritonEmbedder,
        fn_constructor_kwargs={
            "url": list(urls),
            "model": model,
            "column": column,
            **client_options,
        },
        compute=compute,
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=num_cpus,
        **dict(ray_remote_args or {}),
    )
