"""The job behind ``tritonvision embed``: inputs in, resumable chunks, final outputs.

Inputs (:func:`expand_inputs`), expanded once, deterministically, in the order given:

- a folder: every file below it with an image extension (:data:`IMAGE_EXTENSIONS`, any
  case), recursively, sorted by path; hidden files and folders (``.name``) are skipped
  and symlinked folders are not followed;
- a glob (``'photos/**/*.jpg'``, quoted so the shell leaves it alone; ``**`` recurses):
  the sorted matches; matched folders are expanded as above, matched files count only
  if they have an image extension;
- a file named explicitly is taken as it is, whatever its extension;
- an ``http(s)://`` URL;
- ``@list.txt`` or ``--from-file list.txt`` (``-`` reads stdin): one URL or path per
  line, in file order; blank lines and lines starting with ``#`` are skipped; a folder
  line is expanded; relative paths are relative to the working directory. A listed path
  that does not exist becomes a failed item (in the manifest), not a usage error.

A named path, folder or glob that matches nothing is a usage error. Every input gets a
**key**: the URL as written, or the absolute, normalised path (``os.path.abspath``).
Exact repeats of a key are dropped (the first occurrence keeps its place). The key is
what outputs, the manifest and resume use.

Output layout, for ``--output out.npy`` (``BASE`` is ``out``; ``out.parquet`` or plain
``out`` name the same ``BASE``)::

    BASE.npy              (N, D) float32: one row per embedded input, in input order
    BASE.sources.jsonl    line i is {"row": i, "source": KEY}: the input of row i
    BASE.parquet          columns source (string) and embedding
                          (fixed_size_list<float32>[D]), same rows; needs pyarrow
    BASE.errors.jsonl     one line per failed input, in input order:
                          {"source", "error_type", "message"}; empty if none failed
    BASE.parts/           the work dir, while the job is unfinished:
        job.json          the model (and embedding size) the saved vectors came from
        chunk-000001.npz  a committed chunk: sources (str array), embeddings (n, D)
        lock              held (flock) by the running job: one writer per work dir

Resume. Inputs are embedded in chunks of ``--batch-size`` (one
``batch_embed_images`` call each, one shared client for the whole job). A chunk's
successful rows are written to a temporary file in ``BASE.parts/``, fsynced, and
renamed into place (``os.replace``): a chunk file is there completely or not at all,
so the chunk files *are* the journal of finished inputs. A run killed at any point
(Ctrl-C, SIGTERM, kill -9) loses at most the chunks in flight; the next run with the
same ``--output`` reads the keys of every chunk and embeds only the inputs not in
them. Final assembly places each key's row at that key's position in the *current*
input order (first copy wins), so nothing is lost, duplicated or reordered, and a
resumed job's outputs equal a clean run's. Failed inputs are never recorded as
finished: every re-run tries them again.

When every input has been embedded, the outputs are written (to temporary files in the
work dir, then renamed into place, with SIGINT/SIGTERM held back for those few
renames) and the work dir is removed. If some inputs failed, the work dir is kept,
so re-running the same command retries only the failed ones (and any new inputs) and
rewrites the outputs; delete it, or pass ``--restart``, to start over. A finished
output (``BASE.npy`` or ``BASE.parquet`` present, no work dir) is not overwritten
without ``--restart``. A work dir made with another model is refused.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import glob
import json
import logging
import os
import re
import shutil
import signal
import threading
import zipfile
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any, Protocol

import numpy as np
import numpy.typing as npt

from tritonvision.errors import ServerUnavailable, TritonVisionError

from ._results import BatchEmbedding
from ._sync_client import PendingBatchEmbedding, VisionClient

__all__ = [
    "IMAGE_EXTENSIONS",
    "Assembled",
    "Failure",
    "InputItem",
    "JobAborted",
    "OutputPaths",
    "Progress",
    "RunOutcome",
    "UsageError",
    "WorkDir",
    "assemble_outputs",
    "embed_pending",
    "expand_inputs",
    "pyarrow_problem",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
)
"""Extensions (lower case) picked up from folders and globs."""

JOB_FORMAT = 1

# The client's own rule for "this string is a URL" (scheme of 2+ characters).
_URL_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+://")
_GLOB_MAGIC = re.compile(r"[*?[]")
_CHUNK_NAME = re.compile(r"^chunk-(\d+)\.npz$")
_PARQUET_ROWS_PER_GROUP = 65536


class UsageError(Exception):
    """Bad inputs or options; the CLI prints it and exits 2."""


class JobAborted(Exception):
    """The job cannot go on (Triton gone, a non-item error); finished chunks are kept."""


# ---------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class InputItem:
    """One input: its key (URL as written, or absolute path) and whether it is a URL."""

    key: str
    is_url: bool

    @property
    def source(self) -> str | Path:
        """What the client is given: a ``Path`` is never mistaken for base64 text."""
        return self.key if self.is_url else Path(self.key)


class _Collector:
    def __init__(self) -> None:
        self.items: list[InputItem] = []
        self._seen: set[str] = set()

    def add_url(self, url: str) -> None:
        self._add(InputItem(url, is_url=True))

    def add_path(self, path: str) -> None:
        self._add(InputItem(os.path.abspath(path), is_url=False))

    def _add(self, item: InputItem) -> None:
        if item.key not in self._seen:
            self._seen.add(item.key)
            self.items.append(item)


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _folder_images(root: str) -> list[str]:
    def warn(exc: OSError) -> None:
        logger.warning("skipping unreadable folder: %s", exc)

    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=warn):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(
            os.path.join(dirpath, name)
            for name in filenames
            if not name.startswith(".") and _is_image_name(name)
        )
    # By path components, so a folder's files sort together whatever its name.
    found.sort(key=lambda p: os.path.relpath(p, root).split(os.sep))
    return found


def _add_path_or_folder(collector: _Collector, path: str) -> None:
    if os.path.isdir(path):
        for image in _folder_images(path):
            collector.add_path(image)
    else:
        collector.add_path(path)


def _read_list(collector: _Collector, list_file: str, stdin: IO[str] | None) -> None:
    try:
        if list_file == "-":
            if stdin is None:
                raise UsageError("cannot read the input list from stdin")
            lines = stdin.read().splitlines()
        else:
            path = os.path.expanduser(list_file)
            with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
                lines = f.read().splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read input list {list_file!r}: {exc.strerror or exc}") from exc
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if _URL_PREFIX.match(entry):
            collector.add_url(entry)
        else:
            # A missing listed file is the item's failure (manifest), not a usage error.
            _add_path_or_folder(collector, os.path.expanduser(entry))


def _add_argument(collector: _Collector, arg: str, stdin: IO[str] | None) -> None:
    if arg.startswith("@") and len(arg) > 1:
        _read_list(collector, arg[1:], stdin)
        return
    if _URL_PREFIX.match(arg):
        collector.add_url(arg)
        return
    path = os.path.expanduser(arg)
    if os.path.exists(path):
        _add_path_or_folder(collector, path)
        return
    if _GLOB_MAGIC.search(path):
        matches = sorted(glob.glob(path, recursive=True))
        if not matches:
            raise UsageError(f"no file matches {arg!r}")
        for match in matches:
            if os.path.isdir(match):
                _add_path_or_folder(collector, match)
            elif _is_image_name(match):
                collector.add_path(match)
        return
    raise UsageError(f"no such file or folder: {arg!r}")


def expand_inputs(
    arguments: Sequence[str],
    list_files: Sequence[str] = (),
    *,
    stdin: IO[str] | None = None,
) -> list[InputItem]:
    """The inputs of a job, in order, without repeats (rules in the module docstring).

    ``arguments`` are the command line's inputs; ``list_files`` (``--from-file``) are
    read after them. Raises :class:`UsageError` for a named input that matches nothing,
    an unreadable list, or when there are no inputs at all.
    """
    collector = _Collector()
    for arg in arguments:
        _add_argument(collector, arg, stdin)
    for list_file in list_files:
        _read_list(collector, list_file, stdin)
    if not collector.items:
        named = ", ".join(repr(a) for a in [*arguments, *list_files]) or "nothing"
        raise UsageError(
            f"no images found in {named} (folders and globs take files ending in "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return collector.items


# ---------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class OutputPaths:
    """Where a job's outputs go, all derived from ``base`` (see the module docstring)."""

    base: Path

    @classmethod
    def from_option(cls, output: str) -> OutputPaths:
        path = Path(os.path.expanduser(output))
        if path.suffix.lower() in (".npy", ".parquet"):
            path = path.with_suffix("")
        if not path.name or path.name in (".", ".."):
            raise UsageError(f"--output needs a file name, got {output!r}")
        return cls(path)

    def _with(self, suffix: str) -> Path:
        return self.base.with_name(self.base.name + suffix)

    @property
    def npy(self) -> Path:
        return self._with(".npy")

    @property
    def sources(self) -> Path:
        return self._with(".sources.jsonl")

    @property
    def parquet(self) -> Path:
        return self._with(".parquet")

    @property
    def errors(self) -> Path:
        return self._with(".errors.jsonl")

    @property
    def parts(self) -> Path:
        return self._with(".parts")

    def finished_outputs(self) -> list[Path]:
        """Outputs of a finished run that a new run would overwrite."""
        return [p for p in (self.npy, self.parquet) if p.exists()]


def pyarrow_problem() -> str | None:
    """Why Parquet cannot be written (pyarrow, the optional ``embed`` extra), or None."""
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError as exc:
        # Installed but unusable happens too (a pyarrow built for NumPy 2 on NumPy 1).
        return "it is not installed" if exc.name == "pyarrow" else f"it cannot be imported: {exc}"
    return None


# --------------------------------------------------------------------------- work dir


def _fsync_dir(path: Path) -> None:
    # Makes a rename durable across power loss; not every platform can open a folder.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _lock(file: IO[bytes]) -> bool:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock, documented limitation
        return True
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


class WorkDir:
    """``BASE.parts/``: the committed chunks of an unfinished job, and its lock.

    Use :meth:`open`; then :meth:`write_chunk` per finished chunk; at the end either
    :meth:`discard` (job complete) or :meth:`close` (keep it for a re-run).
    """

    def __init__(self, path: Path, lock_file: IO[bytes], job: dict[str, Any]) -> None:
        self.path = path
        self._lock_file: IO[bytes] | None = lock_file
        self.job = job
        self.done_keys: set[str] = set()
        self._chunks: list[tuple[int, Path]] = []
        self.resumed = False

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        model: str,
        embedding_dim: int | None,
        server: str,
        restart: bool = False,
    ) -> WorkDir:
        """Lock (or create) the work dir, check it belongs to ``model``, read its chunks.

        Raises :class:`UsageError` if another run holds it or it was made with another
        model or embedding size (``--restart`` discards it instead).
        """
        for trash in path.parent.glob(glob.escape(path.name) + ".removing-*"):
            shutil.rmtree(trash, ignore_errors=True)  # an interrupted discard()
        existed = path.is_dir()
        try:
            path.mkdir(parents=True, exist_ok=True)
            lock_file = open(path / "lock", "ab")  # noqa: SIM115 - held until close()
        except OSError as exc:
            raise UsageError(f"cannot use work dir {str(path)!r}: {exc}") from exc
        if not _lock(lock_file):
            lock_file.close()
            raise UsageError(
                f"another 'tritonvision embed' is writing to {str(path)!r}; wait for it "
                "to finish or stop it"
            )
        try:
            if restart:
                cls._clear(path)
            job = cls._check_job(path, model=model, embedding_dim=embedding_dim, server=server)
            work = cls(path, lock_file, job)
            work._load_chunks()
        except BaseException:
            lock_file.close()
            raise
        work.resumed = existed and not restart
        return work

    @staticmethod
    def _clear(path: Path) -> None:
        for entry in path.iterdir():
            if entry.name == "lock":
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    @staticmethod
    def _check_job(
        path: Path, *, model: str, embedding_dim: int | None, server: str
    ) -> dict[str, Any]:
        job_file = path / "job.json"
        hint = f"delete {str(path)!r} or pass --restart to start over"
        if job_file.exists():
            try:
                job: dict[str, Any] = json.loads(job_file.read_text(encoding="utf-8"))
                saved_model = job["model"]
                saved_dim = job.get("embedding_dim")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise UsageError(f"unreadable {str(job_file)!r} ({exc}); {hint}") from exc
            if saved_model != model:
                raise UsageError(
                    f"the saved progress in {str(path)!r} was embedded with model "
                    f"{saved_model!r}, not {model!r}; {hint}"
                )
            if saved_dim is not None and embedding_dim is not None and saved_dim != embedding_dim:
                raise UsageError(
                    f"the saved progress in {str(path)!r} has {saved_dim}-dim embeddings, "
                    f"model {model!r} now gives {embedding_dim}; {hint}"
                )
            return job
        job = {
            "format": JOB_FORMAT,
            "model": model,
            "embedding_dim": embedding_dim,
            "server": server,
        }
        tmp = path / ".job.json.tmp"
        tmp.write_text(json.dumps(job, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, job_file)
        _fsync_dir(path)
        return job

    def _load_chunks(self) -> None:
        for entry in self.path.iterdir():
            # Leftovers of a run killed mid-write: never renamed, so never committed.
            if entry.name.startswith(".") and ".tmp" in entry.name:
                with contextlib.suppress(OSError):
                    entry.unlink()
        chunks: list[tuple[int, Path]] = []
        for entry in self.path.iterdir():
            match = _CHUNK_NAME.match(entry.name)
            if match:
                chunks.append((int(match.group(1)), entry))
        chunks.sort()
        for number, chunk in chunks:
            try:
                keys = self._read_keys(chunk)
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
                # Only reachable if the file was damaged after its atomic rename.
                logger.warning(
                    "ignoring unreadable chunk %s (%s); its inputs are redone", chunk, exc
                )
                with contextlib.suppress(OSError):
                    chunk.rename(chunk.with_name(chunk.name + ".corrupt"))
                continue
            self.done_keys.update(keys)
            self._chunks.append((number, chunk))

    @staticmethod
    def _read_keys(chunk: Path) -> list[str]:
        with np.load(chunk, allow_pickle=False) as data:
            keys: list[str] = data["sources"].tolist()
            shape = data["embeddings"].shape
        if len(shape) != 2 or shape[0] != len(keys):
            raise ValueError(f"{len(keys)} sources but embeddings of shape {shape}")
        return keys

    @property
    def chunk_count(self) -> int:
        return len(self._chunks)

    def chunks(self) -> Iterator[tuple[list[str], npt.NDArray[np.float32]]]:
        """Each committed chunk's keys and rows, in the order they were written."""
        for _, chunk in self._chunks:
            with np.load(chunk, allow_pickle=False) as data:
                keys: list[str] = data["sources"].tolist()
                rows = np.asarray(data["embeddings"], dtype=np.float32)
            yield keys, rows

    def write_chunk(self, keys: Sequence[str], embeddings: npt.NDArray[np.float32]) -> Path:
        """Commit one chunk atomically (temp file, fsync, rename)."""
        if len(keys) != len(embeddings):
            raise ValueError("one embedding row per key")
        number = self._chunks[-1][0] + 1 if self._chunks else 1
        final = self.path / f"chunk-{number:06d}.npz"
        tmp = self.path / f".{final.name}.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, sources=np.asarray(list(keys), dtype=np.str_), embeddings=embeddings)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(self.path)
        self._chunks.append((number, final))
        self.done_keys.update(keys)
        return final

    def temp_path(self, name: str) -> Path:
        """A scratch path in the work dir (same file system as the outputs)."""
        return self.path / f".{name}.tmp"

    def close(self) -> None:
        """Release the lock and keep the work dir (for a re-run)."""
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def discard(self) -> None:
        """Remove the work dir (the job is complete)."""
        # Renamed first, so an interrupted removal never leaves a half-empty work dir
        # that a re-run would take for saved progress.
        trash = self.path.with_name(f"{self.path.name}.removing-{os.getpid()}")
        with deferred_signals():
            os.replace(self.path, trash)
        self.close()
        shutil.rmtree(trash, ignore_errors=True)


# ----------------------------------------------------------------------------- signals


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


# ------------------------------------------------------------------------- embedding


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
    baseline = client.stats()
    window: deque[tuple[Sequence[InputItem], PendingBatchEmbedding]] = deque()
    chunks = _chunks(pending, batch_size)
    try:
        while True:
            while len(window) < chunks_in_flight:
                chunk = next(chunks, None)
                if chunk is None:
                    break
                window.append((chunk, client.batch_embed_images([i.source for i in chunk])))
            if not window:
                break
            chunk, future = window[0]
            while not concurrent.futures.wait([future], timeout=poll_s).done:
                # The client's counters move per item, so the bar does not jump by chunks.
                now = client.stats()
                failed = now.failed - baseline.failed
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


# --------------------------------------------------------------------------- assembly


@dataclass(frozen=True)
class Assembled:
    """The outputs written by :func:`assemble_outputs`."""

    rows: int
    dim: int
    written: Mapping[str, Path]
    removed_stale: tuple[Path, ...] = ()


def _parquet_text(text: str) -> str:
    # Parquet strings are UTF-8; a path with undecodable bytes keeps them as \\x escapes.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _write_lines(path: Path, lines: Iterator[str]) -> None:
    # backslashreplace turns a lone surrogate (undecodable file name) into a JSON \\u
    # escape, which reads back as the same string.
    with open(path, "w", encoding="utf-8", errors="backslashreplace", newline="\n") as f:
        for line in lines:
            f.write(line)
            f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _write_parquet(
    path: Path, keys: Sequence[str], vectors: npt.NDArray[np.float32], model: str
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = int(vectors.shape[1])
    schema = pa.schema(
        [("source", pa.string()), ("embedding", pa.list_(pa.float32(), dim))],
        metadata={"tritonvision.model": model, "tritonvision.embedding_dim": str(dim)},
    )
    with pq.ParquetWriter(str(path), schema) as writer:
        for start in range(0, max(1, len(keys)), _PARQUET_ROWS_PER_GROUP):
            stop = min(len(keys), start + _PARQUET_ROWS_PER_GROUP)
            block = np.ascontiguousarray(vectors[start:stop], dtype=np.float32)
            embedding = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), dim)
            sources = pa.array([_parquet_text(k) for k in keys[start:stop]], pa.string())
            writer.write_table(pa.Table.from_arrays([sources, embedding], schema=schema))


def assemble_outputs(
    items: Sequence[InputItem],
    work: WorkDir,
    paths: OutputPaths,
    *,
    failures: Mapping[str, Failure],
    embedding_dim: int | None,
    parquet: bool,
    model: str,
) -> Assembled:
    """Write the outputs from the committed chunks, in the order of ``items``.

    Rows are scattered chunk by chunk into a memory-mapped ``.npy``, so memory stays
    at one chunk. Every output is written in the work dir, then all are renamed into
    place together (signals held back). A stale ``BASE.parquet`` is removed when
    Parquet is not written this time, so no output disagrees with another.
    """
    done = [item.key for item in items if item.key in work.done_keys]
    position = {key: row for row, key in enumerate(done)}
    dim = embedding_dim
    if dim is None:
        dim = next((rows.shape[1] for _, rows in work.chunks()), 0)
    count = len(done)

    tmp_npy = work.temp_path("out.npy")
    filled = np.zeros(count, dtype=bool)
    if count * dim == 0:
        with open(tmp_npy, "wb") as f:  # a handle: np.save would append ".npy" to a name
            np.save(f, np.zeros((count, dim), dtype=np.float32))
        filled[:] = True
    else:
        out = np.lib.format.open_memmap(  # type: ignore[no-untyped-call]
            tmp_npy, mode="w+", dtype=np.float32, shape=(count, dim)
        )
        for keys, rows in work.chunks():
            index = np.fromiter(
                (position.get(k, -1) for k in keys), dtype=np.int64, count=len(keys)
            )
            take = index >= 0
            take[take] = ~filled[index[take]]  # first copy of a key wins
            out[index[take]] = rows[take]
            filled[index[take]] = True
        out.flush()
        del out
        with open(tmp_npy, "rb+") as f:
            os.fsync(f.fileno())
    if not filled.all():  # every done key came from a chunk: cannot happen
        raise RuntimeError(f"{int((~filled).sum())} rows missing from {work.path}")

    written: dict[str, Path] = {"npy": paths.npy}
    temps: dict[str, Path] = {"npy": tmp_npy}
    temps["sources"] = work.temp_path("out.sources.jsonl")
    _write_lines(
        temps["sources"],
        (json.dumps({"row": r, "source": k}, ensure_ascii=False) for r, k in enumerate(done)),
    )
    written["sources"] = paths.sources
    if parquet:
        temps["parquet"] = work.temp_path("out.parquet")
        vectors = np.load(tmp_npy, mmap_mode="r")
        _write_parquet(temps["parquet"], done, vectors, model)
        del vectors
        written["parquet"] = paths.parquet
    temps["errors"] = work.temp_path("out.errors.jsonl")
    _write_lines(temps["errors"], (failures[i.key].to_json() for i in items if i.key in failures))
    written["errors"] = paths.errors

    stale: list[Path] = []
    paths.base.parent.mkdir(parents=True, exist_ok=True)
    with deferred_signals():
        for name, tmp in temps.items():
            os.replace(tmp, written[name])
        if not parquet and paths.parquet.exists():
            paths.parquet.unlink()
            stale.append(paths.parquet)
    _fsync_dir(paths.base.parent)
    return Assembled(rows=count, dim=dim, written=written, removed_stale=tuple(stale))
