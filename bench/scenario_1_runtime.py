"""1. The shared runtime (``VisionClient``) vs the per-call runtime bug.

Same server, same model (the tiny CLIP: light compute, so the client's own cost shows),
same sample photos (JPEG files), same number of caller threads each calling
``embed_image(path).result()`` in a closed loop. The bug (``_percall_bug.py``) spawns a
thread, an event loop and an aiohttp session per call and fetches the model config each
time; ours reuses one loop thread, one session and one decode pool for every call.

``VisionClient`` runs with its defaults, coalescing included (single calls made while its
requests are out go together as one request). The last rows measure that alone: the same
``VisionClient`` with coalescing on vs off, N caller threads each calling ``embed(uint8
pixels)``, and a lone caller's p50 latency on vs off.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tritonvision.client import ClientConfig, ClientStats, VisionClient

from ._client_internals import load_image_pixels
from ._context import Context, Scenario
from ._load import Measurement, alternate, lone_caller_p50_row, run_threads, side_from
from ._percall_bug import PerCallVisionClient
from ._report import Row
from ._repos import ServedRepository

__all__ = ["SCENARIO"]

NUMBER = 1
TITLE = "Shared runtime vs the per-call runtime bug"
CONCURRENCY = (1, 16)
TARGET_AT_16 = 2.0
COALESCE_CONCURRENCY = (1, 8, 32)

Embed = Callable[[Any], Future[npt.NDArray[np.float32]]]


def _measure(
    method: Embed,
    inputs: Sequence[Any],
    concurrency: int,
    duration_s: float,
    served: ServedRepository,
    stats: Callable[[], ClientStats] | None = None,
) -> Measurement:
    # Each caller walks the inputs from its own offset, so callers send different images.
    items = list(inputs)
    cursors = [
        itertools.cycle(items[i % len(items) :] + items[: i % len(items)])
        for i in range(concurrency)
    ]

    def call(worker: int) -> None:
        method(next(cursors[worker])).result(timeout=60)

    cpu0, server0 = time.process_time(), served.cpu_seconds()
    requests0 = stats().requests if stats else 0
    m = run_threads(call, concurrency=concurrency, duration_s=duration_s, warmup_calls=1)
    calls = max(1, m.calls + concurrency)  # the warm-up calls used CPU too
    m.extra["client_cpu_ms"] = (time.process_time() - cpu0) * 1000 / calls
    m.extra["server_cpu_ms"] = (served.cpu_seconds() - server0) * 1000 / calls
    if stats:
        m.extra["images_per_request"] = calls / max(1, stats().requests - requests0)
    return m


def _cpu(m: Measurement) -> str:
    # Calls over 400 ms are the server's dynamic-batcher pauses (scenario 3), not the client.
    slow = sum(1 for x in m.latencies_s if x > 0.4)
    text = (
        f"CPU/img: client {m.extra['client_cpu_ms']:.2f} ms, "
        f"server {m.extra['server_cpu_ms']:.2f} ms; calls over 400 ms: {slow}"
    )
    if "images_per_request" in m.extra:
        text += f"; {m.extra['images_per_request']:.2f} img/request"
    return text


def _coalescing(
    ctx: Context,
    served: ServedRepository,
    clients: dict[str, VisionClient],
    pixels: Sequence[Any],
    server: str,
) -> None:
    """``VisionClient`` with coalescing on vs off: N threads calling ``embed(pixels)``."""
    label = served.repo.encoder.spec.label
    for concurrency in COALESCE_CONCURRENCY:
        results = alternate(
            {
                side: partial(
                    _measure, client.embed, pixels, concurrency, ctx.measure_s, served, client.stats
                )
                for side, client in clients.items()
            },
            ctx.rounds,
        )
        on, off = results["on"], results["off"]
        settings = (
            f"concurrency {concurrency}; the {len(pixels)} sample photos pre-made as "
            f"224x224x3 uint8, one image per call; {server}"
        )
        if concurrency == 1:
            ctx.emit(
                lone_caller_p50_row(
                    NUMBER,
                    "embed(uint8 pixels), 1 caller thread: p50 latency, coalescing on vs off",
                    on,
                    off,
                    on_detail=_cpu(on),
                    off_detail=_cpu(off),
                    model=label,
                    settings=settings,
                )
            )
            continue
        ctx.emit(
            Row(
                scenario=NUMBER,
                case=f"embed(uint8 pixels), {concurrency} caller threads: coalescing on vs off",
                ours=side_from("VisionClient, coalescing on", on, detail=_cpu(on)),
                baseline=side_from("VisionClient, coalescing off", off, detail=_cpu(off)),
                model=label,
                settings=settings,
            )
        )


def run(ctx: Context) -> None:
    served = ctx.served("tiny")
    model = served.repo.model
    served.use([model])
    paths = [str(p) for p in ctx.photos()]
    label = served.repo.encoder.spec.label
    server = "server: dynamic batching (0 us delay), 2 instances, 1 ORT thread each; HTTP"
    p50: dict[str, float] = {}
    with VisionClient(served.http_url, model) as ours:
        bug = PerCallVisionClient(served.http_url, model)
        spec = ours.model_info().result().preprocessing
        pixels = [load_image_pixels(Path(p).read_bytes(), spec) for p in paths]
        cases: list[tuple[str, Callable[[Any], Embed], Sequence[Any], str]] = [
            (
                "embed_image(path)",
                lambda client: client.embed_image,
                paths,
                f"{len(paths)} sample photos (JPEG q90, 0.1-0.4 MP): read + decode + resize "
                "on both sides",
            ),
            (
                "embed(uint8 pixels)",
                lambda client: client.embed,
                pixels,
                f"the same {len(paths)} photos pre-made as 224x224x3 uint8: no decode, so the "
                "runtime's own cost shows",
            ),
        ]
        for case, method, inputs, what in cases:
            for concurrency in CONCURRENCY:
                results = alternate(
                    {
                        side: partial(
                            _measure, method(client), inputs, concurrency, ctx.measure_s, served
                        )
                        for side, client in (("ours", ours), ("bug", bug))
                    },
                    ctx.rounds,
                )
                mo, mb = results["ours"], results["bug"]
                ctx.emit(
                    Row(
                        scenario=NUMBER,
                        case=f"{case}, {concurrency} caller thread(s)",
                        ours=side_from("VisionClient (coalescing on)", mo, detail=_cpu(mo)),
                        baseline=side_from("per-call bug", mb, detail=_cpu(mb)),
                        model=label,
                        settings=f"concurrency {concurrency}; {what}; {server}",
                        target=TARGET_AT_16 if concurrency == 16 else None,
                    )
                )
                p50[f"{case}-ours{concurrency}"] = mo.percentile_ms(50) or 0.0
                p50[f"{case}-bug{concurrency}"] = mb.percentile_ms(50) or 0.0
        session = ours.async_client.session
        ctx.note(
            f"Resources: ours used 1 event-loop thread and 1 aiohttp session for every call "
            f"(session still open: {session is not None and not session.closed}); the bug "
            f"spawned {bug.threads_spawned} threads, {bug.threads_spawned} event loops and "
            f"{bug.sessions_made} sessions (one TCP connection and one model-config GET each)."
        )
        with VisionClient(served.http_url, model, config=ClientConfig(coalesce=False)) as off:
            _coalescing(ctx, served, {"on": ours, "off": off}, pixels, server)
    for case, *_ in cases:
        b1, o1 = p50[f"{case}-bug1"], p50[f"{case}-ours1"]
        b16, o16 = p50[f"{case}-bug16"], p50[f"{case}-ours16"]
        ctx.note(
            f"Added latency per call of the per-call runtime, {case}: {b1 - o1:+.2f} ms at p50 "
            f"with 1 caller ({b1:.2f} vs {o1:.2f} ms), {b16 - o16:+.2f} ms with 16 callers."
        )


SCENARIO = Scenario(NUMBER, TITLE, run)
