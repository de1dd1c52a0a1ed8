"""The run loop: pending inputs through one :class:`VisionClient`, chunk by chunk.

Inputs are embedded in chunks of ``batch_size`` (one ``batch_embed_images`` call each,
or ``batch_embed_texts`` for a text job, one shared client for the whole job); each
chunk's successful rows are committed to the work dir as soon as the chunk is done, in
input order. Failed inputs are never recorded as finished: every re-run tries them
again. An input with a ``problem`` (a text line that is not UTF-8) is never sent: it is
recorded as failed (``InvalidInput``) up front.
"""

from __future__ import annotations

import concurrent.futures
import json
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from tritonvision.client import BatchEmbedding, VisionClient
from tritonvision.errors import InvalidInput, ServerUnavailable, TritonVisionError

from ._errors import JobAborted
from ._inputs import InputItem
from ._workdir import WorkDir

__all__ = ["Failure", "Progress", "RunOutcome", "embed_pending"]

_Pending = concurrent.futures.Future[BatchEmbedding]


@dataclass(frozen=True)
class Failure:
    """One failed input, as written to the manifest."""

    source: str
    error_type: str
    message: str

    @classmethod
    def from_exception(cls, source: str, exc: BaseException) -> Failure:
        return cls(source, type(exc).__name__, str(exc) or repr(exc))

    def to_json(self) -> str:
        record = {"source": self.source, "error_type": self.error_type, "message": self.message}
        return json.dumps(record, ensure_ascii=False)


class Progress(Protocol):
    """What the job reports to: items processed (embedded or failed) this run."""

    def start(self, total: int) -> None: ...

    def update(self, processed: int, failed: int) -> None: ...

    def close(self) -> None: ...


@dataclass
class RunOutcome:
    """What one run did: inputs embedded now, and the failures (key -> failure)."""

    embedded: int
    failures: dict[str, Failure]

    @property
    def processed(self) -> int:
        return self.embedded + len(self.failures)


def _chunks(items: Sequence[InputItem], size: int) -> Iterator[Sequence[InputItem]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _submit(client: VisionClient, chunk: Sequence[InputItem]) -> _Pending:
    """One chunk's batch call: texts to the text model, anything else to the image side."""
    if chunk[0].is_text:
        return client.batch_embed_texts([item.key for item in chunk])
    return client.batch_embed_images([item.source for item in chunk])


def embed_pending(
    client: VisionClient,
    pending: Sequence[InputItem],
    work: WorkDir,
    *,
    batch_size: int,
    progress: Progress,
    chunks_in_flight: int = 2,
    poll_s: float = 0.2,
) -> RunOutcome:
    """Embed ``pending`` chunk by chunk through ``client``, committing each chunk to ``work``.

    Up to ``chunks_in_flight`` chunks run at once on the one client (its
    ``max_in_flight`` bounds the requests of all of them), so Triton is not left idle
    while a chunk's last items finish; results are committed in input order.
    Raises :class:`JobAborted` if a chunk cannot be embedded at all (Triton gone, a
    non-item error); ``KeyboardInterrupt`` cancels what is in flight and propagates.
    """
    outcome = RunOutcome(embedded=0, failures={})
    progress.start(len(pending))
    sendable = [item for item in pending if item.problem is None]
    for item in pending:
        if item.problem is not None:
            outcome.failures[item.key] = Failure.from_exception(
                item.key, InvalidInput(item.problem, source=item.key)
            )
    unsent = len(outcome.failures)
    if unsent:
        progress.update(outcome.processed, unsent)
    baseline = client.stats()
    window: deque[tuple[Sequence[InputItem], _Pending]] = deque()
    chunks = _chunks(sendable, batch_size)
    try:
        while True:
            while len(window) < chunks_in_flight:
                chunk = next(chunks, None)
                if chunk is None:
                    break
                window.append((chunk, _submit(client, chunk)))
            if not window:
                break
            chunk, future = window[0]
            while not concurrent.futures.wait([future], timeout=poll_s).done:
                # The client's counters move per item, so the bar does not jump by chunks.
                now = client.stats()
                failed = now.failed - baseline.failed + unsent
                moved = now.items - baseline.items + failed
                progress.update(
                    max(outcome.processed, min(len(pending), moved)),
                    max(len(outcome.failures), failed),
                )
            window.popleft()
            try:
                batch = future.result()
            except TritonVisionError as exc:
                raise JobAborted(f"a chunk could not be embedded: {exc}") from exc
            _commit(chunk, batch, work, outcome)
            progress.update(outcome.processed, len(outcome.failures))
    except BaseException:
        for _, future in window:
            future.cancel()
        raise
    return outcome


def _commit(
    chunk: Sequence[InputItem], batch: BatchEmbedding, work: WorkDir, outcome: RunOutcome
) -> None:
    errors = batch.errors
    if (
        errors
        and len(errors) == len(chunk)
        and all(isinstance(e, ServerUnavailable) for e in errors.values())
    ):
        # Not the items' fault: stop here rather than list every input as failed.
        first = errors[min(errors)]
        raise JobAborted(f"Triton is unreachable: {first}")
    ok = [i for i in range(len(chunk)) if i not in errors]
    if ok:
        rows = np.ascontiguousarray(batch.embeddings[ok], dtype=np.float32)
        work.write_chunk([chunk[i].key for i in ok], rows)
    outcome.embedded += len(ok)
    for index in sorted(errors):
        key = chunk[index].key
        outcome.failures[key] = Failure.from_exception(key, errors[index])
