"""8. Overload: the client-wide overload gate vs per-request backoff, on a queue of one.

A local ``tritonserver`` serves a python-backend model that sleeps per execute, batch 1,
one instance, behind ``max_queue_size: 1`` (:mod:`._slow_model`): with more requests in
flight than it holds, Triton answers 503 "queue full". The same ``batch_embed_images`` of
small distinct images runs with ``ClientConfig(overload_gate=True)`` (ours: a refusal
pauses every new send and narrows a shared window while in-flight work drains) and with
``overload_gate=False`` (the baseline, the client's behaviour before the gate: each
refused request backs off on its own), alternating round by round. Retries are unbounded
in count (a 120 s budget), so every image is accepted in the end and the two sides differ
only in how they back off.

Rows: accepted images/s, and accepted images per request sent (the other side of
rejected requests per accepted image, which each side's detail gives): higher is better
for both, as for every row of the report.

:func:`measure_overload`, :func:`compare_overload`, :func:`overload_images` and
:func:`small_queue_server` are usable outside the runner (``tests/e2e/test_client_overload.py``
runs the same comparison).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._context import Context, Scenario
from ._report import Row, Side, fmt_rate
from ._slow_model import write_slow_model

__all__ = [
    "SCENARIO",
    "SLOW_QUEUE1",
    "OverloadFigures",
    "compare_overload",
    "measure_overload",
    "overload_images",
    "small_queue_server",
]

NUMBER = 8
TITLE = "Overload: client-wide gate vs per-request backoff"
SLOW_QUEUE1 = "slow_queue1"
DELAY_S = 0.03  # per execute, one image each: at most ~33 images/s
QUEUE = 1
MAX_IN_FLIGHT = 16
BACKOFF_BASE_S = 0.05
BACKOFF_MAX_S = 1.0
RETRY_BUDGET_S = 120.0
IMAGE_SIZE = (48, 40)


@dataclass(frozen=True)
class OverloadFigures:
    """One or more runs of one side: images sent, accepted, seconds, requests made."""

    gate: bool
    images: int
    accepted: int
    seconds: float
    requests: int

    @property
    def images_per_s(self) -> float:
        return self.accepted / self.seconds

    @property
    def rejected(self) -> int:
        return self.requests - self.accepted

    @property
    def rejected_per_accepted(self) -> float:
        return self.rejected / max(1, self.accepted)

    @property
    def accepted_per_request(self) -> float:
        return self.accepted / max(1, self.requests)

    @classmethod
    def total(cls, runs: Sequence[OverloadFigures]) -> OverloadFigures:
        """Several runs of one side as one."""
        return cls(
            gate=runs[0].gate,
            images=sum(r.images for r in runs),
            accepted=sum(r.accepted for r in runs),
            seconds=sum(r.seconds for r in runs),
            requests=sum(r.requests for r in runs),
        )

    def describe(self) -> str:
        return (
            f"gate {'on ' if self.gate else 'off'}: {self.accepted}/{self.images} accepted in "
            f"{self.seconds:.2f} s = {self.images_per_s:.1f} images/s; "
            f"{self.rejected} rejected = "
            f"{self.rejected_per_accepted:.2f} rejected requests per accepted image"
        )


def overload_images(count: int) -> list[bytes]:
    """``count`` distinct small PNGs (48 x 40): decoding them costs the client little."""
    import numpy as np
    from PIL import Image

    width, height = IMAGE_SIZE
    images = []
    for seed in range(count):
        rng = np.random.default_rng(seed)
        arr = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        arr[:, :, seed % 3] = (seed * 37) % 256
        buf = io.BytesIO()
        Image.fromarray(arr, "RGB").save(buf, "PNG")
        images.append(buf.getvalue())
    return images


def measure_overload(
    url: str,
    model: str,
    sources: list[bytes],
    *,
    gate: bool,
    max_in_flight: int = MAX_IN_FLIGHT,
    backoff_base_s: float = BACKOFF_BASE_S,
    backoff_max_s: float = BACKOFF_MAX_S,
) -> OverloadFigures:
    """One ``batch_embed_images`` of ``sources`` (single-image requests), one new client.

    Retries are unbounded in count (a 120 s budget), so every image is accepted in the
    end and the two modes differ only in how they back off.
    """
    from tritonvision.client import ClientConfig, VisionClient

    config = ClientConfig(
        overload_gate=gate,
        max_in_flight=max_in_flight,
        max_retries=1_000_000,
        retry_budget_s=RETRY_BUDGET_S,
        backoff_base_s=backoff_base_s,
        backoff_max_s=backoff_max_s,
        deduplicate_inputs=False,
    )
    with VisionClient(url, model, config=config) as client:
        client.model_info().result(60)
        started = time.perf_counter()
        batch = client.batch_embed_images(sources).result(RETRY_BUDGET_S + 60)
        seconds = time.perf_counter() - started
        stats = client.stats()
    return OverloadFigures(
        gate=gate,
        images=len(sources),
        accepted=len(sources) - len(batch.errors),
        seconds=seconds,
        requests=stats.requests,
    )


def compare_overload(
    url: str, model: str, sources: list[bytes], *, rounds: int
) -> tuple[OverloadFigures, OverloadFigures]:
    """``(gate off, gate on)``: ``rounds`` runs of each, alternating (off on | on off ...),
    after one unrecorded warm-up run, so drift in the machine's load falls on both."""
    measure_overload(url, model, sources[:8], gate=True)  # warm-up: the stub, the client
    runs: dict[bool, list[OverloadFigures]] = {False: [], True: []}
    for r in range(rounds):
        for gate in (False, True) if r % 2 == 0 else (True, False):
            runs[gate].append(measure_overload(url, model, sources, gate=gate))
    return OverloadFigures.total(runs[False]), OverloadFigures.total(runs[True])


@contextlib.contextmanager
def small_queue_server(workdir: Path, model: str = SLOW_QUEUE1) -> Iterator[Any]:
    """A started ``LocalTriton`` serving only the slow model: 30 ms per execute, batch 1,
    one instance, a queue of 1. Stopped, and its repository removed, on exit."""
    from tritonvision.serve import LocalTriton, ServerPorts, free_port

    repo = workdir / "overload-repo"
    write_slow_model(repo, model, delay_s=DELAY_S, queue=QUEUE)
    ports = ServerPorts(http=free_port(), grpc=free_port(), metrics=free_port())
    server = LocalTriton(repo, ports=ports, workdir=workdir / "overload-work")
    server.start(ready_timeout_s=120)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(repo, ignore_errors=True)


def _side(label: str, figures: OverloadFigures, rounds: int, *, rate: bool) -> Side:
    per_run = f"{figures.seconds / rounds:.2f} s per run"
    rejected = (
        f"{figures.rejected_per_accepted:.2f} rejected requests per accepted image "
        f"({figures.rejected} rejected, {figures.accepted} accepted)"
    )
    if rate:
        return Side(label, figures.images_per_s, unit="img/s", detail=f"{per_run}; {rejected}")
    return Side(label, figures.accepted_per_request, unit="accepted/request", detail=rejected)


def run(ctx: Context) -> None:
    count = 32 if ctx.quick else 120
    rounds = 2 if ctx.quick else 4
    sources = overload_images(count)
    ctx.log(f"starting tritonserver with {SLOW_QUEUE1} (queue of {QUEUE})")
    with small_queue_server(ctx.workdir / "overload") as server:
        off, on = compare_overload(server.http_url, SLOW_QUEUE1, sources, rounds=rounds)
        # For scale: one request at a time never overflows the queue (not a row: it is
        # what neither side can know in general, the server's capacity).
        serial = measure_overload(server.http_url, SLOW_QUEUE1, sources, gate=True, max_in_flight=1)
    for figures in (off, on):
        if figures.accepted != figures.images:
            raise RuntimeError(f"images were not accepted within the budget: {figures}")
    if off.rejected == 0:
        raise RuntimeError(f"the server never refused: nothing was measured ({off})")
    model = (
        f"{SLOW_QUEUE1}: python-backend stub sleeping {DELAY_S * 1000:.0f} ms per execute "
        f"(at most {1 / DELAY_S:.0f} images/s), batch 1, one instance, max_queue_size {QUEUE}"
    )
    settings = (
        f"{count} distinct {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} PNGs per run, one "
        f"batch_embed_images of single-image requests; client: max_in_flight {MAX_IN_FLIGHT}, "
        f"retries unbounded within {RETRY_BUDGET_S:.0f} s, backoff {BACKOFF_BASE_S * 1000:.0f} "
        f"ms doubling to {BACKOFF_MAX_S:.0f} s, jittered; {rounds} alternating rounds per side"
    )
    ctx.emit(
        Row(
            scenario=NUMBER,
            case="accepted images/s under 503 queue-full: overload gate on vs off",
            ours=_side("gate on", on, rounds, rate=True),
            baseline=_side("gate off (per-request backoff)", off, rounds, rate=True),
            model=model,
            settings=settings,
        )
    )
    ctx.emit(
        Row(
            scenario=NUMBER,
            case=(
                "accepted images per request sent (1 / (1 + rejected requests per accepted "
                "image)): overload gate on vs off"
            ),
            ours=_side("gate on", on, rounds, rate=False),
            baseline=_side("gate off (per-request backoff)", off, rounds, rate=False),
            model=model,
            settings=settings,
        )
    )
    ctx.note(
        f"Rejected requests per accepted image: gate on {on.rejected_per_accepted:.2f}, gate "
        f"off {off.rejected_per_accepted:.2f}; accepted images/s: gate on "
        f"{fmt_rate(on.images_per_s)}, gate off {fmt_rate(off.images_per_s)} (the model "
        f"serves at most {1 / DELAY_S:.0f}; one request at a time, max_in_flight 1, which "
        f"never overflows its queue, got {fmt_rate(serial.images_per_s)} with "
        f"{serial.rejected} rejected). Every refused request is a round trip the "
        "server parses and answers for nothing; the gate holds new sends while the server "
        "says it is full and lets in-flight work drain."
    )


SCENARIO = Scenario(NUMBER, TITLE, run)
