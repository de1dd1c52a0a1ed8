"""A test seam: counts the event loops and aiohttp sessions constructed in this process.

The one-runtime invariant (one loop, one session per actor, however many batches) is
checked by counting real constructions, not by trusting the embedder's code: the
public classes' ``__init__`` are wrapped once per process, from the moment the first
probe is made. Enabled only by ``TritonEmbedder(probe_runtime=True)``.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from typing import Any

import aiohttp

__all__ = ["RuntimeProbe"]

_lock = threading.Lock()
_counts = {"loops": 0, "sessions": 0}
_installed = False


def _counting(name: str, original: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        with _lock:
            _counts[name] += 1
        original(*args, **kwargs)

    return wrapper


def _install() -> None:
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
        # Every loop (selector or proactor) runs BaseEventLoop.__init__.
        asyncio.BaseEventLoop.__init__ = _counting(  # type: ignore[method-assign]
            "loops", asyncio.BaseEventLoop.__init__
        )
        aiohttp.ClientSession.__init__ = _counting(  # type: ignore[method-assign]
            "sessions", aiohttp.ClientSession.__init__
        )


class RuntimeProbe:
    """Constructions counted since this probe was made."""

    def __init__(self) -> None:
        _install()
        with _lock:
            self._start = dict(_counts)

    def _since(self, name: str) -> int:
        with _lock:
            return _counts[name] - self._start[name]

    @property
    def loops(self) -> int:
        return self._since("loops")

    @property
    def sessions(self) -> int:
        return self._since("sessions")
