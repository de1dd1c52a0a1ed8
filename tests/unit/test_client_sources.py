"""Input kinds (``client/_sources.py``): classification, loading, limits, typed errors."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from PIL import Image

from tritonvision.client._fetch import FetchConfig
from tritonvision.client._imaging import prepare_pixels
from tritonvision.client._sources import SourceKind, classify_source, load_source
from tritonvision.contract import PreprocessSpec
from tritonvision.errors import BlockedAddress, ImageTooLarge, InvalidInput

pytestmark = pytest.mark.timeout(30)

SPEC = PreprocessSpec.clip_default()
OPEN = FetchConfig(allow_private_addresses=True)


def _encode(fmt: str, size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


PNG = _encode("PNG")
JPEG = _encode("JPEG")
PNG_B64 = base64.b64encode(PNG).decode()


class CountingExecutor(ThreadPoolExecutor):
    """A real pool that counts the work handed to it."""

    def __init__(self) -> None:
        super().__init__(max_workers=2, thread_name_prefix="test-sources")
        self.submitted = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


@pytest.fixture
def executor() -> Any:
    pool = CountingExecutor()
    yield pool
    pool.shutdown(wait=True)


async def load(source: Any, executor: Any = None, **kwargs: Any) -> Any:
    kwargs.setdefault("max_inline_bytes", 32 * 1024 * 1024)
    return await load_source(
        source, session=kwargs.pop("session", None), fetch_config=OPEN, executor=executor, **kwargs
    )


# --------------------------------------------------------------------------- classify


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ("cat.jpg", SourceKind.PATH),
        ("missing.jpg", SourceKind.PATH),
        ("/data/images/cat", SourceKind.PATH),
        ("abcd", SourceKind.PATH),
        ("C://images/cat.png", SourceKind.PATH),
        (Path("cat.jpg"), SourceKind.PATH),
        ("http://example.com/cat.jpg", SourceKind.URL),
        ("HTTPS://example.com/cat.jpg", SourceKind.URL),
        ("  https://example.com/cat.jpg", SourceKind.URL),
        ("file:///etc/passwd", SourceKind.URL),
        ("ftp://example.com/cat.jpg", SourceKind.URL),
        ("data:image/png;base64," + PNG_B64, SourceKind.DATA_URI),
        ("DATA:image/png;base64," + PNG_B64, SourceKind.DATA_URI),
        (PNG_B64, SourceKind.BASE64),
        (base64.b64encode(JPEG).decode(), SourceKind.BASE64),
        (base64.encodebytes(PNG).decode(), SourceKind.BASE64),  # MIME line breaks
        (base64.urlsafe_b64encode(JPEG).decode(), SourceKind.BASE64),
        ("my_image-01", SourceKind.PATH),
        ("QUJD" * 2000, SourceKind.BASE64),  # too long to be a path
        (PNG, SourceKind.BYTES),
        (bytearray(PNG), SourceKind.BYTES),
        (memoryview(PNG), SourceKind.BYTES),
        (Image.new("RGB", (2, 2)), SourceKind.IMAGE),
        (np.zeros((2, 2, 3), dtype=np.uint8), SourceKind.ARRAY),
    ],
)
def test_classify_source(source: Any, kind: SourceKind) -> None:
    assert classify_source(source) is kind


@pytest.mark.parametrize("source", [None, 42, 3.5, ["cat.jpg"], {"url": "x"}, object()])
def test_classify_rejects_other_types(source: Any) -> None:
    with pytest.raises(InvalidInput, match="unsupported image source type"):
        classify_source(source)


# --------------------------------------------------------------------------- paths


async def test_path_is_read_in_the_given_executor(tmp_path: Path, executor: Any) -> None:
    path = tmp_path / "cat.png"
    path.write_bytes(PNG)
    assert await load(str(path), executor) == PNG
    assert await load(path, executor) == PNG
    assert executor.submitted == 2


async def test_missing_file_says_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"'missing\.jpg': file not found") as info:
        await load("missing.jpg")
    assert info.value.source == "missing.jpg"
    with pytest.raises(InvalidInput, match="file not found"):
        await load(tmp_path / "nope.png")


async def test_directory_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="directory"):
        await load(str(tmp_path))


async def test_file_over_the_limit_is_too_large(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(PNG)
    with pytest.raises(ImageTooLarge, match=r"big\.png"):
        await load(str(path), max_inline_bytes=len(PNG) - 1)
    assert await load(str(path), max_inline_bytes=len(PNG)) == PNG


# --------------------------------------------------------------------------- inline


async def test_bytes_like_sources_give_bytes() -> None:
    assert await load(PNG) is PNG
    assert await load(bytearray(PNG)) == PNG
    assert type(await load(bytearray(PNG))) is bytes  # a private copy
    assert await load(memoryview(PNG)) == PNG


async def test_bytes_over_the_limit_are_too_large() -> None:
    with pytest.raises(ImageTooLarge, match=f"<{len(PNG)} bytes>"):
        await load(PNG, max_inline_bytes=100)
    with pytest.raises(ImageTooLarge):
        await load(memoryview(PNG), max_inline_bytes=100)


async def test_base64_and_data_uris_decode() -> None:
    assert await load(PNG_B64) == PNG
    assert await load(base64.encodebytes(PNG).decode()) == PNG
    assert await load(base64.urlsafe_b64encode(JPEG).decode()) == JPEG
    assert await load("data:image/png;base64," + PNG_B64) == PNG
    assert await load("data:;base64," + PNG_B64) == PNG  # type omitted: accepted
    assert await load("data:application/octet-stream;base64," + PNG_B64) == PNG


async def test_large_base64_is_decoded_in_the_executor(executor: Any) -> None:
    big = _encode("PNG", (400, 300))
    text = base64.b64encode(big).decode()
    assert len(text) > 64 * 1024
    assert await load(text, executor) == big
    assert executor.submitted == 1


async def test_base64_over_the_limit_is_refused_before_decoding() -> None:
    text = "A" * 4_000_000
    with pytest.raises(ImageTooLarge, match="base64 text of 4000000 chars"):
        await load(text, max_inline_bytes=1_000_000)
    with pytest.raises(ImageTooLarge):
        await load(PNG_B64, max_inline_bytes=len(PNG) - 1)


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("data:text/plain;base64,aGVsbG8=", "not an image"),
        ("data:text/html;base64," + PNG_B64, "not an image"),
        ("data:image/png," + PNG_B64, "only base64"),
        ("data:image/png;base64", "malformed"),
        ("data:image/png;base64,!!!notbase64!!!", "invalid base64"),
        ("data:image/png;base64,", "empty"),
        ("QUJD" * 1500 + "Q", "invalid base64"),
    ],
)
async def test_bad_inline_sources_are_invalid_input(source: str, needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle) as info:
        await load(source)
    assert info.value.source == source


async def test_kind_that_does_not_fit_the_value_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="cannot be loaded as bytes"):
        await load("cat.jpg", kind=SourceKind.BYTES)


async def test_image_and_array_pass_through() -> None:
    img = Image.new("RGB", (3, 3))
    arr = np.zeros((224, 224, 3), dtype=np.uint8)
    assert await load(img) is img
    assert await load(arr) is arr


# --------------------------------------------------------------------------- urls


@pytest.fixture
async def image_server() -> AsyncIterator[str]:
    async def png(request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    app = web.Application()
    app.router.add_get("/cat.png", png)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/cat.png"
    finally:
        await runner.cleanup()


async def test_url_is_fetched_on_the_given_session(image_server: str) -> None:
    async with aiohttp.ClientSession() as session:
        assert await load(image_server, session=session) == PNG
        # Default policy: the loopback test server is refused.
        with pytest.raises(BlockedAddress):
            await load_source(
                image_server,
                session=session,
                fetch_config=FetchConfig(),
                executor=None,
                max_inline_bytes=1 << 20,
            )


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x.png", "gopher://x/y"])
async def test_non_http_urls_are_blocked(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(BlockedAddress, match="scheme") as info:
            await load(url, session=session)
    assert info.value.source == url


async def test_url_without_a_session_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="session"):
        await load("https://example.com/cat.png")


# --------------------------------------------------------------------------- together


async def test_every_kind_gives_the_same_pixels(tmp_path: Path, image_server: str) -> None:
    path = tmp_path / "cat.png"
    path.write_bytes(PNG)
    expected = prepare_pixels(PNG, SPEC)
    sources: list[Any] = [
        str(path),
        path,
        PNG,
        bytearray(PNG),
        memoryview(PNG),
        PNG_B64,
        "data:image/png;base64," + PNG_B64,
        image_server,
        Image.open(io.BytesIO(PNG)),
        np.asarray(Image.open(io.BytesIO(PNG))),
    ]
    async with aiohttp.ClientSession() as session:
        for source in sources:
            raw = await load(source, session=session)
            np.testing.assert_array_equal(prepare_pixels(raw, SPEC, source=source), expected)


@pytest.mark.parametrize(
    "sources", ["cat.jpg", b"\xff\xd8", Path("cat.jpg"), Image.new("RGB", (2, 2))]
)
def test_the_sync_client_refuses_a_single_source_batch_at_the_call(sources: object) -> None:
    from tritonvision.client import VisionClient

    client = VisionClient("http://127.0.0.1:9", "enc")
    try:
        with pytest.raises(InvalidInput, match="not a single source"):
            client.batch_embed_images(sources)  # type: ignore[arg-type]
        assert client.runtime.thread is None  # refused before any work was started
    finally:
        client.close()
