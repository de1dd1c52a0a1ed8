"""``BASE.parts/``: the work dir of an unfinished job, its chunk journal and its lock.

Layout::

    BASE.parts/
        job.json          the model (and embedding size) the saved vectors came from
        chunk-000001.npz  a committed chunk: sources (str array), embeddings (n, D)
        lock              held (flock) by the running job: one writer per work dir

A chunk's successful rows are written to a temporary file in the work dir, fsynced, and
renamed into place (``os.replace``): a chunk file is there completely or not at all, so
the chunk files *are* the journal of finished inputs. A run killed at any point (Ctrl-C,
SIGTERM, kill -9) loses at most the chunks in flight; the next run reads the keys of
every chunk and embeds only the inputs not in them. A work dir made with another model
(or embedding size) is refused; ``restart=True`` clears it instead.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
import shutil
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from ._atomic import deferred_signals, fsync_dir
from ._errors import UsageError

__all__ = ["JOB_FORMAT", "WorkDir"]

logger = logging.getLogger(__name__)

JOB_FORMAT = 1
"""Version of ``job.json``."""

_CHUNK_NAME = re.compile(r"^chunk-(\d+)\.npz$")


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
        fsync_dir(path)
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
        fsync_dir(self.path)
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
