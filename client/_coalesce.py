"""Coalescing: single calls that queue while the client is busy go out together as one request.

One :class:`Coalescer` per client sits between the single-image calls (``embed*()``) and the
wire::

    embed(pixels) ──idle──> infer([pixels])                  in the caller's own task, at once
         │
         └──busy──> queue ──dispatcher──> infer([p1, p2, ...]) one task per merged request

- *idle* (none of its requests out, nobody queued, a slot of the client's ``max_in_flight``
  semaphore free): the caller sends its own request at once. A lone caller waits for nothing
  and costs no extra task.
- *busy*: the caller queues. The one dispatcher task (started by a queued call, gone again
  once the coalescer is idle) sends what waits as soon as a request may go out: fewer than
  ``open_requests`` out (then an even share of the work, so that ``open_requests`` requests
  of like size overlap), or a full batch of ``max_batch`` waiting; and a slot free. Nothing
  waits for a batch to fill: only what queued while requests were out is merged (as Nagle's
  algorithm merges what is written while a segment is unacknowledged, without its timer).
  The dispatcher runs after the callers the loop has ready, so callers woken together by one
  answer go out together.
- Every caller gets its own row or its own error: a merged request Triton refuses as a whole
  is re-sent image by image (:func:`~._pipeline.infer_or_split`, shared with the batch
  pipeline), so only the bad image's caller fails; an error about the whole request (Triton
  unreachable, overloaded past the retries) reaches each caller as its own copy.
- A caller cancelled while queued is skipped; one cancelled after its request went out just
  drops its row. The others never notice.

``infer`` and ``slots`` are the seams: the client passes its retried inference call and its
request semaphore; tests pass fakes. The items are images' pixels for ``embed*()`` and
texts' UTF-8 bytes for ``embed_text()`` (one coalescer per model); texts differ in size, so
with ``weigh`` a merged request also stays within ``max_request_bytes``.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from tritonvision.errors import ClientClosed, RuntimeUnavailable

from ._config import ClientConfig
from ._pipeline import PackBudget, infer_or_split, pack_size

__all__ = ["Coalescer", "coalesced_batch_size", "embed_single", "make_coalescer"]

logger = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
Row = npt.NDArray[np.float32]


def coalesced_batch_size(
    *,
    enabled: bool,
    max_batch: int | None,
    model_max_batch_size: int,
    item_bytes: int,
    max_request_bytes: int,
) -> int:
    """Most images one coalesced request may hold; 1: single calls are not coalesced.

    ``max_batch`` (None: the model's ``max_batch_size``) is capped by the model's batch size
    and the body cap. A model without a batch dimension (``max_batch_size`` 0) takes one
    image per request, so its calls are never coalesced.
    """
    if not enabled or model_max_batch_size <= 0:
        return 1
    return pack_size(
        pack_batch_size=max_batch or model_max_batch_size,
        max_batch_size=model_max_batch_size,
        item_bytes=item_bytes,
        max_request_bytes=max_request_bytes,
    )


def make_coalescer(
    config: ClientConfig,
    *,
    model_max_batch_size: int,
    infer: Callable[[Sequence[ItemT]], Awaitable[npt.NDArray[np.float32]]],
    slots: asyncio.Semaphore,
    item_bytes: int = 1,
    weigh: Callable[[ItemT], int] | None = None,
) -> Coalescer[ItemT] | None:
    """The client's coalescer of single calls to one model, or None if they are not coalesced.

    Items of one size (a model's pixels) pass ``item_bytes``; items that differ in size
    (texts) pass ``weigh`` instead, and each merged request is kept within
    ``max_request_bytes`` by their weights.
    """
    max_batch = coalesced_batch_size(
        enabled=config.coalesce,
        max_batch=config.coalesce_max_batch,
        model_max_batch_size=model_max_batch_size,
        item_bytes=item_bytes,
        max_request_bytes=config.max_request_bytes,
    )
    if max_batch < 2:
        return None
    return Coalescer(
        infer=infer,
        slots=slots,
        max_batch=max_batch,
        open_requests=config.coalesce_open_requests,
        weigh=weigh,
        max_request_bytes=config.max_request_bytes,
    )


async def embed_single(
    coalescer: Coalescer[ItemT] | None,
    infer: Callable[[Sequence[ItemT]], Awaitable[npt.NDArray[np.float32]]],
    slots: asyncio.Semaphore,
    item: ItemT,
) -> Row:
    """One item's row: through ``coalescer``, or (None: coalescing off) its own request in
    one of ``slots``."""
    if coalescer is not None:
        return await coalescer.embed(item)
    async with slots:
        row: Row = (await infer([item]))[0]
    return row


class Coalescer(Generic[ItemT]):
    """Sends single images at once when idle, merged when busy; one row or error per caller.

    ``infer`` sends one request for a sequence of images and returns one row per image;
    ``slots`` is the client's semaphore of requests in flight (one is held per request);
    ``max_batch`` caps the images of one request (the model's max batch size, the byte cap);
    ``open_requests`` is how many requests may be out before calls queue to be merged;
    ``weigh`` (None: items all weigh the same, ``max_batch`` covers the byte cap) gives an
    item's bytes on the wire, and a merged request then stays within ``max_request_bytes``.
    """

    def __init__(
        self,
        *,
        infer: Callable[[Sequence[ItemT]], Awaitable[npt.NDArray[np.float32]]],
        slots: asyncio.Semaphore,
        max_batch: int,
        open_requests: int,
        weigh: Callable[[ItemT], int] | None = None,
        max_request_bytes: int = 0,
    ) -> None:
        self._infer = infer
        self._slots = slots
        self._max_batch = max(1, max_batch)
        self._max_open = max(1, open_requests)
        self._weigh = weigh
        self._max_request_bytes = max_request_bytes
        self._queue: deque[tuple[ItemT, asyncio.Future[Row]]] = deque()
        self._open = 0  # requests out (sent alone or merged)
        self._images_out = 0  # images in those requests
        self._alone = 0  # callers sending their own request
        self._sending: dict[asyncio.Task[None], list[tuple[ItemT, asyncio.Future[Row]]]] = {}
        self._dispatcher: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()  # the dispatcher may have something to do
        self._progress = asyncio.Event()  # a caller was served or left (close waits on it)
        self._closed = False

    async def embed(self, pixels: ItemT) -> Row:
        """The row of one item; sent at once if idle, else with what queued meanwhile."""
        if self._closed:
            raise ClientClosed("the client is closing; no new calls are taken")
        self._drop_cancelled()
        if not self._open and not self._queue and not self._slots.locked():
            return await self._send_alone(pixels)
        future: asyncio.Future[Row] = asyncio.get_running_loop().create_future()
        self._queue.append((pixels, future))
        self._start_dispatcher()
        self._wakeup.set()
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                future.exception()  # answered as we were cancelled: the answer is dropped
            self._progress.set()
            raise

    async def aclose(self) -> None:
        """Take no new calls; serve every caller still waiting; then stop the dispatcher.

        Requests whose callers have all gone (cancelled) are cancelled, not waited for.
        """
        self._closed = True
        while self._has_callers():
            self._progress.clear()
            await self._progress.wait()
        tasks = [*self._sending]
        if self._dispatcher is not None:
            tasks.append(self._dispatcher)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---------------------------------------------------------------------- internals

    def _poke(self) -> None:
        self._wakeup.set()
        self._progress.set()

    def _has_callers(self) -> bool:
        if self._alone:
            return True
        waiting = [*self._queue, *(w for batch in self._sending.values() for w in batch)]
        return any(not future.done() for _, future in waiting)

    async def _send_alone(self, pixels: ItemT) -> Row:
        self._open += 1
        self._images_out += 1
        self._alone += 1
        try:
            async with self._slots:
                rows = await self._infer([pixels])
        finally:
            self._open -= 1
            self._images_out -= 1
            self._alone -= 1
            self._poke()
        row: Row = rows[0]
        return row

    def _start_dispatcher(self) -> None:
        if self._dispatcher is None:
            self._dispatcher = asyncio.ensure_future(self._dispatch())
            self._dispatcher.add_done_callback(self._dispatcher_done)

    def _dispatcher_done(self, task: asyncio.Task[None]) -> None:
        if self._dispatcher is task:
            self._dispatcher = None
        if task.cancelled() or task.exception() is None:
            return
        # A bug, not an input's fault: fail the waiting callers rather than leave them hanging.
        exc = task.exception()
        logger.error("the coalescer's dispatcher failed: %r", exc)
        while self._queue:
            _, future = self._queue.popleft()
            if not future.done():
                error = RuntimeUnavailable(f"the client's call coalescer failed: {exc!r}")
                error.__cause__ = exc
                future.set_exception(error)

    def _drop_cancelled(self) -> None:
        while self._queue and self._queue[0][1].done():
            self._queue.popleft()  # its caller was cancelled while queued

    def _may_send(self) -> bool:
        self._drop_cancelled()
        if not self._queue:
            return False
        return self._open < self._max_open or len(self._queue) >= self._max_batch

    def _batch_size(self) -> int:
        """Images for the next request (its slot held): with room for more requests, an even
        share of all the work (waiting and out) over ``open_requests``, so that requests of
        like size overlap (Triton computes one while the client reads another); else, or if
        no other slot is free, a full batch."""
        if self._open >= self._max_open or self._slots.locked():
            return self._max_batch
        work = len(self._queue) + self._images_out
        return max(1, min(self._max_batch, -(-work // self._max_open)))

    async def _dispatch(self) -> None:
        while True:
            if not self._may_send():
                if not self._queue and not self._open:
                    # Idle: no task lingers; the next queued call starts a dispatcher again.
                    self._dispatcher = None
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._slots.acquire()
            size = self._batch_size()
            batch: list[tuple[ItemT, asyncio.Future[Row]]] = []
            budget: PackBudget[ItemT] | None = None
            while self._queue and len(batch) < size:
                waiter = self._queue[0]
                if waiter[1].done():
                    self._queue.popleft()
                    continue
                if budget is None:
                    budget = PackBudget(self._weigh, self._max_request_bytes, waiter[0])
                elif not budget.admits(waiter[0]):
                    break  # first in the next request
                batch.append(self._queue.popleft())
            if not batch:
                self._slots.release()
                continue
            self._open += 1
            self._images_out += len(batch)
            task = asyncio.ensure_future(self._send(batch))
            self._sending[task] = batch
            # A done-callback, so the slot comes back even if the task never started.
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        batch = self._sending.pop(task, [])
        self._open -= 1
        self._images_out -= len(batch)
        self._slots.release()
        # Callers still unanswered here: the request was cancelled (closing), or a bug.
        error = None if task.cancelled() else task.exception()
        for _, future in batch:
            if future.done():
                continue
            if error is None:
                future.cancel()
            else:
                future.set_exception(_own_copy(error))
        self._poke()

    async def _send(self, batch: list[tuple[ItemT, asyncio.Future[Row]]]) -> None:
        outcomes = await infer_or_split(self._infer, [pixels for pixels, _ in batch])
        shared = len(outcomes) > 1 and all(o is outcomes[0] for o in outcomes)
        answered = False
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():  # its caller was cancelled: the row is dropped
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(_own_copy(outcome) if shared and answered else outcome)
            else:
                future.set_result(outcome)
            answered = True


def _own_copy(exc: BaseException) -> BaseException:
    """A copy of ``exc`` for one more caller: each caller's error then names its own input
    and carries its own traceback. ``exc`` itself if it cannot be copied."""
    try:
        dup = copy.copy(exc)
    except Exception:
        return exc
    if type(dup) is not type(exc):
        return exc
    dup.__cause__ = exc.__cause__
    dup.__context__ = exc.__context__
    dup.__suppress_context__ = exc.__suppress_context__
    return dup
