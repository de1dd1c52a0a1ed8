"""Client counters: recorded on the loop thread, read as frozen snapshots from any thread."""

from __future__ import annotations

import threading
import types
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["ClientStats", "StatsRecorder"]


@dataclass(frozen=True, kw_only=True)
class ClientStats:
    """A snapshot of a client's counters since it was created.

    Attributes:
        requests: inference requests sent to Triton (each attempt counts).
        items: images and texts embedded successfully.
        retries: requests re-sent after a transient failure.
        failures: error class name -> count, per failed item (or failed call).
        bytes_fetched: image bytes downloaded from URLs.
        bytes_sent: request bytes sent to Triton.
        fetch_time_s: time spent fetching URLs (summed over concurrent fetches).
        decode_time_s: time spent decoding and resizing (summed over workers).
        triton_time_s: time spent waiting on Triton (summed over concurrent requests).
        deduplicated: batch items that repeated an earlier item of their batch (same
            source or same pixels) and took its row or error without a request of their own.
    """

    requests: int = 0
    items: int = 0
    retries: int = 0
    failures: Mapping[str, int] = field(default_factory=lambda: types.MappingProxyType({}))
    bytes_fetched: int = 0
    bytes_sent: int = 0
    fetch_time_s: float = 0.0
    decode_time_s: float = 0.0
    triton_time_s: float = 0.0
    deduplicated: int = 0

    @property
    def failed(self) -> int:
        """Total failures of every kind."""
        return sum(self.failures.values())


class StatsRecorder:
    """Mutable counters behind :class:`ClientStats`.

    Writers run on the loop thread or in decode workers; :meth:`snapshot` may be
    called from any thread, so every update takes one short lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests = 0
        self._items = 0
        self._retries = 0
        self._failures: Counter[str] = Counter()
        self._bytes_fetched = 0
        self._bytes_sent = 0
        self._fetch_time_s = 0.0
        self._decode_time_s = 0.0
        self._triton_time_s = 0.0
        self._deduplicated = 0

    def request(self, *, bytes_sent: int, wait_s: float) -> None:
        with self._lock:
            self._requests += 1
            self._bytes_sent += bytes_sent
            self._triton_time_s += wait_s

    def retry(self) -> None:
        with self._lock:
            self._retries += 1

    def succeeded(self, items: int = 1) -> None:
        with self._lock:
            self._items += items

    def failed(self, exc: BaseException, count: int = 1) -> None:
        with self._lock:
            self._failures[type(exc).__name__] += count

    def fetched(self, *, nbytes: int, elapsed_s: float) -> None:
        with self._lock:
            self._bytes_fetched += nbytes
            self._fetch_time_s += elapsed_s

    def deduplicated(self, items: int) -> None:
        with self._lock:
            self._deduplicated += items

    def decoded(self, *, elapsed_s: float) -> None:
        with self._lock:
            self._decode_time_s += elapsed_s

    def snapshot(self) -> ClientStats:
        with self._lock:
            return ClientStats(
                requests=self._requests,
                items=self._items,
                retries=self._retries,
                failures=types.MappingProxyType(dict(self._failures)),
                bytes_fetched=self._bytes_fetched,
                bytes_sent=self._bytes_sent,
                fetch_time_s=self._fetch_time_s,
                decode_time_s=self._decode_time_s,
                triton_time_s=self._triton_time_s,
                deduplicated=self._deduplicated,
            )
