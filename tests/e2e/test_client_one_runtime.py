"""THE invariant, measured: one client = one loop, one loop thread, one session, one channel.

This project exists because a service built a new event loop, thread and
``aiohttp.ClientSession`` for every ``embed_image*`` call and every batch. Here 200
calls of every kind, from 8 threads, go through one ``VisionClient`` while the
constructors of event loops, sessions and gRPC channels are counted (wrapped through
their public classes; nothing private is patched). Every kind includes the text calls
(``embed_text``, ``batch_embed_texts``), sent to the session's tiny text ensemble.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import io
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc.aio
import numpy as np
import pytest
from _local_servers import ImageSite, encode, make_image
from _tiny_text import NON_ASCII_TEXTS, SHORT_TEXTS, TINY_CLIP_TEXT
from PIL import Image

from tritonvision.client import AsyncVisionClient, VisionClient
from tritonvision.contract import texts_name

pytestmark = pytest.mark.e2e

CALLS_PER_KIND = 200
THREADS = 8
TEXT_MODEL = texts_name(TINY_CLIP_TEXT)  # its embeddings are 16-dim, like the image model's


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    return {f"img{i}.png": encode(make_image(i)) for i in range(4)}


@pytest.fixture(scope="module")
def site(images: dict[str, bytes]) -> Iterator[ImageSite]:
    with ImageSite(images) as s:
        yield s


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    """Counts event loops, aiohttp sessions and gRPC channels constructed from now on."""
    counts: collections.Counter[str] = collections.Counter()

    def counting(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return original(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(
        asyncio.BaseEventLoop, "__init__", counting("loops", asyncio.BaseEventLoop.__init__)
    )
    monkeypatch.setattr(
        aiohttp.ClientSession, "__init__", counting("sessions", aiohttp.ClientSession.__init__)
    )
    monkeypatch.setattr(
        grpc.aio, "insecure_channel", counting("channels", grpc.aio.insecure_channel)
    )
    monkeypatch.setattr(grpc.aio, "secure_channel", counting("channels", grpc.aio.secure_channel))
    return counts


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("tritonvision-loop")]


def decode_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("tritonvision-decode")]


def every_kind(tmp_path: Path, images: dict[str, bytes], site: ImageSite) -> dict[str, Any]:
    path = tmp_path / "img0.png"
    path.write_bytes(images["img0.png"])
    b64 = base64.b64encode(images["img1.png"]).decode()
    return {
        "embed_image": path,
        "embed_image_url": site.url("img2.png"),
        "embed_image_base64": b64,
        "embed_image_base64 (data: URI)": "data:image/png;base64," + b64,
        "embed_image_bytes": images["img3.png"],
        "embed (PIL image)": Image.open(io.BytesIO(images["img0.png"])).convert("RGB"),
        "batch_embed_images": [path, site.url("img2.png"), b64, images["img3.png"]],
        "embed_text": SHORT_TEXTS[0],
        "batch_embed_texts": [*SHORT_TEXTS, *NON_ASCII_TEXTS],
    }


def method_for(kind: str) -> str:
    return kind.split(" ")[0]


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_every_call_of_every_kind_from_many_threads_shares_one_loop_thread_and_session(
    transport: str,
    triton: Any,
    tmp_path: Path,
    images: dict[str, bytes],
    site: ImageSite,
    counted: collections.Counter[str],
) -> None:
    url = triton.http_url if transport == "http" else triton.grpc_url
    kinds = every_kind(tmp_path, images, site)
    threads_before = len(loop_threads())
    client = VisionClient(url, triton.model, text_model=TEXT_MODEL, allow_private_addresses=True)
    try:
        first = client.embed_image_bytes(images["img3.png"]).result(60)
        session = client.async_client.session
        assert session is not None
        loop = client.runtime.loop

        def call(job: tuple[str, int]) -> tuple[str, Any]:
            kind, _ = job
            pending = getattr(client, method_for(kind))(kinds[kind])
            return kind, pending.result(120)

        jobs = [(kind, i) for i in range(CALLS_PER_KIND) for kind in kinds]
        with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
            results = list(pool.map(call, jobs))

        # Every call succeeded, and all went through the same loop, thread and session.
        for kind, result in results:
            if kind.startswith("batch_"):
                assert result.ok, result.errors
                assert result.embeddings.shape == (len(kinds[kind]), triton.embedding_dim)
            else:
                assert result.shape == (triton.embedding_dim,)
        bytes_rows = [r for k, r in results if k == "embed_image_bytes"]
        np.testing.assert_allclose(bytes_rows[0], first, rtol=1e-5, atol=1e-6)
        assert client.async_client.session is session
        assert client.runtime.loop is loop
        assert len(loop_threads()) == threads_before + 1
        assert client.runtime.thread in loop_threads()
        assert len(decode_threads()) <= client.async_client.config.decode_workers
        text_rows = [r for k, r in results if k == "embed_text"]
        np.testing.assert_allclose(text_rows[-1], text_rows[0], rtol=1e-5, atol=1e-6)
        stats = client.stats()
        per_round = sum(len(v) if k.startswith("batch_") else 1 for k, v in kinds.items())
        assert stats.items == 1 + CALLS_PER_KIND * per_round
        assert stats.failed == 0
    finally:
        client.close()

    assert counted["loops"] == 1, counted
    assert counted["sessions"] == 1, counted
    assert counted["channels"] == (1 if transport == "grpc" else 0), counted
    assert len(loop_threads()) == threads_before
    assert session.closed


@pytest.mark.parametrize("transport", ["http", "grpc"])
async def test_async_client_reuses_its_session_and_the_callers_loop(
    transport: str,
    triton: Any,
    tmp_path: Path,
    images: dict[str, bytes],
    site: ImageSite,
    counted: collections.Counter[str],
) -> None:
    url = triton.http_url if transport == "http" else triton.grpc_url
    kinds = every_kind(tmp_path, images, site)
    threads_before = len(loop_threads())
    loops_before = counted["loops"]
    async with AsyncVisionClient(
        url, triton.model, text_model=TEXT_MODEL, allow_private_addresses=True
    ) as client:
        session = client.session
        for _ in range(4):  # rounds of concurrent calls of every kind
            calls = [
                getattr(client, method_for(kind))(source)
                for kind, source in kinds.items()
                for _ in range(CALLS_PER_KIND // 4)
            ]
            await asyncio.gather(*calls)
            assert client.session is session
    assert session is not None and session.closed
    assert counted["loops"] == loops_before  # no call made a loop of its own
    assert counted["sessions"] == 1, counted
    assert counted["channels"] == (1 if transport == "grpc" else 0), counted
    assert len(loop_threads()) == threads_before  # the async client starts no thread
