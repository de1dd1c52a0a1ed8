"""The shared runtime's lifecycle, without a server: one thread, one loop, clear failures."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import threading
import time

import pytest

from tritonvision.client._runtime import RuntimeFuture, SharedRuntime
from tritonvision.errors import ClientClosed, RuntimeUnavailable


async def _echo(value: int) -> int:
    await asyncio.sleep(0)
    return value


def _runtime_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("tritonvision-loop")]


def test_thread_starts_on_first_use_only() -> None:
    before = len(_runtime_threads())
    runtime = SharedRuntime()
    try:
        assert runtime.thread is None and runtime.loop is None
        assert len(_runtime_threads()) == before
        assert runtime.submit(_echo(1)).result(timeout=5) == 1
        assert runtime.is_running
        assert len(_runtime_threads()) == before + 1
    finally:
        runtime.stop()


def test_many_threads_share_one_loop_and_one_thread() -> None:
    runtime = SharedRuntime()
    seen_loops: set[int] = set()
    seen_threads: set[int] = set()

    async def where() -> None:
        seen_loops.add(id(asyncio.get_running_loop()))
        seen_threads.add(threading.get_ident())

    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(lambda: runtime.submit(where()).result(5)) for _ in range(200)]
            for f in futures:
                f.result()
        assert len(seen_loops) == 1 and len(seen_threads) == 1
        assert seen_threads == {runtime.thread.ident}  # type: ignore[union-attr]
    finally:
        runtime.stop()


def test_submit_returns_the_given_future_subclass() -> None:
    class MyFuture(RuntimeFuture[int]):
        pass

    with SharedRuntime() as runtime:
        fut = runtime.submit(_echo(7), future=MyFuture())
        assert isinstance(fut, MyFuture) and isinstance(fut, concurrent.futures.Future)
        assert fut.result(5) == 7


def test_exceptions_propagate_through_the_future() -> None:
    async def boom() -> None:
        raise KeyError("x")

    with SharedRuntime() as runtime, pytest.raises(KeyError):
        runtime.submit(boom()).result(5)


def test_stop_is_idempotent_and_joins_the_thread() -> None:
    runtime = SharedRuntime()
    runtime.submit(_echo(1)).result(5)
    thread = runtime.thread
    runtime.stop()
    runtime.stop()
    assert thread is not None and not thread.is_alive()
    assert runtime.loop is not None and runtime.loop.is_closed()


def test_stop_before_first_use_starts_nothing() -> None:
    runtime = SharedRuntime()
    runtime.stop()
    assert runtime.thread is None
    coro = _echo(1)
    with pytest.raises(ClientClosed):
        runtime.submit(coro)


def test_submit_after_stop_fails_at_once_and_closes_the_coroutine() -> None:
    runtime = SharedRuntime()
    runtime.submit(_echo(1)).result(5)
    runtime.stop()
    coro = _echo(2)
    start = time.monotonic()
    with pytest.raises(ClientClosed):
        runtime.submit(coro)
    assert time.monotonic() - start < 1.0
    assert coro.cr_frame is None  # closed: no "never awaited" warning


def test_stop_fails_still_running_work_with_client_closed() -> None:
    runtime = SharedRuntime()
    started = threading.Event()

    async def forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    fut = runtime.submit(forever())
    assert started.wait(5)
    runtime.stop()
    with pytest.raises(ClientClosed):
        fut.result(timeout=5)


def test_result_on_the_loop_thread_raises_instead_of_deadlocking() -> None:
    with SharedRuntime() as runtime:
        slow = runtime.submit(asyncio.sleep(3600))

        async def call_result() -> str:
            try:
                slow.result()
            except RuntimeUnavailable as exc:
                return str(exc)
            return "no error"

        message = runtime.submit(call_result()).result(5)
        assert "deadlock" in message
        slow.cancel()


def test_cancel_cancels_the_task_on_the_loop() -> None:
    with SharedRuntime() as runtime:
        cancelled = threading.Event()
        started = threading.Event()

        async def waits() -> None:
            started.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        fut = runtime.submit(waits())
        assert started.wait(5)
        assert fut.cancel()
        assert fut.cancelled()
        assert cancelled.wait(5)
        with pytest.raises(concurrent.futures.CancelledError):
            fut.result(0)


def test_cancel_after_completion_returns_false() -> None:
    with SharedRuntime() as runtime:
        fut = runtime.submit(_echo(3))
        assert fut.result(5) == 3
        assert not fut.cancel()


def test_loop_death_fails_pending_futures_promptly_and_later_calls_at_once() -> None:
    runtime = SharedRuntime()
    started = threading.Event()

    async def forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    pending = runtime.submit(forever())
    assert started.wait(5)
    loop = runtime.loop
    assert loop is not None
    # Something stops the loop behind the runtime's back: the thread ends.
    loop.call_soon_threadsafe(loop.stop)
    with pytest.raises(RuntimeUnavailable, match="died") as info:
        pending.result(timeout=5)
    assert not isinstance(info.value, ClientClosed)
    runtime.thread.join(5)  # type: ignore[union-attr]
    coro = _echo(1)
    with pytest.raises(RuntimeUnavailable):
        runtime.submit(coro)
    assert not runtime.is_running
    runtime.stop()


def test_loop_crash_from_base_exception_fails_pending_futures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runtime = SharedRuntime()
    started = threading.Event()

    async def forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    async def crash() -> None:
        raise KeyboardInterrupt

    pending = runtime.submit(forever())
    assert started.wait(5)
    runtime.submit(crash())
    with pytest.raises(RuntimeUnavailable):
        pending.result(timeout=5)
    runtime.stop()
    assert "crashed" in caplog.text


def test_shutdown_hooks_run_on_the_loop_when_it_stops() -> None:
    runtime = SharedRuntime()
    ran_on: list[int] = []

    async def hook() -> None:
        ran_on.append(threading.get_ident())

    runtime.add_shutdown_hook(hook)
    runtime.submit(_echo(1)).result(5)
    thread_id = runtime.thread.ident  # type: ignore[union-attr]
    runtime.stop()
    assert ran_on == [thread_id]


def test_unclosed_runtime_warns_and_its_thread_ends() -> None:
    runtime = SharedRuntime()
    runtime.submit(_echo(1)).result(5)
    thread = runtime.thread
    with pytest.warns(ResourceWarning, match="unclosed SharedRuntime"):
        del runtime
        gc.collect()
    assert thread is not None
    thread.join(5)
    assert not thread.is_alive()
