"""Progress displays for ``tritonvision embed`` (each one a :class:`tritonvision.embed.Progress`).

On stderr: a tqdm bar when it is a terminal (a plain redrawn line without tqdm); one
complete line every ``interval_s`` seconds when it is not (logs, CI) or with ``-q``;
nothing with ``-qq``. tqdm is optional (the ``embed`` extra) and imported only here.
"""

from __future__ import annotations

import os
import time
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tritonvision.embed import Progress

__all__ = ["make_progress", "progress_text"]

_TTY_REFRESH_S = 0.2


def _duration(seconds: float) -> str:
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def progress_text(processed: int, total: int, failed: int, elapsed_s: float) -> str:
    """``processed/total (percent) rate, ETA, failed``: one progress line's text."""
    rate = processed / elapsed_s if elapsed_s > 0 else 0.0
    eta = _duration((total - processed) / rate) if rate > 0 else "?"
    percent = 100.0 * processed / total if total else 100.0
    return f"{processed}/{total} ({percent:.0f}%) {rate:.1f} items/s, ETA {eta}, {failed} failed"


class _NoProgress:
    def start(self, total: int) -> None:
        pass

    def update(self, processed: int, failed: int) -> None:
        pass

    def close(self) -> None:
        pass


class _LineProgress:
    """One complete line every ``interval_s`` (and a last one): fit for logs."""

    def __init__(self, stream: IO[str], interval_s: float) -> None:
        self._stream = stream
        self._interval_s = interval_s
        self._total = 0
        self._started = 0.0
        self._last_emit = 0.0
        self._state = (0, 0)
        self._emitted: tuple[int, int] | None = None

    def start(self, total: int) -> None:
        self._total = total
        self._started = self._last_emit = time.monotonic()

    def update(self, processed: int, failed: int) -> None:
        self._state = (processed, failed)
        now = time.monotonic()
        if now - self._last_emit >= self._interval_s:
            self._emit(now)

    def _emit(self, now: float) -> None:
        self._last_emit = now
        self._emitted = self._state
        processed, failed = self._state
        text = progress_text(processed, self._total, failed, now - self._started)
        print(f"embed: {text}", file=self._stream, flush=True)

    def close(self) -> None:
        if self._total and self._emitted != self._state:
            self._emit(time.monotonic())


class _TerminalProgress(_LineProgress):
    """A single redrawn line, for a terminal without tqdm."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(stream, _TTY_REFRESH_S)
        self._width = 0

    def _emit(self, now: float) -> None:
        self._last_emit = now
        self._emitted = self._state
        processed, failed = self._state
        line = "embed: " + progress_text(processed, self._total, failed, now - self._started)
        pad = " " * max(0, self._width - len(line))
        self._width = len(line)
        self._stream.write("\r" + line + pad)
        self._stream.flush()

    def close(self) -> None:
        if self._total:
            self._emit(time.monotonic())
            self._stream.write("\n")
            self._stream.flush()


class _TqdmProgress:
    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._bar: Any = None
        self._failed = -1

    def start(self, total: int) -> None:
        from tqdm import tqdm

        sizing: dict[str, Any] = {"dynamic_ncols": True}
        try:
            size = os.get_terminal_size(self._stream.fileno())
        except (AttributeError, ValueError, OSError):
            size = os.terminal_size((80, 24))
        # A terminal that reports 0 rows or columns (script(1), a fresh pty) would
        # otherwise get no bar at all from tqdm.
        if size.lines <= 0:
            sizing["nrows"] = 24
        if size.columns <= 0:
            sizing = {**sizing, "dynamic_ncols": False, "ncols": 80}
        self._bar = tqdm(total=total, desc="embed", unit="img", file=self._stream, **sizing)
        self.update(0, 0)

    def update(self, processed: int, failed: int) -> None:
        if self._bar is None:
            return
        if failed != self._failed:
            self._failed = failed
            self._bar.set_postfix(errors=failed, refresh=False)
        if processed > self._bar.n:
            self._bar.update(processed - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def make_progress(quiet: int, interval_s: float, stream: IO[str]) -> Progress:
    """The display for ``-q`` count ``quiet`` on ``stream`` (rules in the module docstring)."""
    if quiet >= 2:
        return _NoProgress()
    isatty = getattr(stream, "isatty", None)
    if quiet == 1 or not (isatty is not None and isatty()):
        return _LineProgress(stream, interval_s)
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return _TerminalProgress(stream)
    return _TqdmProgress(stream)
