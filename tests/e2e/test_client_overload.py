"""Overload as a client-wide signal: the overload gate (``client/_gate.py``).

- Unit tests drive :class:`OverloadGate` (and the ``Retrier`` with it) with a fake clock,
  sleep and jitter: a refusal pauses new sends and cuts the window while in-flight
  sends drain; refusals of one round cut once; successes widen it again; other errors
  are neutral; with a gate, a refused attempt waits in the gate, not in its own backoff.
- The measurement (e2e) is benchmark scenario 8's (``tritonvision.bench.
  scenario_8_overload``): the same batch against a real ``tritonserver`` whose model has a
  queue of 1 (a python-backend model that sleeps per execute), gate on vs gate off,
  alternating, side by side: accepted images/s and rejected requests per accepted image.
  Here it also holds the gate to its point: far fewer refusals, no throughput given up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from tritonvision.bench.scenario_8_overload import SLOW_QUEUE1, compare_overload, overload_images
from tritonvision.bench.scenario_8_overload import small_queue_server as _small_queue_server
from tritonvision.client import ClientConfig, ServerError, ServerOverloaded
from tritonvision.client._gate import OverloadGate
from tritonvision.client._retry import Retrier, RetryPolicy

# ----------------------------------------------------------------------------- fakes


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay
        await asyncio.sleep(0)


def top(low: float, high: float) -> float:
    """Jitter at the top of its range, so delays show their ceilings."""
    return high


def overloaded() -> ServerOverloaded:
    return ServerOverloaded("queue full", status=503, server_message="queue full")


def make_gate(time_: FakeTime, max_window: int = 8) -> OverloadGate:
    return OverloadGate(
        max_window=max_window,
        backoff_base_s=0.1,
        backoff_max_s=1.0,
        clock=time_.clock,
        sleep=time_.sleep,
        jitter=top,
    )


class Send:
    """One send held open inside the gate until the test ends it."""

    def __init__(self, gate: OverloadGate) -> None:
        self.admitted = asyncio.Event()
        self._outcome: asyncio.Future[BaseException | None] = (
            asyncio.get_running_loop().create_future()
        )
        self.task = asyncio.ensure_future(self._run(gate))

    async def _run(self, gate: OverloadGate) -> None:
        async with gate.admit():
            self.admitted.set()
            error = await self._outcome
            if error is not None:
                raise error

    async def end(self, error: BaseException | None = None) -> None:
        self._outcome.set_result(error)
        await asyncio.gather(self.task, return_exceptions=True)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# ------------------------------------------------------------------------ unit tests


async def test_a_refusal_pauses_new_sends_and_cuts_the_window_while_in_flight_drain() -> None:
    t = FakeTime()
    gate = make_gate(t)
    sends = [Send(gate) for _ in range(4)]
    await settle()
    assert all(s.admitted.is_set() for s in sends)
    assert gate.active == 4

    await sends[0].end(overloaded())
    # 0.7 of what was in flight (4 -> 2.8 -> 2 at once), not of the idle maximum (8).
    assert gate.window == 2
    # ceiling 0.1 s: 0.05 + jitter(0, 0.05) at the top of its range.
    assert gate.paused_until == pytest.approx(0.1)
    # The other sends of the same round are refused too: one cut, one pause.
    await sends[1].end(overloaded())
    assert (gate.window, gate.pauses, gate.refusals) == (2, 1, 2)
    assert gate.paused_until == pytest.approx(0.1)

    late = Send(gate)
    await settle()
    # It waited out the pause, then found the window (2) full of in-flight sends.
    assert t.sleeps == [pytest.approx(0.1)]
    assert not late.admitted.is_set()
    await sends[2].end()  # in-flight work drains: room for one
    await settle()
    assert late.admitted.is_set()
    # Sent before the cut: its success does not widen the cut window.
    assert gate.window == 2
    await sends[3].end()
    await late.end()
    assert gate.active == 0


async def test_refusals_in_a_row_double_the_pause_up_to_the_cap_and_a_success_resets_it() -> None:
    t = FakeTime()
    gate = make_gate(t)
    for _ in range(6):
        send = Send(gate)
        await send.end(overloaded())
    await Send(gate).end()  # admitted after the last pause; succeeds
    assert t.sleeps == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert gate.pauses == 6
    await Send(gate).end(overloaded())
    await Send(gate).end()
    assert t.sleeps[-1] == pytest.approx(0.1)  # the streak starts over


async def test_successes_widen_the_window_back_to_max_in_flight_never_past_it() -> None:
    t = FakeTime()
    gate = make_gate(t, max_window=8)
    await Send(gate).end(overloaded())
    assert gate.window == 1
    windows = []
    for _ in range(60):
        await Send(gate).end()
        windows.append(gate.window)
    assert windows == sorted(windows)
    assert windows[0] == 2  # 1 + 1/1
    assert windows[-1] == 8
    assert max(windows) == 8


async def test_errors_other_than_overload_leave_the_gate_as_it_was() -> None:
    t = FakeTime()
    gate = make_gate(t)
    for error in (ServerError("bad input", status=400), ValueError("client bug")):
        await Send(gate).end(error)
    assert (gate.window, gate.pauses, gate.paused_until, gate.active) == (8, 0, 0.0, 0)


async def test_a_cancelled_waiter_takes_no_place_in_the_gate() -> None:
    t = FakeTime()
    gate = make_gate(t, max_window=2)
    await Send(gate).end(overloaded())  # window 1
    holder = Send(gate)
    await settle()
    waiter = Send(gate)
    await settle()
    assert not waiter.admitted.is_set()
    waiter.task.cancel()
    await asyncio.gather(waiter.task, return_exceptions=True)
    await holder.end()
    assert gate.active == 0
    after = Send(gate)
    await settle()
    assert after.admitted.is_set()
    await after.end()


async def test_with_a_gate_an_overloaded_attempt_waits_in_the_gate_not_in_its_own_backoff() -> None:
    t = FakeTime()
    gate = make_gate(t)
    retried: list[int] = []
    retrier = Retrier(
        RetryPolicy(max_retries=5, retry_budget_s=60.0, backoff_base_s=0.5, backoff_max_s=4.0),
        on_retry=lambda: retried.append(1),
        clock=t.clock,
        sleep=t.sleep,
        jitter=top,
    )
    answers: list[BaseException | str] = [overloaded(), overloaded(), "row"]

    async def op() -> str:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    assert await retrier.call(op, gate=gate) == "row"
    assert len(retried) == 2
    # The gate's pauses (0.1, then 0.2), not the retrier's own ceilings (0.5, 1.0).
    assert t.sleeps == pytest.approx([0.1, 0.2])

    # Without a gate the same failures back off per request, as before.
    t2 = FakeTime()
    alone = Retrier(
        RetryPolicy(max_retries=5, retry_budget_s=60.0, backoff_base_s=0.5, backoff_max_s=4.0),
        clock=t2.clock,
        sleep=t2.sleep,
        jitter=top,
    )
    answers[:] = [overloaded(), overloaded(), "row"]
    assert await alone.call(op) == "row"
    assert t2.sleeps == pytest.approx([0.5, 1.0])


def test_the_gate_is_a_client_config_switch() -> None:
    assert ClientConfig().overload_gate is True
    assert ClientConfig.from_env({"TRITONVISION_OVERLOAD_GATE": "0"}).overload_gate is False


# ----------------------------------------------------------------- the measurement


@pytest.fixture(scope="module")
def small_queue_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """ONE extra tritonserver: a model that sleeps 30 ms per execute, batch 1, queue of 1."""
    with _small_queue_server(tmp_path_factory.mktemp("overload")) as server:
        yield server


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_overload_gate_against_per_request_backoff_on_a_queue_of_one(
    small_queue_server: Any,
) -> None:
    sources = overload_images(50)
    # Rounds alternate between the modes, so a change in the machine's load (CI shares
    # its cores) falls on both alike.
    off, on = compare_overload(small_queue_server.http_url, SLOW_QUEUE1, sources, rounds=3)
    print("\noverload, queue of 1, 30 ms per execute, 16 in flight, 3 alternating rounds:")
    print("  " + off.describe())
    print("  " + on.describe())
    assert off.accepted == on.accepted == 3 * len(sources)
    assert off.requests > off.accepted, "the server never refused: the test measures nothing"
    # The gate's point: far fewer refused requests for the same accepted images...
    assert on.rejected_per_accepted < off.rejected_per_accepted / 2, (on, off)
    # ...without giving up throughput (loose: the figures move with the machine's load).
    assert on.images_per_s > 0.7 * off.images_per_s, (on, off)
