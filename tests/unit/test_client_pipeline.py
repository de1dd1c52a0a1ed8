"""The client's batch pipeline and retry schedule, alone: no Triton, no network, no waiting.

Fakes enter only through the public seams: ``BatchPipeline``'s ``prepare`` / ``infer``
callables, and ``Retrier``'s ``clock`` / ``sleep`` / ``jitter``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterator, Sequence

import numpy as np
import numpy.typing as npt
import pytest

from tritonvision.client._pipeline import BatchPipeline, pack_size
from tritonvision.client._retry import Retrier, RetryPolicy
from tritonvision.client._stats import StatsRecorder
from tritonvision.errors import (
    DecodeError,
    ServerError,
    ServerOverloaded,
    ServerUnavailable,
)

pytestmark = pytest.mark.timeout(30)

# ------------------------------------------------------------------------------- retries


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay


def _policy(**changes: float) -> RetryPolicy:
    fields = {"max_retries": 3, "retry_budget_s": 30.0, "backoff_base_s": 0.1, "backoff_max_s": 0.3}
    fields.update(changes)
    return RetryPolicy(
        max_retries=int(fields["max_retries"]),
        retry_budget_s=fields["retry_budget_s"],
        backoff_base_s=fields["backoff_base_s"],
        backoff_max_s=fields["backoff_max_s"],
    )


def _failing(
    errors: list[Exception], result: str = "ok"
) -> tuple[list[int], Callable[[], Awaitable[str]]]:
    calls: list[int] = []

    async def op() -> str:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return result

    return calls, op


async def test_transient_failures_are_retried_with_capped_exponential_ceilings() -> None:
    time = FakeTime()
    ceilings: list[float] = []

    def jitter(low: float, high: float) -> float:
        assert low == 0.0
        ceilings.append(high)
        return high  # the top of the range, so the sleeps show the ceilings

    retries: list[int] = []
    retrier = Retrier(
        _policy(),
        on_retry=lambda: retries.append(1),
        clock=time.clock,
        sleep=time.sleep,
        jitter=jitter,
    )
    errors: list[Exception] = [
        ServerUnavailable("refused"),
        ServerOverloaded("queue full", status=503),
        ServerUnavailable("refused"),
    ]
    calls, op = _failing(errors)
    assert await retrier.call(op) == "ok"
    assert len(calls) == 4 and len(retries) == 3
    assert ceilings == pytest.approx([0.1, 0.2, 0.3])  # base * 2**n, capped at backoff_max_s
    assert time.sleeps == pytest.approx([0.1, 0.2, 0.3])


async def test_full_jitter_draws_each_delay_between_zero_and_its_ceiling() -> None:
    time = FakeTime()
    rng = random.Random(7)
    retrier = Retrier(
        _policy(max_retries=50, backoff_max_s=10.0),
        clock=time.clock,
        sleep=time.sleep,
        jitter=rng.uniform,
    )
    _, op = _failing([ServerUnavailable("x") for _ in range(8)])
    assert await retrier.call(op) == "ok"
    ceilings = [min(10.0, 0.1 * 2**i) for i in range(8)]
    assert all(0.0 <= d <= c for d, c in zip(time.sleeps, ceilings, strict=True))
    assert len(set(time.sleeps)) == 8  # jittered, not a fixed schedule


async def test_retries_stop_after_max_retries_with_the_last_error() -> None:
    time = FakeTime()
    retrier = Retrier(_policy(max_retries=2), clock=time.clock, sleep=time.sleep)
    last = ServerUnavailable("third")
    calls, op = _failing([ServerUnavailable("first"), ServerUnavailable("second"), last])
    with pytest.raises(ServerUnavailable) as info:
        await retrier.call(op)
    assert info.value is last
    assert len(calls) == 3 and len(time.sleeps) == 2


async def test_a_retry_that_would_end_past_the_budget_is_not_attempted() -> None:
    time = FakeTime()
    retrier = Retrier(
        _policy(max_retries=100, retry_budget_s=0.25),
        clock=time.clock,
        sleep=time.sleep,
        jitter=lambda low, high: high,
    )
    calls, op = _failing([ServerOverloaded("busy", status=503) for _ in range(100)])
    with pytest.raises(ServerOverloaded):
        await retrier.call(op)
    # 0.1 fits the 0.25 s budget; 0.1 + 0.2 would not.
    assert time.sleeps == pytest.approx([0.1])
    assert len(calls) == 2


@pytest.mark.parametrize(
    "error",
    [ServerError("bad shape", status=400), DecodeError("not an image"), TimeoutError("slow")],
)
async def test_other_errors_are_never_retried(error: Exception) -> None:
    time = FakeTime()
    retrier = Retrier(_policy(), clock=time.clock, sleep=time.sleep)
    calls, op = _failing([error])
    with pytest.raises(type(error)):
        await retrier.call(op)
    assert len(calls) == 1 and time.sleeps == []


# ------------------------------------------------------------------------------ pipeline

Pixels = npt.NDArray[np.uint8]


class FakeModel:
    """``infer``: one row per image, the image's first pixel value, after ``delay_s``.

    Refuses (400) any pack holding a 255 image, like Triton refusing a whole request.
    """

    def __init__(self, *, delay_s: float = 0.0, overloaded: bool = False) -> None:
        self.delay_s = delay_s
        self.overloaded = overloaded
        self.packs: list[int] = []
        self.called = asyncio.Event()

    async def infer(self, images: Sequence[Pixels]) -> npt.NDArray[np.float32]:
        self.packs.append(len(images))
        self.called.set()
        await asyncio.sleep(self.delay_s)
        if self.overloaded:
            raise ServerOverloaded("queue full", status=503)
        if any(int(img[0]) == 255 for img in images):
            raise ServerError("a white image in this batch", status=400)
        return np.array([[float(img[0]), 1.0] for img in images], dtype=np.float32)


async def prepare(source: object) -> Pixels:
    await asyncio.sleep(0)
    if not isinstance(source, int):
        raise DecodeError(f"{source!r}: not an image")
    return np.full(4, source, dtype=np.uint8)


def _pipeline(
    model: FakeModel,
    *,
    slots: int = 2,
    pack: int = 1,
    lookahead: int = 8,
    dim: int | None = 2,
    stats: StatsRecorder | None = None,
) -> BatchPipeline:
    return BatchPipeline(
        prepare=prepare,
        infer=model.infer,
        slots=asyncio.Semaphore(slots),
        pack_size=pack,
        lookahead=lookahead,
        embedding_dim=dim,
        stats=stats or StatsRecorder(),
    )


async def test_every_item_gets_a_row_or_an_error_in_input_order() -> None:
    stats = StatsRecorder()
    sources: list[object] = [1, "broken", 3, 4, b"junk", 6]
    result = await _pipeline(FakeModel(), stats=stats).run(sources)
    assert result.embeddings.shape == (6, 2)
    assert sorted(result.errors) == [1, 4]
    assert isinstance(result.errors[1], DecodeError) and result.errors[1].source == "broken"
    np.testing.assert_array_equal(result.embeddings[[0, 2, 3, 5], 0], [1, 3, 4, 6])
    assert np.isnan(result.embeddings[[1, 4]]).all()
    snapshot = stats.snapshot()
    assert snapshot.items == 4 and snapshot.failures == {"DecodeError": 2}


async def test_a_refused_pack_is_resent_item_by_item_so_only_the_bad_item_fails() -> None:
    model = FakeModel(delay_s=0.05)
    # One slot and a slow model: while the first request is out, the rest get packed.
    result = await _pipeline(model, slots=1, pack=4).run([1, 255, 3, 4, 5])
    assert max(model.packs) > 1
    assert list(result.errors) == [1]
    error = result.errors[1]
    assert isinstance(error, ServerError) and error.status == 400 and error.source == 255
    np.testing.assert_array_equal(result.embeddings[[0, 2, 3, 4], 0], [1, 3, 4, 5])


async def test_an_overloaded_pack_fails_as_a_whole_without_naming_one_input() -> None:
    model = FakeModel(delay_s=0.05, overloaded=True)
    result = await _pipeline(model, slots=1, pack=4).run([1, 2, 3, 4, 5])
    assert sorted(result.errors) == [0, 1, 2, 3, 4]
    assert sum(model.packs) == 5  # never split: a busy server is not a bad item
    groups: dict[int, list[int]] = {}
    for index, error in result.errors.items():
        groups.setdefault(id(error), []).append(index)
    assert any(len(indices) > 1 for indices in groups.values())
    for indices in groups.values():
        sources = {getattr(result.errors[i], "source", None) for i in indices}
        # One exception object for a whole pack names no single input; alone, it does.
        assert sources == ({None} if len(indices) > 1 else {indices[0] + 1})


async def test_packs_never_exceed_the_pack_size_and_cover_every_item() -> None:
    model = FakeModel(delay_s=0.01)
    result = await _pipeline(model, slots=1, pack=3).run(range(20))
    assert result.ok
    assert max(model.packs) <= 3 and sum(model.packs) == 20
    np.testing.assert_array_equal(result.embeddings[:, 0], np.arange(20))


async def test_look_ahead_bounds_the_items_in_progress() -> None:
    model = FakeModel(delay_s=0.005)
    stats = StatsRecorder()
    pipeline = _pipeline(model, slots=2, lookahead=3, stats=stats)
    gaps: list[int] = []

    def sources() -> Iterator[int]:
        for i in range(30):
            done = stats.snapshot().items + stats.snapshot().failed
            gaps.append(i - done)
            yield i

    result = await pipeline.run(sources())
    assert result.ok and len(result) == 30
    assert max(gaps) <= 3


async def test_an_empty_batch_without_a_declared_dim_is_empty() -> None:
    result = await _pipeline(FakeModel(), dim=None).run([])
    assert result.embeddings.shape == (0, 0) and result.ok


async def test_cancelling_a_batch_cancels_its_work_and_returns_every_slot() -> None:
    slots = asyncio.Semaphore(2)
    model = FakeModel(delay_s=60)
    pipeline = BatchPipeline(
        prepare=prepare,
        infer=model.infer,
        slots=slots,
        pack_size=1,
        lookahead=4,
        embedding_dim=2,
        stats=StatsRecorder(),
    )
    task = asyncio.ensure_future(pipeline.run(range(10)))
    while len(model.packs) < 2:
        await model.called.wait()
        model.called.clear()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)
    assert not slots.locked()
    async with asyncio.timeout(1):
        await slots.acquire()
        await slots.acquire()


def test_pack_size_respects_model_batch_and_body_cap() -> None:
    common = {"item_bytes": 100, "max_request_bytes": 10_000}
    assert pack_size(pack_batch_size=16, max_batch_size=4, **common) == 4
    assert pack_size(pack_batch_size=16, max_batch_size=0, **common) == 1  # unbatched model
    assert (
        pack_size(pack_batch_size=64, max_batch_size=64, item_bytes=1000, max_request_bytes=5000)
        == 5
    )
    assert (
        pack_size(pack_batch_size=8, max_batch_size=8, item_bytes=10**9, max_request_bytes=1) == 1
    )
