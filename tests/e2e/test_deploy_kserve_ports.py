"""The manifests against the session's real tritonserver, and the client on KServe's ports.

KServe's Triton runtime listens on HTTP 8080 and gRPC 9000. A TCP relay binds exactly
127.0.0.1:8080 and 127.0.0.1:9000 and forwards to the session Triton (one Triton per test
session), so the client is driven with the very URLs a KServe user gives it. The metric and
label names in the autoscaling rule are checked against this Triton's own ``/metrics``.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import socket
import threading
import urllib.request
from collections.abc import Iterator
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from tritonvision.client import VisionClient
from tritonvision.deploy import (
    HEALTH_LIVE_PATH,
    HEALTH_READY_PATH,
    KSERVE_GRPC_PORT,
    KSERVE_HTTP_PORT,
    METRICS_PATH,
    MODEL_LABEL,
    QUEUE_METRIC,
    SUCCESS_METRIC,
    KubernetesOptions,
    kubernetes_manifests,
)

pytestmark = pytest.mark.e2e


class TcpRelay:
    """Forward every connection on 127.0.0.1:``port`` to 127.0.0.1:``target``, byte for byte."""

    def __init__(self, port: int, target: int) -> None:
        self.target = target
        self.connections = 0
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("127.0.0.1", port))
        except OSError as exc:
            listener.close()
            pytest.fail(
                f"KServe's port {port} on 127.0.0.1 is taken ({exc}); this test must bind "
                "exactly that port to drive the client with KServe's URL: free it and re-run"
            )
        listener.listen(32)
        listener.settimeout(0.2)
        self._listener = listener
        self._spawn(self._accept_loop)

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=30)
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self.connections += 1
                self._sockets += [client, upstream]
            self._spawn(self._pump, client, upstream)
            self._spawn(self._pump, upstream, client)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        for thread in self._threads:
            thread.join(timeout=5)


@pytest.fixture(scope="module")
def kserve_ports(triton) -> Iterator[dict[str, TcpRelay]]:
    http = TcpRelay(KSERVE_HTTP_PORT, urlsplit(triton.http_url).port)
    try:
        grpc = TcpRelay(KSERVE_GRPC_PORT, urlsplit(triton.grpc_url).port)
    except BaseException:
        http.close()
        raise
    try:
        yield {"http": http, "grpc": grpc}
    finally:
        grpc.close()
        http.close()


def _png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, format="PNG")
    return buf.getvalue()


def _embed(url: str, model: str, image: bytes) -> np.ndarray:
    with VisionClient(url, model) as client:
        return np.asarray(client.embed(image).result())


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.status, resp.read()


@pytest.mark.parametrize(
    ("scheme", "port"), [("http", KSERVE_HTTP_PORT), ("grpc", KSERVE_GRPC_PORT)]
)
def test_client_embeds_through_kserve_port(triton, kserve_ports, scheme, port):
    image = _png((200, 30, 90))
    direct = _embed(triton.http_url, triton.model, image)
    relay = kserve_ports[scheme]
    before = relay.connections
    via_kserve = _embed(f"{scheme}://127.0.0.1:{port}", triton.model, image)
    assert relay.connections > before, "the request did not go through the KServe port"
    assert via_kserve.shape == (triton.embedding_dim,)
    np.testing.assert_allclose(via_kserve, direct, rtol=1e-5, atol=1e-6)


def test_probe_paths_answer_on_triton_and_on_kserve_http_port(triton, kserve_ports):
    for base in (triton.http_url, f"http://127.0.0.1:{KSERVE_HTTP_PORT}"):
        for path in (HEALTH_LIVE_PATH, HEALTH_READY_PATH):
            status, _ = _get(base + path)
            assert status == 200, f"{base}{path}"


def _manifests_for(triton) -> dict[str, dict]:
    options = KubernetesOptions(storage_uri="s3://bucket/repo")
    return {
        m.document.get("kind", "PrometheusAdapterRules"): m.document
        for m in kubernetes_manifests(triton.repository, options)
    }


def test_manifest_models_are_the_models_triton_loaded(triton):
    req = urllib.request.Request(
        f"{triton.http_url}/v2/repository/index", data=b"{}", method="POST"
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        index = json.loads(resp.read())
    loaded = {entry["name"] for entry in index if entry.get("state") == "READY"}
    docs = _manifests_for(triton)
    named = docs["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert set(named["tritonvision.io/models"].split(",")) == loaded


def _metric_samples(text: str, metric: str) -> dict[str, float]:
    """``{model: value}`` of one metric, summed over versions, from Prometheus text."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(metric)}\{{(.*)\}} (\S+)$", line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        model = labels[MODEL_LABEL]
        out[model] = out.get(model, 0.0) + float(match.group(2))
    return out


def test_autoscaling_metric_names_are_what_triton_exports(triton):
    # One request through the ensemble (NVIDIA's own client, raw bytes) runs every
    # scheduled model, so each has counted a success before /metrics is read.
    import tritonclient.http as httpclient

    images = httpclient.InferInput("images", [1, 1], "BYTES")
    images.set_data_from_numpy(np.array([[_png((10, 160, 40))]], dtype=object))
    nvidia = httpclient.InferenceServerClient(urlsplit(triton.http_url).netloc)
    try:
        nvidia.infer(triton.images_model, [images])
    finally:
        nvidia.close()
    metrics_url = triton.metrics_url
    assert urlsplit(metrics_url).path == METRICS_PATH
    _, body = _get(metrics_url)
    text = body.decode()
    queue = _metric_samples(text, QUEUE_METRIC)
    success = _metric_samples(text, SUCCESS_METRIC)
    rule = _manifests_for(triton)["PrometheusAdapterRules"]["rules"][0]
    # The same model selector on the queue and on the success counter.
    (regex,) = set(re.findall(rf'{MODEL_LABEL}=~"([^"]+)"', rule["metricsQuery"]))
    scheduled = set(regex.split("|"))
    assert triton.model in scheduled
    for model in scheduled:
        assert model in queue, f"{QUEUE_METRIC}{{{MODEL_LABEL}={model!r}}} not in /metrics"
        assert model in success, f"{SUCCESS_METRIC}{{{MODEL_LABEL}={model!r}}} not in /metrics"
    for model in scheduled:
        assert success[model] >= 1, f"{model} has not counted the request"
    assert rule["seriesQuery"].startswith(QUEUE_METRIC + "{")
