"""Test helpers: deterministic images and real aiohttp.web servers on 127.0.0.1.

Each server runs in its own thread with its own event loop (the code under test owns
the caller's loop), on port 0, and stops with the ``with`` block.
"""

from __future__ import annotations

import asyncio
import io
import threading

import numpy as np
from aiohttp import web
from PIL import Image


def make_image(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A deterministic, textured RGB image (different per seed)."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * (seed + 3)) % 256, (y * (seed + 5)) % 256, (x + y) * 2 % 256], -1)
    noise = rng.integers(0, 40, size=(h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


class LocalServer:
    """A real aiohttp.web server on 127.0.0.1:0, in its own thread with its own loop.

    Subclasses give routes (``add_routes``) or a whole app (``build_app``), and may
    start more listeners in ``start_extra`` / close them in ``stop_extra``.
    """

    name = "test-local-server"
    shutdown_timeout_s = 1.0

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    def add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def build_app(self) -> web.Application:
        app = web.Application()
        self.add_routes(app)
        return app

    async def start_extra(self) -> None:
        """More listeners on the server's loop (none by default)."""

    async def stop_extra(self) -> None:
        """Close what ``start_extra`` opened."""

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._stop())
        self._loop.close()

    async def _start(self) -> None:
        # Handlers die with their connection (a cancelled client call ends a /slow
        # handler), and shutdown does not wait for stragglers.
        self._runner = web.AppRunner(
            self.build_app(), handler_cancellation=True, shutdown_timeout=self.shutdown_timeout_s
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        await self.start_extra()

    async def _stop(self) -> None:
        assert self._runner is not None
        await self.stop_extra()
        await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LocalServer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class ImageSite(LocalServer):
    """Serves images at ``/img/{name}`` (404 for others); ``/slow/{name}?s=N`` answers after N s."""

    name = "test-image-site"

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__()
        self.files = files

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/img/{name}", self._image)
        app.router.add_get("/slow/{name}", self._slow)

    async def _image(self, request: web.Request) -> web.Response:
        data = self.files.get(request.match_info["name"])
        if data is None:
            raise web.HTTPNotFound()
        return web.Response(body=data, content_type="image/png")

    async def _slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "5")))
        return await self._image(request)

    def url(self, name: str, route: str = "img") -> str:
        return f"{self.base_url}/{route}/{name}"

    def __enter__(self) -> ImageSite:
        super().__enter__()
        return self
