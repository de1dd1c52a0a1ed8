"""The async client: the one implementation of every embedding call.

One :class:`AsyncVisionClient` owns one runtime's worth of resources, created lazily on
its event loop inside a coroutine and registered on one ``AsyncExitStack``:

- one ``aiohttp.ClientSession`` (Triton over HTTP, and every image URL fetch);
- in gRPC mode, one ``tritonclient.grpc.aio`` client (one channel);
- one ``ThreadPoolExecutor`` for decoding and resizing.

No call creates a loop, a session, a channel or a pool. ``VisionClient`` (the blocking
face) runs this class on its background loop and holds no logic of its own.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import random
import time
import types
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import numpy as np
import numpy.typing as npt
from PIL import Image

from tritonvision.contract import PreprocessSpec
from tritonvision.errors import (
    ClientClosed,
    InvalidInput,
    ModelConfigError,
    ProtocolError,
    RuntimeUnavailable,
    ServerError,
    ServerOverloaded,
    ServerUnavailable,
    TritonVisionError,
    describe_source,
)

from ._config import DEFAULT_MODEL, ClientConfig
from ._fetch import PolicyResolver
from ._imaging import prepare_pixels
from ._protocol import InputTensor, ModelConfig
from ._results import BatchEmbedding
from ._sources import ImageSource, SourceKind, classify_source, load_source
from ._stats import ClientStats, StatsRecorder
from ._transports import Transport, make_transport

__all__ = ["PREPROCESSING_PARAMETER", "AsyncVisionClient", "ClientState", "ModelInfo"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

PREPROCESSING_PARAMETER = "tritonvision.preprocessing"
"""The model-config parameter holding the preprocessing spec JSON (see DESIGN.md)."""

_EMBEDDINGS = "embeddings"


class ClientState(enum.Enum):
    """Lifecycle of a client: resources exist only while OPEN; CLOSED is final."""

    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True)
class ModelInfo:
    """What the client learned about its model (cached per model).

    ``max_batch_size`` 0 means the model takes unbatched requests, one image each.
    ``embedding_dim`` is None only if the config leaves it variable.
    """

    name: str
    version: str
    config: ModelConfig
    preprocessing: PreprocessSpec
    input_name: str
    output_name: str
    embedding_dim: int | None
    max_batch_size: int

    @property
    def item_bytes(self) -> int:
        """Bytes of one image's pixels on the wire."""
        h, w, c = self.preprocessing.output_shape
        return h * w * c


class AsyncVisionClient:
    """Embed images with a vision encoder served by Triton, asynchronously.

    ``url`` picks the transport: ``http://host:8000`` (KServe v2 REST with binary
    tensors) or ``grpc://host:8001``. Use as an async context manager, or call
    :meth:`close`; the client opens itself on first use and binds to that event loop.

    Settings come from ``config`` (a :class:`ClientConfig`); the keyword arguments
    override the matching fields. ``preprocessing`` overrides the spec the model
    publishes (required for models that publish none).
    """

    def __init__(
        self,
        url: str,
        model: str = DEFAULT_MODEL,
        *,
        config: ClientConfig | None = None,
        preprocessing: PreprocessSpec | None = None,
        model_version: str = "",
        request_timeout_s: float | None = None,
        max_in_flight: int | None = None,
        pack_batch_size: int | None = None,
        decode_workers: int | None = None,
        allow_private_addresses: bool | None = None,
    ) -> None:
        overrides: dict[str, Any] = {
            "request_timeout_s": request_timeout_s,
            "max_in_flight": max_in_flight,
            "pack_batch_size": pack_batch_size,
            "decode_workers": decode_workers,
            "allow_private_addresses": allow_private_addresses,
        }
        base = config if config is not None else ClientConfig()
        self._config = base.replace(**{k: v for k, v in overrides.items() if v is not None})
        if not isinstance(model, str) or not model:
            raise InvalidInput(f"model must be a model name, got {model!r}")
        self._url = url
        self._model = model
        self._model_version = model_version
        self._preprocessing = preprocessing
        self._transport: Transport = make_transport(
            url, connect_timeout_s=self._config.connect_timeout_s
        )
        self._stats = StatsRecorder()
        self._state = ClientState.UNOPENED
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stack: AsyncExitStack | None = None
        self._session: aiohttp.ClientSession | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None
        self._open_lock: asyncio.Lock | None = None
        self._active = 0
        self._idle: asyncio.Event | None = None
        self._close_task: asyncio.Future[None] | None = None
        self._models: dict[tuple[str, str], asyncio.Future[ModelInfo]] = {}

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self._url} model={self._model!r} state={self._state.value}>"
        )

    # --------------------------------------------------------------------- properties

    @property
    def url(self) -> str:
        return self._url

    @property
    def model(self) -> str:
        return self._model

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
                executor = ThreadPoolExecutor(
                    max_workers=self._config.decode_workers,
                    thread_name_prefix="tritonvision-decode",
                )
                # Idle by the time the stack unwinds (close drains first): joining is quick.
                stack.callback(executor.shutdown, wait=True, cancel_futures=True)
                endpoint = self._transport.session_endpoint
                connector = aiohttp.TCPConnector(
                    resolver=PolicyResolver(
                        self._config.fetch, allow_hosts=frozenset({endpoint} if endpoint else ())
                    ),
                    limit=max(100, 2 * self._config.max_in_flight),
                )
                session = aiohttp.ClientSession(
                    connector=connector,
                    timeout=aiohttp.ClientTimeout(
                        total=None, sock_connect=self._config.connect_timeout_s
                    ),
                    trust_env=False,
                )
                stack.push_async_callback(session.close)
                await self._transport.open(stack, session)
            except BaseException:
                await stack.aclose()
                raise
            if self._current_state() is ClientState.CLOSED:  # close() began while we were opening
                await stack.aclose()
                raise ClientClosed(f"{self!r} was closed while opening")
            self._stack = stack
            self._session = session
            self._executor = executor
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
            self._bind_loop_for_close()
            self._state = ClientState.CLOSED
            self._close_task = asyncio.ensure_future(self._drain_and_release())
        # Shielded: a caller cancelled while waiting must not abort the release itself.
        await asyncio.shield(self._close_task)

    def _bind_loop_for_close(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not self._loop:
            raise RuntimeUnavailable(
                f"{type(self).__name__}.close() must run on the loop the client was used on"
            )

    async def _drain_and_release(self) -> None:
        assert self._idle is not None
        await self._idle.wait()
        for fut in self._models.values():
            fut.cancel()
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
        self._session = None
        self._executor = None
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
            return await self._model_info()

    async def _model_info(self) -> ModelInfo:
        key = (self._model, self._model_version)
        fut = self._models.get(key)
        if fut is None:
            fut = asyncio.ensure_future(self._load_model_info(*key))
            fut.add_done_callback(self._model_info_done(key))
            self._models[key] = fut
        # Shielded: one caller's cancellation must not cancel the shared lookup.
        return await asyncio.shield(fut)

    def _model_info_done(self, key: tuple[str, str]) -> Callable[[asyncio.Future[ModelInfo]], None]:
        def done(fut: asyncio.Future[ModelInfo]) -> None:
            # A failure is not cached: the next call asks again (the server may be back).
            failed = fut.cancelled() or fut.exception() is not None
            if failed and self._models.get(key) is fut:
                del self._models[key]

        return done

    async def _load_model_info(self, model: str, version: str) -> ModelInfo:
        timeout_s = self._config.request_timeout_s
        cfg = await self._with_retries(
            lambda: self._transport.model_config(model, version, timeout_s=timeout_s)
        )
        spec = self._preprocessing
        if spec is None:
            published = cfg.parameters.get(PREPROCESSING_PARAMETER)
            if not published:
                raise ModelConfigError(
                    f"model {model!r} does not publish its preprocessing (config parameter "
                    f"{PREPROCESSING_PARAMETER!r}); export it with tritonvision, or pass "
                    "preprocessing=PreprocessSpec(...) to the client"
                )
            spec = PreprocessSpec.from_json(published)
        return _resolve_model_info(model, version, cfg, spec)

    # -------------------------------------------------------------- single entry points

    async def embed(self, source: ImageSource) -> npt.NDArray[np.float32]:
        """Embed one image of any supported kind: a path, URL, base64 / ``data:`` string,
        bytes, ``PIL.Image`` or uint8 array. Returns float32 of shape ``(D,)``."""
        return await self._embed_one(source, None)

    async def embed_image(self, path: str | os.PathLike[str]) -> npt.NDArray[np.float32]:
        """Embed the image file at ``path`` (``str`` or ``os.PathLike``)."""
        return await self._embed_one(path, _expect_path)

    async def embed_image_url(self, url: str) -> npt.NDArray[np.float32]:
        """Embed the image at an ``http(s)://`` URL, fetched through the client's session."""
        return await self._embed_one(url, _expect_url)

    async def embed_image_base64(self, data: str | bytes) -> npt.NDArray[np.float32]:
        """Embed a base64 image: plain base64 or a ``data:image/...;base64,`` URI.

        ``data`` may be ``str`` or ASCII ``bytes`` (base64 text, not image bytes).
        """
        return await self._embed_one(data, _expect_base64)

    async def embed_image_bytes(
        self, data: bytes | bytearray | memoryview
    ) -> npt.NDArray[np.float32]:
        """Embed encoded image bytes (JPEG, PNG, WebP, ...)."""
        return await self._embed_one(data, _expect_bytes)

    async def _embed_one(self, source: Any, expect: _Expect | None) -> npt.NDArray[np.float32]:
        async with self._operation():
            try:
                source, kind = expect(source) if expect is not None else (source, None)
                info = await self._model_info()
                pixels = await self._pixels(source, info, kind)
                assert self._slots is not None
                async with self._slots:
                    rows = await self._infer(info, [pixels])
            except Exception as exc:
                self._stats.failed(exc)
                _attach_source(exc, source)
                raise
            self._stats.succeeded(1)
            row: npt.NDArray[np.float32] = rows[0]
            return row

    # ------------------------------------------------------------------------- batch

    async def batch_embed_images(self, sources: Iterable[ImageSource]) -> BatchEmbedding:
        """Embed many images of any mix of kinds; one bad item never sinks the rest.

        Returns a :class:`BatchEmbedding`: ``(N, D)`` float32 rows in input order (NaN
        rows for failed inputs) and ``errors`` (index -> exception). Loading, decoding
        and inference are pipelined with bounded look-ahead
        (``ClientConfig.lookahead_items``) and at most ``max_in_flight`` requests
        outstanding, so a huge iterable never loads at once. Errors that are not about
        an item (closed client, model config) are raised.
        """
        if isinstance(sources, str | bytes | bytearray | memoryview | os.PathLike | Image.Image):
            # Iterating these would embed characters or bytes one by one.
            raise InvalidInput(
                f"{describe_source(sources)}: batch_embed_images() takes an iterable of "
                "sources (e.g. a list), not a single source; use embed() for one image",
                source=sources,
            )
        async with self._operation():
            info = await self._model_info()
            rows: dict[int, npt.NDArray[np.float32]] = {}
            errors: dict[int, BaseException] = {}
            count = await self._pipeline(info, sources, rows, errors)
            dim = info.embedding_dim
            if dim is None:
                dim = next((len(r) for r in rows.values()), 0)
            out = np.full((count, dim), np.nan, dtype=np.float32)
            for index, row in rows.items():
                out[index] = row
            return BatchEmbedding(out, types.MappingProxyType(errors))

    async def _pipeline(
        self,
        info: ModelInfo,
        sources: Iterable[ImageSource],
        rows: dict[int, npt.NDArray[np.float32]],
        errors: dict[int, BaseException],
    ) -> int:
        assert self._slots is not None
        slots = self._slots
        pack_size = self._pack_size(info)
        # Items admitted but not finished: bounds memory however long ``sources`` is.
        admitted = asyncio.Semaphore(self._config.lookahead_items)
        ready: asyncio.Queue[tuple[int, ImageSource, npt.NDArray[np.uint8]] | None]
        ready = asyncio.Queue()
        preparing: set[asyncio.Task[None]] = set()
        sending: set[asyncio.Task[None]] = set()

        def record(index: int, source: ImageSource, exc: BaseException, *, shared: bool) -> None:
            if not shared:  # one exception object for a whole pack names no single input
                _attach_source(exc, source)
            errors[index] = exc
            self._stats.failed(exc)

        async def prepare(index: int, source: ImageSource) -> None:
            try:
                pixels = await self._pixels(source, info, kind=None)
            except Exception as exc:
                record(index, source, exc, shared=False)
                admitted.release()
                return
            ready.put_nowait((index, source, pixels))

        async def send(items: list[tuple[int, ImageSource, npt.NDArray[np.uint8]]]) -> None:
            try:
                await self._send_pack(info, items, rows, record)
            finally:
                for _ in items:
                    admitted.release()

        def release_slot(_: asyncio.Task[None]) -> None:
            # A done-callback, so the slot comes back even if the task never started.
            slots.release()

        async def dispatch() -> None:
            finished = False
            while not finished:
                first = await ready.get()
                if first is None:
                    return
                # Wait for a slot first: while Triton is busy, more items get ready to pack.
                await slots.acquire()
                items = [first]
                while len(items) < pack_size and not ready.empty():
                    item = ready.get_nowait()
                    if item is None:
                        finished = True
                        break
                    items.append(item)
                task = asyncio.ensure_future(send(items))
                task.add_done_callback(release_slot)
                sending.add(task)
                task.add_done_callback(sending.discard)

        dispatcher = asyncio.ensure_future(dispatch())
        main = asyncio.current_task()

        def dispatcher_done(task: asyncio.Task[None]) -> None:
            # Never hang on a permit that will not come back: a dead dispatcher stops us.
            if main is not None and not task.cancelled() and task.exception() is not None:
                main.cancel()

        dispatcher.add_done_callback(dispatcher_done)
        count = 0
        try:
            for index, source in enumerate(sources):
                await admitted.acquire()
                task = asyncio.ensure_future(prepare(index, source))
                preparing.add(task)
                task.add_done_callback(preparing.discard)
                count = index + 1
            while preparing:
                await asyncio.wait(list(preparing))
            ready.put_nowait(None)
            await dispatcher
            while sending:
                await asyncio.wait(list(sending))
        except BaseException:
            pending = [*preparing, *sending, dispatcher]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            crash = None if dispatcher.cancelled() else dispatcher.exception()
            if crash is not None:
                raise crash from None
            raise
        return count

    async def _send_pack(
        self,
        info: ModelInfo,
        items: list[tuple[int, ImageSource, npt.NDArray[np.uint8]]],
        rows: dict[int, npt.NDArray[np.float32]],
        record: Callable[..., None],
    ) -> None:
        """Send one pack; record a row or an error for each of its items."""
        try:
            embeddings = await self._infer(info, [pixels for _, _, pixels in items])
        except ServerError as exc:
            if len(items) > 1 and not isinstance(exc, ServerOverloaded | ProtocolError):
                # Triton refused the pack: find the culprit(s) one by one, same slot.
                for item in items:
                    await self._send_pack(info, [item], rows, record)
                return
            for index, source, _ in items:
                record(index, source, exc, shared=len(items) > 1)
            return
        except Exception as exc:
            for index, source, _ in items:
                record(index, source, exc, shared=len(items) > 1)
            return
        for (index, _, _), row in zip(items, embeddings, strict=True):
            rows[index] = row
        self._stats.succeeded(len(items))

    def _pack_size(self, info: ModelInfo) -> int:
        # A model without a batch dimension (max_batch_size 0) takes one image per request.
        size = min(self._config.pack_batch_size, info.max_batch_size or 1)
        return max(1, min(size, self._config.max_request_bytes // max(1, info.item_bytes)))

    # ---------------------------------------------------------------- loading + infer

    async def _pixels(
        self, source: ImageSource, info: ModelInfo, kind: SourceKind | None
    ) -> npt.NDArray[np.uint8]:
        """Load one source (fetch/read/decode base64) and preprocess it in the pool."""
        assert self._session is not None and self._executor is not None
        if kind is None:
            kind = classify_source(source)
        started = time.perf_counter()
        raw = await load_source(
            source,
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
        if (
            isinstance(raw, np.ndarray)
            and raw.dtype == np.uint8
            and raw.shape == info.preprocessing.output_shape
        ):
            # Already the model's pixels: a hop through the pool would cost more than the check.
            return self._decode(raw, info.preprocessing, label)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, self._decode, raw, info.preprocessing, label
        )

    def _decode(self, raw: Any, spec: PreprocessSpec, source: ImageSource) -> npt.NDArray[np.uint8]:
        started = time.perf_counter()
        try:
            return prepare_pixels(
                raw, spec, source=source, max_pixels=self._config.max_image_pixels
            )
        finally:
            self._stats.decoded(elapsed_s=time.perf_counter() - started)

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
        inputs = [InputTensor(info.input_name, batch, "UINT8")]
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

        output = await self._with_retries(attempt)
        return _embedding_rows(output, count, info)

    async def _with_retries(self, op: Callable[[], Awaitable[T]]) -> T:
        """Retry transient failures (unreachable, overloaded) with backoff + full jitter."""
        cfg = self._config
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                return await op()
            except (ServerUnavailable, ServerOverloaded) as exc:
                attempt += 1
                delay = random.uniform(
                    0.0, min(cfg.backoff_max_s, cfg.backoff_base_s * 2 ** (attempt - 1))
                )
                spent = time.monotonic() - started
                if attempt > cfg.max_retries or spent + delay > cfg.retry_budget_s:
                    if attempt > 1:
                        logger.info("giving up after %d attempts: %s", attempt, exc)
                    raise
                self._stats.retry()
                logger.debug("retry %d in %.3f s after %s", attempt, delay, exc)
                await asyncio.sleep(delay)


# ------------------------------------------------------------------------------ helpers

_Expect = Callable[[Any], tuple[Any, SourceKind]]


def _kind_name(kind: SourceKind) -> str:
    return kind.name.lower().replace("_", " ")


def _expect_path(source: Any) -> tuple[Any, SourceKind]:
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


def _expect_url(source: Any) -> tuple[Any, SourceKind]:
    if not isinstance(source, str) or classify_source(source) is not SourceKind.URL:
        raise InvalidInput(
            f"{describe_source(source)}: embed_image_url() takes an http(s):// URL string; "
            "use embed() for any kind of input",
            source=source,
        )
    return source, SourceKind.URL


def _expect_base64(source: Any) -> tuple[Any, SourceKind]:
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


def _expect_bytes(source: Any) -> tuple[Any, SourceKind]:
    if not isinstance(source, bytes | bytearray | memoryview):
        raise InvalidInput(
            f"{describe_source(source)}: embed_image_bytes() takes bytes, not "
            f"{type(source).__name__}; use embed() for any kind of input",
            source=source,
        )
    return source, SourceKind.BYTES


def _attach_source(exc: BaseException, source: object) -> None:
    if isinstance(exc, TritonVisionError) and exc.source is None:
        exc.source = source


def _embedding_rows(
    output: npt.NDArray[Any], count: int, info: ModelInfo
) -> npt.NDArray[np.float32]:
    array = np.asarray(output)
    if array.size == 0 or array.size % count:
        raise ProtocolError(
            f"model {info.name!r} returned output {info.output_name!r} of shape "
            f"{array.shape} for {count} image(s)",
            status=200,
            model=info.name,
        )
    rows = array.reshape(count, -1)
    if info.embedding_dim is not None and rows.shape[1] != info.embedding_dim:
        raise ProtocolError(
            f"model {info.name!r} returned {rows.shape[1]}-dim embeddings, its config "
            f"declares {info.embedding_dim}",
            status=200,
            model=info.name,
        )
    return rows.astype(np.float32, copy=False)


def _resolve_model_info(
    model: str, version: str, cfg: ModelConfig, spec: PreprocessSpec
) -> ModelInfo:
    if cfg.inputs:
        matching = [t for t in cfg.inputs if t.name == spec.input_name]
        if not matching:
            raise ModelConfigError(
                f"model {model!r} has no input {spec.input_name!r} (its inputs: "
                f"{[t.name for t in cfg.inputs]}); the client sends preprocessed pixels to "
                "the encoder, not to the '_images' ensemble"
            )
        declared = matching[0]
        if declared.datatype != "UINT8":
            raise ModelConfigError(
                f"model {model!r} input {declared.name!r} is {declared.datatype}, "
                "the client sends UINT8 pixels"
            )
        expected = spec.output_shape
        dims = declared.dims[-3:]
        if len(dims) != 3 or any(d not in (-1, e) for d, e in zip(dims, expected, strict=True)):
            raise ModelConfigError(
                f"model {model!r} input {declared.name!r} has dims {list(declared.dims)}, "
                f"but its preprocessing produces {list(expected)}"
            )
    if not cfg.outputs:
        output_name, dim = _EMBEDDINGS, None
    else:
        named = [t for t in cfg.outputs if t.name == _EMBEDDINGS]
        if named:
            chosen = named[0]
        elif len(cfg.outputs) == 1:
            chosen = cfg.outputs[0]
        else:
            raise ModelConfigError(
                f"model {model!r} has several outputs {[t.name for t in cfg.outputs]} "
                f"and none named {_EMBEDDINGS!r}"
            )
        output_name = chosen.name
        dim = chosen.dims[-1] if chosen.dims and chosen.dims[-1] > 0 else None
    return ModelInfo(
        name=model,
        version=version,
        config=cfg,
        preprocessing=spec,
        input_name=spec.input_name,
        output_name=output_name,
        embedding_dim=dim,
        max_batch_size=max(0, cfg.max_batch_size),
    )
