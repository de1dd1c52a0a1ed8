"""The blocking face: one background loop thread running the one async client.

:class:`VisionClient` holds no embedding logic. Each method hands a coroutine of its
:class:`AsyncVisionClient` to its :class:`SharedRuntime` and returns a future at once
(:class:`PendingEmbedding` / :class:`PendingBatchEmbedding`); ``.result()`` blocks.

After :meth:`VisionClient.close`, or once the loop thread has died, every method
**raises at the call** (:class:`ClientClosed` / :class:`RuntimeUnavailable`) rather
than returning an already-failed future: the mistake shows where it is made.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Coroutine, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import numpy.typing as npt

from tritonvision.contract import DEFAULT_MODEL, PreprocessSpec
from tritonvision.errors import ClientClosed

from ._async_client import AsyncVisionClient
from ._config import ClientConfig, ConfigOverrides
from ._inputs import check_batch_sources
from ._model_info import ModelInfo, TextModelInfo
from ._results import BatchEmbedding
from ._runtime import RuntimeFuture, SharedRuntime
from ._sources import ImageSource
from ._stats import ClientStats
from ._texts import check_batch_texts

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "PendingBatchEmbedding",
    "PendingEmbedding",
    "PendingModelInfo",
    "PendingTextModelInfo",
    "VisionClient",
]

T = TypeVar("T")
FutureT = TypeVar("FutureT", bound=RuntimeFuture[Any])


class PendingEmbedding(RuntimeFuture[npt.NDArray[np.float32]]):
    """A ``concurrent.futures.Future`` of one ``(D,)`` float32 embedding.

    ``cancel()`` cancels the work on the client's loop; ``result()`` on the loop thread
    raises :class:`RuntimeUnavailable` instead of deadlocking.
    """


class PendingBatchEmbedding(RuntimeFuture[BatchEmbedding]):
    """A ``concurrent.futures.Future`` of a :class:`BatchEmbedding`."""


class PendingModelInfo(RuntimeFuture[ModelInfo]):
    """A ``concurrent.futures.Future`` of the model's :class:`ModelInfo`."""


class PendingTextModelInfo(RuntimeFuture[TextModelInfo]):
    """A ``concurrent.futures.Future`` of the text model's :class:`TextModelInfo`."""


class VisionClient:
    """Embed images (and texts, with the text tower) through Triton, from any thread.

    Same arguments as :class:`AsyncVisionClient`. Thread-safe; one background event-loop
    thread (started on first use) serves every call. Use as a context manager or call
    :meth:`close`.
    """

    def __init__(
        self,
        url: str,
        model: str = DEFAULT_MODEL,
        *,
        config: ClientConfig | None = None,
        preprocessing: PreprocessSpec | None = None,
        model_version: str = "",
        text_model: str | None = None,
        **overrides: Unpack[ConfigOverrides],
    ) -> None:
        # Loop-bound resources are not made here: the async client builds them on the
        # runtime's loop during its first call.
        self._client = AsyncVisionClient(
            url,
            model,
            config=config,
            preprocessing=preprocessing,
            model_version=model_version,
            text_model=text_model,
            **overrides,
        )
        self._runtime = SharedRuntime()
        # If the loop dies, its last act closes the session on that loop.
        self._runtime.add_shutdown_hook(self._client.close)
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self._client.url} model={self._client.model!r} {state}>"

    @property
    def async_client(self) -> AsyncVisionClient:
        """The async client doing the work (bound to :attr:`runtime`'s loop)."""
        return self._client

    @property
    def text_model(self) -> str:
        """The model texts are sent to (``<model>_texts`` unless given)."""
        return self._client.text_model

    @property
    def runtime(self) -> SharedRuntime:
        """The one background loop thread."""
        return self._runtime

    @property
    def closed(self) -> bool:
        return self._closed

    def _submit(self, coro: Coroutine[Any, Any, Any], future: FutureT) -> FutureT:
        if self._closed:
            coro.close()
            raise ClientClosed(f"{self!r} is closed; create a new client")
        self._runtime.submit(coro, future=future)
        return future

    # --------------------------------------------------------------- embedding calls

    def embed(self, source: ImageSource) -> PendingEmbedding:
        """Embed one image of any supported kind (see :meth:`AsyncVisionClient.embed`)."""
        return self._submit(self._client.embed(source), PendingEmbedding())

    def embed_image(self, path: str | os.PathLike[str]) -> PendingEmbedding:
        """Embed the image file at ``path``."""
        return self._submit(self._client.embed_image(path), PendingEmbedding())

    def embed_image_url(self, url: str) -> PendingEmbedding:
        """Embed the image at an ``http(s)://`` URL."""
        return self._submit(self._client.embed_image_url(url), PendingEmbedding())

    def embed_image_base64(self, data: str | bytes) -> PendingEmbedding:
        """Embed a base64 image (plain, or a ``data:`` URI)."""
        return self._submit(self._client.embed_image_base64(data), PendingEmbedding())

    def embed_image_bytes(self, data: bytes | bytearray | memoryview) -> PendingEmbedding:
        """Embed encoded image bytes."""
        return self._submit(self._client.embed_image_bytes(data), PendingEmbedding())

    def batch_embed_images(self, sources: Iterable[ImageSource]) -> PendingBatchEmbedding:
        """Embed many images of any mix of kinds (see :meth:`AsyncVisionClient.batch_embed_images`).

        ``sources`` is iterated on the client's loop thread, lazily. A single source (a
        ``str``, bytes, an image) passed as ``sources`` raises :class:`InvalidInput` here, at
        the call.
        """
        check_batch_sources(sources)
        return self._submit(self._client.batch_embed_images(sources), PendingBatchEmbedding())

    def embed_text(self, text: str) -> PendingEmbedding:
        """Embed one text (see :meth:`AsyncVisionClient.embed_text`; over-long texts are
        truncated by the server's tokenizer exactly as the checkpoint's tokenizer does)."""
        return self._submit(self._client.embed_text(text), PendingEmbedding())

    def batch_embed_texts(self, texts: Iterable[str]) -> PendingBatchEmbedding:
        """Embed many texts (see :meth:`AsyncVisionClient.batch_embed_texts`).

        ``texts`` is iterated on the client's loop thread, lazily. A single ``str`` passed
        as ``texts`` raises :class:`InvalidInput` here, at the call.
        """
        check_batch_texts(texts)
        return self._submit(self._client.batch_embed_texts(texts), PendingBatchEmbedding())

    def text_model_info(self) -> PendingTextModelInfo:
        """The text model's config, embedding size and context length."""
        return self._submit(self._client.text_model_info(), PendingTextModelInfo())

    def model_info(self) -> PendingModelInfo:
        """The model's config, preprocessing spec and embedding size."""
        return self._submit(self._client.model_info(), PendingModelInfo())

    def stats(self) -> ClientStats:
        """A snapshot of the client's counters."""
        return self._client.stats()

    # --------------------------------------------------------------------- lifecycle

    def close(self, *, timeout_s: float | None = None) -> None:
        """Drain in-flight calls, close the session on its loop, stop and join the thread.

        Idempotent. Calls made after it starts raise :class:`ClientClosed`.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._runtime.thread is not None and self._runtime.is_running:
            # If the loop dies meanwhile, stop() still closes the session (shutdown hook).
            with contextlib.suppress(Exception):
                self._runtime.submit(self._client.close()).result(timeout_s)
        self._runtime.stop(timeout_s=timeout_s)

    def __enter__(self) -> VisionClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        runtime = self._runtime
        if runtime.thread is None:
            return  # never used: nothing to release
        warnings.warn(
            f"unclosed {self!r}; use 'with VisionClient(...)' or call close()",
            ResourceWarning,
            stacklevel=2,
            source=self,
        )
        with contextlib.suppress(Exception):
            runtime.stop(wait=False)  # the loop's shutdown hook closes the session
