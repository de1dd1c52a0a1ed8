"""Retries of transient Triton failures: exponential backoff with full jitter, within a budget.

Only :class:`ServerUnavailable` (cannot reach Triton) and :class:`ServerOverloaded` (queue
full, 503, RESOURCE_EXHAUSTED) are retried: anything else would fail the same way again.
The delay before retry ``n`` (1-based) is ``uniform(0, min(backoff_max_s, backoff_base_s *
2**(n - 1)))`` (AWS's "full jitter"); a retry whose delay would end past ``retry_budget_s``
is not attempted.

With an :class:`~._gate.OverloadGate` (``call(op, gate=...)``), every attempt passes
through the client's one gate, and a :class:`ServerOverloaded` attempt is retried without
a backoff of its own: the gate holds it with every other send until Triton has room.

The clock, the sleep and the jitter come through :class:`Retrier`'s keyword arguments, so
the schedule is tested without Triton and without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tritonvision.errors import ServerOverloaded, ServerUnavailable

from ._gate import OverloadGate, backoff_ceiling_s

__all__ = ["RETRIED_ERRORS", "Retrier", "RetryPolicy"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

RETRIED_ERRORS: tuple[type[Exception], ...] = (ServerUnavailable, ServerOverloaded)
"""The failures worth another attempt: the same request may succeed a moment later."""


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How often and how long to retry (the matching ``ClientConfig`` fields)."""

    max_retries: int
    retry_budget_s: float
    backoff_base_s: float
    backoff_max_s: float

    def ceiling_s(self, retry: int) -> float:
        """The largest delay before retry number ``retry`` (1-based)."""
        return backoff_ceiling_s(self.backoff_base_s, self.backoff_max_s, retry)


class Retrier:
    """Runs an operation until it succeeds, fails for good, or the policy says stop.

    ``clock`` (monotonic seconds), ``sleep`` and ``jitter`` (``uniform(low, high)``) default
    to the real ones; ``on_retry`` is called once per retry (the client counts them).
    """

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        on_retry: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        jitter: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.policy = policy
        self._on_retry = on_retry
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter

    async def call(self, op: Callable[[], Awaitable[T]], *, gate: OverloadGate | None = None) -> T:
        """``await op()``, retried on :data:`RETRIED_ERRORS`; the last error is raised.

        With ``gate``, each attempt is admitted by it, and overload is backed off there.
        """
        policy = self.policy
        started = self._clock()
        retry = 0
        while True:
            try:
                if gate is None:
                    return await op()
                async with gate.admit():
                    return await op()
            except RETRIED_ERRORS as exc:
                retry += 1
                held = gate is not None and isinstance(exc, ServerOverloaded)
                delay = 0.0 if held else self._jitter(0.0, policy.ceiling_s(retry))
                spent = self._clock() - started
                if retry > policy.max_retries or spent + delay > policy.retry_budget_s:
                    if retry > 1:
                        logger.info("giving up after %d attempts: %s", retry, exc)
                    raise
                if self._on_retry is not None:
                    self._on_retry()
                logger.debug("retry %d in %.3f s after %s", retry, delay, exc)
                if not held:
                    await self._sleep(delay)
