"""Server faults, end to end: the client keeps every item accounted for and never hangs.

Each test starts its OWN real ``tritonserver`` (``LocalTriton``) on free ports, never the
session's server (these tests kill it, flood it, or leave it stuck):

- the server is SIGKILLed in the middle of a 500-image ``batch_embed_images`` and comes
  back on the same ports: the client retries within its budget and every one of the 500
  items gets its row (the same rows as a clean run), none missing;
- Triton answers 503 "queue full" (a test-only python-backend model that sleeps per
  execute, behind ``max_queue_size: 1``): backoff absorbs it with a generous budget
  (stats show the retries, nothing is dropped), and a tiny budget turns it into
  per-item :class:`ServerOverloaded` errors within the budget;
- the client is closed, or its loop thread is killed, with work in flight: every future
  completes promptly, with its result or a clear typed error.

Repositories are built in tmp from the session's ``tiny_repository`` (its encoder only)
plus the test-only model, so each server starts in seconds.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tritonvision.bench._slow_model import SLOW_MODEL_PY
from tritonvision.bench._slow_model import slow_model_config as _slow_config
from tritonvision.client import (
    ClientClosed,
    ClientConfig,
    PreprocessSpec,
    RuntimeUnavailable,
    ServerError,
    ServerOverloaded,
    TritonVisionError,
    VisionClient,
)
from tritonvision.client._imaging import load_image_pixels
from tritonvision.contract import PARAM_PREPROCESSING
from tritonvision.serve._server import stub_shm_regions

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

ENCODER = "tiny_clip"
QUEUE1 = "slow_queue1"  # 50 ms per execute, one request at a time, queue of 1
SLOW = "slow_encoder"  # 150 ms per execute, unbounded queue
SPEC_PARAMETER = PARAM_PREPROCESSING


# --------------------------------------------------------------------------- servers


def expected_embedding(pixels: np.ndarray, dim: int = 16) -> np.ndarray:
    """What the test-only model answers for one image's pixels (mirrors ``embed``)."""
    means = pixels.reshape(-1, 3).astype(np.float32).mean(axis=0) / 255.0
    return np.tile(means, dim // 3 + 1)[:dim].astype(np.float32)


@pytest.fixture(scope="module")
def encoder_repo(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's tiny encoder alone (no preprocess/ensemble stubs: faster starts)."""
    repo = tmp_path_factory.mktemp("fault-encoder-repo")
    shutil.copytree(tiny_repository / ENCODER, repo / ENCODER)
    return repo


@pytest.fixture(scope="module")
def slow_repo(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two test-only slow models publishing tiny_clip's preprocessing."""
    from tritonvision.serve._runtime_repo import read_model_config

    source = read_model_config(tiny_repository / ENCODER / "config.pbtxt")
    spec_json = source.parameters[SPEC_PARAMETER].string_value
    assert PreprocessSpec.from_json(spec_json).output_shape == (32, 32, 3)
    repo = tmp_path_factory.mktemp("fault-slow-repo")
    for name, delay_s, queue in ((QUEUE1, 0.05, 1), (SLOW, 0.15, None)):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.py").write_text(SLOW_MODEL_PY)
        (repo / name / "config.pbtxt").write_text(
            _slow_config(name, spec_json, delay_s=delay_s, queue=queue)
        )
    return repo


def _start(repo: Path, workdir: Path, ports: Any = None, extra_args: tuple[str, ...] = ()) -> Any:
    from tritonvision.serve import LocalTriton, ServerPorts, free_port

    # One ORT thread per instance: CI has 2 cores, shared with the client.
    os.environ.setdefault("TRITONVISION_ORT_THREADS", "1")
    ports = ports or ServerPorts(http=free_port(), grpc=free_port(), metrics=free_port())
    server = LocalTriton(repo, ports=ports, workdir=workdir, extra_args=extra_args)
    return server.start(ready_timeout_s=120)


def _sigkill(server: Any) -> None:
    """SIGKILL tritonserver and its stubs, then remove the shared memory they leave."""
    regions = stub_shm_regions(server.pid)
    os.killpg(server.pid, signal.SIGKILL)
    server.stop()  # reap
    for region in regions:
        region.unlink(missing_ok=True)


@pytest.fixture
def slow_server(slow_repo: Path, tmp_path: Path) -> Iterator[Any]:
    server = _start(slow_repo, tmp_path / "slow")
    try:
        yield server
    finally:
        server.stop()


# ----------------------------------------------------------------------------- images


def image_bytes(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    w, h = size
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    arr[:, :, seed % 3] = (seed * 37) % 256  # distinct per-channel means per seed
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "PNG")
    return buf.getvalue()


def _spec(repo: Path, model: str) -> PreprocessSpec:
    from tritonvision.serve._runtime_repo import read_model_config

    cfg = read_model_config(repo / model / "config.pbtxt")
    return PreprocessSpec.from_json(cfg.parameters[SPEC_PARAMETER].string_value)


def _assert_every_item_accounted(batch: Any, count: int) -> None:
    assert len(batch) == count
    assert batch.embeddings.shape[0] == count
    for index in range(count):
        if index in batch.errors:
            assert isinstance(batch.errors[index], TritonVisionError), batch.errors[index]
            assert np.all(np.isnan(batch.embeddings[index]))
        else:
            assert np.all(np.isfinite(batch.embeddings[index])), index


# -------------------------------------------------------------- server dies mid-batch


def test_server_killed_mid_batch_and_restarted_on_the_same_ports_loses_nothing(
    encoder_repo: Path, tmp_path: Path
) -> None:
    count = 500
    sources = [image_bytes(i) for i in range(count)]
    # Generous retries: the restart takes seconds; the budget, not the count, bounds it.
    config = ClientConfig(
        max_retries=10_000,
        retry_budget_s=90.0,
        backoff_base_s=0.05,
        backoff_max_s=0.5,
        request_timeout_s=30.0,
    )
    first = _start(encoder_repo, tmp_path / "first")
    second = None
    killed = threading.Event()
    trigger = threading.Event()
    kill_at = 150
    try:
        with VisionClient(first.http_url, ENCODER, config=config) as client:
            clean = client.batch_embed_images(sources).result(120)
            assert clean.ok
            before = client.stats()

            def paced() -> Iterator[bytes]:
                for index, source in enumerate(sources):
                    if index == kill_at:
                        trigger.set()
                    yield source

            def killer() -> None:
                trigger.wait(60)
                _sigkill(first)  # tritonserver and its stubs
                killed.set()

            thread = threading.Thread(target=killer, name="test-killer", daemon=True)
            thread.start()
            started = time.monotonic()
            pending = client.batch_embed_images(paced())
            assert killed.wait(60), "the batch never reached the kill point"
            time.sleep(1.0)  # a second of "connection refused"
            assert not pending.done(), "the batch finished before the server came back"
            second = _start(encoder_repo, tmp_path / "second", ports=first.ports)
            batch = pending.result(150)
            elapsed = time.monotonic() - started
            thread.join(5)
            after = client.stats()
        _assert_every_item_accounted(batch, count)
        assert batch.ok, {i: repr(e) for i, e in list(batch.errors.items())[:5]}
        np.testing.assert_allclose(batch.embeddings, clean.embeddings, rtol=1e-4, atol=1e-5)
        assert after.retries > before.retries, "the outage was not retried"
        assert after.items - before.items == count  # each item embedded exactly once
        print(
            f"\nkill mid-batch: {count} items in {elapsed:.1f} s, "
            f"{after.retries - before.retries} retries, {after.requests - before.requests} requests"
        )
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_server_killed_for_good_gives_typed_errors_for_every_item_within_the_budget(
    encoder_repo: Path, tmp_path: Path
) -> None:
    count = 500
    sources = [image_bytes(i) for i in range(count)]
    config = ClientConfig(
        max_in_flight=64,
        max_retries=10_000,
        retry_budget_s=0.5,
        backoff_base_s=0.05,
        backoff_max_s=0.25,
        request_timeout_s=10.0,
    )
    server = _start(encoder_repo, tmp_path / "doomed")
    trigger = threading.Event()

    def paced() -> Iterator[bytes]:
        for index, source in enumerate(sources):
            if index == 100:
                trigger.set()
            yield source

    try:
        with VisionClient(server.http_url, ENCODER, config=config) as client:
            client.model_info().result(60)
            pending = client.batch_embed_images(paced())
            assert trigger.wait(60)
            _sigkill(server)
            started = time.monotonic()
            batch = pending.result(120)
            elapsed = time.monotonic() - started
    finally:
        server.stop()
    _assert_every_item_accounted(batch, count)
    assert batch.errors, "nothing failed although the server never came back"
    assert all(isinstance(e, TritonVisionError) for e in batch.errors.values())
    # Each item gives up after at most its budget (+ one backoff and one request).
    assert elapsed < 60, elapsed


# ------------------------------------------------------------------- 503 / queue full


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_queue_full_is_absorbed_by_backoff_and_nothing_is_dropped(
    slow_server: Any, slow_repo: Path, transport: str
) -> None:
    spec = _spec(slow_repo, QUEUE1)
    sources = [image_bytes(i) for i in range(12)]
    expected = [expected_embedding(load_image_pixels(s, spec)) for s in sources]
    config = ClientConfig(
        max_in_flight=4,
        max_retries=10_000,
        retry_budget_s=60.0,
        backoff_base_s=0.05,
        backoff_max_s=0.2,
    )
    url = slow_server.http_url if transport == "http" else slow_server.grpc_url
    with VisionClient(url, QUEUE1, config=config) as client:
        singles = [client.embed_image_bytes(s) for s in sources[:4]]
        batch = client.batch_embed_images(sources).result(120)
        single_rows = [f.result(120) for f in singles]
        stats = client.stats()
    _assert_every_item_accounted(batch, len(sources))
    assert batch.ok, {i: repr(e) for i, e in batch.errors.items()}
    np.testing.assert_allclose(batch.embeddings, np.stack(expected), atol=1e-5)
    np.testing.assert_allclose(np.stack(single_rows), np.stack(expected[:4]), atol=1e-5)
    assert stats.retries > 0, "a queue of 1 with 8 in flight must have refused some requests"
    assert stats.items == len(sources) + 4
    assert stats.failed == 0
    print(f"\nqueue full ({transport}): {stats.requests} requests, {stats.retries} retries")


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_queue_full_with_a_tiny_budget_fails_items_with_server_overloaded_in_time(
    slow_server: Any, transport: str
) -> None:
    budget_s = 0.2
    config = ClientConfig(
        max_in_flight=16,
        max_retries=10_000,
        retry_budget_s=budget_s,
        backoff_base_s=0.02,
        backoff_max_s=0.05,
        request_timeout_s=10.0,
    )
    sources = [image_bytes(i) for i in range(48)]
    url = slow_server.http_url if transport == "http" else slow_server.grpc_url
    with VisionClient(url, QUEUE1, config=config) as client:
        client.model_info().result(60)
        started = time.monotonic()
        batch = client.batch_embed_images(sources).result(120)
        batch_s = time.monotonic() - started
        # One by one, at once: each call ends within its budget plus its own request.
        submitted = time.monotonic()
        singles = [client.embed_image_bytes(s) for s in sources[:16]]
        durations, outcomes = [], []
        for fut in singles:
            try:
                outcomes.append(fut.result(60))
            except ServerOverloaded as exc:
                outcomes.append(exc)
            durations.append(time.monotonic() - submitted)
        stats = client.stats()
    _assert_every_item_accounted(batch, len(sources))
    assert batch.errors, "a 0.2 s budget cannot absorb a queue of 1 under 16 requests"
    for err in batch.errors.values():
        assert isinstance(err, ServerOverloaded), repr(err)
        assert err.status == 503
        assert "queue" in err.server_message.lower()
    overloaded = [o for o in outcomes if isinstance(o, ServerOverloaded)]
    assert overloaded, "no single call was refused"
    # The ones refused were refused fast: well before a request timeout (10 s).
    assert max(durations) < 10.0, durations
    assert stats.retries > 0
    # 48 items, 16 in flight, a 50 ms model: 48 serial executions take ~2.4 s; failures
    # cost at most their budget each, so the batch stays bounded.
    assert batch_s < 30.0, batch_s
    print(
        f"\ntiny budget ({transport}): {len(batch.errors)}/{len(sources)} batch items "
        f"overloaded in {batch_s:.1f} s; singles: {len(overloaded)}/16 overloaded, "
        f"slowest {max(durations):.2f} s"
    )


# --------------------------------------------------------------- restricted endpoints


def test_restricted_endpoints_give_a_clear_error_that_is_never_retried(
    encoder_repo: Path, tmp_path: Path
) -> None:
    # What SECURITY.md suggests for admin APIs, applied to what the client needs: the
    # refusal must surface at once as a permission error (HTTP 403; gRPC says
    # UNAVAILABLE, which must not be mistaken for a busy server and retried).
    restrict = "model-config,inference:x-admin-key=SECRET"
    server = _start(
        encoder_repo,
        tmp_path / "restricted",
        extra_args=(f"--http-restricted-api={restrict}", f"--grpc-restricted-protocol={restrict}"),
    )
    config = ClientConfig(max_retries=50, retry_budget_s=30.0, backoff_base_s=0.2)
    try:
        for url in (server.http_url, server.grpc_url):
            with VisionClient(url, ENCODER, config=config) as client:
                started = time.monotonic()
                with pytest.raises(ServerError) as info:
                    client.embed_image_bytes(image_bytes(0)).result(60)
                assert time.monotonic() - started < 10
                assert not isinstance(info.value, ServerOverloaded), repr(info.value)
                assert info.value.status == 403, repr(info.value)
                assert "restricted" in str(info.value)
                assert client.stats().retries == 0
    finally:
        server.stop()


# ---------------------------------------------------------- close / loop dies in flight


def _in_flight(client: VisionClient, sources: list[bytes]) -> list[Any]:
    futures: list[Any] = [client.embed_image_bytes(s) for s in sources]
    futures.append(client.batch_embed_images(sources * 3))
    return futures


def _wait_until_busy(server: Any, model: str, timeout_s: float = 30.0) -> None:
    """Until Triton has started executing something for ``model``."""
    import json
    import urllib.request

    deadline = time.monotonic() + timeout_s
    url = f"{server.http_url}/v2/models/{model}/stats"
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=5) as resp:
            stats = json.loads(resp.read())["model_stats"][0]
        if int(stats.get("execution_count", 0)) > 0:
            return
        time.sleep(0.02)
    raise AssertionError("the model never started executing")


def test_close_drains_in_flight_work_so_nothing_is_lost(slow_server: Any) -> None:
    sources = [image_bytes(i) for i in range(4)]
    client = VisionClient(slow_server.http_url, SLOW, max_in_flight=4)
    client.model_info().result(60)
    futures = _in_flight(client, sources)
    _wait_until_busy(slow_server, SLOW)
    started = time.monotonic()
    client.close()
    # 4 + 12 images at 150 ms each on one instance: ~2.5 s of work.
    assert time.monotonic() - started < 60
    assert all(f.done() for f in futures)
    for fut in futures[:-1]:
        assert fut.result(0).shape == (16,)
    assert futures[-1].result(0).ok
    with pytest.raises(ClientClosed):
        client.embed_image_bytes(sources[0])


def test_close_with_a_timeout_fails_every_pending_future_promptly(slow_server: Any) -> None:
    sources = [image_bytes(i) for i in range(4)]
    client = VisionClient(slow_server.http_url, SLOW, max_in_flight=4)
    client.model_info().result(60)
    futures = _in_flight(client, sources)
    _wait_until_busy(slow_server, SLOW)
    thread = client.runtime.thread
    session = client.async_client.session
    started = time.monotonic()
    client.close(timeout_s=0.5)
    outcomes = []
    for fut in futures:
        exc = fut.exception(timeout=10)  # raises TimeoutError if a future hangs
        outcomes.append(exc)
    elapsed = time.monotonic() - started
    assert elapsed < 15, elapsed
    failed = [e for e in outcomes if e is not None]
    assert failed, "with 2.5 s of work and a 0.5 s close timeout, something must fail"
    for exc in failed:
        assert isinstance(exc, ClientClosed), repr(exc)
        assert "closed" in str(exc)
    assert thread is not None
    thread.join(15)
    assert not thread.is_alive()
    assert session is not None and session.closed


class _LoopKilled(SystemExit):
    """SystemExit escapes asyncio's callback guard and ends the loop thread."""


def test_killed_loop_thread_fails_every_pending_future_promptly(slow_server: Any) -> None:
    sources = [image_bytes(i) for i in range(4)]
    client = VisionClient(slow_server.http_url, SLOW, max_in_flight=4)
    client.model_info().result(60)
    futures = _in_flight(client, sources)
    _wait_until_busy(slow_server, SLOW)
    loop = client.runtime.loop
    thread = client.runtime.thread
    assert loop is not None and thread is not None

    def die() -> None:
        raise _LoopKilled("test: the loop thread is killed")

    started = time.monotonic()
    loop.call_soon_threadsafe(die)
    outcomes = [fut.exception(timeout=10) for fut in futures]  # TimeoutError if one hangs
    assert time.monotonic() - started < 15
    # Calls that finished before the kill keep their result; all others get the error.
    failed = [e for e in outcomes if e is not None]
    assert failed and outcomes[-1] is not None, outcomes
    for exc in failed:
        assert isinstance(exc, RuntimeUnavailable), repr(exc)
        assert "died" in str(exc)
    thread.join(15)
    assert not thread.is_alive()
    with pytest.raises(RuntimeUnavailable):
        client.embed_image_bytes(sources[0])
    session = client.async_client.session
    client.close()  # harmless after the death
    assert session is None or session.closed


# ----------------------------------------------------------- tritonvision embed (CLI)


def _run_cli(args: list[str], env: dict[str, str], timeout_s: float = 180) -> Any:
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "tritonvision", "embed", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def test_embed_cli_killed_server_then_rerun_matches_a_clean_run(
    encoder_repo: Path, tmp_path: Path
) -> None:
    import json
    import subprocess
    import sys

    images = tmp_path / "images"
    images.mkdir()
    count = 400
    for i in range(count):
        (images / f"img{i:04d}.png").write_bytes(image_bytes(i))
    server = _start(encoder_repo, tmp_path / "cli-first")
    second = None
    env = {**os.environ, "TRITONVISION_RETRY_BUDGET_S": "1.0"}
    common = [str(images), "--model", ENCODER, "--batch-size", "40", "-qq", "--no-parquet"]
    try:
        clean_base = tmp_path / "clean" / "out"
        clean_base.parent.mkdir()
        run = _run_cli([*common, "--server", server.http_url, "-o", str(clean_base)], env)
        assert run.returncode == 0, run.stderr

        base = tmp_path / "faulted" / "out"
        base.parent.mkdir()
        args = [*common, "--server", server.http_url, "-o", str(base)]
        # Two requests at a time: slow enough to be killed mid-run.
        proc = subprocess.Popen(
            [sys.executable, "-m", "tritonvision", "embed", *args],
            env={**env, "TRITONVISION_MAX_IN_FLIGHT": "2"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        parts = Path(f"{base}.parts")
        deadline = time.monotonic() + 60
        while not list(parts.glob("chunk-*.npz")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no chunk was committed"
            time.sleep(0.02)
        _sigkill(server)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode != 0, f"the run finished before the kill:\n{out}\n{err}"
        committed = len(list(parts.glob("chunk-*.npz")))
        assert 1 <= committed < count // 40

        second = _start(encoder_repo, tmp_path / "cli-second", ports=server.ports)
        rerun = _run_cli(args, env)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    finally:
        server.stop()
        if second is not None:
            second.stop()
    clean = np.load(f"{clean_base}.npy")
    resumed = np.load(f"{base}.npy")
    assert clean.shape == resumed.shape == (count, 16)
    np.testing.assert_allclose(resumed, clean, rtol=1e-4, atol=1e-5)
    clean_sources = Path(f"{clean_base}.sources.jsonl").read_text().splitlines()
    sources = Path(f"{base}.sources.jsonl").read_text().splitlines()
    assert sources == clean_sources
    keys = [json.loads(line)["source"] for line in sources]
    assert len(set(keys)) == count  # every input exactly once
    assert Path(f"{base}.errors.jsonl").read_text() == ""
    assert not parts.exists()
    print(f"\nembed CLI: killed after {committed} of {count // 40} chunks; re-run completed")
