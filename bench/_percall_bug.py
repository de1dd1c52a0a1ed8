"""A faithful reproduction of the defect tritonvision exists to remove: a runtime per call.

``PerCallVisionClient`` has the public methods of ``VisionClient`` (``embed_image``,
``embed_image_bytes``, ``embed_image_base64``, ``embed_image_url``, ``embed``,
``batch_embed_images``) and the same futures-returning shape, but every call:

1. spawns a new thread,
2. which runs ``asyncio.run(...)``: a brand-new event loop,
3. opens a brand-new ``aiohttp.ClientSession`` (new connector, new TCP connection),
4. GETs the model config from Triton to learn the preprocessing,
5. loads and preprocesses the image,
6. POSTs it to Triton, then tears the session and the loop down again.

``batch_embed_images`` does the same per batch. To isolate the runtime, everything else is
what our client does: the same preprocessing (``load_image_pixels``) and the same binary
KServe v2 request and response code (both through ``_client_internals``). Benchmark use
only; it is deliberately wasteful.
"""

from __future__ import annotations

import asyncio
import base64
import os
import threading
from collections.abc import Callable, Coroutine, Iterable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

import aiohttp
import numpy as np
import numpy.typing as npt

from tritonvision.client import BatchEmbedding
from tritonvision.contract import PARAM_PREPROCESSING, PIXELS_INPUT, PreprocessSpec

from ._client_internals import (
    HEADER_LENGTH_HEADER,
    binary_request,
    config_path,
    infer_path,
    load_image_pixels,
    parse_binary_response,
    pixels_from_array,
)

__all__ = ["PerCallVisionClient"]

T = TypeVar("T")
Embedding = npt.NDArray[np.float32]


class PerCallVisionClient:
    """The per-call runtime bug, with ``VisionClient``'s method names."""

    def __init__(self, url: str, model: str) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.threads_spawned = 0
        self.sessions_made = 0

    # Each call: a thread, and in it a new loop (asyncio.run) with its own session.
    def _spawn(self, factory: Callable[[], Coroutine[Any, Any, T]]) -> Future[T]:
        future: Future[T] = Future()

        def target() -> None:
            try:
                future.set_result(asyncio.run(factory()))
            except BaseException as exc:
                future.set_exception(exc)

        self.threads_spawned += 1
        threading.Thread(target=target, name="percall-embed", daemon=True).start()
        return future

    async def _spec(self, session: aiohttp.ClientSession) -> tuple[PreprocessSpec, int]:
        async with session.get(self.url + config_path(self.model)) as resp:
            resp.raise_for_status()
            config = await resp.json()
        published = config["parameters"][PARAM_PREPROCESSING]["string_value"]
        return PreprocessSpec.from_json(published), int(config.get("max_batch_size", 0))

    async def _post(
        self, session: aiohttp.ClientSession, pixels: npt.NDArray[np.uint8]
    ) -> Embedding:
        body, headers = binary_request(PIXELS_INPUT, pixels, "UINT8")
        async with session.post(
            self.url + infer_path(self.model), data=body, headers=headers
        ) as resp:
            payload = await resp.read()
            resp.raise_for_status()
            header_length = resp.headers.get(HEADER_LENGTH_HEADER)
        return parse_binary_response(payload, header_length)

    def _session(self) -> aiohttp.ClientSession:
        self.sessions_made += 1
        return aiohttp.ClientSession()

    async def _embed_one(self, load: Callable[[], Any]) -> Embedding:
        async with self._session() as session:
            spec, _ = await self._spec(session)
            pixels = _pixels(load(), spec)
            first: Embedding = (await self._post(session, pixels[None]))[0]
            return first

    async def _embed_many(self, loaders: Sequence[Callable[[], Any]]) -> BatchEmbedding:
        async with self._session() as session:
            spec, max_batch = await self._spec(session)
            pixels = [_pixels(load(), spec) for load in loaders]
            chunk = max(1, max_batch)
            rows = [
                await self._post(session, np.stack(pixels[i : i + chunk]))
                for i in range(0, len(pixels), chunk)
            ]
        return BatchEmbedding(np.concatenate(rows), {})

    # ------------------------------------------------------------- VisionClient's methods

    def embed_image(self, path: str | os.PathLike[str]) -> Future[Embedding]:
        return self._spawn(lambda: self._embed_one(lambda: _read(path)))

    def embed_image_bytes(self, data: bytes) -> Future[Embedding]:
        return self._spawn(lambda: self._embed_one(lambda: bytes(data)))

    def embed_image_base64(self, data: str | bytes) -> Future[Embedding]:
        return self._spawn(lambda: self._embed_one(lambda: base64.b64decode(data)))

    def embed_image_url(self, url: str) -> Future[Embedding]:
        async def fetch_and_embed() -> Embedding:
            async with self._session() as session, session.get(url) as resp:
                resp.raise_for_status()
                data = await resp.read()
            return await self._embed_one(lambda: data)

        return self._spawn(fetch_and_embed)

    def embed(self, source: Any) -> Future[Embedding]:
        if isinstance(source, np.ndarray):
            return self._spawn(lambda: self._embed_one(lambda: source))
        if isinstance(source, bytes | bytearray | memoryview):
            return self.embed_image_bytes(bytes(source))
        return self.embed_image(source)

    def batch_embed_images(self, sources: Iterable[Any]) -> Future[BatchEmbedding]:
        items = list(sources)
        loaders = [_loader(s) for s in items]
        return self._spawn(lambda: self._embed_many(loaders))

    def close(self) -> None:
        """Nothing to release: nothing outlives a call. That is the bug."""

    def __enter__(self) -> PerCallVisionClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _read(path: str | os.PathLike[str]) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _loader(source: Any) -> Callable[[], Any]:
    if isinstance(source, np.ndarray | bytes):
        return lambda: source
    return lambda: _read(source)


def _pixels(raw: Any, spec: PreprocessSpec) -> npt.NDArray[np.uint8]:
    if isinstance(raw, np.ndarray):
        return pixels_from_array(raw, spec)
    return load_image_pixels(raw, spec)
