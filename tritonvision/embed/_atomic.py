"""Durable, all-or-nothing file updates: fsync of a folder, signals held over renames."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

__all__ = ["deferred_signals", "fsync_dir"]


def fsync_dir(path: Path) -> None:
    """Make the renames in ``path`` durable (best effort)."""
    # Makes a rename durable across power loss; not every platform can open a folder.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back for a few renames that belong together.

    Only in the main thread (elsewhere Python cannot change handlers, and signals are
    handled by the main thread anyway); a signal that arrived is re-raised afterwards.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in dict.fromkeys(received):
            signal.raise_signal(signum)
