"""The async client: the one implementation of every embedding call (images and texts).

One :class:`AsyncVisionClient` owns one runtime's worth of resources, created lazily on
its event loop inside a coroutine and registered on one ``AsyncExitStack``:

- one ``aiohttp.ClientSession`` (Triton over HTTP, and every image URL fetch);
- in gRPC mode, one ``tritonclient.grpc.aio`` client (one channel);
- one ``ThreadPoolExecutor`` for decoding and resizing.

This class is the lifecycle and the public methods; the work is done by small modules:
``_inputs`` (what each entry point accepts, source -> pixels), ``_texts`` (the same for
texts), ``_model_info`` (the model configs, checked and cached), ``_pipeline`` (batches),
``_coalesce`` (concurrent single calls merged while busy), ``_retry`` (backoff) and
``_transports`` (the wire). ``VisionClient``
(the blocking face) runs this class on its background loop and holds no logic of its own.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import os
import time
import warnings
from collections.abc import AsyncIterator, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

import aiohttp
import numpy as np
import numpy.typing as npt

from tritonvision.contract import DEFAULT_MODEL, PreprocessSpec, texts_name
from tritonvision.errors import ClientClosed, InvalidInput, RuntimeUnavailable

from ._coalesce import Coalescer, embed_single, make_coalescer
from ._config import ClientConfig, ConfigOverrides
from ._fetch import PolicyResolver
from ._gate import OverloadGate
from ._inputs import (
    Expect,
    PixelLoader,
    attach_source,
    check_batch_sources,
    expect_base64,
    expect_bytes,
    expect_path,
    expect_url,
)
from ._model_info import (
    ModelInfo,
    ModelInfoCache,
    TextModelInfo,
    embedding_rows,
    model_info_from_config,
)
from ._pipeline import BatchPipeline, make_pipeline
from ._protocol import InputTensor, ModelConfig
from ._results import BatchEmbedding
from ._retry import Retrier, RetryPolicy
from ._sources import ImageSource
from ._stats import ClientStats, StatsRecorder
from ._texts import TextCalls, check_batch_texts
from ._transports import Transport, make_transport

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["AsyncVisionClient", "ClientState"]

logger = logging.getLogger(__name__)


class ClientState(enum.Enum):
    """Lifecycle of a client: resources exist only while OPEN; CLOSED is final."""

    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class AsyncVisionClient:
    """Embed images with a vision encoder served by Triton, asynchronously.

    ``url`` picks the transport: ``http://host:8000`` (KServe v2 REST with binary
    tensors) or ``grpc://host:8001``. Use as an async context manager, or call
    :meth:`close`; the client opens itself on first use and binds to that event loop.

    Settings come from ``config`` (a :class:`ClientConfig`); the keyword arguments
    override the matching fields (``headers`` go to Triton only, never to image URLs;
    ``allow_local_files=False`` refuses path sources: see ``SECURITY.md``).
    ``preprocessing`` overrides the spec the model publishes (required for models that
    publish none).

    Texts (:meth:`embed_text`, :meth:`batch_embed_texts`) go to ``text_model`` (default
    ``<model>_texts``, the ensemble ``tritonvision export --text`` writes; its latest
    version) through the same session, channel and request slots.
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
        base = config if config is not None else ClientConfig()
        self._config = cfg = base.with_overrides(overrides)
        if not isinstance(model, str) or not model:
            raise InvalidInput(f"model must be a model name, got {model!r}")
        if text_model is not None and (not isinstance(text_model, str) or not text_model):
            raise InvalidInput(f"text_model must be a model name, got {text_model!r}")
        self._url = url
        self._model = model
        self._model_version = model_version
        self._preprocessing = preprocessing
        self._transport: Transport = make_transport(
            url, connect_timeout_s=cfg.connect_timeout_s, headers=cfg.headers
        )
        self._stats = StatsRecorder()
        policy = RetryPolicy(
            max_retries=cfg.max_retries,
            retry_budget_s=cfg.retry_budget_s,
            backoff_base_s=cfg.backoff_base_s,
            backoff_max_s=cfg.backoff_max_s,
        )
        self._retrier = Retrier(policy, on_retry=self._stats.retry)
        # One gate for every inference send of this client (None: per-request backoff).
        self._gate = (
            OverloadGate(
                max_window=cfg.max_in_flight,
                backoff_base_s=cfg.backoff_base_s,
                backoff_max_s=cfg.backoff_max_s,
            )
            if cfg.overload_gate
            else None
        )
        self._models = ModelInfoCache(self._load_model_info)
        self._texts = TextCalls(
            model=text_model if text_model is not None else texts_name(model),
            config=cfg,
            stats=self._stats,
            load_config=self._load_config,
            request=self._request,
        )
        self._state = ClientState.UNOPENED
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stack: AsyncExitStack | None = None
        self._session: aiohttp.ClientSession | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._loader: PixelLoader | None = None
        self._slots: asyncio.Semaphore | None = None
        self._open_lock: asyncio.Lock | None = None
        self._active = 0
        self._idle: asyncio.Event | None = None
        self._close_task: asyncio.Future[None] | None = None
        self._coalescer: Coalescer[npt.NDArray[np.uint8]] | None = None

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self._url} model={self._model!r} state={self._state.value}>"
        )

    @property
    def url(self) -> str:
        return self._url

    @property
    def model(self) -> str:
        return self._model

    @property
    def text_model(self) -> str:
        """The model texts are sent to (``<model>_texts`` unless given)."""
        return self._texts.model

    @property
    def config(self) -> ClientConfig:
        return self._config

    @property
    def state(self) -> ClientState:
        return self._state

    def _current_state(self) -> ClientState:
        # A call, so type checkers do not keep a narrowing across an ``await``.
        return self._state

    @property
    def session(self) -> aiohttp.ClientSession | None:
        """The client's one HTTP session (None until opened): for inspection and tests."""
        return self._session

    def stats(self) -> ClientStats:
        """A snapshot of the counters; safe to call from any thread."""
        return self._stats.snapshot()

    # ---------------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> AsyncVisionClient:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Create the session, transport and decode pool on the running loop (idempotent).

        Optional: every call opens the client if needed.
        """
        self._bind_loop()
        await self._ensure_open()

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        if self._state is ClientState.CLOSED:
            raise ClientClosed(f"{self!r} is closed; create a new client")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._idle = asyncio.Event()
            self._idle.set()
            self._open_lock = asyncio.Lock()
        elif loop is not self._loop:
            raise RuntimeUnavailable(
                f"{type(self).__name__} is bound to the event loop it was first used on and "
                "cannot be used from another loop; create one client per loop (or use "
                "VisionClient from threads)"
            )
        return loop

    async def _ensure_open(self) -> None:
        if self._state is ClientState.OPEN:
            return
        assert self._open_lock is not None
        async with self._open_lock:
            if self._current_state() is ClientState.OPEN:
                return
            if self._current_state() is ClientState.CLOSED:
                raise ClientClosed(f"{self!r} is closed; create a new client")
            stack = AsyncExitStack()
            try:
                executor, session = await _open_resources(stack, self._config, self._transport)
            except BaseException:
                await stack.aclose()
                raise
            if self._current_state() is ClientState.CLOSED:  # close() began while we were opening
                await stack.aclose()
                raise ClientClosed(f"{self!r} was closed while opening")
            self._stack = stack
            self._session = session
            self._executor = executor
            self._loader = PixelLoader(
                session=session, executor=executor, config=self._config, stats=self._stats
            )
            self._slots = asyncio.Semaphore(self._config.max_in_flight)
            self._state = ClientState.OPEN
            logger.debug("opened %r", self)

    async def close(self) -> None:
        """Drain in-flight calls, then close the session, channel and decode pool.

        Idempotent; new calls fail with :class:`ClientClosed` as soon as it starts.
        """
        if self._loop is None:  # never used: nothing to release
            self._state = ClientState.CLOSED
            return
        # A close cancelled by a dying loop is restarted by the loop's shutdown hook.
        if self._close_task is None or self._close_task.cancelled():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not self._loop:
                raise RuntimeUnavailable(
                    f"{type(self).__name__}.close() must run on the loop the client was used on"
                )
            self._state = ClientState.CLOSED
            self._close_task = asyncio.ensure_future(self._drain_and_release())
        # Shielded: a caller cancelled while waiting must not abort the release itself.
        await asyncio.shield(self._close_task)

    async def _drain_and_release(self) -> None:
        assert self._idle is not None
        await self._idle.wait()
        if self._coalescer is not None:  # its callers are drained: this stops its dispatcher
            await self._coalescer.aclose()
        await self._texts.aclose()
        self._models.cancel_all()
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
        self._session = None
        self._executor = None
        self._loader = None
        logger.debug("closed %r", self)

    def __del__(self) -> None:
        if getattr(self, "_stack", None) is None or self._state is ClientState.CLOSED:
            return
        warnings.warn(
            f"unclosed {self!r}; use 'async with' or await close()",
            ResourceWarning,
            stacklevel=2,
            source=self,
        )
        if self._executor is not None:  # never blocks: just lets idle workers exit
            self._executor.shutdown(wait=False)

    @asynccontextmanager
    async def _operation(self) -> AsyncIterator[None]:
        """Bracket one public call: checks, lazy open, and the in-flight count close drains."""
        self._bind_loop()
        assert self._idle is not None
        self._active += 1
        self._idle.clear()
        try:
            await self._ensure_open()
            yield
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    # ------------------------------------------------------------------------ model

    async def model_info(self) -> ModelInfo:
        """The model's config, preprocessing spec and embedding size (fetched once)."""
        async with self._operation():
            return await self._models.get(self._model, self._model_version)

    async def _load_model_info(self, model: str, version: str) -> ModelInfo:
        cfg = await self._load_config(model, version)
        return model_info_from_config(model, version, cfg, self._preprocessing)

    async def _load_config(self, model: str, version: str) -> ModelConfig:
        timeout_s = self._config.request_timeout_s
        return await self._retrier.call(
            lambda: self._transport.model_config(model, version, timeout_s=timeout_s)
        )

    async def text_model_info(self) -> TextModelInfo:
        """The text model's config, embedding size and context length (fetched once)."""
        async with self._operation():
            return await self._texts.info()

    # ---------------------------------------------------------------------- embedding

    async def embed(self, source: ImageSource) -> npt.NDArray[np.float32]:
        """Embed one image of any supported kind: a path, URL, base64 / ``data:`` string,
        bytes, ``PIL.Image`` or uint8 array. Returns float32 of shape ``(D,)``."""
        return await self._embed_one(source, None)

    async def embed_image(self, path: str | os.PathLike[str]) -> npt.NDArray[np.float32]:
        """Embed the image file at ``path`` (``str`` or ``os.PathLike``)."""
        return await self._embed_one(path, expect_path)

    async def embed_image_url(self, url: str) -> npt.NDArray[np.float32]:
        """Embed the image at an ``http(s)://`` URL, fetched through the client's session."""
        return await self._embed_one(url, expect_url)

    async def embed_image_base64(self, data: str | bytes) -> npt.NDArray[np.float32]:
        """Embed a base64 image: plain base64 or a ``data:image/...;base64,`` URI.

        ``data`` may be ``str`` or ASCII ``bytes`` (base64 text, not image bytes).
        """
        return await self._embed_one(data, expect_base64)

    async def embed_image_bytes(
        self, data: bytes | bytearray | memoryview
    ) -> npt.NDArray[np.float32]:
        """Embed encoded image bytes (JPEG, PNG, WebP, ...)."""
        return await self._embed_one(data, expect_bytes)

    async def _embed_one(self, source: Any, expect: Expect | None) -> npt.NDArray[np.float32]:
        async with self._operation():
            try:
                source, kind = expect(source) if expect is not None else (source, None)
                info = await self._models.get(self._model, self._model_version)
                assert self._loader is not None and self._slots is not None
                pixels = await self._loader.pixels(source, info.preprocessing, kind)
                infer = functools.partial(self._infer, info)
                if self._coalescer is None:
                    self._coalescer = make_coalescer(
                        self._config,
                        model_max_batch_size=info.max_batch_size,
                        item_bytes=info.item_bytes,
                        infer=infer,
                        slots=self._slots,
                    )
                row = await embed_single(self._coalescer, infer, self._slots, pixels)
            except Exception as exc:
                self._stats.failed(exc)
                attach_source(exc, source)
                raise
            self._stats.succeeded(1)
            return row

    async def batch_embed_images(self, sources: Iterable[ImageSource]) -> BatchEmbedding:
        """Embed many images of any mix of kinds; one bad item never sinks the rest.

        Returns a :class:`BatchEmbedding`: ``(N, D)`` float32 rows in input order (NaN
        rows for failed inputs) and ``errors`` (index -> exception). Loading, decoding
        and inference are pipelined with bounded look-ahead
        (``ClientConfig.lookahead_items``) and at most ``max_in_flight`` requests
        outstanding, so a huge iterable never loads at once. Errors that are not about
        an item (closed client, model config) are raised.
        """
        check_batch_sources(sources)
        async with self._operation():
            info = await self._models.get(self._model, self._model_version)
            loader, slots = self._loader, self._slots
            assert loader is not None and slots is not None
            pipeline: BatchPipeline[ImageSource, npt.NDArray[np.uint8]] = make_pipeline(
                self._config,
                prepare=lambda source: loader.pixels(source, info.preprocessing),
                infer=functools.partial(self._infer, info),
                slots=slots,
                stats=self._stats,
                max_batch_size=info.max_batch_size,
                embedding_dim=info.embedding_dim,
                item_bytes=info.item_bytes,
            )
            return await pipeline.run(sources)

    async def _infer(
        self, info: ModelInfo, images: Sequence[npt.NDArray[np.uint8]]
    ) -> npt.NDArray[np.float32]:
        """One inference request (retried if transient) for already-preprocessed images."""
        count = len(images)
        if info.max_batch_size <= 0:
            batch = images[0]
        elif count == 1:
            batch = images[0][np.newaxis]  # a view: no copy for the common single image
        else:
            batch = np.stack(images)
        return await self._request(info, InputTensor(info.input_name, batch, "UINT8"), count)

    async def _request(
        self, info: ModelInfo | TextModelInfo, tensor: InputTensor, count: int
    ) -> npt.NDArray[np.float32]:
        """One inference request of ``count`` items (retried if transient, through the gate)."""
        inputs = [tensor]
        timeout_s = self._config.request_timeout_s

        async def attempt() -> npt.NDArray[Any]:
            started = time.perf_counter()
            sent = 0
            try:
                outcome = await self._transport.infer(
                    info.name, info.version, inputs, [info.output_name], timeout_s=timeout_s
                )
                sent = outcome.bytes_sent
            finally:
                self._stats.request(bytes_sent=sent, wait_s=time.perf_counter() - started)
            return outcome.outputs[info.output_name]

        return embedding_rows(await self._retrier.call(attempt, gate=self._gate), count, info)

    # ------------------------------------------------------------------------ texts

    async def embed_text(self, text: str) -> npt.NDArray[np.float32]:
        """Embed one text with the text tower, in the image embeddings' space: ``(D,)`` float32.

        ``text`` must be a ``str`` (UTF-8 encodable; ``""`` is fine), else
        :class:`InvalidInput`. The server tokenises it with the checkpoint's own tokenizer,
        so a text longer than the context length (:meth:`text_model_info`:
        ``context_length``; 77 tokens for CLIP, 64 for SigLIP) is truncated exactly as
        that tokenizer truncates it.
        """
        async with self._operation():
            assert self._slots is not None
            return await self._texts.embed(text, self._slots)

    async def batch_embed_texts(self, texts: Iterable[str]) -> BatchEmbedding:
        """Embed many texts; one bad item never sinks the rest.

        Returns a :class:`BatchEmbedding` in input order: NaN rows for failed items, and
        ``errors`` (index -> exception; a non-``str`` item or one that cannot be UTF-8
        encoded is an :class:`InvalidInput` naming ``texts[i]``). ``texts`` is read lazily
        with bounded look-ahead, as in :meth:`batch_embed_images`; packs hold at most
        ``min(pack_batch_size, max_batch_size)`` texts and ``max_request_bytes`` of UTF-8,
        and a pack Triton refuses as a whole is re-sent text by text. Over-long texts are
        truncated by the server's tokenizer exactly as the checkpoint's tokenizer does (see
        :meth:`embed_text`). A single ``str`` passed as ``texts`` is refused at once.
        """
        check_batch_texts(texts)
        async with self._operation():
            assert self._slots is not None
            return await self._texts.batch(texts, self._slots)


async def _open_resources(
    stack: AsyncExitStack, config: ClientConfig, transport: Transport
) -> tuple[ThreadPoolExecutor, aiohttp.ClientSession]:
    """The decode pool and the one session (on the running loop); the transport opened."""
    executor = ThreadPoolExecutor(
        max_workers=config.decode_workers, thread_name_prefix="tritonvision-decode"
    )
    # Idle by the time the stack unwinds (close drains first): joining is quick.
    stack.callback(executor.shutdown, wait=True, cancel_futures=True)
    endpoint = transport.session_endpoint
    connector = aiohttp.TCPConnector(
        resolver=PolicyResolver(
            config.fetch, allow_hosts=frozenset({endpoint} if endpoint else ())
        ),
        limit=max(100, 2 * config.max_in_flight),
    )
    session = aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=config.connect_timeout_s),
        trust_env=False,
    )
    stack.push_async_callback(session.close)
    await transport.open(stack, session)
    return executor, session
