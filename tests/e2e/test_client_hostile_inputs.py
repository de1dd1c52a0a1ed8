"""Hostile and odd inputs, end to end: the client, the ``_images`` ensemble, image URLs.

Three parts, all against the session's real ``tritonserver`` (``tests/conftest.py``):

- A corpus of bad and unusual inputs generated here (empty, text named ``.jpg``,
  truncated, wrong extension, 1x1, 1xN, 20000x20, 16-bit, CMYK, palette with
  transparency, animated GIF/WebP, EXIF-rotated, decompression bombs, SVG, PDF, huge and
  invalid base64, ``data:`` URIs with a wrong type, FIFOs and device files) goes through
  ``VisionClient.batch_embed_images`` as ONE batch and one by one, and through the
  ``_images`` ensemble with ``tritonclient.http`` (one request per item). Each item gets
  an embedding or a typed error naming it, quickly; afterwards the python-backend stubs
  are the same processes, the models are READY, and a good image still embeds. A
  per-class outcome table is printed at the end of the module.
- URL attacks through ``embed_image_url`` / ``batch_embed_images``: the default policy
  refuses loopback in every spelling (Triton itself is on 127.0.0.1 and stays reachable),
  schemes other than http(s), and redirects into internal hosts; with
  ``allow_private_addresses=True`` and a small ``FetchConfig`` the hostile servers are cut
  off by the limits.
- Credentials in URLs never reach error messages.

``tests/unit/test_client_imaging.py`` (modes, bad bytes, bombs at the function level),
``tests/unit/test_client_fetch.py`` (``fetch_url`` against the same kinds of servers) and
``tests/unit/test_client_sources.py`` (classification, limits) cover the units; this file adds the
end-to-end versions and the gaps.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _local_servers import LocalServer
from aiohttp import web
from PIL import Image, ImageOps

from tritonvision.client import (
    BlockedAddress,
    ClientConfig,
    DecodeError,
    DecompressionBomb,
    FetchConfig,
    FetchError,
    FetchStatusError,
    FetchTimeout,
    FetchTooLarge,
    ImageTooLarge,
    InvalidInput,
    TritonVisionError,
    VisionClient,
)
from tritonvision.errors import describe_source

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

# Generous bounds for a loaded 2-core CI box; the point is "no hang", not speed.
ITEM_DEADLINE_S = 20.0
BATCH_DEADLINE_S = 90.0


# ----------------------------------------------------------------------------- images


def _encode(img: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _textured(width: int, height: int, seed: int = 0) -> Image.Image:
    # Smooth structure plus noise: survives JPEG, and differs by orientation.
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x * y) % 256], -1)
    noise = np.random.default_rng(seed).integers(0, 30, (height, width, 3))
    return Image.fromarray(np.clip(rgb + noise, 0, 255).astype(np.uint8), "RGB")


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_bomb(width: int, height: int) -> bytes:
    """A valid-CRC PNG declaring ``width x height`` RGB with (almost) no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + _png_chunk(b"IEND", b"")
    )


def png_zlib_bomb(width: int = 12_000, height: int = 10_000) -> bytes:
    """A real, complete greyscale PNG of ``width x height`` zeros: ~100 KiB on disk,
    120 MP once decoded (over the default 89.5 MP limit)."""
    comp = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + one byte per pixel
    parts = [comp.compress(row) for _ in range(height)]
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def jpeg_header_bomb() -> bytes:
    """A small JPEG whose SOF0 marker claims 65000 x 65000 pixels."""
    data = bytearray(_encode(_noise(16, 16), "JPEG", quality=90))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, 65000, 65000)
    return bytes(data)


def gif_header_bomb() -> bytes:
    """A GIF whose logical screen and only frame claim 65535 x 65535 pixels."""
    screen = struct.pack("<HHBBB", 65535, 65535, 0, 0, 0)
    frame = b"," + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0)
    lzw = b"\x02\x02\x4c\x01\x00"  # min code size 2, one tiny data block, terminator
    return b"GIF89a" + screen + frame + lzw + b";"


def exif_rotated_jpeg() -> bytes:
    """A landscape JPEG stored sideways with EXIF orientation 6 (rotate 90 CW to view)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(_textured(64, 40, seed=4), "JPEG", quality=95, exif=exif.tobytes())


def animated(fmt: str) -> bytes:
    frames = [_textured(48, 32, seed=s) for s in range(4)]
    extra: dict[str, Any] = {"lossless": True} if fmt == "WEBP" else {}
    return _encode(
        frames[0], fmt, save_all=True, append_images=frames[1:], duration=40, loop=0, **extra
    )


def palette_with_transparency() -> bytes:
    img = _textured(40, 40, seed=2).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    img.info["transparency"] = 0
    return _encode(img, "PNG", transparency=0)


def sixteen_bit_png() -> bytes:
    arr = (np.arange(50 * 40, dtype=np.uint32).reshape(40, 50) * 32).astype(np.uint16)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    return _encode(img, "PNG")


MINIMAL_PDF = (
    b"%PDF-1.1\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
    b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 10 10]>>endobj\n"
    b"trailer<</Root 1 0 R>>\n%%EOF\n"
)
SVG = (
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b'<rect width="10" height="10" fill="red"/></svg>'
)


# ----------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class Case:
    """One class of input.

    ``source`` goes to the client; ``wire`` is what a caller of the ``_images`` ensemble
    would send (None: the class only exists client-side, e.g. a FIFO path).
    ``expect`` is the client's error type (None: an embedding); ``ensemble_ok`` whether
    the ensemble embeds ``wire``.
    """

    name: str
    source: Any
    wire: bytes | None
    expect: type[TritonVisionError] | None
    ensemble_ok: bool


def build_corpus(tmp: Path) -> list[Case]:
    good_png = _encode(_textured(64, 48, seed=1), "PNG")
    good_jpeg = _encode(_textured(64, 48, seed=1), "JPEG", quality=92)
    photo = _encode(_noise(300, 200, seed=5), "JPEG", quality=90)
    big_png = _encode(_noise(300, 300, seed=6), "PNG")

    def path(name: str, data: bytes) -> str:
        p = tmp / name
        p.write_bytes(data)
        return str(p)

    fifo = tmp / "pipe.jpg"
    os.mkfifo(fifo)
    huge_b64 = "QUFB" * 12_000_000  # 48M chars: decodes to 36 MB > the 32 MiB inline limit
    png_b64 = base64.b64encode(good_png).decode()
    text = b"this is a text file, not a photo\n" * 8

    def ok(name: str, data: bytes, source: Any = None) -> Case:
        return Case(name, data if source is None else source, data, None, True)

    def bad(name: str, data: bytes, expect: type[TritonVisionError], source: Any = None) -> Case:
        return Case(name, data if source is None else source, data, expect, False)

    return [
        ok("control_png", good_png),
        ok("control_jpeg", good_jpeg),
        bad("zero_bytes", b"", DecodeError),
        bad("text_named_jpg", text, DecodeError, path("notes.jpg", text)),
        bad("html_bytes", b"<!doctype html><html><body>404</body></html>", DecodeError),
        bad("random_bytes", np.random.default_rng(9).bytes(4096), DecodeError),
        bad("gzip_bytes", gzip.compress(good_png), DecodeError),
        bad("truncated_jpeg", photo[: len(photo) // 2], DecodeError),
        bad("truncated_png", big_png[: len(big_png) // 2], DecodeError),
        bad("png_magic_only", b"\x89PNG\r\n\x1a\n", DecodeError),
        ok("png_named_jpg", good_png, path("really-a-png.jpg", good_png)),
        ok("jpeg_named_png", good_jpeg, path("really-a-jpeg.png", good_jpeg)),
        ok(
            "jpeg_named_gif_data_uri",
            good_jpeg,
            source="data:image/gif;base64," + base64.b64encode(good_jpeg).decode(),
        ),
        ok("1x1", _encode(_noise(1, 1), "PNG")),
        ok("1xN_1x700", _encode(_noise(1, 700), "PNG")),
        ok("Nx1_700x1", _encode(_noise(700, 1), "PNG")),
        ok("20000x20", _encode(_noise(20_000, 20), "PNG")),
        ok("20x20000", _encode(_noise(20, 20_000), "PNG")),
        ok("png_16bit", sixteen_bit_png()),
        ok("cmyk_jpeg", _encode(_textured(64, 48).convert("CMYK"), "JPEG", quality=95)),
        ok("palette_png_transparency", palette_with_transparency()),
        ok("animated_gif", animated("GIF")),
        ok("animated_webp", animated("WEBP")),
        ok("exif_rotated_jpeg", exif_rotated_jpeg()),
        bad("png_header_bomb_100000x100000", png_header_bomb(100_000, 100_000), DecompressionBomb),
        bad("png_zlib_bomb_12000x10000", png_zlib_bomb(), DecompressionBomb),
        bad("jpeg_header_bomb_65000x65000", jpeg_header_bomb(), DecompressionBomb),
        bad("gif_header_bomb_65535x65535", gif_header_bomb(), DecompressionBomb),
        bad("png_zero_size_0x0", png_header_bomb(0, 0), DecodeError),
        bad("svg", SVG, DecodeError),
        bad("pdf", MINIMAL_PDF, DecodeError),
        Case("huge_base64_48M_chars", huge_b64, huge_b64.encode(), ImageTooLarge, False),
        # Over the client's 32 MiB inline limit, and over 64 MB on the wire to the ensemble
        # (Triton 2.51 has no HTTP body cap: the preprocess model must refuse it itself).
        bad("oversized_bytes_70MB", b"\0" * (70 * 1024 * 1024), ImageTooLarge),
        Case(
            "invalid_base64",
            png_b64[:23],  # PNG-looking prefix, bad length
            png_b64[:23].encode(),
            InvalidInput,
            False,
        ),
        Case(
            "invalid_base64_long",
            png_b64 * 8 + "!!",  # past the path-length sniff, then a non-base64 char
            (png_b64 * 8 + "!!").encode(),
            InvalidInput,
            False,
        ),
        Case(
            "data_uri_wrong_mime",
            "data:text/html;base64," + png_b64,
            ("data:text/html;base64," + png_b64).encode(),
            InvalidInput,
            False,
        ),
        Case(
            "data_uri_invalid_base64",
            "data:image/png;base64,iVBORw0KGgo@@@@",
            b"data:image/png;base64,iVBORw0KGgo@@@@",
            InvalidInput,
            False,
        ),
        # Client-only classes: what a path string can point at.
        Case("fifo_path", str(fifo), None, InvalidInput, False),
        Case("device_path_dev_zero", "/dev/zero", None, InvalidInput, False),
        Case("directory_path", str(tmp), None, InvalidInput, False),
        Case("missing_path", str(tmp / "missing.jpg"), None, InvalidInput, False),
        Case("wrong_type_int", 12345, None, InvalidInput, False),
        Case("wrong_type_none", None, None, InvalidInput, False),
    ]


# ---------------------------------------------------------------------- outcome table

Outcomes = dict[str, dict[str, str]]
_COLUMNS = ("client batch", "client single", "ensemble")


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest) -> Iterator[Outcomes]:
    """Collects one cell per (class, path); printed as a table when the module ends."""
    table: Outcomes = {}
    yield table
    if not table:
        return
    width = max(len(k) for k in table) + 2
    lines = ["", "hostile input corpus: outcome per class", ""]
    lines.append("| class".ljust(width + 2) + "".join(f"| {c:<34}" for c in _COLUMNS) + "|")
    lines.append("|" + "-" * (width + 1) + ("|" + "-" * 35) * len(_COLUMNS) + "|")
    for name, cells in table.items():
        row = f"| {name}".ljust(width + 2)
        row += "".join(f"| {cells.get(c, 'n/a'):<34}" for c in _COLUMNS) + "|"
        lines.append(row)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        for line in lines:
            reporter.write_line(line)
    else:  # pragma: no cover - running without the terminal plugin
        print("\n".join(lines))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    return build_corpus(tmp_path_factory.mktemp("corpus"))


def _cell(outcome: np.ndarray | BaseException, elapsed_s: float) -> str:
    what = "embedding" if isinstance(outcome, np.ndarray) else type(outcome).__name__
    return f"{what} ({elapsed_s * 1000:.0f} ms)"


def _check_client_outcome(case: Case, outcome: np.ndarray | BaseException, dim: int) -> None:
    if case.expect is None:
        assert isinstance(outcome, np.ndarray), f"{case.name}: {outcome!r}"
        assert outcome.shape == (dim,) and outcome.dtype == np.float32
        assert np.all(np.isfinite(outcome)), case.name
        assert abs(float(np.linalg.norm(outcome)) - 1.0) < 1e-3, case.name
        return
    assert isinstance(outcome, case.expect), f"{case.name}: expected {case.expect}, {outcome!r}"
    assert isinstance(outcome, TritonVisionError)
    # The message names the input (a path, a short repr, or the size of the bytes).
    assert describe_source(case.source) in str(outcome), f"{case.name}: {outcome}"
    assert len(str(outcome)) < 1000, f"{case.name}: message is not log-sized"


# ---------------------------------------------------------------------- corpus: client


def test_hostile_corpus_in_one_batch_gives_a_result_or_typed_error_per_index(
    triton: Any, corpus: list[Case], outcomes: Outcomes
) -> None:
    with VisionClient(triton.http_url, triton.model) as client:
        started = time.monotonic()
        batch = client.batch_embed_images([c.source for c in corpus]).result(BATCH_DEADLINE_S)
        elapsed = time.monotonic() - started
        assert len(batch) == len(corpus)
        for index, (case, outcome) in enumerate(zip(corpus, batch, strict=True)):
            _check_client_outcome(case, outcome, triton.embedding_dim)
            if case.expect is not None:
                assert batch.errors[index] is outcome
            outcomes.setdefault(case.name, {})["client batch"] = (
                "embedding" if isinstance(outcome, np.ndarray) else type(outcome).__name__
            ) + f" (batch {elapsed:.1f} s)"
        # The client is still healthy after the corpus.
        good = client.embed_image_bytes(corpus[0].source).result(ITEM_DEADLINE_S)
        np.testing.assert_allclose(good, batch.embeddings[0], rtol=1e-4, atol=1e-5)
        stats = client.stats()
    assert stats.failed == sum(1 for c in corpus if c.expect is not None)
    assert elapsed < BATCH_DEADLINE_S


def test_hostile_corpus_one_by_one_matches_the_batch_and_is_quick(
    triton: Any, corpus: list[Case], outcomes: Outcomes
) -> None:
    with VisionClient(triton.http_url, triton.model) as client:
        for case in corpus:
            started = time.monotonic()
            try:
                outcome: np.ndarray | BaseException = client.embed(case.source).result(
                    ITEM_DEADLINE_S
                )
            except TritonVisionError as exc:
                outcome = exc
            elapsed = time.monotonic() - started
            _check_client_outcome(case, outcome, triton.embedding_dim)
            assert elapsed < ITEM_DEADLINE_S
            outcomes.setdefault(case.name, {})["client single"] = _cell(outcome, elapsed)


def test_exif_rotation_is_applied_before_embedding(triton: Any) -> None:
    data = exif_rotated_jpeg()
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert upright.shape[:2] == (64, 40)  # portrait once rotated
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    with VisionClient(triton.http_url, triton.model) as client:
        got = client.embed_image_bytes(data).result(ITEM_DEADLINE_S)
        want = client.embed(upright).result(ITEM_DEADLINE_S)
        unrotated = client.embed(stored).result(ITEM_DEADLINE_S)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert not np.allclose(got, unrotated, atol=1e-4)


# -------------------------------------------------------------------- corpus: ensemble


def _stub_pids(server_pid: int, model: str) -> set[int]:
    """PIDs of the python-backend stubs serving ``model`` (in the server's process group)."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if os.getpgid(int(entry)) != server_pid:
                continue
        except (OSError, ProcessLookupError):
            continue
        if any(b"triton_python_backend_stub" in a for a in cmdline[:1]) and any(
            a.startswith(f"{model}_".encode()) for a in cmdline
        ):
            pids.add(int(entry))
    return pids


def _ensemble_infer(client: Any, model: str, data: bytes) -> np.ndarray:
    import tritonclient.http as httpclient

    inp = httpclient.InferInput("images", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    out = httpclient.InferRequestedOutput("embeddings", binary_data=True)
    result = client.infer(model, [inp], outputs=[out])
    return np.asarray(result.as_numpy("embeddings"))[0]


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc (Linux)")
def test_hostile_corpus_through_the_images_ensemble_never_kills_the_stub(
    triton: Any, corpus: list[Case], outcomes: Outcomes
) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    preprocess = f"{triton.model}_preprocess"
    stubs = _stub_pids(triton.server.pid, preprocess)
    assert stubs, "no python-backend stub found for the preprocess model"
    host = triton.http_url.removeprefix("http://")
    client = httpclient.InferenceServerClient(host, network_timeout=60.0, connection_timeout=10.0)
    try:
        wired = [c for c in corpus if c.wire is not None]
        with VisionClient(triton.http_url, triton.model) as vision:
            reference = vision.batch_embed_images([c.wire for c in wired if c.ensemble_ok]).result(
                BATCH_DEADLINE_S
            )
        refs = iter(reference)
        for case in wired:
            assert case.wire is not None
            started = time.monotonic()
            try:
                outcome: np.ndarray | BaseException = _ensemble_infer(
                    client, triton.images_model, case.wire
                )
            except InferenceServerException as exc:
                outcome = exc
            elapsed = time.monotonic() - started
            assert elapsed < ITEM_DEADLINE_S, case.name
            if case.ensemble_ok:
                assert isinstance(outcome, np.ndarray), f"{case.name}: {outcome}"
                expected = next(refs)
                assert isinstance(expected, np.ndarray)
                # Both sides run the same decoder: the same pixels, the same embedding.
                np.testing.assert_allclose(outcome, expected, rtol=1e-4, atol=1e-5)
                cell = _cell(outcome, elapsed)
            else:
                assert isinstance(outcome, InferenceServerException), f"{case.name}: {outcome}"
                message = str(outcome.message())
                assert "images[0]" in message, f"{case.name}: {message}"
                assert len(message) < 2000
                reason = (
                    "bomb" if "too many pixels" in message or "over the limit" in message else ""
                )
                cell = f"error {reason or 'decode'} ({elapsed * 1000:.0f} ms)"
            outcomes.setdefault(case.name, {})["ensemble"] = cell
        # The stubs survived every item: same processes, models READY, good image works.
        assert _stub_pids(triton.server.pid, preprocess) == stubs
        for model in (triton.images_model, preprocess, triton.model):
            assert client.is_model_ready(model), model
        again = _ensemble_infer(client, triton.images_model, corpus[0].wire or b"")
        first = reference.embeddings[0]
        np.testing.assert_allclose(again, first, rtol=1e-4, atol=1e-5)
    finally:
        client.close()


def test_a_request_mixing_good_and_bad_images_fails_alone_and_names_the_bad_index(
    triton: Any, corpus: list[Case]
) -> None:
    # Triton's dynamic batcher may put good and bad requests into one execute() call:
    # only the request holding the bad image fails, and its message names the item.
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    good = corpus[0].wire
    assert good is not None
    client = httpclient.InferenceServerClient(
        triton.http_url.removeprefix("http://"), network_timeout=60.0, connection_timeout=10.0
    )
    try:
        inp = httpclient.InferInput("images", [3, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[good], [b"not an image"], [good]], dtype=np.object_))
        with pytest.raises(InferenceServerException, match=r"images\[1\]") as refused:
            client.infer(triton.images_model, [inp])
        assert refused.value.status() == "400"  # the caller's bytes, not a server fault
        assert _ensemble_infer(client, triton.images_model, good).shape == (triton.embedding_dim,)
    finally:
        client.close()


# ------------------------------------------------------------------------ URL attacks


class HostileSite(LocalServer):
    """A real aiohttp.web server on 127.0.0.1:0 with routes that misbehave, plus a raw
    TCP server for what aiohttp.web will not send (a lying Content-Length)."""

    name = "hostile-site"
    shutdown_timeout_s = 0.5

    def __init__(self, png: bytes) -> None:
        super().__init__()
        self.png = png
        self.hits: list[str] = []
        self.raw_port = 0
        self._raw: asyncio.Server | None = None

    def build_app(self) -> web.Application:
        routes = web.RouteTableDef()
        png = self.png

        @web.middleware
        async def count(request: web.Request, handler: Callable[..., Any]) -> Any:
            self.hits.append(request.path_qs)
            return await handler(request)

        @routes.get("/img.png")
        async def img(request: web.Request) -> web.Response:
            return web.Response(body=png, content_type="image/png")

        @routes.get("/chain/{n}")
        async def chain(request: web.Request) -> web.Response:
            n = int(request.match_info["n"])
            raise web.HTTPFound("/img.png" if n == 0 else f"/chain/{n - 1}")

        @routes.get("/loop-a")
        async def loop_a(request: web.Request) -> web.Response:
            raise web.HTTPFound("/loop-b")

        @routes.get("/loop-b")
        async def loop_b(request: web.Request) -> web.Response:
            raise web.HTTPTemporaryRedirect("/loop-a")

        @routes.get("/redirect")
        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPFound(request.query["to"])

        @routes.get("/endless")
        async def endless(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Content-Type": "image/png"})
            await resp.prepare(request)
            chunk = b"\0" * 65536
            while True:
                await resp.write(chunk)

        @routes.get("/drip")
        async def drip(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Content-Type": "image/png"})
            await resp.prepare(request)
            await resp.write(png[:8])
            while True:  # one byte every 100 ms: never idle long enough for a read timeout
                await asyncio.sleep(0.1)
                await resp.write(b"\0")

        @routes.get("/stall")
        async def stall(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Content-Type": "image/png"})
            await resp.prepare(request)
            await resp.write(png[:8])
            await asyncio.sleep(3600)
            return resp

        @routes.get("/declared-huge")
        async def declared_huge(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Content-Type": "image/png"})
            resp.content_length = 10 * 1024**3
            await resp.prepare(request)
            await resp.write(b"\0" * 1024)
            await asyncio.sleep(3600)
            return resp

        @routes.get("/gzip-bomb")
        async def gzip_bomb(request: web.Request) -> web.Response:
            return web.Response(
                body=GZIP_BOMB, headers={"Content-Type": "image/png", "Content-Encoding": "gzip"}
            )

        @routes.get("/html")
        async def html(request: web.Request) -> web.Response:
            return web.Response(text="<html>login</html>", content_type="text/html")

        @routes.get("/status/{code}")
        async def status(request: web.Request) -> web.Response:
            return web.Response(status=int(request.match_info["code"]), text="no")

        app = web.Application(middlewares=[count])
        app.add_routes(routes)
        return app

    async def _raw_handler(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # Content-Length promises 1 MB, 100 bytes arrive, the connection closes.
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 1000000\r\n"
                b"Connection: close\r\n\r\n" + self.png[:100]
            )
            await writer.drain()
        finally:
            writer.close()

    async def start_extra(self) -> None:
        self._raw = await asyncio.start_server(self._raw_handler, "127.0.0.1", 0)
        self.raw_port = self._raw.sockets[0].getsockname()[1]

    async def stop_extra(self) -> None:
        assert self._raw is not None
        self._raw.close()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> HostileSite:
        super().__enter__()
        return self


GZIP_BOMB = gzip.compress(b"\0" * (32 * 1024 * 1024), compresslevel=9)  # ~32 KiB on the wire


@pytest.fixture(scope="module")
def site() -> Iterator[HostileSite]:
    with HostileSite(_encode(_textured(64, 48, seed=3), "PNG")) as s:
        yield s


def _outcome(fut: Any, deadline_s: float) -> np.ndarray | BaseException:
    try:
        return fut.result(deadline_s)  # type: ignore[no-any-return]
    except TritonVisionError as exc:
        return exc


def _loopback_spellings(site: HostileSite, triton_port: int) -> list[str]:
    port = site.port
    return [
        site.url("/img.png"),
        site.url("/img.png", host="localhost"),
        site.url("/img.png", host="LocalHost"),
        site.url("/img.png", host="vm") if _resolves_to_loopback("vm") else site.url("/img.png"),
        f"http://127.1:{port}/img.png",
        f"http://2130706433:{port}/img.png",  # decimal 127.0.0.1
        f"http://0x7f000001:{port}/img.png",  # hex
        f"http://0177.0.0.1:{port}/img.png",  # octal
        f"http://[::1]:{port}/img.png",
        f"http://[::ffff:127.0.0.1]:{port}/img.png",
        f"http://0.0.0.0:{port}/img.png",
        # Triton's own endpoint: the session's connector exempts it for inference, the URL
        # policy must not.
        f"http://127.0.0.1:{triton_port}/v2/health/ready",
        f"http://localhost:{triton_port}/v2/models/tiny_clip/config",
        "http://169.254.169.254/latest/meta-data/",
    ]


def _resolves_to_loopback(host: str) -> bool:
    import socket

    try:
        return all(info[4][0].startswith("127.") for info in socket.getaddrinfo(host, 80, type=1))
    except OSError:
        return False


def test_default_policy_refuses_every_spelling_of_loopback_though_triton_is_on_loopback(
    triton: Any, site: HostileSite
) -> None:
    triton_port = int(triton.http_url.rsplit(":", 1)[1])
    urls = _loopback_spellings(site, triton_port)
    site.hits.clear()
    with VisionClient(triton.http_url, triton.model) as client:
        singles = [client.embed_image_url(u) for u in urls]
        batch = client.batch_embed_images(urls).result(BATCH_DEADLINE_S)
        for url, fut in zip(urls, singles, strict=True):
            outcome = _outcome(fut, ITEM_DEADLINE_S)
            assert isinstance(outcome, BlockedAddress), f"{url}: {outcome!r}"
            assert "non-public address" in str(outcome), str(outcome)
        assert sorted(batch.errors) == list(range(len(urls)))
        assert all(isinstance(e, BlockedAddress) for e in batch.errors.values())
        # Inference over the same session still reaches Triton on 127.0.0.1.
        client.embed_image_bytes(site.png).result(ITEM_DEADLINE_S)
    assert site.hits == [], "a refused URL reached the server"


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/x.png",
        "gopher://127.0.0.1:70/_GET",
        "dict://127.0.0.1:11211/stats",
        "ws://127.0.0.1/x.png",
    ],
)
def test_other_schemes_are_refused_end_to_end_even_with_private_addresses_allowed(
    triton: Any, url: str
) -> None:
    with VisionClient(triton.http_url, triton.model, allow_private_addresses=True) as client:
        with pytest.raises(BlockedAddress, match="scheme"):
            client.embed_image_url(url).result(ITEM_DEADLINE_S)
        batch = client.batch_embed_images([url]).result(ITEM_DEADLINE_S)
        assert isinstance(batch.errors[0], BlockedAddress)


def test_redirects_into_internal_hosts_are_refused_at_every_hop(
    triton: Any, site: HostileSite
) -> None:
    # The site is the only exempt host: it plays a public server that redirects inward.
    triton_port = int(triton.http_url.rsplit(":", 1)[1])
    config = ClientConfig(fetch=FetchConfig(allowed_hosts=frozenset({site.hostport})))

    def via(target: str) -> str:
        from urllib.parse import quote

        return site.url("/redirect?to=" + quote(target, safe=""))

    cases: list[tuple[str, type[TritonVisionError]]] = [
        (via(f"http://127.0.0.1:{triton_port}/v2/health/ready"), BlockedAddress),
        (via(f"http://localhost:{site.port}/img.png"), BlockedAddress),  # same port, other name
        (via(f"http://127.0.0.1:{site.raw_port}/x.png"), BlockedAddress),
        (via("http://169.254.169.254/latest/meta-data/"), BlockedAddress),
        (via("http://[::1]/x.png"), BlockedAddress),
        (via("file:///etc/passwd"), BlockedAddress),
        (via("gopher://127.0.0.1:70/_x"), BlockedAddress),
        (site.url("/loop-a"), FetchError),
        (site.url("/chain/9"), FetchError),  # more hops than max_redirects (5)
    ]
    with VisionClient(triton.http_url, triton.model, config=config) as client:
        futures = [client.embed_image_url(url) for url, _ in cases]
        ok = client.embed_image_url(site.url("/chain/3")).result(ITEM_DEADLINE_S)
        assert ok.shape == (triton.embedding_dim,)
        for (url, expected), fut in zip(cases, futures, strict=True):
            outcome = _outcome(fut, ITEM_DEADLINE_S)
            assert isinstance(outcome, expected), f"{url}: {outcome!r}"
            assert outcome.source == url
        batch = client.batch_embed_images([u for u, _ in cases]).result(BATCH_DEADLINE_S)
        assert sorted(batch.errors) == list(range(len(cases)))


def test_hostile_servers_are_cut_off_by_the_limits_end_to_end(
    triton: Any, site: HostileSite
) -> None:
    fetch = FetchConfig(
        connect_timeout_s=2.0,
        read_timeout_s=1.0,
        total_timeout_s=3.0,
        max_fetch_bytes=1024 * 1024,
        max_redirects=3,
    )
    config = ClientConfig(fetch=fetch)
    cases: list[tuple[str, type[TritonVisionError]]] = [
        (site.url("/endless"), FetchTooLarge),
        (site.url("/declared-huge"), FetchTooLarge),
        (site.url("/gzip-bomb"), FetchTooLarge),
        (site.url("/drip"), FetchTimeout),
        (site.url("/stall"), FetchTimeout),
        (f"http://127.0.0.1:{site.raw_port}/lying-length.png", FetchError),
        (site.url("/html"), FetchError),
        (site.url("/status/404"), FetchStatusError),
        (site.url("/loop-a"), FetchError),
        (site.url("/chain/4"), FetchError),  # 4 redirects > max_redirects=3
    ]
    with VisionClient(
        triton.http_url, triton.model, config=config, allow_private_addresses=True
    ) as client:
        assert client.async_client.config.fetch.max_fetch_bytes == 1024 * 1024
        started = time.monotonic()
        futures = [client.embed_image_url(url) for url, _ in cases]
        for (url, expected), fut in zip(cases, futures, strict=True):
            outcome = _outcome(fut, ITEM_DEADLINE_S)
            assert isinstance(outcome, expected), f"{url}: {outcome!r}"
        # All ran at once: the slowest is bounded by the total deadline, not their sum.
        assert time.monotonic() - started < fetch.total_timeout_s + 10
        started = time.monotonic()
        urls = [u for u, _ in cases] + [site.url("/chain/2")]
        batch = client.batch_embed_images(urls).result(BATCH_DEADLINE_S)
        assert time.monotonic() - started < fetch.total_timeout_s + 10
        assert sorted(batch.errors) == list(range(len(cases)))
        for (url, expected), index in zip(cases, range(len(cases)), strict=True):
            assert isinstance(batch.errors[index], expected), f"{url}: {batch.errors[index]!r}"
        assert np.all(np.isfinite(batch.embeddings[-1]))
        stats = client.stats()
    assert stats.bytes_fetched < 64 * 1024  # only the small good images were kept


# ------------------------------------------------------------------ credentials in URLs


def test_credentials_in_urls_never_reach_error_messages(triton: Any, site: HostileSite) -> None:
    secret = "s3cr3t-pa55"
    blocked = f"http://alice:{secret}@127.0.0.1:{site.port}/img.png"
    missing = f"http://alice:{secret}@127.0.0.1:{site.port}/status/404"
    long_url = f"http://bob:{secret}@127.0.0.1:1/" + "a" * 200 + ".png"  # refused port
    with (
        VisionClient(triton.http_url, triton.model) as client,
        pytest.raises(BlockedAddress) as info,
    ):
        client.embed_image_url(blocked).result(ITEM_DEADLINE_S)
    assert secret not in str(info.value) and "alice" not in str(info.value)
    assert "127.0.0.1" in str(info.value)
    with VisionClient(triton.http_url, triton.model, allow_private_addresses=True) as client:
        batch = client.batch_embed_images([missing, long_url]).result(BATCH_DEADLINE_S)
    assert isinstance(batch.errors[0], FetchStatusError)
    assert isinstance(batch.errors[1], FetchError)
    for err in batch.errors.values():
        assert secret not in str(err), str(err)
    assert secret not in describe_source(blocked)
    assert secret not in describe_source(long_url)
