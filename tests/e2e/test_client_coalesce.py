"""Coalescing of concurrent single calls: the :class:`Coalescer` alone, then the client end to end.

Unit tests drive the coalescer through its seams (an ``infer`` callable and the slot
semaphore) with a fake that records each request and can hold it open until told; ordering
is asserted by events, never by time. End-to-end tests run the real clients against the
session's real tritonserver, with coalescing on and off.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from _local_servers import encode, make_image

from tritonvision.client import AsyncVisionClient, ClientConfig, VisionClient
from tritonvision.client._coalesce import Coalescer, coalesced_batch_size
from tritonvision.errors import ClientClosed, ServerError, ServerUnavailable

Pixels = npt.NDArray[np.uint8]


def px(value: int) -> Pixels:
    """A 2x2 image whose every pixel is ``value``; the fake's row for it is ``[value, -value]``."""
    return np.full((2, 2, 3), value, dtype=np.uint8)


class FakeInfer:
    """An ``infer`` that records each request's images; ``hold()`` keeps the next request
    open until ``release()``. A pack holding a 255 image is refused with a 400 (as Triton
    refuses a bad tensor); ``fail_with`` makes every request fail with that error."""

    def __init__(self) -> None:
        self.requests: list[list[int]] = []
        self.tasks: list[asyncio.Task[Any] | None] = []
        self.started = asyncio.Event()
        self.finished = 0
        self.fail_with: Exception | None = None
        self._gates: list[asyncio.Event] = []

    def hold(self) -> asyncio.Event:
        gate = asyncio.Event()
        self._gates.append(gate)
        return gate

    async def __call__(self, images: Sequence[Pixels]) -> npt.NDArray[np.float32]:
        values = [int(image[0, 0, 0]) for image in images]
        self.requests.append(values)
        self.tasks.append(asyncio.current_task())
        self.started.set()
        if self._gates:
            await self._gates.pop(0).wait()
        self.finished += 1
        if self.fail_with is not None:
            raise self.fail_with
        if 255 in values:
            raise ServerError("bad input tensor", status=400, model="m")
        return np.array([[v, -v] for v in values], dtype=np.float32)

    @property
    def sizes(self) -> list[int]:
        return [len(r) for r in self.requests]


def coalescer(
    infer: FakeInfer, *, slots: int = 8, max_batch: int = 16, open_requests: int = 1
) -> Coalescer:
    return Coalescer(
        infer=infer,
        slots=asyncio.Semaphore(slots),
        max_batch=max_batch,
        open_requests=open_requests,
    )


async def settle() -> None:
    """Let every ready callback and task step run (no timers involved)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def busy_with_first_call(
    c: Coalescer, infer: FakeInfer, value: int = 1
) -> tuple[asyncio.Event, asyncio.Task[Any]]:
    """Start one call whose request stays open: calls made now queue behind it."""
    gate = infer.hold()
    first = asyncio.ensure_future(c.embed(px(value)))
    await infer.started.wait()
    return gate, first


# ------------------------------------------------------------------------- unit: idle


async def test_a_lone_call_is_sent_at_once_from_the_callers_own_task() -> None:
    infer = FakeInfer()
    c = coalescer(infer)
    before = len(asyncio.all_tasks())
    gate = infer.hold()
    call = asyncio.ensure_future(c.embed(px(7)))
    await asyncio.sleep(0)  # one step of the caller: its request is already out
    assert infer.requests == [[7]]
    assert infer.tasks == [call]  # sent by the caller itself: no dispatcher, no extra task
    assert len(asyncio.all_tasks()) == before + 1
    gate.set()
    np.testing.assert_array_equal(await call, [7, -7])
    await c.aclose()


async def test_calls_one_after_another_each_go_out_alone_and_at_once() -> None:
    infer = FakeInfer()
    c = coalescer(infer)
    rows = [await c.embed(px(v)) for v in (1, 2, 3)]
    assert infer.requests == [[1], [2], [3]]
    assert [int(r[0]) for r in rows] == [1, 2, 3]
    await c.aclose()


# ----------------------------------------------------------------------- unit: merging


async def test_calls_queued_while_a_request_is_out_go_together_with_their_own_rows() -> None:
    infer = FakeInfer()
    c = coalescer(infer, open_requests=1)
    gate, first = await busy_with_first_call(c, infer)
    queued = [asyncio.ensure_future(c.embed(px(v))) for v in range(10, 15)]
    await settle()
    assert infer.requests == [[1]]  # nothing else goes out while the one request is open
    gate.set()
    rows = await asyncio.gather(first, *queued)
    assert infer.requests == [[1], [10, 11, 12, 13, 14]]
    for value, row in zip([1, 10, 11, 12, 13, 14], rows, strict=True):
        assert row.dtype == np.float32 and row.shape == (2,)
        np.testing.assert_array_equal(row, [value, -value])
    await settle()
    assert asyncio.all_tasks() == {asyncio.current_task()}  # idle again: no task lingers
    np.testing.assert_array_equal(await c.embed(px(2)), [2, -2])
    assert infer.tasks[-1] is asyncio.current_task()  # and the next call is sent by its caller
    await c.aclose()


async def test_a_call_goes_out_at_once_while_fewer_than_open_requests_are_out() -> None:
    infer = FakeInfer()
    c = coalescer(infer, open_requests=2)
    gate1, first = await busy_with_first_call(c, infer)
    gate2 = infer.hold()
    second = asyncio.ensure_future(c.embed(px(2)))
    await settle()
    assert infer.requests == [[1], [2]]  # room for a second request: sent at once
    queued = [asyncio.ensure_future(c.embed(px(v))) for v in (3, 4, 5)]
    await settle()
    assert infer.requests == [[1], [2]]  # two out: the others wait
    gate3 = infer.hold()
    gate1.set()
    await first
    await settle()
    # A request came back: its share of the work (3 waiting + 1 out, over 2) goes out.
    assert infer.requests == [[1], [2], [3, 4]]
    gate2.set()
    await second
    await settle()
    assert infer.requests[3:] == [[5]]
    gate3.set()
    await asyncio.gather(*queued)
    await c.aclose()


async def test_with_room_for_more_requests_the_waiting_calls_are_shared_evenly() -> None:
    infer = FakeInfer()
    c = coalescer(infer, open_requests=2)
    gate, first = await busy_with_first_call(c, infer)
    held = infer.hold()
    queued = [asyncio.ensure_future(c.embed(px(v))) for v in range(10, 17)]
    await settle()
    # Eight images of work over two requests: four go beside the one out, three wait.
    assert infer.requests == [[1], [10, 11, 12, 13]]
    gate.set()
    await first
    await settle()
    assert infer.requests[2:] == [[14, 15, 16]]
    held.set()
    rows = await asyncio.gather(*queued)
    assert [int(r[0]) for r in rows] == list(range(10, 17))
    await c.aclose()


async def test_requests_never_exceed_max_batch_and_a_full_batch_does_not_wait() -> None:
    infer = FakeInfer()
    c = coalescer(infer, max_batch=3, open_requests=1)
    gate, first = await busy_with_first_call(c, infer)
    queued = [asyncio.ensure_future(c.embed(px(v))) for v in range(10, 18)]
    await settle()
    # Two full batches went out although a request is open; the last two still wait.
    assert infer.requests == [[1], [10, 11, 12], [13, 14, 15]]
    gate.set()
    rows = await asyncio.gather(*queued)
    assert infer.requests[-1] == [16, 17]
    assert max(infer.sizes) == 3 and sum(infer.sizes) == 9
    assert [int(r[0]) for r in rows] == list(range(10, 18))
    await first
    await c.aclose()


async def test_every_request_holds_one_of_the_clients_slots() -> None:
    infer = FakeInfer()
    slots = asyncio.Semaphore(2)
    c = Coalescer(infer=infer, slots=slots, max_batch=2, open_requests=1)
    gate, first = await busy_with_first_call(c, infer)
    second_gate = infer.hold()
    queued = [asyncio.ensure_future(c.embed(px(v))) for v in range(10, 16)]
    await settle()
    assert infer.requests == [[1], [10, 11]]  # full batches, but only two slots
    assert slots.locked()
    gate.set()
    second_gate.set()
    await asyncio.gather(first, *queued)
    assert sum(infer.sizes) == 7 and max(infer.sizes) == 2
    assert not slots.locked()
    await c.aclose()


async def test_calls_queue_when_the_slots_are_taken_by_other_work() -> None:
    infer = FakeInfer()
    slots = asyncio.Semaphore(1)
    c = Coalescer(infer=infer, slots=slots, max_batch=8, open_requests=4)
    await slots.acquire()  # a batch pipeline's request, say
    calls = [asyncio.ensure_future(c.embed(px(v))) for v in (1, 2, 3)]
    await settle()
    assert infer.requests == []
    slots.release()
    await asyncio.gather(*calls)
    assert infer.requests == [[1, 2, 3]]
    await c.aclose()


# ------------------------------------------------------------------------ unit: errors


async def test_a_refused_request_is_split_so_only_the_bad_callers_call_fails() -> None:
    infer = FakeInfer()
    c = coalescer(infer, open_requests=1)
    gate, first = await busy_with_first_call(c, infer)
    queued = [asyncio.ensure_future(c.embed(px(v))) for v in (10, 255, 12)]
    await settle()
    gate.set()
    outcomes = await asyncio.gather(*queued, return_exceptions=True)
    assert infer.requests == [[1], [10, 255, 12], [10], [255], [12]]
    np.testing.assert_array_equal(outcomes[0], [10, -10])
    assert isinstance(outcomes[1], ServerError) and outcomes[1].status == 400
    np.testing.assert_array_equal(outcomes[2], [12, -12])
    await first
    await c.aclose()


async def test_a_request_wide_failure_reaches_each_caller_as_its_own_error() -> None:
    infer = FakeInfer()
    c = coalescer(infer, open_requests=1)
    gate, first = await busy_with_first_call(c, infer)
    queued = [asyncio.ensure_future(c.embed(px(v))) for v in (10, 11, 12)]
    await settle()
    infer.fail_with = ServerUnavailable("cannot reach Triton")
    gate.set()
    outcomes = await asyncio.gather(*queued, return_exceptions=True)
    assert infer.requests == [[1], [10, 11, 12]]  # not about one image: not split
    assert all(isinstance(e, ServerUnavailable) for e in outcomes)
    assert len({id(e) for e in outcomes}) == 3  # one error object per caller
    assert {str(e) for e in outcomes} == {"cannot reach Triton"}
    with pytest.raises(ServerUnavailable):
        await first
    await c.aclose()


# ------------------------------------------------------------------ unit: cancellation


async def test_a_caller_cancelled_while_queued_is_left_out_and_the_others_are_served() -> None:
    infer = FakeInfer()
    c = coalescer(infer, open_requests=1)
    gate, first = await busy_with_first_call(c, infer)
    queued = {v: asyncio.ensure_future(c.embed(px(v))) for v in (10, 11, 12)}
    await settle()
    queued[11].cancel()
    gate.set()
    rows = await asyncio.gather(first, queued[10], queued[12])
    with pytest.raises(asyncio.CancelledError):
        await queued[11]
    assert infer.requests == [[1], [10, 12]]
    assert [int(r[0]) for r in rows] == [1, 10, 12]
    await c.aclose()


async def test_a_caller_cancelled_after_its_request_went_out_does_not_cancel_it() -> None:
    infer = FakeInfer()
    c = coalescer(infer, max_batch=3, open_requests=1)
    gate, first = await busy_with_first_call(c, infer)
    merged_gate = infer.hold()
    queued = [asyncio.ensure_future(c.embed(px(v))) for v in (10, 11, 12)]
    await settle()
    assert infer.requests == [[1], [10, 11, 12]]  # a full batch: out at once
    queued[0].cancel()
    await settle()
    merged_gate.set()
    gate.set()
    rows = await asyncio.gather(queued[1], queued[2], first)
    with pytest.raises(asyncio.CancelledError):
        await queued[0]
    assert infer.finished == 2  # the merged request ran to its end for the other two
    assert [int(r[0]) for r in rows] == [11, 12, 1]
    await c.aclose()


# ---------------------------------------------------------------------- unit: closing


async def test_close_serves_every_waiting_caller_then_refuses_new_calls() -> None:
    infer = FakeInfer()
    c = coalescer(infer, open_requests=1)
    gate, first = await busy_with_first_call(c, infer)
    queued = [asyncio.ensure_future(c.embed(px(v))) for v in (10, 11)]
    await settle()
    closing = asyncio.ensure_future(c.aclose())
    await settle()
    assert not closing.done()  # callers are still waiting: close drains them first
    with pytest.raises(ClientClosed):
        await c.embed(px(3))
    gate.set()
    await closing
    assert all(call.done() for call in [first, *queued])
    assert [int(r[0]) for r in await asyncio.gather(first, *queued)] == [1, 10, 11]
    assert infer.requests == [[1], [10, 11]]
    await settle()
    assert asyncio.all_tasks() == {asyncio.current_task()}  # no dispatcher left behind


async def test_close_does_not_wait_for_a_request_whose_callers_all_left() -> None:
    infer = FakeInfer()
    c = coalescer(infer, max_batch=2, open_requests=1)
    gate, first = await busy_with_first_call(c, infer)
    infer.hold()  # never released: the merged request hangs
    queued = [asyncio.ensure_future(c.embed(px(v))) for v in (10, 11)]
    await settle()
    assert infer.requests == [[1], [10, 11]]
    for call in queued:
        call.cancel()
    gate.set()
    await first
    await asyncio.wait_for(c.aclose(), timeout=10)  # a hang would fail here, not pass
    assert infer.finished == 1
    assert asyncio.all_tasks() == {asyncio.current_task()}


# --------------------------------------------------------------- unit: when to coalesce


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, 16),
        ({"max_batch": 4}, 4),
        ({"max_batch": 64}, 16),  # never past the model's batch size
        ({"max_request_bytes": 3 * 3072 + 10}, 3),  # nor past the body cap
        ({"model_max_batch_size": 0}, 1),  # no batch dimension: never coalesced
        ({"enabled": False}, 1),
    ],
)
def test_coalesced_batch_size_honours_the_model_the_byte_cap_and_the_switch(
    changes: dict[str, Any], expected: int
) -> None:
    kwargs: dict[str, Any] = {
        "enabled": True,
        "max_batch": None,
        "model_max_batch_size": 16,
        "item_bytes": 3072,
        "max_request_bytes": 32 * 1024 * 1024,
    }
    kwargs.update(changes)
    assert coalesced_batch_size(**kwargs) == expected


# --------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("coalesce")
    paths = []
    for i in range(24):
        path = folder / f"img{i}.png"
        path.write_bytes(encode(make_image(i, (40 + i, 36))))
        paths.append(path)
    return paths


@pytest.fixture(params=["http", "grpc"])
def url(request: pytest.FixtureRequest, triton: Any) -> str:
    return str(triton.http_url if request.param == "http" else triton.grpc_url)


async def embed_concurrently(
    url: str, model: str, paths: list[Path], config: ClientConfig
) -> tuple[npt.NDArray[np.float32], int]:
    async with AsyncVisionClient(url, model, config=config) as client:
        await client.model_info()
        rows = await asyncio.gather(*(client.embed_image(p) for p in paths))
        return np.stack(rows), client.stats().requests


@pytest.mark.e2e
async def test_concurrent_calls_are_coalesced_with_rows_identical_to_coalescing_off(
    url: str, triton: Any, image_files: list[Path]
) -> None:
    on, requests_on = await embed_concurrently(url, triton.model, image_files, ClientConfig())
    off, requests_off = await embed_concurrently(
        url, triton.model, image_files, ClientConfig(coalesce=False)
    )
    assert on.shape == (len(image_files), triton.embedding_dim)
    np.testing.assert_array_equal(on, off)  # bit for bit
    assert requests_off == len(image_files)
    assert requests_on < len(image_files)


@pytest.mark.e2e
async def test_coalesced_requests_stay_under_the_byte_cap(
    triton: Any, image_files: list[Path]
) -> None:
    item_bytes = 32 * 32 * 3  # the tiny model's input
    config = ClientConfig(max_request_bytes=2 * item_bytes + 64)
    _, requests = await embed_concurrently(triton.http_url, triton.model, image_files, config)
    assert len(image_files) // 2 <= requests < len(image_files)


@pytest.mark.e2e
def test_sync_client_calls_from_many_threads_are_coalesced(
    triton: Any, image_files: list[Path]
) -> None:
    with VisionClient(triton.grpc_url, triton.model) as client:
        alone = [client.embed_image(p).result() for p in image_files[:4]]
        before = client.stats().requests
        futures = [client.embed_image(p) for p in image_files]
        rows = [f.result() for f in futures]
        requests = client.stats().requests - before
    assert requests < len(image_files)
    np.testing.assert_array_equal(np.stack(rows[:4]), np.stack(alone))
