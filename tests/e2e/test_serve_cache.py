"""Triton's response cache on the embedded server: a repeated image is a cache hit.

One extra real ``tritonserver`` for this module, started with a local cache
(``LocalTriton(cache_size_bytes=...)``, i.e. ``tritonvision serve --cache-size``) on a tiny
CLIP exported with ``response_cache=True``. Hits and misses are Triton's own counters,
``nv_cache_num_hits_per_model`` / ``nv_cache_num_misses_per_model`` from ``/metrics``.
The last test runs ``tritonvision serve`` without ``--cache-size`` on the same repository:
Triton then serves it uncached and says nothing, so serve warns.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

MODEL = "cached_clip"
ENSEMBLE = f"{MODEL}_images"
PREPROCESS = f"{MODEL}_preprocess"
CACHE_BYTES = 4 << 20


@pytest.fixture(scope="module")
def cached_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import tiny_clip_config

    from tritonvision.export import ExportOptions, builtin_encoder, export_encoder

    repo = tmp_path_factory.mktemp("cached-repo")
    export_encoder(
        builtin_encoder(tiny_clip_config()),
        ExportOptions(repository=repo, name=MODEL, max_batch_size=8, response_cache=True),
    )
    return repo


@pytest.fixture(scope="module")
def cached_server(cached_repository: Path) -> Iterator[Any]:
    from tritonvision.serve import LocalTriton, ServerPorts, free_port

    os.environ.setdefault("TRITONVISION_ORT_THREADS", "1")
    ports = ServerPorts(http=free_port(), grpc=free_port(), metrics=free_port())
    server = LocalTriton(cached_repository, ports=ports, cache_size_bytes=CACHE_BYTES)
    server.start(ready_timeout_s=180)
    try:
        yield server
    finally:
        server.stop()


def _png(seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8), "RGB").save(buf, "PNG")
    return buf.getvalue()


def _metric(metrics_url: str, name: str, model: str) -> float:
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    pattern = re.compile(rf'^{name}\{{model="{re.escape(model)}",version="1"\}} (\S+)$', re.M)
    match = pattern.search(text)
    assert match is not None, f"{name} for {model} not in /metrics"
    return float(match.group(1))


def _counts(server: Any, model: str) -> tuple[float, float]:
    """(hits, misses) of ``model``'s response cache, as Triton counts them."""
    return (
        _metric(server.metrics_url, "nv_cache_num_hits_per_model", model),
        _metric(server.metrics_url, "nv_cache_num_misses_per_model", model),
    )


def _executions(server: Any, model: str) -> int:
    import json

    url = f"{server.http_url}/v2/models/{model}/stats"
    with urllib.request.urlopen(url, timeout=10) as response:
        stats = json.loads(response.read())["model_stats"][0]
    # Executions of the model itself: a cache hit counts as a success, not an execution.
    return int(stats["execution_count"])


def _ensemble(server: Any, data: bytes) -> Any:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    try:
        inp = httpclient.InferInput("images", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[data]], dtype=object), binary_data=True)
        return client.infer(ENSEMBLE, [inp]).as_numpy("embeddings")
    finally:
        client.close()


def test_repeated_image_through_the_ensemble_is_a_cache_hit_with_the_same_vector(
    cached_server: Any,
) -> None:
    image = _png(1)
    hits0, misses0 = _counts(cached_server, ENSEMBLE)
    first = _ensemble(cached_server, image)
    assert _counts(cached_server, ENSEMBLE) == (hits0, misses0 + 1)
    decoded = _executions(cached_server, PREPROCESS)

    second = _ensemble(cached_server, image)
    assert _counts(cached_server, ENSEMBLE) == (hits0 + 1, misses0 + 1)
    assert np.array_equal(first, second)
    assert first.shape == (1, 16)
    # A top-level ensemble hit skips its steps: the image was not decoded again.
    assert _executions(cached_server, PREPROCESS) == decoded
    # Another image is a miss with another vector: the hit was not a stale answer.
    other = _ensemble(cached_server, _png(2))
    assert _counts(cached_server, ENSEMBLE) == (hits0 + 1, misses0 + 2)
    assert not np.array_equal(first, other)


def test_second_pass_over_the_same_images_through_the_ensemble_hits_every_time(
    cached_server: Any,
) -> None:
    images = [_png(100 + i) for i in range(6)]
    first = [_ensemble(cached_server, img) for img in images]
    hits0, misses0 = _counts(cached_server, ENSEMBLE)
    second = [_ensemble(cached_server, img) for img in images]
    hits1, misses1 = _counts(cached_server, ENSEMBLE)
    assert (hits1 - hits0, misses1 - misses0) == (len(images), 0)  # hit ratio 1.0
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_repeated_image_through_the_client_to_the_encoder_is_a_cache_hit(
    cached_server: Any, scheme: str
) -> None:
    """On the CPU runtime the encoder is a python-backend model: Triton caches it too."""
    from tritonvision.client import VisionClient

    url = cached_server.http_url if scheme == "http" else cached_server.grpc_url
    image = _png(300 if scheme == "http" else 301)
    with VisionClient(url, MODEL) as client:
        hits0, misses0 = _counts(cached_server, MODEL)
        first = client.embed_image_bytes(image).result(60)
        assert _counts(cached_server, MODEL) == (hits0, misses0 + 1)
        executed = _executions(cached_server, MODEL)
        second = client.embed_image_bytes(image).result(60)
        assert _counts(cached_server, MODEL) == (hits0 + 1, misses0 + 1)
        assert _executions(cached_server, MODEL) == executed
    assert np.array_equal(first, second)
    assert first.shape == (16,)


def _wait_for_line(path: Path, text: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return
        assert proc.poll() is None, path.read_text(errors="replace")
        time.sleep(0.25)
    raise AssertionError(f"{text!r} not printed within {timeout_s:.0f} s")


@pytest.mark.timeout(240)
def test_serve_without_cache_size_warns_and_triton_serves_the_repository_uncached(
    cached_repository: Path, cached_server: Any, tmp_path: Path
) -> None:
    from tritonvision.serve import ServerPorts, free_port

    ports = ServerPorts(http=free_port(), grpc=free_port(), metrics=free_port())
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tritonvision",
                "serve",
                "--repository",
                str(cached_repository),
                "--device",
                "cpu",
                "--http-port",
                str(ports.http),
                "--grpc-port",
                str(ports.grpc),
                "--metrics-port",
                str(ports.metrics),
            ],
            stdout=stdout,
            stderr=stderr,
            env={**os.environ, "TRITONVISION_ORT_THREADS": "1"},
        )
    try:
        _wait_for_line(out, "Triton ready", proc, 180)
        _wait_for_line(err, "warning:", proc, 10)

        class Uncached:
            http_url = f"http://127.0.0.1:{ports.http}"
            metrics_url = f"http://127.0.0.1:{ports.metrics}/metrics"

        image = _png(400)
        first, second = _ensemble(Uncached, image), _ensemble(Uncached, image)
        # Triton's real behaviour: the models load and answer, nothing is cached.
        assert np.array_equal(first, second)
        assert _counts(Uncached, ENSEMBLE) == (0, 0)
        assert _counts(Uncached, MODEL) == (0, 0)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    warning = err.read_text()
    assert "enable Triton's response cache, but the server has no cache" in warning
    assert MODEL in warning and ENSEMBLE in warning
    assert "--cache-size" in warning
