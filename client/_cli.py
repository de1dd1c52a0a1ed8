"""``tritonvision embed``: folders, globs and URL lists to ``.npy`` + Parquet, resumable.

The job itself (input expansion, chunk journal, resume, output layout) is in
:mod:`tritonvision.client._embed_job`; this module is the command line: options,
progress display, the summary and exit codes. Imports stay light: the job, tqdm and
pyarrow are imported when the command runs, and tqdm/pyarrow are optional.

Progress goes to stderr: a tqdm bar when stderr is a terminal (a plain one-line bar
without tqdm); one-line messages every ``--progress-interval`` seconds when it is not
(logs, CI) or with ``-q``; nothing with ``-qq``. The summary goes to stdout.

Exit codes: 0 every input embedded; 1 some failed (listed in ``BASE.errors.jsonl``);
2 bad usage, or Triton/the model unreachable; 130/143 interrupted by SIGINT/SIGTERM
(re-run the same command to resume).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._config import ClientConfig
    from ._embed_job import Assembled, InputItem, OutputPaths, Progress, RunOutcome

__all__ = ["add_embed_parser", "run_embed"]

DEFAULT_SERVER = "http://127.0.0.1:8000"
DEFAULT_BATCH_SIZE = 256
DEFAULT_PROGRESS_INTERVAL_S = 10.0
EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
_EXIT_SIGNAL_BASE = 128
_TTY_REFRESH_S = 0.2
_LISTED_FAILURES = 3

_DESCRIPTION = """\
Embed images from files, folders (recursive), globs, URLs and lists of them with a
Triton-served encoder; write BASE.npy (N, D) float32 rows in input order,
BASE.sources.jsonl (the input of each row), BASE.parquet (source + embedding; needs
pyarrow) and BASE.errors.jsonl (failed inputs: source, error_type, message)."""

_EPILOG = """\
inputs:
  folders give every image below them (.jpg .jpeg .png .webp .gif .bmp .tif ...,
  sorted, hidden files skipped); quote globs ('imgs/**/*.png'); @FILE or --from-file
  FILE reads one path or URL per line ('#' comments; '-' is stdin). Exact repeats are
  embedded once. URLs on private/loopback addresses need --allow-private-addresses.

resume:
  work in progress is saved in BASE.parts/ chunk by chunk; if the run is interrupted
  (Ctrl-C, kill), run the same command again: finished inputs are skipped, failed ones
  retried. BASE.parts/ is removed once every input is embedded, kept (for a retry of
  the failures) otherwise.

exit status: 0 all embedded, 1 some failed, 2 bad usage or server unreachable,
130/143 interrupted.

environment: TRITONVISION_* client settings (e.g. TRITONVISION_MAX_RETRIES) apply;
options given here win."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def add_embed_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``embed`` on the ``tritonvision`` command's subparsers."""
    parser = subparsers.add_parser(
        "embed",
        help="embed folders, globs and URL lists to .npy + Parquet (resumable)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="image file, folder, glob, http(s) URL, or @LIST (a file of paths/URLs)",
    )
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="FILE",
        help="BASE.npy, BASE.parquet (implies --parquet) or BASE: where outputs go",
    )
    parser.add_argument(
        "--server",
        default=DEFAULT_SERVER,
        metavar="URL",
        help="Triton URL, http://host:8000 or grpc://host:8001 (default %(default)s)",
    )
    parser.add_argument(
        "--model", default=None, metavar="NAME", help="encoder model name (default vision_encoder)"
    )
    parser.add_argument(
        "--from-file",
        action="append",
        default=[],
        metavar="FILE",
        help="read inputs from FILE, one per line (repeatable; '-' is stdin)",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help="inputs per chunk: one batch call, one saved chunk (default %(default)s)",
    )
    parser.add_argument(
        "--max-in-flight",
        type=_positive_int,
        default=None,
        metavar="N",
        help="most inference requests outstanding at once (default: the client's, 32)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="deadline of one inference request (default: the client's, 30)",
    )
    parser.add_argument(
        "--allow-private-addresses",
        action="store_true",
        help="fetch image URLs on private/loopback addresses (e.g. localhost)",
    )
    parser.add_argument(
        "--parquet",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write BASE.parquet (default: when pyarrow is installed; --parquet requires it)",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="discard saved progress and finished outputs at --output; embed everything again",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="count",
        default=0,
        help="-q: one-line progress messages instead of a bar; -qq: no progress",
    )
    parser.add_argument(
        "--progress-interval",
        type=_positive_float,
        default=DEFAULT_PROGRESS_INTERVAL_S,
        metavar="SECONDS",
        help="seconds between one-line progress messages (default %(default)s)",
    )
    parser.set_defaults(func=run_embed)


# ---------------------------------------------------------------------------- progress


def _duration(seconds: float) -> str:
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _progress_text(processed: int, total: int, failed: int, elapsed_s: float) -> str:
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
        text = _progress_text(processed, self._total, failed, now - self._started)
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
        line = "embed: " + _progress_text(processed, self._total, failed, now - self._started)
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


def _make_progress(quiet: int, interval_s: float, stream: IO[str]) -> Progress:
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


# ----------------------------------------------------------------------------- signals


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[list[int]]:
    """Make SIGTERM stop the job like Ctrl-C (saved chunks kept, clean exit).

    Yields the list of SIGTERMs received, to tell the two apart in the exit code.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------------------- main


def _error(message: str) -> int:
    print(f"tritonvision embed: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _server_url(text: str) -> str:
    return text if "://" in text else f"http://{text}"


def run_embed(args: argparse.Namespace) -> int:
    """The ``embed`` handler; returns the exit code (see the module docstring)."""
    started = time.monotonic()
    from tritonvision.errors import InvalidInput, TritonVisionError

    from ._config import DEFAULT_MODEL, ClientConfig
    from ._embed_job import (
        OutputPaths,
        UsageError,
        expand_inputs,
        pyarrow_problem,
    )

    model: str = args.model or DEFAULT_MODEL
    server = _server_url(args.server)
    try:
        paths = OutputPaths.from_option(args.output)
        want_parquet: bool | None = args.parquet
        if want_parquet is None and args.output.lower().endswith(".parquet"):
            want_parquet = True
        pyarrow_missing = pyarrow_problem()
        have_pyarrow = pyarrow_missing is None
        if want_parquet and pyarrow_missing:
            raise UsageError(
                f"Parquet output needs pyarrow, but {pyarrow_missing}: pip install "
                "'tritonvision[embed]' (or pip install pyarrow), or write .npy only "
                "with --no-parquet"
            )
        if not args.inputs and not args.from_file:
            raise UsageError("no inputs: give files, folders, globs, URLs or @LIST")
        items = expand_inputs(args.inputs, args.from_file, stdin=sys.stdin)
        finished = paths.finished_outputs()
        if finished and not paths.parts.is_dir() and not args.restart:
            raise UsageError(
                f"{finished[0]} exists from a finished run; pass --restart to embed again "
                "and replace it, or choose another --output"
            )
        overrides: dict[str, Any] = {}
        if args.timeout is not None:
            overrides["request_timeout_s"] = args.timeout
        if args.max_in_flight is not None:
            overrides["max_in_flight"] = args.max_in_flight
        if args.allow_private_addresses:
            overrides["allow_private_addresses"] = True
        config = ClientConfig.from_env().replace(**overrides)
    except (UsageError, InvalidInput) as exc:
        return _error(str(exc))

    parquet = bool(want_parquet) if want_parquet is not None else have_pyarrow
    if want_parquet is None and pyarrow_missing and args.quiet < 2:
        print(
            f"note: no Parquet output, pyarrow: {pyarrow_missing}; writing .npy + "
            ".sources.jsonl (pip install 'tritonvision[embed]' for Parquet)",
            file=sys.stderr,
        )
    with _sigterm_interrupts() as terminated:
        try:
            return _run_job(args, items, paths, config, model, server, parquet, started)
        except OSError as exc:  # the outputs or the work dir cannot be written
            if isinstance(exc, TritonVisionError):  # ServerUnavailable is a ConnectionError
                raise
            return _error(f"{exc}; saved progress (if any) stays in {paths.parts}")
        except KeyboardInterrupt:
            signum = terminated[0] if terminated else signal.SIGINT
            name = signal.Signals(signum).name
            saved = (
                f": finished chunks are saved in {paths.parts}; run the same command "
                "again to resume"
                if paths.parts.is_dir()
                else ""
            )
            print(f"\ninterrupted ({name}){saved}", file=sys.stderr)
            return _EXIT_SIGNAL_BASE + signum


def _run_job(
    args: argparse.Namespace,
    items: list[InputItem],
    paths: OutputPaths,
    config: ClientConfig,
    model: str,
    server: str,
    parquet: bool,
    started: float,
) -> int:
    from tritonvision.errors import TritonVisionError

    from ._embed_job import (
        JobAborted,
        UsageError,
        WorkDir,
        assemble_outputs,
        embed_pending,
    )
    from ._sync_client import VisionClient

    with VisionClient(server, model, config=config) as client:
        try:
            info = client.model_info().result()
        except TritonVisionError as exc:
            return _error(f"cannot use model {model!r} at {server}: {exc}")
        try:
            work = WorkDir.open(
                paths.parts,
                model=model,
                embedding_dim=info.embedding_dim,
                server=server,
                restart=args.restart,
            )
        except UsageError as exc:
            return _error(str(exc))
        try:
            pending = [item for item in items if item.key not in work.done_keys]
            skipped = len(items) - len(pending)
            if skipped and args.quiet < 2:
                print(
                    f"resuming from {paths.parts}: {skipped} of {len(items)} inputs already "
                    f"embedded, {len(pending)} to go",
                    file=sys.stderr,
                )
            progress = _make_progress(args.quiet, args.progress_interval, sys.stderr)
            embedding_started = time.monotonic()
            try:
                outcome = embed_pending(
                    client, pending, work, batch_size=args.batch_size, progress=progress
                )
            except JobAborted as exc:
                progress.close()
                print(
                    f"tritonvision embed: error: {exc}\n{work.chunk_count} chunks are saved "
                    f"in {paths.parts}; run the same command again to resume",
                    file=sys.stderr,
                )
                return EXIT_USAGE
            except BaseException:
                progress.close()  # before the interruption message
                raise
            progress.close()
            embedding_s = time.monotonic() - embedding_started
            assembled = assemble_outputs(
                items,
                work,
                paths,
                failures=outcome.failures,
                embedding_dim=info.embedding_dim,
                parquet=parquet,
                model=model,
            )
            keep = bool(outcome.failures)
            if not keep:
                work.discard()
        finally:
            work.close()

    _print_summary(
        items=len(items),
        skipped=skipped,
        outcome=outcome,
        assembled=assembled,
        elapsed_s=time.monotonic() - started,
        embedding_s=embedding_s,
        parts=paths.parts if keep else None,
        private_hint=not args.allow_private_addresses,
    )
    return EXIT_SOME_FAILED if outcome.failures else EXIT_OK


def _print_summary(
    *,
    items: int,
    skipped: int,
    outcome: RunOutcome,
    assembled: Assembled,
    elapsed_s: float,
    embedding_s: float,
    parts: Path | None,
    private_hint: bool,
) -> None:
    failed = len(outcome.failures)
    rate = outcome.processed / embedding_s if embedding_s > 0 else 0.0
    print(
        f"embedded {assembled.rows} of {items} inputs ({outcome.embedded} now, {skipped} "
        f"skipped as already done), {failed} failed, in {elapsed_s:.1f} s "
        f"({rate:.1f} items/s)"
    )
    written = assembled.written
    print(f"  embeddings  {written['npy']}  ({assembled.rows}, {assembled.dim}) float32")
    print(f"  sources     {written['sources']}")
    if "parquet" in written:
        print(f"  parquet     {written['parquet']}")
    for stale in assembled.removed_stale:
        print(f"  removed     {stale} (stale: no Parquet written this run)")
    print(f"  failures    {written['errors']}  ({failed})")
    if failed:
        for failure in list(outcome.failures.values())[:_LISTED_FAILURES]:
            print(f"    {failure.error_type}: {failure.message}")
        if failed > _LISTED_FAILURES:
            print(f"    ... {failed - _LISTED_FAILURES} more in {written['errors']}")
    if private_hint and any(f.error_type == "BlockedAddress" for f in outcome.failures.values()):
        print("  hint: image URLs on private or loopback addresses need --allow-private-addresses")
    if parts is not None:
        print(
            f"kept {parts} so that running the same command again retries only the "
            f"{failed} failed inputs (delete it, or pass --restart, to start over)"
        )
    sys.stdout.flush()
