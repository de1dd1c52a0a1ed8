"""Load on loopback: many embeds from many threads through ONE ``VisionClient``.

Against the session's real ``tritonserver`` (tiny encoder). Checks that nothing
accumulates: file descriptors (``/proc/self/fd``), asyncio tasks on the client's loop
(counted by a coroutine submitted to it), threads, ``aiohttp.ClientSession`` objects
(``gc``), and resident memory (``VmRSS``) after warm-up; every call gets its embedding
or, for the few deliberately bad inputs, a ``DecodeError``. Latency percentiles and
throughput are printed (never asserted: speed claims live in ``bench/``).

- ``test_short_soak``: 1,500 embeds from 8 threads, runs in CI.
- ``test_full_soak``: 20,000 embeds from 16 threads, ``-m soak`` (excluded by ``make test``).
"""

from __future__ import annotations

import asyncio
import gc
import io
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import pytest
from PIL import Image

from tritonvision.client import DecodeError, VisionClient

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc (Linux)"),
]

BAD_EVERY = 50  # one input in 50 is truncated: the error path is soaked too


# ----------------------------------------------------------------------------- probes


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def live_sessions() -> frozenset[int]:
    """ids of the ``aiohttp.ClientSession`` objects alive in this process."""
    gc.collect()
    return frozenset(id(o) for o in gc.get_objects() if isinstance(o, aiohttp.ClientSession))


def thread_names() -> list[str]:
    return sorted(t.name for t in threading.enumerate())


async def _other_tasks() -> int:
    me = asyncio.current_task()
    return sum(1 for t in asyncio.all_tasks() if t is not me)


def loop_task_count(client: VisionClient) -> int:
    """Tasks alive on the client's loop, apart from the counting coroutine itself."""
    return client.runtime.submit(_other_tasks()).result(30)


# ----------------------------------------------------------------------------- inputs


def make_inputs(count: int = 64) -> list[bytes]:
    rng = np.random.default_rng(11)
    out = []
    for i in range(count):
        w, h = (int(v) for v in rng.integers(24, 160, size=2))
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr, "RGB").save(buf, "JPEG" if i % 2 else "PNG")
        out.append(buf.getvalue())
    return out


GOOD = make_inputs()
BAD = GOOD[0][: len(GOOD[0]) // 3]


def source_for(n: int) -> bytes:
    return BAD if n % BAD_EVERY == BAD_EVERY - 1 else GOOD[n % len(GOOD)]


# ------------------------------------------------------------------------------- soak


@dataclass
class Snapshot:
    fds: int
    threads: list[str]
    sessions: frozenset[int]
    rss_mib: float
    tasks: int | None = None


@dataclass
class SoakReport:
    requests: int
    threads: int
    duration_s: float
    latencies_s: list[float]
    errors: dict[str, int]
    baseline: Snapshot
    warm: Snapshot
    after: Snapshot
    closed: Snapshot
    rss_samples: list[float] = field(default_factory=list)
    decode_workers: int = 0

    @property
    def throughput(self) -> float:
        return self.requests / self.duration_s

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q) * 1000)

    @property
    def rss_growth_mib(self) -> float:
        return self.after.rss_mib - self.warm.rss_mib

    def text(self) -> str:
        return (
            f"\nsoak: {self.requests} embeds from {self.threads} threads in "
            f"{self.duration_s:.1f} s = {self.throughput:.0f}/s; latency p50 "
            f"{self.percentile_ms(50):.1f} ms, p90 {self.percentile_ms(90):.1f} ms, p99 "
            f"{self.percentile_ms(99):.1f} ms, max {max(self.latencies_s) * 1000:.0f} ms; "
            f"errors {self.errors}\n"
            f"  RSS: baseline {self.baseline.rss_mib:.0f} MiB, warm {self.warm.rss_mib:.0f}, "
            f"after {self.after.rss_mib:.0f} (growth {self.rss_growth_mib:+.1f} MiB), samples "
            f"{[round(s) for s in self.rss_samples]}\n"
            f"  fds: baseline {self.baseline.fds}, warm {self.warm.fds}, after "
            f"{self.after.fds}, closed {self.closed.fds}; threads: baseline "
            f"{len(self.baseline.threads)}, warm {len(self.warm.threads)}, after "
            f"{len(self.after.threads)}, closed {len(self.closed.threads)}; loop tasks: warm "
            f"{self.warm.tasks}, after {self.after.tasks}; sessions: baseline "
            f"{len(self.baseline.sessions)}, warm {len(self.warm.sessions)}, after "
            f"{len(self.after.sessions)}, closed {len(self.closed.sessions)}"
        )


def _hammer(
    client: VisionClient, start: int, count: int, latencies: list[float], errors: dict[str, int]
) -> None:
    for n in range(start, start + count):
        source = source_for(n)
        began = time.perf_counter()
        try:
            vector = client.embed(source).result(60)
        except DecodeError:
            errors["DecodeError"] = errors.get("DecodeError", 0) + 1
            assert source is BAD
        else:
            assert source is not BAD and vector.shape == (16,)
        latencies.append(time.perf_counter() - began)


def run_soak(url: str, model: str, *, requests: int, threads: int, warmup: int) -> SoakReport:
    gc.collect()
    baseline = Snapshot(fd_count(), thread_names(), live_sessions(), rss_mib())
    client = VisionClient(url, model)
    decode_workers = client.async_client.config.decode_workers
    try:
        warm_lat: list[float] = []
        _run_threads(client, warmup, threads, warm_lat, {})
        gc.collect()
        warm = Snapshot(
            fd_count(), thread_names(), live_sessions(), rss_mib(), loop_task_count(client)
        )
        latencies: list[float] = []
        errors: dict[str, int] = {}
        samples: list[float] = []
        started = time.perf_counter()
        per_round = max(threads, requests // 4)
        done = 0
        while done < requests:
            batch = min(per_round, requests - done)
            _run_threads(client, batch, threads, latencies, errors, offset=warmup + done)
            done += batch
            gc.collect()
            samples.append(rss_mib())
        duration = time.perf_counter() - started
        after = Snapshot(
            fd_count(), thread_names(), live_sessions(), rss_mib(), loop_task_count(client)
        )
        stats = client.stats()
        assert stats.items == warmup - warmup // BAD_EVERY + requests - errors.get("DecodeError", 0)
    finally:
        client.close()
    thread = client.runtime.thread
    assert thread is not None
    thread.join(10)
    del client
    gc.collect()
    closed = Snapshot(fd_count(), thread_names(), live_sessions(), rss_mib())
    return SoakReport(
        requests,
        threads,
        duration,
        latencies,
        errors,
        baseline,
        warm,
        after,
        closed,
        samples,
        decode_workers,
    )


def _run_threads(
    client: VisionClient,
    total: int,
    threads: int,
    latencies: list[float],
    errors: dict[str, int],
    offset: int = 0,
) -> None:
    share = [total // threads + (1 if i < total % threads else 0) for i in range(threads)]
    lats: list[list[float]] = [[] for _ in range(threads)]
    errs: list[dict[str, int]] = [{} for _ in range(threads)]
    failures: list[BaseException] = []
    starts = [offset + sum(share[:i]) for i in range(threads)]

    def worker(i: int) -> None:
        try:
            _hammer(client, starts[i], share[i], lats[i], errs[i])
        except BaseException as exc:  # surfaced below, in the test's thread
            failures.append(exc)

    workers = [threading.Thread(target=worker, args=(i,), name=f"soak-{i}") for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(600)
        assert not w.is_alive(), "a soak worker hung"
    if failures:
        raise failures[0]
    for i in range(threads):
        latencies.extend(lats[i])
        for k, v in errs[i].items():
            errors[k] = errors.get(k, 0) + v


DECODE_POOL = "tritonvision-decode"


def _thread_kinds(names: list[str]) -> set[str]:
    return {n.rstrip("0123456789_-") for n in names}


def _new(names: list[str], before: list[str]) -> list[str]:
    return sorted(set(names) - set(before))


def _non_pool(names: list[str]) -> list[str]:
    return [n for n in names if not n.startswith(DECODE_POOL)]


def assert_no_leaks(report: SoakReport, *, max_rss_growth_mib: float) -> None:
    warm, after, closed, baseline = report.warm, report.after, report.closed, report.baseline
    assert len(report.latencies_s) == report.requests
    expected_bad = sum(1 for n in range(report.requests) if source_for(n) is BAD)
    assert report.errors.get("DecodeError", 0) <= expected_bad + BAD_EVERY
    # Only what this client made counts (earlier tests' leftovers may come and go).
    warm_threads = _new(warm.threads, baseline.threads)
    after_threads = _new(after.threads, baseline.threads)
    # Open client: nothing grows once warm (some slack for the connection pool, and the
    # decode pool may still start threads up to its bound on many-core machines).
    assert after.fds <= warm.fds + 8, report.text()
    assert _thread_kinds(after_threads) == _thread_kinds(warm_threads), report.text()
    assert _non_pool(after_threads) == _non_pool(warm_threads), report.text()
    assert sum(n.startswith(DECODE_POOL) for n in after_threads) <= report.decode_workers
    assert after.tasks == warm.tasks == 0, report.text()
    assert len(warm.sessions - baseline.sessions) == 1, report.text()  # the client's one
    assert after.sessions - baseline.sessions == warm.sessions - baseline.sessions
    assert report.rss_growth_mib < max_rss_growth_mib, report.text()
    # Closed client: back to where we started.
    assert closed.fds <= baseline.fds + 2, report.text()
    assert _new(closed.threads, baseline.threads) == [], report.text()
    assert not closed.sessions - baseline.sessions, report.text()


def test_short_soak(triton: Any) -> None:
    report = run_soak(triton.http_url, triton.model, requests=1500, threads=8, warmup=300)
    print(report.text())
    assert_no_leaks(report, max_rss_growth_mib=50)


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_full_soak(triton: Any) -> None:
    report = run_soak(
        triton.http_url,
        triton.model,
        requests=20_000,
        threads=16,
        warmup=1_000,
    )
    print(report.text())
    assert_no_leaks(report, max_rss_growth_mib=50)
