"""The overload gate: "Triton is full" as a client-wide signal, not a per-request one.

Without it, each request refused with :class:`ServerOverloaded` (queue full, 503,
RESOURCE_EXHAUSTED) backs off alone: the server idles between uncoordinated retries while
every other request keeps arriving, and the refusals multiply. With one
:class:`OverloadGate` per client, every inference send passes through :meth:`admit`:

- a refusal **pauses** new sends for a jittered backoff (``ceiling / 2 + uniform(0,
  ceiling / 2)``, ``ceiling = min(backoff_max_s, backoff_base_s * 2**(n - 1))`` for the
  ``n``-th refusal in a row), while the sends already in flight drain;
- it also **cuts the window**, the number of sends let in at once, to
  :data:`DECREASE` (0.7, CUBIC's factor: halving overshoots a queue of one or two) of
  what was in flight when the refusal came, at most once per round: refusals of sends
  admitted before the last cut are the same congestion and change nothing;
- every success ends the refusal streak; a success of a send admitted after the last cut
  also widens the window by ``1 / window`` (about one send per window of successes), up
  to ``max_window`` (the client's ``max_in_flight``). Sends admitted before the cut
  succeed under the old window and say nothing about the new one.

So the client settles just under what Triton's queue takes, like TCP's congestion window.
The clock, the sleep and the jitter come in as keyword arguments, so the schedule is
tested without a server and without waiting.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from tritonvision.errors import ServerOverloaded

__all__ = ["DECREASE", "OverloadGate", "backoff_ceiling_s"]

DECREASE = 0.7
"""The window after a refusal, as a fraction of the sends in flight when it came."""


def backoff_ceiling_s(base_s: float, max_s: float, n: int) -> float:
    """The largest backoff before the ``n``-th (1-based) retry or refusal in a row."""
    return min(max_s, base_s * 2.0 ** (n - 1))


class OverloadGate:
    """Admission of a client's inference sends, driven by Triton's overload answers."""

    def __init__(
        self,
        *,
        max_window: int,
        backoff_base_s: float,
        backoff_max_s: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        jitter: Callable[[float, float], float] = random.uniform,
    ) -> None:
        if max_window < 1:
            raise ValueError(f"max_window must be >= 1, got {max_window}")
        self.max_window = max_window
        self._base_s = backoff_base_s
        self._max_s = backoff_max_s
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self._window = float(max_window)
        self._active = 0
        self._paused_until = 0.0
        self._streak = 0  # refusals in a row (each one that cut the window)
        self._admitted = 0  # sends let in so far: a sequence number per send
        self._cut_at = 0  # the sequence number of the last send admitted before the last cut
        self._changed: asyncio.Event | None = None  # made on the loop, at first wait
        self.refusals = 0
        self.pauses = 0

    @property
    def window(self) -> int:
        """Sends let in at once now (1 .. ``max_window``)."""
        return max(1, int(self._window))

    @property
    def active(self) -> int:
        return self._active

    @property
    def paused_until(self) -> float:
        """The clock time before which no new send is let in (0 when never paused)."""
        return self._paused_until

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold a send until the gate lets it in; learn from how it ended.

        :class:`ServerOverloaded` raised inside pauses and narrows the gate; a normal exit
        widens it; any other error is neutral (it says nothing about the queue).
        """
        ticket = await self._enter()
        try:
            yield
        except ServerOverloaded:
            self._refused(ticket)
            raise
        else:
            self._succeeded(ticket)
        finally:
            self._active -= 1
            self._notify()

    async def _enter(self) -> int:
        while True:
            now = self._clock()
            if now < self._paused_until:
                await self._sleep(self._paused_until - now)
                continue
            if self._active < self.window:
                self._active += 1
                self._admitted += 1
                return self._admitted
            if self._changed is None:
                self._changed = asyncio.Event()
            await self._changed.wait()

    def _notify(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()  # every waiter looks again; the next wait makes a new event

    def _refused(self, ticket: int) -> None:
        self.refusals += 1
        if ticket <= self._cut_at:
            return  # sent before the last cut: already accounted for
        self._cut_at = self._admitted
        self._streak += 1
        self._window = max(1.0, min(self._window, float(self._active)) * DECREASE)
        ceiling = backoff_ceiling_s(self._base_s, self._max_s, self._streak)
        delay = ceiling / 2.0 + self._jitter(0.0, ceiling / 2.0)
        self._paused_until = max(self._paused_until, self._clock() + delay)
        self.pauses += 1

    def _succeeded(self, ticket: int) -> None:
        self._streak = 0
        if ticket > self._cut_at and self._window < self.max_window:
            self._window = min(float(self.max_window), self._window + 1.0 / self._window)
