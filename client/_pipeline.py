"""The batch pipeline: prepare and infer many items with bounded look-ahead.

One :class:`BatchPipeline` runs one ``batch_embed_images`` call (items: pixels) or one
``batch_embed_texts`` call (items: UTF-8 bytes)::

    sources ──admit (≤ lookahead)──> prepare tasks ──> ready queue ──dispatch──> send tasks
                                      (load + decode)                (≤ slots)   (one pack each)

- *admitted*: a semaphore of ``lookahead`` permits, taken before an item is started and
  given back when it is finished (row or error), so memory stays bounded however long
  the iterable is;
- *ready*: prepared items wait here; the dispatcher takes a request slot first, then
  packs whatever is ready (up to ``pack_size`` items, and, with ``weigh``, up to
  ``max_request_bytes`` on the wire: texts differ in size, images of one model do not):
  while Triton is busy, packs fill;
- *send*: one inference request per pack; a pack Triton refuses as a whole (a 4xx, not
  overload) is re-sent item by item in the same slot, so only the bad item fails
  (:func:`infer_or_split`, shared with the coalescer of single calls).

Every item ends with a row or an error, in input order. ``prepare`` and ``infer`` are
plain callables, so the pipeline is tested alone with fakes.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from tritonvision.errors import ProtocolError, ServerError, ServerOverloaded

from ._config import ClientConfig
from ._dedup import BatchDedup
from ._inputs import attach_source
from ._results import BatchEmbedding
from ._stats import StatsRecorder

__all__ = ["BatchPipeline", "PackBudget", "infer_or_split", "make_pipeline", "pack_size"]

SourceT = TypeVar("SourceT")
"""What the caller passes per item (an image source, a text)."""
ItemT = TypeVar("ItemT")
"""What one prepared item is (pixels, UTF-8 bytes): what ``infer`` sends."""


def pack_size(
    *, pack_batch_size: int, max_batch_size: int, item_bytes: int, max_request_bytes: int
) -> int:
    """Images per request: the configured size within the model's batch and the body cap."""
    # A model without a batch dimension (max_batch_size 0) takes one image per request.
    size = min(pack_batch_size, max_batch_size or 1)
    return max(1, min(size, max_request_bytes // max(1, item_bytes)))


class BatchPipeline(Generic[SourceT, ItemT]):
    """One batch: ``prepare`` each source, ``infer`` packs of them, collect rows and errors.

    ``slots`` is the client's semaphore of requests in flight (shared with single calls);
    ``embedding_dim`` sizes the result when no item succeeds (None: taken from a row).
    ``weigh`` (None: items are not weighed) gives an item's bytes on the wire; a pack then
    also stays within ``max_request_bytes`` (an item heavier than that goes alone).
    """

    def __init__(
        self,
        *,
        prepare: Callable[[SourceT], Awaitable[ItemT]],
        infer: Callable[[Sequence[ItemT]], Awaitable[npt.NDArray[np.float32]]],
        slots: asyncio.Semaphore,
        pack_size: int,
        lookahead: int,
        embedding_dim: int | None,
        stats: StatsRecorder,
        deduplicate: bool = False,
        weigh: Callable[[ItemT], int] | None = None,
        max_request_bytes: int = 0,
    ) -> None:
        self._prepare_one = prepare
        # Repeats of an earlier item are not loaded (same source) or not sent (same pixels).
        self._dedup = BatchDedup() if deduplicate else None
        self._infer = infer
        self._slots = slots
        self._pack_size = max(1, pack_size)
        self._weigh = weigh
        self._max_request_bytes = max_request_bytes
        self._embedding_dim = embedding_dim
        self._stats = stats
        self._admitted = asyncio.Semaphore(lookahead)
        self._ready: asyncio.Queue[tuple[int, SourceT, ItemT] | None] = asyncio.Queue()
        # An item that did not fit the last pack's byte budget: first in the next one.
        self._carried: tuple[int, SourceT, ItemT] | None = None
        self._preparing: set[asyncio.Task[None]] = set()
        self._sending: set[asyncio.Task[None]] = set()
        self._rows: dict[int, npt.NDArray[np.float32]] = {}
        self._errors: dict[int, BaseException] = {}

    async def run(self, sources: Iterable[SourceT]) -> BatchEmbedding:
        """Embed every source; errors about one item are recorded, others raised."""
        dispatcher = asyncio.ensure_future(self._dispatch())
        main = asyncio.current_task()

        def dispatcher_done(task: asyncio.Task[None]) -> None:
            # Never hang on a permit that will not come back: a dead dispatcher stops us.
            if main is not None and not task.cancelled() and task.exception() is not None:
                main.cancel()

        dispatcher.add_done_callback(dispatcher_done)
        count = 0
        try:
            for index, source in enumerate(sources):
                await self._admitted.acquire()
                self._track(self._preparing, self._prepare(index, source))
                count = index + 1
            while self._preparing:
                await asyncio.wait(list(self._preparing))
            self._ready.put_nowait(None)
            await dispatcher
            while self._sending:
                await asyncio.wait(list(self._sending))
        except BaseException:
            pending = [*self._preparing, *self._sending, dispatcher]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            crash = None if dispatcher.cancelled() else dispatcher.exception()
            if crash is not None:
                raise crash from None
            raise
        return self._result(count)

    def _result(self, count: int) -> BatchEmbedding:
        if self._dedup is not None and len(self._dedup):
            filled, failed = self._dedup.fill(self._rows, self._errors)
            self._stats.deduplicated(len(self._dedup))
            if filled:
                self._stats.succeeded(filled)
            for exc in failed:
                self._stats.failed(exc)
            self._errors = dict(sorted(self._errors.items()))
        dim = self._embedding_dim
        if dim is None:
            dim = next((len(r) for r in self._rows.values()), 0)
        out = np.full((count, dim), np.nan, dtype=np.float32)
        for index, row in self._rows.items():
            out[index] = row
        return BatchEmbedding(out, types.MappingProxyType(self._errors))

    @staticmethod
    def _track(tasks: set[asyncio.Task[None]], coro: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    def _record(self, index: int, source: SourceT, exc: BaseException, *, shared: bool) -> None:
        if not shared:  # one exception object for a whole pack names no single input
            attach_source(exc, source)
        self._errors[index] = exc
        self._stats.failed(exc)

    async def _prepare(self, index: int, source: SourceT) -> None:
        dedup = self._dedup
        if dedup is not None and dedup.repeats_source(index, source):
            self._admitted.release()  # filled from the first occurrence at the end
            return
        try:
            prepared = await self._prepare_one(source)
        except Exception as exc:
            self._record(index, source, exc, shared=False)
            self._admitted.release()
            return
        if dedup is not None and dedup.repeats_prepared(index, prepared):
            self._admitted.release()
            return
        self._ready.put_nowait((index, source, prepared))

    async def _dispatch(self) -> None:
        finished = False
        while not finished:
            first = self._carried
            self._carried = None
            if first is None:
                first = await self._ready.get()
            if first is None:
                return
            # Wait for a slot first: while Triton is busy, more items get ready to pack.
            await self._slots.acquire()
            items = [first]
            budget = PackBudget(self._weigh, self._max_request_bytes, first[2])
            while len(items) < self._pack_size and not self._ready.empty():
                item = self._ready.get_nowait()
                if item is None:
                    finished = True
                    break
                if not budget.admits(item[2]):
                    self._carried = item
                    break
                items.append(item)
            task = self._track(self._sending, self._send(items))
            # A done-callback, so the slot comes back even if the task never started.
            task.add_done_callback(lambda _: self._slots.release())

    async def _send(self, items: list[tuple[int, SourceT, ItemT]]) -> None:
        try:
            await self._send_pack(items)
        finally:
            for _ in items:
                self._admitted.release()

    async def _send_pack(self, items: list[tuple[int, SourceT, ItemT]]) -> None:
        """Send one pack; record a row or an error for each of its items."""
        outcomes = await infer_or_split(self._infer, [prepared for _, _, prepared in items])
        shared = len(outcomes) > 1 and all(o is outcomes[0] for o in outcomes)
        succeeded = 0
        for (index, source, _), outcome in zip(items, outcomes, strict=True):
            if isinstance(outcome, Exception):
                self._record(index, source, outcome, shared=shared)
            else:
                self._rows[index] = outcome
                succeeded += 1
        if succeeded:
            self._stats.succeeded(succeeded)


def make_pipeline(
    config: ClientConfig,
    *,
    prepare: Callable[[SourceT], Awaitable[ItemT]],
    infer: Callable[[Sequence[ItemT]], Awaitable[npt.NDArray[np.float32]]],
    slots: asyncio.Semaphore,
    stats: StatsRecorder,
    max_batch_size: int,
    embedding_dim: int | None,
    item_bytes: int = 1,
    weigh: Callable[[ItemT], int] | None = None,
) -> BatchPipeline[SourceT, ItemT]:
    """The pipeline of one batch call of the client to one model, as ``config`` says.

    Items of one size (a model's pixels) pass ``item_bytes``; items that differ in size
    (texts) pass ``weigh`` instead, and each pack is kept within ``max_request_bytes`` by
    their weights.
    """
    return BatchPipeline(
        prepare=prepare,
        infer=infer,
        slots=slots,
        pack_size=pack_size(
            pack_batch_size=config.pack_batch_size,
            max_batch_size=max_batch_size,
            item_bytes=item_bytes,
            max_request_bytes=config.max_request_bytes,
        ),
        lookahead=config.lookahead_items,
        embedding_dim=embedding_dim,
        stats=stats,
        deduplicate=config.deduplicate_inputs,
        weigh=weigh,
        max_request_bytes=config.max_request_bytes,
    )


class PackBudget(Generic[ItemT]):
    """The wire bytes left in one pack that starts with ``first`` (no limit when items are
    not weighed). The first item always goes, however heavy: it must be sent somehow."""

    def __init__(self, weigh: Callable[[ItemT], int] | None, limit: int, first: ItemT) -> None:
        self._weigh = weigh
        self._left = limit - weigh(first) if weigh is not None else 0

    def admits(self, item: ItemT) -> bool:
        """Whether ``item`` still fits (then it is counted in)."""
        if self._weigh is None:
            return True
        cost = self._weigh(item)
        if cost > self._left:
            return False
        self._left -= cost
        return True


async def infer_or_split(
    infer: Callable[[Sequence[ItemT]], Awaitable[npt.NDArray[np.float32]]],
    images: Sequence[ItemT],
) -> list[npt.NDArray[np.float32] | Exception]:
    """Send ``images`` (or texts) as one request; one outcome per item: its row or its error.

    A request Triton refuses as a whole (a 4xx: not overload, not a malformed answer) is
    re-sent item by item, in turn, so only the bad item fails. Any other error is about
    the request, not an item: it is the same exception object for every item.
    """
    try:
        rows = await infer(images)
    except ServerError as exc:
        if len(images) > 1 and not isinstance(exc, ServerOverloaded | ProtocolError):
            outcomes: list[npt.NDArray[np.float32] | Exception] = []
            for image in images:
                outcomes.extend(await infer_or_split(infer, [image]))
            return outcomes
        return [exc] * len(images)
    except Exception as exc:
        return [exc] * len(images)
    return list(rows)
