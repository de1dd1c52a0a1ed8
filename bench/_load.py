"""Load generators and timing: closed-loop drivers, alternating sides, CPU accounting.

Every comparison is measured side by side in the same run, alternating the two sides
round by round (:func:`alternate`) so that drift in the machine's other load hits both.
:func:`run_threads` drives blocking calls from N caller threads, :func:`run_tasks` drives
coroutines from N tasks; both return a :class:`Measurement`. :func:`measure_client_embed`
is the one load our client puts on a served model in scenarios 2 and 3, with the client's
coalescing of concurrent calls on or off; :func:`post_infer` is the one raw POST that the
scenarios driving Triton without our client (scenarios 4, 9, the device run) share.
"""

from __future__ import annotations

import asyncio
import os
import resource
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import aiohttp
import numpy as np

from ._client_internals import HEADER_LENGTH_HEADER
from ._report import Row, Side

T = TypeVar("T")

# A lone caller's p50 with coalescing within 5% of without: (1000 / p50) on / off >= 1 / 1.05.
TARGET_LONE_P50 = round(1 / 1.05, 3)

__all__ = [
    "TARGET_LONE_P50",
    "Measurement",
    "alternate",
    "children_cpu_s",
    "cpu_seconds_of_group",
    "lone_caller_p50_row",
    "measure_client_embed",
    "median_latency_side",
    "post_infer",
    "run_tasks",
    "run_threads",
    "side_from",
]


def cpu_seconds_of_group(pgid: int) -> float:
    """CPU seconds (user + system) used so far by every process in process group ``pgid``.

    ``LocalTriton`` starts tritonserver in its own group, so this covers the server and
    all its python-backend stubs. Reaped children (stubs of unloaded models) count through
    their parent's ``cutime``/``cstime``, so the total never goes backwards.
    """
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: pgrp is the 3rd, then utime, stime,
        # cutime, cstime are the 12th to 15th.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid:
            total += sum(int(f) for f in fields[11:15])
    return total / tick


def children_cpu_s() -> float:
    """CPU seconds (user + system) of this process's reaped children (CLIs, perf_analyzer)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ----------------------------------------------------------------------- measurements


@dataclass
class Measurement:
    """One closed-loop run: ``calls`` calls of ``items_per_call`` items in ``elapsed_s``."""

    calls: int
    elapsed_s: float
    latencies_s: list[float]
    items_per_call: int = 1
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def items(self) -> int:
        return self.calls * self.items_per_call

    @property
    def throughput(self) -> float:
        return self.items / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile_ms(self, q: float) -> float | None:
        if not self.latencies_s:
            return None
        return float(np.percentile(np.asarray(self.latencies_s), q) * 1000.0)

    @staticmethod
    def merge(parts: Sequence[Measurement]) -> Measurement:
        if not parts:
            raise ValueError("nothing to merge")
        extra: dict[str, float] = {}
        for key in parts[0].extra:
            extra[key] = float(np.mean([p.extra[key] for p in parts if key in p.extra]))
        return Measurement(
            calls=sum(p.calls for p in parts),
            elapsed_s=sum(p.elapsed_s for p in parts),
            latencies_s=[x for p in parts for x in p.latencies_s],
            items_per_call=parts[0].items_per_call,
            extra=extra,
        )


def run_threads(
    call: Callable[[int], object],
    *,
    concurrency: int,
    duration_s: float,
    warmup_calls: int = 1,
    items_per_call: int = 1,
    max_calls: int | None = None,
) -> Measurement:
    """``concurrency`` caller threads each calling ``call(worker_index)`` in a closed loop.

    Each thread first makes ``warmup_calls`` unrecorded calls; then all start together and
    call until ``duration_s`` has passed (or ``max_calls`` calls were started in total).
    The first exception raised by any call is re-raised here.
    """
    start_gate = threading.Barrier(concurrency + 1)
    go_gate = threading.Barrier(concurrency + 1)
    deadline = [0.0]
    lock = threading.Lock()
    started = [0]
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    ends = [0.0] * concurrency
    errors: list[BaseException] = []

    def take_ticket() -> bool:
        if max_calls is None:
            return True
        with lock:
            if started[0] >= max_calls:
                return False
            started[0] += 1
            return True

    def worker(index: int) -> None:
        try:
            for _ in range(warmup_calls):
                call(index)
        except BaseException as exc:
            errors.append(exc)
        try:
            start_gate.wait()
            go_gate.wait()
        except threading.BrokenBarrierError:
            return
        mine = latencies[index]
        try:
            while not errors and time.perf_counter() < deadline[0] and take_ticket():
                t = time.perf_counter()
                call(index)
                mine.append(time.perf_counter() - t)
        except BaseException as exc:
            errors.append(exc)
        ends[index] = time.perf_counter()

    threads = [
        threading.Thread(target=worker, args=(i,), name=f"bench-caller-{i}", daemon=True)
        for i in range(concurrency)
    ]
    for t in threads:
        t.start()
    start_gate.wait()
    if errors:
        go_gate.abort()
        for t in threads:
            t.join()
        raise errors[0]
    t0 = time.perf_counter()
    deadline[0] = t0 + duration_s
    go_gate.wait()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    flat = [x for part in latencies for x in part]
    return Measurement(
        calls=len(flat),
        elapsed_s=max(ends) - t0,
        latencies_s=flat,
        items_per_call=items_per_call,
    )


async def run_tasks(
    call: Callable[[int], Awaitable[object]],
    *,
    concurrency: int,
    duration_s: float,
    warmup_calls: int = 1,
    items_per_call: int = 1,
) -> Measurement:
    """The asyncio twin of :func:`run_threads`: ``concurrency`` tasks on the running loop."""
    await asyncio.gather(*(call(i) for i in range(concurrency) for _ in range(warmup_calls)))
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    t0 = time.perf_counter()
    deadline = t0 + duration_s

    async def worker(index: int) -> float:
        mine = latencies[index]
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            await call(index)
            mine.append(time.perf_counter() - t)
        return time.perf_counter()

    ends = await asyncio.gather(*(worker(i) for i in range(concurrency)))
    flat = [x for part in latencies for x in part]
    return Measurement(
        calls=len(flat),
        elapsed_s=max(ends) - t0,
        latencies_s=flat,
        items_per_call=items_per_call,
    )


async def post_infer(
    session: aiohttp.ClientSession,
    endpoint: str,
    body: bytes,
    headers: dict[str, str],
    parse: Callable[[bytes, str | None], T],
) -> T:
    """POST one raw inference request on a shared session; ``parse(payload, header_length)``
    of the response, or ``RuntimeError`` naming the endpoint when it is not HTTP 200."""
    async with session.post(endpoint, data=body, headers=headers) as resp:
        payload = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{endpoint}: HTTP {resp.status}: {payload[:200]!r}")
        return parse(payload, resp.headers.get(HEADER_LENGTH_HEADER))


def alternate(
    runners: dict[str, Callable[[], Measurement]],
    rounds: int,
    *,
    once: dict[str, Callable[[], Measurement]] | None = None,
) -> dict[str, Measurement]:
    """Run each side once per round, in alternating order, and merge each side's rounds.

    ``once``: sides measured a single time, between the first half of the rounds and the
    second (a baseline that averages its own windows, such as perf_analyzer), so with two
    rounds the order is ``a b | once | b a``.
    """
    parts: dict[str, list[Measurement]] = {name: [] for name in runners}
    single: dict[str, Measurement] = {}
    names = list(runners)
    middle = (rounds + 1) // 2
    for r in range(rounds):
        if r == middle and once:
            single = {name: run() for name, run in once.items()}
        for name in names if r % 2 == 0 else reversed(names):
            parts[name].append(runners[name]())
    if once and not single:
        single = {name: run() for name, run in once.items()}
    return {**{name: Measurement.merge(p) for name, p in parts.items()}, **single}


def side_from(label: str, m: Measurement, *, unit: str = "img/s", detail: str = "") -> Side:
    """A report side from a measurement: its rate and its p50 / p99 latency."""
    return Side(
        label=label,
        value=m.throughput,
        unit=unit,
        p50_ms=m.percentile_ms(50),
        p99_ms=m.percentile_ms(99),
        detail=detail,
    )


def median_latency_side(label: str, m: Measurement, *, detail: str = "") -> Side:
    """A report side whose rate is ``1000 / p50 ms``: a ratio of two such sides is the
    inverse ratio of their median latencies (higher is better, like every other row)."""
    p50 = m.percentile_ms(50)
    return Side(
        label=label,
        value=1000.0 / p50 if p50 else 0.0,
        unit="/s (1000 / p50 ms)",
        p50_ms=p50,
        p99_ms=m.percentile_ms(99),
        detail=detail,
    )


def lone_caller_p50_row(
    scenario: int,
    case: str,
    on: Measurement,
    off: Measurement,
    *,
    on_detail: str,
    off_detail: str,
    model: str,
    settings: str,
) -> Row:
    """The row holding a lone caller's p50 with coalescing on to :data:`TARGET_LONE_P50`
    of the p50 with it off (scenarios 1 and 2)."""
    return Row(
        scenario=scenario,
        case=case,
        ours=median_latency_side("coalescing on", on, detail=on_detail),
        baseline=median_latency_side("coalescing off", off, detail=off_detail),
        model=model,
        settings=settings,
        target=TARGET_LONE_P50,
        note=(
            "rates are 1000 / p50 ms, so the ratio is p50 off / p50 on; the "
            f"target {TARGET_LONE_P50:g} is a p50 with coalescing at most 5% "
            "above the one without"
        ),
    )


def measure_client_embed(
    url: str,
    model: str,
    concurrency: int,
    duration_s: float,
    server_cpu_s: Callable[[], float],
    *,
    coalesce: bool = False,
) -> Measurement:
    """``AsyncVisionClient.embed`` of pre-made random uint8 pixels from N tasks; CPU per
    call on both sides in ``extra`` (``client_cpu_ms``, ``server_cpu_ms``).

    ``coalesce=False``: one image per request, so any batching is the server's.
    ``coalesce=True`` (the client's default): calls made while requests are out go
    together as one request (``ClientConfig.coalesce``); ``extra["images_per_request"]``
    says how many went per request on average.
    """
    from tritonvision.client import AsyncVisionClient, ClientConfig

    async def go() -> Measurement:
        config = ClientConfig(coalesce=coalesce)
        async with AsyncVisionClient(url, model, config=config) as client:
            info = await client.model_info()
            rng = np.random.default_rng(0)
            arrays = [
                rng.integers(0, 256, info.preprocessing.output_shape, dtype=np.uint8)
                for _ in range(16)
            ]
            counter = [0]

            async def call(worker: int) -> None:
                counter[0] += 1
                await client.embed(arrays[counter[0] % len(arrays)])

            cpu0, server0 = time.process_time(), server_cpu_s()
            requests0 = client.stats().requests
            m = await run_tasks(call, concurrency=concurrency, duration_s=duration_s)
            done = max(1, counter[0])
            m.extra["client_cpu_ms"] = (time.process_time() - cpu0) * 1000 / done
            m.extra["server_cpu_ms"] = (server_cpu_s() - server0) * 1000 / done
            m.extra["images_per_request"] = done / max(1, client.stats().requests - requests0)
            return m

    return asyncio.run(go())
