"""``tritonvision embed``: folders, globs and URL lists to ``.npy`` + Parquet, resumable.

With ``--texts FILE`` the same job embeds texts (one per line) with the text model
instead, so a caption or label index is built like an image one.

The job itself (input expansion, chunk journal, resume, output layout) is the
:mod:`tritonvision.embed` application; this module is its command line: options, the
summary and exit codes (progress displays are in :mod:`._progress`). Imports stay
light: the job, the client, tqdm and pyarrow are imported when the command runs, and
tqdm/pyarrow are optional.

Progress goes to stderr: a tqdm bar when stderr is a terminal (a plain one-line bar
without tqdm); one-line messages every ``--progress-interval`` seconds when it is not
(logs, CI) or with ``-q``; nothing with ``-qq``. The summary goes to stdout.

Exit codes (:mod:`._common`): 0 every input embedded; 1 some failed (listed in
``BASE.errors.jsonl``); 2 bad usage, or Triton/the model unreachable; 130/143
interrupted by SIGINT/SIGTERM (re-run the same command to resume).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from tritonvision.contract import DEFAULT_MODEL

from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_SIGNAL_BASE,
    SubParsers,
    add_header_argument,
    add_server_argument,
    merge_headers,
    positive_float,
    positive_int,
    usage_error,
)

if TYPE_CHECKING:
    from tritonvision.client import ClientConfig
    from tritonvision.embed import Assembled, InputItem, OutputPaths, RunOutcome

__all__ = ["register", "run_embed"]

DEFAULT_BATCH_SIZE = 256
DEFAULT_PROGRESS_INTERVAL_S = 10.0
_LISTED_FAILURES = 3
_COMMAND = "embed"

_DESCRIPTION = """\
Embed images from files, folders (recursive), globs, URLs and lists of them with a
Triton-served encoder; write BASE.npy (N, D) float32 rows in input order,
BASE.sources.jsonl (the input of each row), BASE.parquet (source + embedding; needs
pyarrow) and BASE.errors.jsonl (failed inputs: source, error_type, message).
With --texts FILE, embed texts (one per line) with the text model instead."""

_EPILOG = """\
inputs:
  folders give every image below them (.jpg .jpeg .png .webp .gif .bmp .tif ...,
  sorted, hidden files skipped); quote globs ('imgs/**/*.png'); @FILE or --from-file
  FILE reads one path or URL per line ('#' comments; '-' is stdin). Exact repeats are
  embedded once. URLs on private/loopback addresses need --allow-private-addresses.

texts:
  --texts FILE (or '-' for stdin) embeds one UTF-8 text per line with the text model
  (MODEL_texts, or --text-model); each text is its own source (key). Blank lines are
  skipped, other lines kept exactly (less the newline), repeats embedded once; a line
  that is not UTF-8 is a failed input naming its line number. Not with image inputs.
  tritonvision embed --texts captions.txt -o captions --model clip_b32

resume:
  work in progress is saved in BASE.parts/ chunk by chunk; if the run is interrupted
  (Ctrl-C, kill), run the same command again: finished inputs are skipped, failed ones
  retried. BASE.parts/ is removed once every input is embedded, kept (for a retry of
  the failures) otherwise.

exit status: 0 all embedded, 1 some failed, 2 bad usage or server unreachable,
130/143 interrupted.

environment: TRITONVISION_* client settings (e.g. TRITONVISION_MAX_RETRIES) apply;
options given here win. TRITONVISION_HEADERS holds headers for Triton, one 'Name: value'
per line (use it for secrets: a process listing shows --header values)."""


def register(subparsers: SubParsers) -> argparse.ArgumentParser:
    """Add ``embed`` to the ``tritonvision`` subcommands."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
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
    add_server_argument(parser)
    add_header_argument(parser)
    parser.add_argument(
        "--model",
        default=None,
        metavar="NAME",
        help=f"encoder model name (default {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--texts",
        default=None,
        metavar="FILE",
        help="embed the texts in FILE, one per line ('-' is stdin), instead of images",
    )
    parser.add_argument(
        "--text-model",
        default=None,
        metavar="NAME",
        help="text model name for --texts (default: MODEL_texts)",
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
        type=positive_int,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help="inputs per chunk: one batch call, one saved chunk (default %(default)s)",
    )
    parser.add_argument(
        "--max-in-flight",
        type=positive_int,
        default=None,
        metavar="N",
        help="most inference requests outstanding at once (default: the client's, 32)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
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
        type=positive_float,
        default=DEFAULT_PROGRESS_INTERVAL_S,
        metavar="SECONDS",
        help="seconds between one-line progress messages (default %(default)s)",
    )
    parser.set_defaults(func=run_embed)
    return parser


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


def _error(message: str) -> int:
    return usage_error(_COMMAND, message)


def run_embed(args: argparse.Namespace) -> int:
    """The ``embed`` handler; returns the exit code (see the module docstring)."""
    started = time.monotonic()
    from tritonvision.client import ClientConfig
    from tritonvision.embed import (
        OutputPaths,
        UsageError,
        expand_inputs,
        pyarrow_problem,
        read_texts,
    )
    from tritonvision.errors import InvalidInput, TritonVisionError

    model: str = args.model or DEFAULT_MODEL
    server: str = args.server
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
        if args.texts is not None:
            if args.inputs or args.from_file:
                raise UsageError(
                    "--texts embeds texts, not images: give either --texts FILE or image "
                    "inputs (files, folders, globs, URLs, @LIST, --from-file), not both"
                )
            items = read_texts(args.texts, stdin=getattr(sys.stdin, "buffer", None))
        else:
            if args.text_model is not None:
                raise UsageError("--text-model is for --texts FILE; no --texts given")
            if not args.inputs and not args.from_file:
                raise UsageError(
                    "no inputs: give files, folders, globs, URLs or @LIST (or --texts FILE)"
                )
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
        config = ClientConfig.from_env()
        if args.headers:
            overrides["headers"] = merge_headers(config.headers, args.headers)
        config = config.replace(**overrides)
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
            return EXIT_SIGNAL_BASE + signum


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
    from tritonvision.client import VisionClient
    from tritonvision.embed import (
        JobAborted,
        UsageError,
        WorkDir,
        assemble_outputs,
        embed_pending,
    )
    from tritonvision.errors import TritonVisionError

    from ._progress import make_progress

    texts = args.texts is not None
    with VisionClient(server, model, config=config, text_model=args.text_model) as client:
        # A text job's vectors come from the text model: its name guards the work dir.
        job_model = client.text_model if texts else model
        try:
            info = client.text_model_info().result() if texts else client.model_info().result()
        except TritonVisionError as exc:
            what = "text model" if texts else "model"
            return _error(f"cannot use {what} {job_model!r} at {server}: {exc}")
        try:
            work = WorkDir.open(
                paths.parts,
                model=job_model,
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
            progress = make_progress(args.quiet, args.progress_interval, sys.stderr)
            embedding_started = time.monotonic()
            try:
                outcome = embed_pending(
                    client, pending, work, batch_size=args.batch_size, progress=progress
                )
            except JobAborted as exc:
                progress.close()
                return _error(
                    f"{exc}\n{work.chunk_count} chunks are saved in {paths.parts}; run the "
                    "same command again to resume"
                )
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
                model=job_model,
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
    return EXIT_FAILED if outcome.failures else EXIT_OK


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
