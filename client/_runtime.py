"""The one shared runtime: a background thread running one asyncio event loop.

:class:`SharedRuntime` starts its thread on first use and hands coroutines to the loop
with :func:`asyncio.run_coroutine_threadsafe`, returning ``concurrent.futures.Future``
objects (:class:`RuntimeFuture`). Every blocking call of ``VisionClient`` goes through
one instance; no call ever builds its own loop.

Failure modes are explicit:

- after :meth:`SharedRuntime.stop`, :meth:`~SharedRuntime.submit` raises
  :class:`ClientClosed` at once;
- if the loop thread dies (its loop stopped or crashed), every pending future is
  completed with :class:`RuntimeUnavailable` and later submits raise it at once;
- :meth:`RuntimeFuture.result` called on the loop's own thread raises
  :class:`RuntimeUnavailable` instead of deadlocking.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import threading
import warnings
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from tritonvision.errors import ClientClosed, RuntimeUnavailable

__all__ = ["RuntimeFuture", "SharedRuntime"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
F = TypeVar("F", bound="RuntimeFuture[Any]")

_thread_numbers = itertools.count(1)


class RuntimeFuture(concurrent.futures.Future[T]):
    """A future for work running on a :class:`SharedRuntime`'s loop.

    ``cancel()`` cancels the asyncio task behind it; ``result()``/``exception()``
    refuse to block the loop's own thread (that would deadlock).
    """

    def __init__(self) -> None:
        super().__init__()
        self._inner: concurrent.futures.Future[T] | None = None
        self._loop_thread_id: int | None = None

    def _attach(self, inner: concurrent.futures.Future[T], loop_thread_id: int | None) -> None:
        self._inner = inner
        self._loop_thread_id = loop_thread_id
        inner.add_done_callback(self._copy_from_inner)

    def _copy_from_inner(self, inner: concurrent.futures.Future[T]) -> None:
        try:
            if inner.cancelled():
                concurrent.futures.Future.cancel(self)
            elif (exc := inner.exception()) is not None:
                self.set_exception(exc)
            else:
                self.set_result(inner.result())
        except concurrent.futures.InvalidStateError:
            pass  # already failed because the loop died, or cancelled by the caller

    def _fail(self, exc: BaseException) -> None:
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            self.set_exception(exc)

    def _check_thread(self, what: str) -> None:
        if self._loop_thread_id is not None and threading.get_ident() == self._loop_thread_id:
            raise RuntimeUnavailable(
                f"{type(self).__name__}.{what}() called on the client's own event-loop thread: "
                "it would block the loop that must complete it (deadlock); await the "
                "AsyncVisionClient method instead"
            )

    def result(self, timeout: float | None = None) -> T:
        self._check_thread("result")
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._check_thread("exception")
        return super().exception(timeout)

    def cancel(self) -> bool:
        inner = self._inner
        # The runtime's inner future cancels its asyncio task on the loop when cancelled.
        if inner is not None and not inner.cancel():
            return False
        return concurrent.futures.Future.cancel(self)


class _LoopState:
    """What the loop thread shares with its runtime (the thread never holds the runtime)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.stopping = False
        self.dead = False
        self.pending: set[RuntimeFuture[Any]] = set()
        self.shutdown_hooks: list[Callable[[], Awaitable[object]]] = []


class SharedRuntime:
    """One background thread running one event loop, started on first use.

    Thread-safe: any thread may :meth:`submit`. :meth:`stop` is idempotent; it
    cancels what is still running (callers drain first if they need to), runs the
    shutdown hooks on the loop, closes the loop and joins the thread.
    """

    def __init__(self, *, name: str = "tritonvision-loop") -> None:
        self._state = _LoopState(f"{name}-{next(_thread_numbers)}")

    # ----------------------------------------------------------------- introspection

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The runtime's loop, or None before first use."""
        return self._state.loop

    @property
    def thread(self) -> threading.Thread | None:
        """The loop thread, or None before first use."""
        return self._state.thread

    @property
    def is_running(self) -> bool:
        """True while the loop thread can take work."""
        s = self._state
        return s.thread is not None and s.thread.is_alive() and not (s.dead or s.stopping)

    @property
    def is_closed(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._state.stopping

    # --------------------------------------------------------------------- lifecycle

    def start(self) -> asyncio.AbstractEventLoop:
        """Start the loop thread if needed; return the loop. Raises if stopped or dead."""
        s = self._state
        with s.lock:
            self._check_usable_locked()
            if s.loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=_thread_main, args=(s, loop), name=s.name)
                thread.daemon = True  # an unclosed client must not hang interpreter exit
                s.loop = loop
                s.thread = thread
                thread.start()
            return s.loop

    def _check_usable_locked(self) -> None:
        s = self._state
        if s.stopping:
            raise ClientClosed("the client's runtime is closed; create a new client")
        if s.dead or (s.thread is not None and not s.thread.is_alive()):
            raise RuntimeUnavailable(
                f"the client's event-loop thread {s.name!r} has died; create a new client"
            )

    def add_shutdown_hook(self, hook: Callable[[], Awaitable[object]]) -> None:
        """Run ``await hook()`` on the loop when it stops, normally or not.

        For releasing loop-bound resources (e.g. closing a session) even if the loop died.
        """
        with self._state.lock:
            self._state.shutdown_hooks.append(hook)

    def submit(
        self, coro: Coroutine[Any, Any, T], *, future: RuntimeFuture[T] | None = None
    ) -> RuntimeFuture[T]:
        """Schedule ``coro`` on the loop; return a future for its outcome.

        Raises :class:`ClientClosed` / :class:`RuntimeUnavailable` at once (and closes
        ``coro``) if the runtime is stopped or its thread died. ``future`` lets callers
        supply a :class:`RuntimeFuture` subclass to be completed.
        """
        fut: RuntimeFuture[T] = future if future is not None else RuntimeFuture()
        s = self._state
        try:
            loop = self.start()
            with s.lock:
                self._check_usable_locked()
                try:
                    inner = asyncio.run_coroutine_threadsafe(coro, loop)
                except RuntimeError as exc:  # the loop closed under us
                    raise RuntimeUnavailable(f"the client's event loop is closed: {exc}") from exc
                s.pending.add(fut)
        except BaseException:
            coro.close()  # never scheduled: avoid "coroutine was never awaited"
            raise
        thread = s.thread
        fut._attach(inner, thread.ident if thread is not None else None)
        fut.add_done_callback(self._forget)
        return fut

    def _forget(self, fut: concurrent.futures.Future[Any]) -> None:
        with self._state.lock:
            self._state.pending.discard(fut)

    def stop(self, *, timeout_s: float | None = None, wait: bool = True) -> None:
        """Stop the loop and (if ``wait``) join its thread. Idempotent; no restart.

        Work still running is cancelled and its futures fail with :class:`ClientClosed`.
        Called on the loop thread itself, it only signals the stop (no self-join).
        """
        s = self._state
        with s.lock:
            first = not s.stopping
            s.stopping = True
            loop, thread = s.loop, s.thread
            if loop is not None and first and not s.dead:
                # Under the lock: never a stray stop() into the dead thread's cleanup.
                with contextlib.suppress(RuntimeError):  # closed: the thread has finished
                    loop.call_soon_threadsafe(loop.stop)
        if loop is None or thread is None:
            return
        if wait and threading.get_ident() != thread.ident:
            thread.join(timeout_s)
            if thread.is_alive():
                logger.warning("%s did not stop within %.1f s", s.name, timeout_s or 0.0)

    def __enter__(self) -> SharedRuntime:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __del__(self) -> None:
        s = getattr(self, "_state", None)
        if s is None or s.loop is None or s.stopping:
            return
        warnings.warn(
            f"unclosed SharedRuntime {s.name!r}; call stop() (or close the client)",
            ResourceWarning,
            stacklevel=2,
            source=self,
        )
        with contextlib.suppress(Exception):  # interpreter shutdown: nothing more to do
            self.stop(wait=False)


def _thread_main(state: _LoopState, loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    except BaseException:
        # A BaseException escaping a callback kills the loop; report, then fail callers.
        logger.exception("%s crashed", state.name)
    finally:
        _finish(state, loop)


def _finish(state: _LoopState, loop: asyncio.AbstractEventLoop) -> None:
    with state.lock:
        expected = state.stopping
        state.dead = True
        pending = list(state.pending)
        state.pending.clear()
        hooks = list(state.shutdown_hooks)
    # Waiters get a clear error now rather than hanging, or seeing a bare CancelledError.
    for fut in pending:
        if expected:
            fut._fail(ClientClosed("the client was closed before this call completed"))
        else:
            fut._fail(RuntimeUnavailable(f"the client's event-loop thread {state.name!r} died"))
    try:
        _cancel_all(loop)
        for hook in hooks:
            try:
                _run_to_end(loop, hook())
            except BaseException:
                logger.exception("%s: shutdown hook failed", state.name)
        _cancel_all(loop)
        _run_to_end(loop, loop.shutdown_asyncgens())
        _run_to_end(loop, loop.shutdown_default_executor())
    except BaseException:
        logger.exception("%s: error while shutting down", state.name)
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    _run_to_end(loop, asyncio.gather(*tasks, return_exceptions=True))


def _run_to_end(loop: asyncio.AbstractEventLoop, awaitable: Awaitable[T]) -> T:
    # A loop.stop() queued just before the thread died would cut run_until_complete
    # short ("Event loop stopped before Future completed"); keep running the same future.
    future = asyncio.ensure_future(awaitable, loop=loop)
    while True:
        try:
            return loop.run_until_complete(future)
        except RuntimeError:
            if future.done():
                raise
