"""A job's outputs: where they go (:class:`OutputPaths`) and their assembly.

Output layout, for ``--output out.npy`` (``BASE`` is ``out``; ``out.parquet`` or plain
``out`` name the same ``BASE``)::

    BASE.npy              (N, D) float32: one row per embedded input, in input order
    BASE.sources.jsonl    line i is {"row": i, "source": KEY}: the input of row i
    BASE.parquet          columns source (string) and embedding
                          (fixed_size_list<float32>[D]), same rows; needs pyarrow
    BASE.errors.jsonl     one line per failed input, in input order:
                          {"source", "error_type", "message"}; empty if none failed
    BASE.parts/           the work dir, while the job is unfinished (see ``_workdir``)

Final assembly places each key's row at that key's position in the *current* input
order (first copy wins), so nothing is lost, duplicated or reordered, and a resumed
job's outputs equal a clean run's. The outputs are written to temporary files in the
work dir, then renamed into place together, with SIGINT/SIGTERM held back for those few
renames.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tritonvision.contract import (
    ERRORS_SUFFIX,
    NPY_SUFFIX,
    PARQUET_SUFFIX,
    PARTS_SUFFIX,
    SOURCES_SUFFIX,
)

from ._atomic import deferred_signals, fsync_dir
from ._errors import UsageError
from ._inputs import InputItem
from ._run import Failure
from ._workdir import WorkDir

__all__ = ["Assembled", "OutputPaths", "assemble_outputs", "pyarrow_problem"]

_PARQUET_ROWS_PER_GROUP = 65536


@dataclass(frozen=True)
class OutputPaths:
    """Where a job's outputs go, all derived from ``base`` (see the module docstring)."""

    base: Path

    @classmethod
    def from_option(cls, output: str) -> OutputPaths:
        path = Path(os.path.expanduser(output))
        if path.suffix.lower() in (NPY_SUFFIX, PARQUET_SUFFIX):
            path = path.with_suffix("")
        if not path.name or path.name in (".", ".."):
            raise UsageError(f"--output needs a file name, got {output!r}")
        return cls(path)

    def _with(self, suffix: str) -> Path:
        return self.base.with_name(self.base.name + suffix)

    @property
    def npy(self) -> Path:
        return self._with(NPY_SUFFIX)

    @property
    def sources(self) -> Path:
        return self._with(SOURCES_SUFFIX)

    @property
    def parquet(self) -> Path:
        return self._with(PARQUET_SUFFIX)

    @property
    def errors(self) -> Path:
        return self._with(ERRORS_SUFFIX)

    @property
    def parts(self) -> Path:
        return self._with(PARTS_SUFFIX)

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
    fsync_dir(paths.base.parent)
    return Assembled(rows=count, dim=dim, written=written, removed_stale=tuple(stale))
