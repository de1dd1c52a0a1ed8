"""End to end: both client faces against the real tritonserver, both transports.

Needs the session-scoped ``triton`` fixture (``tests/conftest.py``): ``http_url``,
``grpc_url``, ``model`` (a tiny encoder publishing its preprocessing; its ensemble is
``model + "_images"``) and ``embedding_dim``. Image URLs come from a real
``aiohttp.web`` server on 127.0.0.1, so the clients run with
``allow_private_addresses=True``.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import dataclasses
import gc
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _local_servers import ImageSite, LocalServer, encode, make_image
from aiohttp import web
from PIL import Image

from tritonvision.client import (
    AsyncVisionClient,
    BatchEmbedding,
    BatchError,
    ClientClosed,
    ClientConfig,
    DecodeError,
    FetchStatusError,
    InvalidInput,
    ModelConfigError,
    PendingBatchEmbedding,
    PendingEmbedding,
    PreprocessSpec,
    RequestTimeout,
    RuntimeUnavailable,
    ServerError,
    ServerOverloaded,
    ServerUnavailable,
    VisionClient,
)
from tritonvision.client._imaging import prepare_pixels
from tritonvision.contract import PARAM_PREPROCESSING

pytestmark = pytest.mark.e2e


# ------------------------------------------------------------------------- test data


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    files = {f"img{i}.png": encode(make_image(i)) for i in range(6)}
    files["photo.jpg"] = encode(make_image(7, (80, 60)), "JPEG")
    return files


@pytest.fixture(scope="module")
def site(images: dict[str, bytes]) -> Iterator[ImageSite]:
    with ImageSite(images) as s:
        yield s


@pytest.fixture
def files(tmp_path: Path, images: dict[str, bytes]) -> dict[str, Path]:
    out = {}
    for name, data in images.items():
        path = tmp_path / name
        path.write_bytes(data)
        out[name] = path
    return out


@pytest.fixture(params=["http", "grpc"])
def url(request: pytest.FixtureRequest, triton: Any) -> str:
    return str(triton.http_url if request.param == "http" else triton.grpc_url)


def assert_embedding(vec: np.ndarray, dim: int) -> None:
    assert isinstance(vec, np.ndarray)
    assert vec.dtype == np.float32 and vec.shape == (dim,)
    assert np.all(np.isfinite(vec))


# ---------------------------------------------------------------- async: entry points


async def test_all_entry_points_return_the_same_embedding_for_the_same_image(
    url: str, triton: Any, files: dict[str, Path], images: dict[str, bytes], site: ImageSite
) -> None:
    data = images["img1.png"]
    async with AsyncVisionClient(url, triton.model, allow_private_addresses=True) as client:
        by_path = await client.embed_image(files["img1.png"])
        by_str_path = await client.embed_image(str(files["img1.png"]))
        by_url = await client.embed_image_url(site.url("img1.png"))
        by_b64 = await client.embed_image_base64(base64.b64encode(data).decode())
        by_data_uri = await client.embed_image_base64(
            "data:image/png;base64," + base64.b64encode(data).decode()
        )
        by_bytes = await client.embed_image_bytes(data)
        by_pil = await client.embed(Image.open(io.BytesIO(data)))
        other = await client.embed_image(files["img2.png"])
    assert_embedding(by_path, triton.embedding_dim)
    for vec in (by_str_path, by_url, by_b64, by_data_uri, by_bytes, by_pil):
        np.testing.assert_allclose(vec, by_path, rtol=1e-5, atol=1e-6)
    assert not np.allclose(other, by_path)


async def test_embed_accepts_every_kind_of_source(
    url: str, triton: Any, files: dict[str, Path], images: dict[str, bytes], site: ImageSite
) -> None:
    pixels = np.asarray(make_image(3))
    async with AsyncVisionClient(url, triton.model, allow_private_addresses=True) as client:
        for source in (
            files["photo.jpg"],
            site.url("photo.jpg"),
            images["photo.jpg"],
            base64.b64encode(images["photo.jpg"]).decode(),
            make_image(3),
            pixels,
        ):
            assert_embedding(await client.embed(source), triton.embedding_dim)


async def test_typed_entry_points_refuse_other_kinds(
    url: str, triton: Any, site: ImageSite
) -> None:
    async with AsyncVisionClient(url, triton.model, allow_private_addresses=True) as client:
        with pytest.raises(InvalidInput):
            await client.embed_image_url("/definitely/a/path.png")
        with pytest.raises(InvalidInput):
            await client.embed_image(site.url("img1.png"))
        with pytest.raises(InvalidInput):
            await client.embed_image_bytes("not bytes")  # type: ignore[arg-type]


async def test_errors_name_their_input(url: str, triton: Any, tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    async with AsyncVisionClient(url, triton.model) as client:
        with pytest.raises(InvalidInput) as missing_info:
            await client.embed_image(missing)
        with pytest.raises(DecodeError) as corrupt_info:
            await client.embed_image(corrupt)
    assert "nope.png" in str(missing_info.value)
    assert "corrupt.png" in str(corrupt_info.value)


# ------------------------------------------------------------------------------ batch


def mixed_batch(
    files: dict[str, Path], images: dict[str, bytes], site: ImageSite, tmp_path: Path
) -> tuple[list[Any], dict[int, type[BaseException]]]:
    sources: list[Any] = [
        files["img0.png"],  # 0
        str(tmp_path / "missing.png"),  # 1 missing file
        b"definitely not an image",  # 2 corrupt bytes
        site.url("img1.png"),  # 3
        "data:image/png;base64,@@@not-base64@@@",  # 4 bad base64
        site.url("does-not-exist.png"),  # 5 404
        base64.b64encode(images["img2.png"]).decode(),  # 6
        images["img3.png"],  # 7
        make_image(4),  # 8 PIL
        files["photo.jpg"],  # 9
    ]
    failing: dict[int, type[BaseException]] = {
        1: InvalidInput,
        2: DecodeError,
        4: InvalidInput,
        5: FetchStatusError,
    }
    return sources, failing


@pytest.mark.parametrize("pack", [1, 4])
async def test_batch_embed_returns_error_per_item_and_rows_matching_single_calls(
    url: str,
    triton: Any,
    files: dict[str, Path],
    images: dict[str, bytes],
    site: ImageSite,
    tmp_path: Path,
    pack: int,
) -> None:
    sources, failing = mixed_batch(files, images, site, tmp_path)
    async with AsyncVisionClient(
        url, triton.model, allow_private_addresses=True, pack_batch_size=pack
    ) as client:
        result = await client.batch_embed_images(sources)
        singles = {i: await client.embed(s) for i, s in enumerate(sources) if i not in failing}
    assert isinstance(result, BatchEmbedding)
    assert len(result) == len(sources)
    assert result.embeddings.shape == (len(sources), triton.embedding_dim)
    assert result.embeddings.dtype == np.float32
    assert not result.ok
    assert sorted(result.errors) == sorted(failing)
    for index, kind in failing.items():
        assert isinstance(result.errors[index], kind), (index, result.errors[index])
        assert np.all(np.isnan(result.embeddings[index]))
    assert result.errors[5].status == 404  # type: ignore[attr-defined]
    for index, vec in singles.items():
        np.testing.assert_allclose(result.embeddings[index], vec, rtol=1e-5, atol=1e-6)
    with pytest.raises(BatchError) as info:
        result.raise_for_errors()
    assert set(info.value.errors) == set(failing)
    assert "4 of 10 inputs failed" in str(info.value)


async def test_batch_of_many_items_keeps_input_order(
    url: str, triton: Any, images: dict[str, bytes]
) -> None:
    names = [f"img{i}.png" for i in range(6)]
    sources = [images[names[i % 6]] for i in range(60)]
    config = ClientConfig(max_in_flight=3, max_lookahead_items=5, pack_batch_size=3)
    async with AsyncVisionClient(url, triton.model, config=config) as client:
        result = await client.batch_embed_images(iter(sources))  # a one-shot iterator
        expected = [await client.embed_image_bytes(images[n]) for n in names]
    assert result.ok
    result.raise_for_errors()
    for i in range(60):
        np.testing.assert_allclose(result.embeddings[i], expected[i % 6], rtol=1e-5, atol=1e-6)


async def test_empty_batch_gives_an_empty_result(url: str, triton: Any) -> None:
    async with AsyncVisionClient(url, triton.model) as client:
        result = await client.batch_embed_images([])
    assert result.ok and len(result) == 0
    assert result.embeddings.shape == (0, triton.embedding_dim)


# -------------------------------------------------------------------- model metadata


async def test_model_info_reads_the_published_preprocessing(url: str, triton: Any) -> None:
    async with AsyncVisionClient(url, triton.model) as client:
        info = await client.model_info()
        again = await client.model_info()
    assert info is again  # cached per model
    assert info.embedding_dim == triton.embedding_dim
    assert info.max_batch_size >= 1
    assert info.preprocessing.output_shape[2] == 3


async def test_the_images_ensemble_is_refused_with_a_model_config_error(
    url: str, triton: Any, images: dict[str, bytes]
) -> None:
    # The client preprocesses itself and sends pixels; the ensemble takes encoded bytes.
    async with AsyncVisionClient(url, triton.model + "_images") as client:
        with pytest.raises(ModelConfigError, match="_images"):
            await client.embed_image_bytes(images["img0.png"])
        with pytest.raises(ModelConfigError):
            await client.batch_embed_images([images["img0.png"]])


async def test_explicit_preprocessing_overrides_the_published_spec(
    url: str, triton: Any, images: dict[str, bytes]
) -> None:
    image = images["photo.jpg"]
    async with AsyncVisionClient(url, triton.model) as client:
        published = (await client.model_info()).preprocessing
        reference = await client.embed_image_bytes(image)
        # Another filter, same size: the encoder takes it, but the pixels differ.
        other = "nearest" if published.resample != "nearest" else "bilinear"
        spec = dataclasses.replace(published, resample=other)
        # The override's pixels, sent as they are: what the overriding client must send.
        expected = await client.embed(prepare_pixels(image, spec))
    async with AsyncVisionClient(url, triton.model, preprocessing=spec) as client:
        assert (await client.model_info()).preprocessing == spec
        embedded = await client.embed_image_bytes(image)
    np.testing.assert_allclose(embedded, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(embedded, reference, atol=1e-4), "the override was ignored"


async def test_unknown_model_is_a_server_error(url: str, images: dict[str, bytes]) -> None:
    async with AsyncVisionClient(url, "no_such_model") as client:
        with pytest.raises(ServerError) as info:
            await client.embed_image_bytes(images["img0.png"])
        assert client.stats().retries == 0  # a 404 is not transient
    assert info.value.status == 404
    assert "no_such_model" in str(info.value)


# ----------------------------------------------------------------------- robustness


async def test_unreachable_server_fails_fast_with_server_unavailable_after_retries(
    unused_tcp_port: int, images: dict[str, bytes]
) -> None:
    config = ClientConfig(max_retries=2, backoff_base_s=0.01, connect_timeout_s=2.0)
    for url in (f"http://127.0.0.1:{unused_tcp_port}", f"grpc://127.0.0.1:{unused_tcp_port}"):
        async with AsyncVisionClient(url, "m", config=config) as client:
            with pytest.raises(ServerUnavailable):
                await client.embed_image_bytes(images["img0.png"])
            assert client.stats().retries == 2


async def test_request_timeout_raises_request_timeout(
    url: str, triton: Any, images: dict[str, bytes]
) -> None:
    async with AsyncVisionClient(url, triton.model) as client:
        await client.model_info()  # the config fetch uses the same timeout
    config = ClientConfig(request_timeout_s=1e-4)
    async with AsyncVisionClient(url, triton.model, config=config) as client:
        with pytest.raises(RequestTimeout):
            await client.embed_image_bytes(images["img0.png"])
        assert isinstance(RequestTimeout("x"), TimeoutError)


async def test_cancelling_a_call_cancels_its_work_and_the_client_stays_usable(
    url: str, triton: Any, site: ImageSite, images: dict[str, bytes]
) -> None:
    async with AsyncVisionClient(url, triton.model, allow_private_addresses=True) as client:
        task = asyncio.ensure_future(client.embed_image_url(site.url("img0.png", "slow") + "?s=30"))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < 2
        batch = asyncio.ensure_future(
            client.batch_embed_images([site.url(f"img{i}.png", "slow") + "?s=30" for i in range(4)])
        )
        await asyncio.sleep(0.3)
        batch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await batch
        assert_embedding(await client.embed_image_bytes(images["img0.png"]), triton.embedding_dim)


async def test_stats_count_requests_items_failures_and_bytes(
    url: str, triton: Any, site: ImageSite, images: dict[str, bytes]
) -> None:
    async with AsyncVisionClient(url, triton.model, allow_private_addresses=True) as client:
        await client.embed_image_bytes(images["img0.png"])
        await client.embed_image_url(site.url("img1.png"))
        with pytest.raises(DecodeError):
            await client.embed_image_bytes(b"garbage")
        await client.batch_embed_images([images["img2.png"], b"junk", images["img3.png"]])
        stats = client.stats()
    assert stats.items == 4
    assert stats.requests >= 4
    assert stats.failures == {"DecodeError": 2}
    assert stats.failed == 2
    assert stats.bytes_fetched == len(images["img1.png"])
    assert stats.bytes_sent > 0
    assert stats.fetch_time_s > 0 and stats.decode_time_s > 0 and stats.triton_time_s > 0
    with pytest.raises(AttributeError):
        stats.items = 0  # type: ignore[misc]


# ------------------------------------------------------------------------- lifecycle


async def test_async_client_close_is_idempotent_and_later_calls_fail_at_once(
    url: str, triton: Any, images: dict[str, bytes]
) -> None:
    client = AsyncVisionClient(url, triton.model)
    await client.embed_image_bytes(images["img0.png"])
    session = client.session
    assert session is not None
    await client.close()
    await client.close()
    assert session.closed
    started = time.monotonic()
    with pytest.raises(ClientClosed):
        await client.embed_image_bytes(images["img0.png"])
    with pytest.raises(ClientClosed):
        await client.batch_embed_images([images["img0.png"]])
    with pytest.raises(ClientClosed):
        async with client:
            pass
    assert time.monotonic() - started < 0.5


async def test_close_drains_in_flight_calls(
    url: str, triton: Any, images: dict[str, bytes]
) -> None:
    client = AsyncVisionClient(url, triton.model)
    calls = [asyncio.ensure_future(client.embed_image_bytes(images["img0.png"])) for _ in range(8)]
    await asyncio.sleep(0)
    await client.close()
    for call in calls:
        assert_embedding(await call, triton.embedding_dim)


def test_async_client_refuses_a_second_event_loop(
    url: str, triton: Any, images: dict[str, bytes]
) -> None:
    client = AsyncVisionClient(url, triton.model)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(client.embed_image_bytes(images["img0.png"]))
        other = asyncio.new_event_loop()
        try:
            with pytest.raises(RuntimeUnavailable, match="another loop"):
                other.run_until_complete(client.embed_image_bytes(images["img0.png"]))
        finally:
            other.close()
        loop.run_until_complete(client.close())
    finally:
        loop.close()


def test_unclosed_async_client_warns(url: str, triton: Any, images: dict[str, bytes]) -> None:
    loop = asyncio.new_event_loop()
    client = AsyncVisionClient(url, triton.model)
    loop.run_until_complete(client.embed_image_bytes(images["img0.png"]))
    session = client.session
    with pytest.warns(ResourceWarning, match="unclosed"):
        del client
        gc.collect()
    assert session is not None
    loop.run_until_complete(session.close())  # tidy up what the warning was about
    loop.close()


# ----------------------------------------------------------------------- sync client


def test_sync_client_returns_pending_futures_with_the_same_results(
    url: str, triton: Any, files: dict[str, Path], images: dict[str, bytes], site: ImageSite
) -> None:
    with VisionClient(url, triton.model, allow_private_addresses=True) as client:
        pending = client.embed_image(files["img0.png"])
        assert isinstance(pending, PendingEmbedding)
        assert isinstance(pending, concurrent.futures.Future)
        by_path = pending.result(timeout=30)
        by_url = client.embed_image_url(site.url("img0.png")).result(30)
        by_b64 = client.embed_image_base64(base64.b64encode(images["img0.png"])).result(30)
        by_bytes = client.embed_image_bytes(images["img0.png"]).result(30)
        batch = client.batch_embed_images([files["img0.png"], b"bad"])
        assert isinstance(batch, PendingBatchEmbedding)
        result = batch.result(30)
    assert_embedding(by_path, triton.embedding_dim)
    for vec in (by_url, by_b64, by_bytes, result.embeddings[0]):
        np.testing.assert_allclose(vec, by_path, rtol=1e-5, atol=1e-6)
    assert list(result.errors) == [1]


def test_sync_client_serves_many_threads(url: str, triton: Any, images: dict[str, bytes]) -> None:
    names = [f"img{i}.png" for i in range(6)]
    with VisionClient(url, triton.model) as client:
        expected = {n: client.embed_image_bytes(images[n]).result(30) for n in names}

        def work(i: int) -> tuple[str, np.ndarray]:
            name = names[i % len(names)]
            return name, client.embed_image_bytes(images[name]).result(60)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for name, vec in pool.map(work, range(96)):
                np.testing.assert_allclose(vec, expected[name], rtol=1e-5, atol=1e-6)
        assert client.stats().items == 96 + len(names)


def test_sync_client_after_close_raises_at_the_call(
    url: str, triton: Any, images: dict[str, bytes]
) -> None:
    client = VisionClient(url, triton.model)
    client.embed_image_bytes(images["img0.png"]).result(30)
    thread = client.runtime.thread
    client.close()
    client.close()
    assert thread is not None and not thread.is_alive()
    started = time.monotonic()
    for call in (
        lambda: client.embed_image_bytes(images["img0.png"]),
        lambda: client.embed_image("x.png"),
        lambda: client.batch_embed_images([]),
    ):
        with pytest.raises(ClientClosed):
            call()
    assert time.monotonic() - started < 0.5


def test_sync_close_drains_in_flight_calls(url: str, triton: Any, images: dict[str, bytes]) -> None:
    client = VisionClient(url, triton.model)
    pending = [client.embed_image_bytes(images["img1.png"]) for _ in range(16)]
    client.close()
    for p in pending:
        assert_embedding(p.result(0), triton.embedding_dim)


def test_sync_cancel_cancels_the_task_behind_the_future(
    url: str, triton: Any, site: ImageSite, images: dict[str, bytes]
) -> None:
    with VisionClient(url, triton.model, allow_private_addresses=True) as client:
        client.model_info().result(30)
        slow = client.embed_image_url(site.url("img0.png", "slow") + "?s=30")
        time.sleep(0.3)
        assert slow.cancel()
        with pytest.raises(concurrent.futures.CancelledError):
            slow.result(1)
        # The work is gone from the loop: closing does not wait 30 s for it.
        started = time.monotonic()
        assert_embedding(
            client.embed_image_bytes(images["img0.png"]).result(30), triton.embedding_dim
        )
    assert time.monotonic() - started < 10


def test_sync_result_on_the_loop_thread_raises(
    url: str, triton: Any, images: dict[str, bytes]
) -> None:
    with VisionClient(url, triton.model) as client:
        inner = client.embed_image_bytes(images["img0.png"])

        async def block_on_it() -> str:
            try:
                inner.result()
            except RuntimeUnavailable as exc:
                return str(exc)
            return "no error"

        assert "deadlock" in client.runtime.submit(block_on_it()).result(30)
        inner.result(30)


def test_sync_client_fails_promptly_when_its_loop_thread_dies(
    url: str, triton: Any, site: ImageSite, images: dict[str, bytes]
) -> None:
    client = VisionClient(url, triton.model, allow_private_addresses=True)
    client.model_info().result(30)
    slow = client.embed_image_url(site.url("img0.png", "slow") + "?s=30")
    loop = client.runtime.loop
    assert loop is not None
    loop.call_soon_threadsafe(loop.stop)
    with pytest.raises(RuntimeUnavailable):
        slow.result(5)
    with pytest.raises(RuntimeUnavailable):
        client.embed_image_bytes(images["img0.png"])
    session = client.async_client.session
    client.close()
    assert session is None or session.closed


def test_unclosed_sync_client_warns(url: str, triton: Any, images: dict[str, bytes]) -> None:
    client = VisionClient(url, triton.model)
    client.embed_image_bytes(images["img0.png"]).result(30)
    thread = client.runtime.thread
    with pytest.warns(ResourceWarning):
        del client
        gc.collect()
    assert thread is not None
    thread.join(10)
    assert not thread.is_alive()


# --------------------------------------------------------------- scripted server failures


class ScriptedTriton(LocalServer):
    """Just enough KServe v2 over real HTTP to script what real Triton will not do on
    demand (503 bursts, a 400 for one image in a pack), and to record what it was sent.
    Embeddings are the per-channel pixel means, so rows are checkable."""

    name = "test-scripted-triton"
    spec = PreprocessSpec(resize_mode="exact", resize_height=8, resize_width=8)

    def __init__(
        self,
        *,
        failures: list[tuple[int, str]] | None = None,
        max_batch: int = 4,
        publish: bool = True,
        delay_s: float = 0.0,
    ) -> None:
        super().__init__()
        self.failures = list(failures or [])
        self.max_batch = max_batch
        self.publish = publish
        self.delay_s = delay_s
        self.headers: list[dict[str, Any]] = []

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v2/models/m/config", self._config)
        app.router.add_post("/v2/models/m/infer", self._infer)

    async def _config(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "name": "m",
                "max_batch_size": self.max_batch,
                "input": [{"name": "pixels", "data_type": "TYPE_UINT8", "dims": [8, 8, 3]}],
                "output": [{"name": "embeddings", "data_type": "TYPE_FP32", "dims": [3]}],
                "parameters": {PARAM_PREPROCESSING: {"string_value": self.spec.to_json()}}
                if self.publish
                else {},
            }
        )

    async def _infer(self, request: web.Request) -> web.Response:
        body = await request.read()
        length = int(request.headers["Inference-Header-Content-Length"])
        header = json.loads(body[:length])
        self.headers.append(header)
        await asyncio.sleep(self.delay_s)
        if self.failures:
            status, message = self.failures.pop(0)
            return web.json_response({"error": message}, status=status)
        shape = header["inputs"][0]["shape"]
        pixels = np.frombuffer(body[length:], np.uint8).reshape(shape)
        if any((p == 255).all() for p in pixels):
            return web.json_response({"error": "a white image in this batch"}, status=400)
        emb = pixels.reshape(len(pixels), -1, 3).mean(axis=1).astype(np.float32)
        out = json.dumps(
            {
                "model_name": "m",
                "outputs": [
                    {
                        "name": "embeddings",
                        "datatype": "FP32",
                        "shape": list(emb.shape),
                        "parameters": {"binary_data_size": emb.nbytes},
                    }
                ],
            }
        ).encode()
        return web.Response(
            body=out + emb.tobytes(),
            headers={"Inference-Header-Content-Length": str(len(out))},
            content_type="application/octet-stream",
        )


def solid(value: int) -> bytes:
    return encode(Image.new("RGB", (8, 8), (value, value, value)))


async def test_overloaded_requests_are_retried_then_succeed() -> None:
    overloaded = [(503, "Exceeds maximum queue size")] * 2
    config = ClientConfig(backoff_base_s=0.01)
    with ScriptedTriton(failures=overloaded) as server:
        async with AsyncVisionClient(server.base_url, "m", config=config) as client:
            vec = await client.embed_image_bytes(solid(10))
            stats = client.stats()
    np.testing.assert_allclose(vec, [10, 10, 10])
    assert stats.retries == 2 and stats.requests == 3 and stats.failed == 0


async def test_bad_input_is_never_retried() -> None:
    with ScriptedTriton(failures=[(400, "unexpected shape for input 'pixels'")]) as server:
        async with AsyncVisionClient(server.base_url, "m") as client:
            with pytest.raises(ServerError) as info:
                await client.embed_image_bytes(solid(10))
            stats = client.stats()
    assert type(info.value) is ServerError and info.value.status == 400
    assert "unexpected shape" in info.value.server_message
    assert stats.retries == 0 and stats.requests == 1
    assert stats.failures == {"ServerError": 1}


async def test_retries_stop_at_the_retry_budget() -> None:
    config = ClientConfig(max_retries=1000, retry_budget_s=0.3, backoff_base_s=0.05)
    with ScriptedTriton(failures=[(503, "queue full")] * 1000) as server:
        async with AsyncVisionClient(server.base_url, "m", config=config) as client:
            started = time.monotonic()
            with pytest.raises(ServerOverloaded):
                await client.embed_image_bytes(solid(10))
            assert time.monotonic() - started < 2.0
            assert 0 < client.stats().retries < 1000


async def test_request_timeout_and_binary_pixels_are_sent_to_triton() -> None:
    with ScriptedTriton() as server:
        async with AsyncVisionClient(server.base_url, "m", request_timeout_s=2.5) as client:
            await client.embed_image_bytes(solid(1))
    header = server.headers[0]
    assert header["parameters"]["timeout"] == 2_500_000
    assert header["inputs"] == [
        {
            "name": "pixels",
            "shape": [1, 8, 8, 3],
            "datatype": "UINT8",
            "parameters": {"binary_data_size": 8 * 8 * 3},
        }
    ]
    assert header["outputs"] == [{"name": "embeddings", "parameters": {"binary_data": True}}]


async def test_packs_never_exceed_the_models_max_batch_size() -> None:
    sources = [solid(v) for v in range(40)]
    config = ClientConfig(pack_batch_size=16, max_in_flight=1)
    with ScriptedTriton(max_batch=4) as server:
        async with AsyncVisionClient(server.base_url, "m", config=config) as client:
            result = await client.batch_embed_images(sources)
    assert result.ok
    np.testing.assert_allclose(result.embeddings[:, 0], np.arange(40))
    sizes = [h["inputs"][0]["shape"][0] for h in server.headers]
    assert max(sizes) <= 4 and sum(sizes) == 40
    assert max(sizes) > 1  # with one request in flight, ready items were packed


async def test_a_rejected_pack_is_split_so_only_the_bad_item_fails() -> None:
    sources = [solid(1), solid(255), solid(3), solid(4)]
    config = ClientConfig(pack_batch_size=4, max_in_flight=1, max_lookahead_items=4)
    # Slow answers: while the first request is out, the rest get ready and are packed.
    with ScriptedTriton(delay_s=0.2) as server:
        async with AsyncVisionClient(server.base_url, "m", config=config) as client:
            result = await client.batch_embed_images(sources)
    assert any(h["inputs"][0]["shape"][0] > 1 for h in server.headers)
    assert list(result.errors) == [1]
    assert isinstance(result.errors[1], ServerError) and result.errors[1].status == 400
    np.testing.assert_allclose(result.embeddings[[0, 2, 3], 0], [1, 3, 4])


async def test_batch_look_ahead_is_bounded() -> None:
    lookahead = 4
    config = ClientConfig(max_lookahead_items=lookahead, max_in_flight=2)
    with ScriptedTriton() as server:
        async with AsyncVisionClient(server.base_url, "m", config=config) as client:
            gaps = []

            def sources() -> Iterator[bytes]:
                for i in range(40):
                    done = client.stats().items + client.stats().failed
                    gaps.append(i - done)
                    yield solid(i)

            result = await client.batch_embed_images(sources())
    assert result.ok and len(result) == 40
    assert max(gaps) <= lookahead


async def test_model_without_published_preprocessing_needs_an_explicit_spec() -> None:
    with ScriptedTriton(publish=False) as server:
        async with AsyncVisionClient(server.base_url, "m") as client:
            with pytest.raises(ModelConfigError, match="does not publish"):
                await client.embed_image_bytes(solid(7))
        spec = ScriptedTriton.spec
        async with AsyncVisionClient(server.base_url, "m", preprocessing=spec) as client:
            np.testing.assert_allclose(await client.embed_image_bytes(solid(7)), [7, 7, 7])
