"""9. Response cache: a second pass over the same images, with Triton's cache vs without.

One local ``tritonserver`` with a local response cache (``LocalTriton(cache_size_bytes=...)``,
what ``tritonvision serve --cache-size`` starts) serves the exported encoder twice from
the same ``model.onnx``: ``NAME`` and ``NAME_images`` as exported (no cache), and
``NAME_cached`` / ``NAME_cached_images`` with ``response_cache { enable: true }`` (what
``tritonvision export --response-cache`` writes); both ensembles share ``NAME_preprocess``.
Both sides run on the same server, the same images, the same concurrency.

Each side first makes one pass over N distinct JPEGs (the first pass: it fills the cache
of the cached side), then the measured passes go over the same images again, alternating
the sides round by round. Rows, each side's second-pass images/s:

- JPEG bytes to the ensemble (the server decodes): a cache hit skips decoding and the
  encoder;
- our client, which decodes and sends pixels to the encoder, one image per request
  (``coalesce=False``): a hit skips the encoder only.

Triton's cache key is the whole request (model, version, every input's bytes), so a
request of several images hits only when the same images come together again; the note
gives the hit ratio of a pass with the client's default coalescing, which groups calls
differently on every pass. Hit ratios are Triton's own counters from ``/metrics``.
"""

from __future__ import annotations

import asyncio
import io
import re
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from tritonvision.contract import IMAGES_INPUT, ensemble_name, preprocess_name

from ._client_internals import (
    binary_request,
    infer_path,
    parse_binary_response,
)
from ._context import Context, Scenario
from ._load import Measurement, cpu_seconds_of_group, post_infer, side_from
from ._report import Row, fmt_rate
from ._repos import ExportedEncoder, _read_config, _write_config

__all__ = ["SCENARIO", "CacheCounts", "build_cache_repository", "cache_counts", "cached_name"]

NUMBER = 9
TITLE = "Response cache: second pass over the same images, cache vs none"
CONCURRENCY = 8
CACHE_BYTES = 64 << 20
CACHED_SUFFIX = "_cached"
JPEG_QUALITY = 90


def cached_name(model: str) -> str:
    return model + CACHED_SUFFIX


# ------------------------------------------------------------------------------ repository


def build_cache_repository(encoder: ExportedEncoder, dest: Path) -> None:
    """``dest``: the export's encoder, preprocess and ensemble, uncached, plus a cached twin of
    the encoder and of the ensemble (same ``model.onnx``, linked)."""
    model = encoder.spec.model_name
    source = encoder.repository
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source / preprocess_name(model), dest / preprocess_name(model))
    base = _read_config(source / model / "config.pbtxt")
    ensemble = _read_config(source / ensemble_name(model) / "config.pbtxt")
    for name, cache in ((model, False), (cached_name(model), True)):
        config = type(base)()
        config.CopyFrom(base)
        config.name = name
        config.response_cache.enable = cache
        _write_config(dest / name / "config.pbtxt", config)
        (dest / name / "1").mkdir()
        (dest / name / "1" / "model.onnx").symlink_to(encoder.onnx_path.resolve())
        images = type(ensemble)()
        images.CopyFrom(ensemble)
        images.name = ensemble_name(name)
        images.ensemble_scheduling.step[1].model_name = name
        images.response_cache.enable = cache
        _write_config(dest / ensemble_name(name) / "config.pbtxt", images)
        (dest / ensemble_name(name) / "1").mkdir()


@contextmanager
def _cache_server(repo: Path, workdir: Path) -> Iterator[Any]:
    from tritonvision.serve import LocalTriton, ServerPorts, free_port

    ports = ServerPorts(http=free_port(), grpc=free_port(), metrics=free_port())
    server = LocalTriton(repo, ports=ports, workdir=workdir, cache_size_bytes=CACHE_BYTES)
    server.start(ready_timeout_s=300)
    try:
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------------------ metrics


@dataclass(frozen=True)
class CacheCounts:
    hits: float
    misses: float

    def __sub__(self, other: CacheCounts) -> CacheCounts:
        return CacheCounts(self.hits - other.hits, self.misses - other.misses)

    @property
    def hit_ratio(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0

    def describe(self) -> str:
        return (
            f"hit ratio {self.hit_ratio:.2f} ({self.hits:.0f} hits, {self.misses:.0f} misses, "
            "Triton's counters)"
        )


def cache_counts(metrics_url: str, model: str) -> CacheCounts:
    """``nv_cache_num_hits_per_model`` / ``nv_cache_num_misses_per_model`` of ``model``."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    values = []
    for metric in ("nv_cache_num_hits_per_model", "nv_cache_num_misses_per_model"):
        pattern = rf'^{metric}\{{model="{re.escape(model)}",version="1"\}} (\S+)$'
        match = re.search(pattern, text, re.M)
        values.append(float(match.group(1)) if match else 0.0)
    return CacheCounts(*values)


# ------------------------------------------------------------------------------ passes


def _images(photos: Sequence[Path], count: int) -> list[bytes]:
    """``count`` distinct JPEGs: the sample photos, each cropped at shifted windows."""
    from PIL import Image

    images = []
    for i in range(count):
        with Image.open(photos[i % len(photos)]) as img:
            rgb = img.convert("RGB")
        shift = 2 * (i // len(photos)) + 1
        w, h = rgb.size
        buf = io.BytesIO()
        rgb.crop((shift, shift, w - shift, h - shift)).save(buf, "JPEG", quality=JPEG_QUALITY)
        images.append(buf.getvalue())
    return images


async def _pass(items: Sequence[Any], call: Callable[[Any], Any]) -> Measurement:
    """Every item once, by ``CONCURRENCY`` workers taking the next item in turn."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    latencies: list[float] = []

    async def worker() -> None:
        while not queue.empty():
            item = queue.get_nowait()
            t = time.perf_counter()
            await call(item)
            latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return Measurement(calls=len(items), elapsed_s=time.perf_counter() - t0, latencies_s=latencies)


def _ensemble_pass(url: str, model: str, images: Sequence[bytes]) -> Measurement:
    endpoint = url + infer_path(model)

    async def go() -> Measurement:
        async with aiohttp.ClientSession() as session:

            async def call(data: bytes) -> None:
                body, headers = binary_request(
                    IMAGES_INPUT, np.array([[data]], dtype=np.object_), "BYTES"
                )
                await post_infer(session, endpoint, body, headers, parse_binary_response)

            return await _pass(images, call)

    return asyncio.run(go())


def _client_pass(
    url: str, model: str, images: Sequence[bytes], *, coalesce: bool = False
) -> Measurement:
    from tritonvision.client import AsyncVisionClient, ClientConfig

    async def go() -> Measurement:
        config = ClientConfig(coalesce=coalesce)
        async with AsyncVisionClient(url, model, config=config) as client:
            await client.model_info()
            return await _pass(images, client.embed_image_bytes)

    return asyncio.run(go())


@dataclass
class _Side:
    """One side of one row: its first pass, its measured passes, its cache counters."""

    model: str
    run: Callable[[], Measurement]
    first: Measurement | None = None
    passes: list[Measurement] | None = None
    counts: CacheCounts = CacheCounts(0.0, 0.0)
    server_cpu_s: float = 0.0

    @property
    def measured(self) -> Measurement:
        assert self.passes
        return Measurement.merge(self.passes)

    def detail(self, cached: bool) -> str:
        assert self.first is not None
        m = self.measured
        parts = [
            f"first pass {fmt_rate(self.first.throughput)} img/s",
            f"server CPU {self.server_cpu_s * 1000 / max(1, m.items):.2f} ms/img",
        ]
        if cached:
            parts.append(self.counts.describe())
        return "; ".join(parts)


def _measure(server: Any, sides: dict[str, _Side], rounds: int) -> None:
    """First pass of each side, then ``rounds`` measured passes alternating the sides."""
    pid = server.pid
    for side in sides.values():
        side.first = side.run()
        side.passes = []
    names = list(sides)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            side = sides[name]
            before = cache_counts(server.metrics_url, side.model)
            cpu0 = cpu_seconds_of_group(pid) if pid else 0.0
            assert side.passes is not None
            side.passes.append(side.run())
            side.server_cpu_s += (cpu_seconds_of_group(pid) if pid else 0.0) - cpu0
            delta = cache_counts(server.metrics_url, side.model) - before
            side.counts = CacheCounts(
                side.counts.hits + delta.hits, side.counts.misses + delta.misses
            )


def _run_encoder(ctx: Context, key: str) -> None:
    encoder = ctx.exported(key)
    model = encoder.spec.model_name
    count = 96 if ctx.quick else 256
    images = _images(ctx.photos(), count)
    repo = ctx.workdir / f"cache-repo-{key}"
    build_cache_repository(encoder, repo)
    ctx.log(f"starting tritonserver with a {CACHE_BYTES >> 20} MiB response cache for {key}")
    with _cache_server(repo, ctx.workdir / f"cache-serve-{key}") as server:
        url = server.http_url

        def ensemble_side(name: str) -> _Side:
            return _Side(
                ensemble_name(name), lambda: _ensemble_pass(url, ensemble_name(name), images)
            )

        def client_side(name: str) -> _Side:
            return _Side(name, lambda: _client_pass(url, name, images))

        rows = [
            (
                f"second pass over the same images, JPEG bytes to {ensemble_name(model)} "
                "(server decodes): response cache vs none",
                {"cached": ensemble_side(cached_name(model)), "uncached": ensemble_side(model)},
            ),
            (
                f"second pass over the same images, our client to {model} (client decodes, "
                "1 image per request): response cache vs none",
                {"cached": client_side(cached_name(model)), "uncached": client_side(model)},
            ),
        ]
        for _, sides in rows:
            _measure(server, sides, ctx.rounds)
        # The client's default (coalescing on): requests group differently on each pass.
        before = cache_counts(server.metrics_url, cached_name(model))
        coalesced = _client_pass(url, cached_name(model), images, coalesce=True)
        default_counts = cache_counts(server.metrics_url, cached_name(model)) - before
    for case, sides in rows:
        cached, uncached = sides["cached"], sides["uncached"]
        if cached.counts.hits == 0:
            raise RuntimeError(f"{cached.model}: no cache hit in the second pass ({cached.counts})")
        ctx.emit(
            Row(
                scenario=NUMBER,
                case=case,
                ours=side_from("response cache", cached.measured, detail=cached.detail(True)),
                baseline=side_from("no cache", uncached.measured, detail=uncached.detail(False)),
                model=encoder.spec.label,
                settings=(
                    f"{count} distinct JPEGs (sample photos, shifted crops, quality "
                    f"{JPEG_QUALITY}), each pass sends each once, concurrency {CONCURRENCY}; "
                    f"{ctx.rounds} measured pass(es) per side after one first pass, "
                    f"alternating; one server, local cache {CACHE_BYTES >> 20} MiB; serve's "
                    "CPU defaults"
                ),
            )
        )
    ctx.note(
        f"{key}: our client with its default coalescing on the cached encoder, a further pass "
        f"over the same images: {default_counts.describe()}, "
        f"{fmt_rate(coalesced.throughput)} img/s. Triton's cache key is the whole request, "
        "so images coalesced into one request hit only when they come together again; for "
        "repeated images send one per request, or rely on the ensemble's cache."
    )


def run(ctx: Context) -> None:
    for key in ctx.encoders():
        _run_encoder(ctx, key)


SCENARIO = Scenario(NUMBER, TITLE, run)
