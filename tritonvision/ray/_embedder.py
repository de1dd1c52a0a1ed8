"""``TritonEmbedder``: the ``Dataset.map_batches`` callable that embeds one column.

One instance lives in one Ray actor and owns one :class:`VisionClient` for the actor's
life: the client's one loop thread, one ``aiohttp`` session and one decode pool serve
every batch the actor gets. Ray Data deletes the callable when the actor exits
gracefully, and ``__del__`` closes the client then.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from tritonvision.client import ImageSource, VisionClient
from tritonvision.contract import DEFAULT_MODEL
from tritonvision.errors import ClientClosed, InvalidInput, RuntimeUnavailable, TritonVisionError

from ._options import normalise_urls, split_client_options
from ._probe import RuntimeProbe
from ._spread import pick_url

__all__ = ["EMBEDDING_COLUMN", "ERROR_COLUMN", "PROBE_COLUMNS", "TritonEmbedder"]

logger = logging.getLogger(__name__)

EMBEDDING_COLUMN = "embedding"
ERROR_COLUMN = "error"
DEFAULT_COLUMN = "bytes"  # what ray.data.read_binary_files produces
# Added only with probe_runtime=True: the actor's process id, the URL it uses, the
# batches it has served, and the event loops / aiohttp sessions made in it so far.
PROBE_COLUMNS = ("probe_pid", "probe_url", "probe_batches", "probe_loops", "probe_sessions")

Batch = Mapping[str, Any]


def error_text(exc: BaseException) -> str:
    """``"ErrorType: message"``, the ``error`` column's format."""
    return f"{type(exc).__name__}: {exc}"


def _columns(batch: Any) -> dict[str, Any]:
    """The batch as column name -> values, whatever batch format Ray Data hands over."""
    if isinstance(batch, Mapping):  # batch_format="numpy" (Ray Data's default)
        return dict(batch)
    if hasattr(batch, "column_names") and hasattr(batch, "column"):  # pyarrow.Table
        return {n: batch.column(n).to_numpy(zero_copy_only=False) for n in batch.column_names}
    if hasattr(batch, "columns") and hasattr(batch, "__getitem__"):  # pandas.DataFrame
        return {str(n): batch[n].to_numpy() for n in batch.columns}
    raise InvalidInput(f"TritonEmbedder cannot read a batch of type {type(batch).__name__}")


def _source(value: Any, column: str) -> ImageSource:
    """One cell as a client image source: bytes are an encoded image, a str is a path,
    URL, base64 text or ``data:`` URI (the client tells them apart)."""
    if isinstance(value, bytes | bytearray | memoryview):  # np.bytes_ is a bytes
        return bytes(value)
    if isinstance(value, str):  # np.str_ is a str
        return str(value)
    if isinstance(value, np.ndarray) and value.dtype == np.uint8:
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise InvalidInput(f"no image: the row's {column!r} value is empty (null)")
    raise InvalidInput(
        f"cannot embed a {type(value).__name__} from column {column!r}: expected encoded "
        "image bytes, or a str path, URL, base64 text or data: URI"
    )


class TritonEmbedder:
    """Embed the images of one column with a Triton-served encoder, for ``map_batches``.

    Args:
        url: Triton's URL (``http://host:8000`` or ``grpc://host:8001``), or a list of
            replicas' URLs: each actor of the pool uses one, round-robin, so N replicas
            share the load.
        model: the served encoder's name.
        column: the column holding the images: binary (encoded image bytes, as
            ``read_binary_files`` gives) or string (paths, URLs, base64, data: URIs).
        probe_runtime: a test seam: add :data:`PROBE_COLUMNS`, counting the event loops
            and aiohttp sessions constructed in the actor's process.
        **client_options: ``VisionClient`` keywords (``config``, ``request_timeout_s``,
            ``allow_private_addresses``, ...) and ``ClientConfig`` fields (``max_retries``,
            ``connect_timeout_s``, ...).

    The client is made, and the model's config read, when the actor starts: a server
    that is not there fails the actor at once, not every row. After that, nothing about
    one row fails the batch: a bad image, an empty file, a dead server each give that
    row NaN and an ``error``.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        model: str = DEFAULT_MODEL,
        *,
        column: str = DEFAULT_COLUMN,
        probe_runtime: bool = False,
        **client_options: Any,
    ) -> None:
        urls = normalise_urls(url)
        options = split_client_options(client_options)
        self._column = column
        self._probe = RuntimeProbe() if probe_runtime else None
        self._url = pick_url(urls)
        self._batches = 0
        self._client: VisionClient | None = None
        client = VisionClient(self._url, model, config=options.config, **options.client_kwargs)
        try:
            # Also opens the client's loop and session here, once, not on a batch.
            self._dim = client.model_info().result().embedding_dim
        except BaseException:
            client.close()
            raise
        self._client = client
        logger.info("TritonEmbedder in pid %d using %s model %r", os.getpid(), self._url, model)

    @property
    def url(self) -> str:
        """The Triton URL this instance (this actor) sends to."""
        return self._url

    @property
    def client(self) -> VisionClient:
        """The one client of this actor."""
        if self._client is None:
            raise ClientClosed("TritonEmbedder is closed")
        return self._client

    def __call__(self, batch: Any) -> dict[str, Any]:
        columns = _columns(batch)
        for name in (EMBEDDING_COLUMN, ERROR_COLUMN):
            if name in columns:
                raise InvalidInput(f"the batch already has a {name!r} column; rename it first")
        if self._column not in columns:
            raise InvalidInput(
                f"no column {self._column!r} in the batch (columns: {', '.join(columns)}); "
                "pass column=..."
            )
        values = columns[self._column]
        count = len(values)
        errors: list[str | None] = [None] * count
        sent: list[int] = []
        sources: list[ImageSource] = []
        for i, value in enumerate(values):
            try:
                sources.append(_source(value, self._column))
            except InvalidInput as exc:
                errors[i] = error_text(exc)
            else:
                sent.append(i)
        rows = self._embed(sources, sent, errors)
        self._batches += 1
        columns[EMBEDDING_COLUMN] = rows
        # Typed, not an object array: a batch with no failure would be Arrow's null type,
        # which Ray Data reads back as float NaN.
        columns[ERROR_COLUMN] = pa.array(errors, type=pa.string())
        if self._probe is not None:
            columns.update(self._probe_columns(count))
        return columns

    def _embed(
        self, sources: list[ImageSource], sent: list[int], errors: list[str | None]
    ) -> npt.NDArray[np.float32]:
        count = len(errors)
        try:
            result = self.client.batch_embed_images(sources).result() if sources else None
        except RuntimeUnavailable:
            raise  # this actor's client is gone (closed, loop dead): no row can succeed here
        except TritonVisionError as exc:
            # Not about one item (the server refused the whole call): every row says so.
            text = error_text(exc)
            for i in sent:
                errors[i] = text
            result = None
        dim = self._dim
        if dim is None and result is not None:
            dim = self._dim = int(result.embeddings.shape[1])
        if dim is None:
            raise InvalidInput("the model leaves its embedding size variable; cannot size rows")
        rows = np.full((count, dim), np.nan, dtype=np.float32)
        if result is not None:
            rows[sent] = result.embeddings
            for j, failure in result.errors.items():
                errors[sent[j]] = error_text(failure)
        return rows

    def _probe_columns(self, count: int) -> dict[str, npt.NDArray[Any]]:
        assert self._probe is not None
        return {
            "probe_pid": np.full(count, os.getpid(), dtype=np.int64),
            "probe_url": np.array([self._url] * count, dtype=object),
            "probe_batches": np.full(count, self._batches, dtype=np.int64),
            "probe_loops": np.full(count, self._probe.loops, dtype=np.int64),
            "probe_sessions": np.full(count, self._probe.sessions, dtype=np.int64),
        }

    def close(self) -> None:
        """Close the client: drain, close the session on its loop, join the thread."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def __del__(self) -> None:
        # Ray Data deletes the callable on the actor's graceful exit (__ray_shutdown__).
        with contextlib.suppress(Exception):
            self.close()
