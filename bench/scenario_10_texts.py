"""10. Texts: the served text tower (``NAME_texts``) vs tokenising + ONNX Runtime in-process.

A two-tower CLIP checkpoint is built here (:mod:`._text_model`: the ViT-B/32 text tower's
shape, seeded untrained weights, a byte-level BPE tokenizer; quick mode: a tiny text tower)
and exported once with ``export_model(ExportOptions(text=True))`` into the bench cache.
One local ``tritonserver`` (``LocalTriton``, serve's CPU defaults) serves the three text
models of the export: ``NAME_tokenize`` (the checkpoint's tokenizer in the python backend),
``NAME_text`` (the ONNX text tower) and the ``NAME_texts`` ensemble over them.

Ours: plain strings through the tritonvision client over HTTP (``VisionClient``, default
settings) to ``NAME_texts``; the server tokenises and embeds. Baseline: what a user does
without a server, in this process: the checkpoint's own tokenizer from transformers
(``padding="max_length", truncation=True, max_length=77``) and ONNX Runtime on the very
same ``NAME_text`` ``model.onnx`` (intra-op threads = the machine's cores). Rows:

- a batch of texts: ``batch_embed_texts`` vs in-process batches of :data:`ORT_BATCH`;
- single texts: ``embed_text`` from :data:`CONCURRENCY` caller threads vs the same
  threads each tokenising and running one text in-process (a search service's queries).

Every pass embeds distinct captions (the next slice of a corpus generated with a fixed
seed), the same slice on both sides of a round; sides alternate round by round. Each
row's note gives the parity of the two sides: the lowest cosine between the served and
the in-process embedding of the same text, over every text of the measured passes.
Everything shares the machine's cores, as on a box that runs both client and server.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import shutil
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tritonvision.contract import text_name, texts_name, tokenize_name

# serve does not export its CPU serving defaults; the settings text names them.
from tritonvision.serve._runtime_repo import DEFAULT_CPU_INSTANCES, DEFAULT_CPU_QUEUE_DELAY_US

from ._context import Context, Scenario
from ._load import Measurement, cpu_seconds_of_group, side_from
from ._report import Row, Side, fmt_rate
from ._repos import _export_code_hash, _read_config, cached_export
from ._text_model import (
    CONTEXT_LENGTH,
    TEXT_TOWERS,
    TextTower,
    captions,
    make_text_checkpoint,
    no_progress_bars,
)

__all__ = ["SCENARIO", "ExportedText", "exported_text"]

NUMBER = 10
TITLE = (
    "Texts: served tokenizer + text tower (NAME_texts) vs transformers + ONNX Runtime in-process"
)
CONCURRENCY = 8
ORT_BATCH = 32
CORPUS_SIZE = 2000
UNIT = "texts/s"

Vectors = npt.NDArray[np.float32]


# ----------------------------------------------------------------------------- export


@dataclass(frozen=True)
class ExportedText:
    """A cached text export: the repository ``export --text`` wrote and the tokenizer."""

    tower: TextTower
    path: Path
    export_s: float  # 0 when it came from the cache

    @property
    def name(self) -> str:
        return f"clip_{self.tower.key}"

    @property
    def repository(self) -> Path:
        return self.path / "repository"

    @property
    def tokenizer_dir(self) -> Path:
        """The checkpoint's own tokenizer files (``save_pretrained`` of what it loads)."""
        return self.path / "tokenizer"

    @property
    def onnx_path(self) -> Path:
        found = sorted((self.repository / text_name(self.name)).glob("*/model.onnx"))
        if not found:
            raise FileNotFoundError(f"no model.onnx under {self.repository / text_name(self.name)}")
        return found[-1]


def _cache_key(tower: TextTower) -> str:
    from importlib import metadata

    blob = json.dumps(
        {
            "tower": tower.config() | {"projection": tower.projection_dim},
            "vocab": tower.vocab_size,
            "builder": hashlib.sha256(
                Path(__file__).with_name("_text_model.py").read_bytes()
            ).hexdigest(),
            "export_code": _export_code_hash(),
            "tritonvision": metadata.version("tritonvision"),
            "torch": metadata.version("torch"),
            "transformers": metadata.version("transformers"),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def exported_text(tower: TextTower, cache_dir: Path) -> ExportedText:
    """The tower's text export, from the cache or built and exported now (then cached).

    The checkpoint is only needed to export: the cache keeps the repository and the
    checkpoint's tokenizer, not the checkpoint's weights (~250 MB for ViT-B/32's text tower).
    """

    def export(partial: Path) -> None:
        with no_progress_bars():
            _export(tower, partial)

    dest, seconds = cached_export(cache_dir, tower.key, _cache_key(tower), export)
    return ExportedText(tower, dest, seconds)


def _export(tower: TextTower, dest: Path) -> None:
    from transformers import AutoTokenizer

    from tritonvision.export import ExportOptions, export_model

    checkpoint = make_text_checkpoint(tower, dest / "checkpoint")
    entry = ExportedText(tower, dest, 0.0)
    export_model(
        ExportOptions(
            checkpoint=checkpoint, repository=entry.repository, name=entry.name, text=True
        )
    )
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)
    tokenizer.save_pretrained(entry.tokenizer_dir)
    shutil.rmtree(checkpoint)


def _text_repository(export: ExportedText, dest: Path) -> Path:
    """A repository of the export's three text models only (linked): no idle image stubs."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for model in (tokenize_name(export.name), text_name(export.name), texts_name(export.name)):
        (dest / model).symlink_to((export.repository / model).resolve(), target_is_directory=True)
    return dest


@contextlib.contextmanager
def _server(repo: Path, workdir: Path) -> Iterator[Any]:
    from tritonvision.serve import LocalTriton, ServerPorts, free_port

    ports = ServerPorts(http=free_port(), grpc=free_port(), metrics=free_port())
    server = LocalTriton(repo, ports=ports, workdir=workdir)
    server.start(ready_timeout_s=300)
    try:
        yield server
    finally:
        server.stop()


def _server_version(url: str) -> str:
    with urllib.request.urlopen(f"{url}/v2", timeout=10) as response:
        return str(json.loads(response.read()).get("version", "?"))


# ------------------------------------------------------------------------------ sides


class InProcess:
    """The baseline: the checkpoint's tokenizer + ONNX Runtime on the same ``model.onnx``."""

    def __init__(self, export: ExportedText, threads: int) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(export.tokenizer_dir, local_files_only=True)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(
            str(export.onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.context_length = int(self.session.get_inputs()[0].shape[1])
        self.threads = threads

    def embed(self, texts: Sequence[str]) -> Vectors:
        batch = self.tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.context_length,
            return_tensors="np",
        )
        feeds = {name: np.asarray(batch[name], dtype=np.int64) for name in self.input_names}
        (out,) = self.session.run(["embeddings"], feeds)
        return np.asarray(out, dtype=np.float32)

    def embed_batches(self, texts: Sequence[str]) -> Vectors:
        return np.concatenate(
            [self.embed(texts[i : i + ORT_BATCH]) for i in range(0, len(texts), ORT_BATCH)]
        )


def _threaded(
    texts: Sequence[str], call: Callable[[str], Vectors], concurrency: int
) -> tuple[list[float], Vectors]:
    """Every text once, ``concurrency`` threads taking the next text in turn: latencies and
    the rows in input order. The first exception of any call is raised."""
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for i in range(len(texts)):
        todo.put(i)
    rows: list[Vectors | None] = [None] * len(texts)
    latencies: list[float] = []
    errors: list[BaseException] = []

    def worker() -> None:
        while not errors:
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            t = time.perf_counter()
            try:
                rows[i] = call(texts[i])
            except BaseException as exc:
                errors.append(exc)
                return
            latencies.append(time.perf_counter() - t)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return latencies, np.stack([np.asarray(r, dtype=np.float32).reshape(-1) for r in rows])


@dataclass
class _Side:
    """One side of a row: how it embeds a pass of texts, and what its passes measured."""

    embed: Callable[[Sequence[str]], tuple[list[float], Vectors]]
    server_pid: int | None
    passes: list[Measurement] = field(default_factory=list)
    rows: list[Vectors] = field(default_factory=list)

    def run(self, texts: Sequence[str], *, record: bool = True) -> Measurement:
        cpu0 = time.process_time()
        server0 = cpu_seconds_of_group(self.server_pid) if self.server_pid else 0.0
        t0 = time.perf_counter()
        latencies, rows = self.embed(texts)
        elapsed = time.perf_counter() - t0
        server_s = (cpu_seconds_of_group(self.server_pid) if self.server_pid else 0.0) - server0
        if rows.shape[0] != len(texts) or not np.isfinite(rows).all():
            raise RuntimeError(f"{len(texts)} texts gave rows of shape {rows.shape} (or NaN)")
        m = Measurement(
            calls=len(texts),
            elapsed_s=elapsed,
            latencies_s=latencies,
            extra={
                "process_cpu_ms": (time.process_time() - cpu0) * 1000 / len(texts),
                "server_cpu_ms": server_s * 1000 / len(texts),
            },
        )
        if record:
            self.passes.append(m)
            self.rows.append(rows)
        return m

    @property
    def measured(self) -> Measurement:
        return Measurement.merge(self.passes)

    def side(self, label: str, *, served: bool) -> Side:
        m = self.measured
        if served:
            detail = (
                f"CPU/text: client {m.extra['process_cpu_ms']:.2f} ms, "
                f"server {m.extra['server_cpu_ms']:.2f} ms"
            )
        else:
            detail = f"CPU/text: process {m.extra['process_cpu_ms']:.2f} ms"
        return side_from(label, m, unit=UNIT, detail=detail)


def _min_cosine(a: Sequence[Vectors], b: Sequence[Vectors]) -> tuple[float, int]:
    """The lowest cosine between matching rows of ``a`` and ``b``, and how many rows."""
    x, y = np.concatenate(a).astype(np.float64), np.concatenate(b).astype(np.float64)
    if x.shape != y.shape:
        raise RuntimeError(f"served rows {x.shape} vs in-process rows {y.shape}")
    cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    return float(cos.min()), len(cos)


def _alternate(sides: dict[str, _Side], slices: Sequence[Sequence[str]]) -> None:
    """One unrecorded first pass per side (slice 0), then one measured pass per side per
    later slice, the order alternating round by round; both sides get the same texts."""
    for side in sides.values():
        side.run(slices[0], record=False)
    names = list(sides)
    for r, texts in enumerate(slices[1:]):
        for name in names if r % 2 == 0 else reversed(names):
            sides[name].run(texts)


# ------------------------------------------------------------------------------- run


def _token_stats(tokenizer: Any, corpus: Sequence[str]) -> str:
    lengths = np.array([len(ids) for ids in tokenizer(list(corpus), verbose=False)["input_ids"]])
    over = float((lengths > CONTEXT_LENGTH).mean() * 100)
    return (
        f"{lengths.min()}-{lengths.max()} tokens, median {np.median(lengths):.0f}, "
        f"{over:.1f}% truncated at {CONTEXT_LENGTH}"
    )


def _tokenizer_ms(local: InProcess, texts: Sequence[str]) -> float:
    """In-process CPU milliseconds per text of the tokenizer alone, in batches."""
    cpu0 = time.process_time()
    for i in range(0, len(texts), ORT_BATCH):
        local.tokenizer(
            list(texts[i : i + ORT_BATCH]),
            padding="max_length",
            truncation=True,
            max_length=local.context_length,
            return_tensors="np",
        )
    return (time.process_time() - cpu0) * 1000 / len(texts)


def run(ctx: Context) -> None:
    from tritonvision.client import ClientConfig, VisionClient

    tower = TEXT_TOWERS["tinytext" if ctx.quick else "b32text"]
    ctx.log(f"exporting/caching {tower.label} (export --text)")
    export = exported_text(tower, ctx.cache_dir)
    if export.export_s:
        ctx.log(f"exported in {export.export_s:.0f} s (now cached)")
    count = 48 if ctx.quick else 256
    corpus = captions(CORPUS_SIZE)
    slices = [
        [corpus[(p * count + j) % len(corpus)] for j in range(count)] for p in range(1 + ctx.rounds)
    ]
    local = InProcess(export, ctx.cores)
    local.embed(slices[0][:2])  # ORT's first run allocates
    tokenize_instances = sum(
        g.count
        for g in _read_config(
            export.repository / tokenize_name(export.name) / "config.pbtxt"
        ).instance_group
    )
    repo = _text_repository(export, ctx.workdir / f"text-repo-{tower.key}")
    client_cfg = ClientConfig()
    served_threads = max(1, (os.cpu_count() or 1) // DEFAULT_CPU_INSTANCES)
    settings = (
        f"{count} distinct captions per pass, new ones every pass (from {CORPUS_SIZE} made "
        f"from word lists with a fixed seed: {_token_stats(local.tokenizer, corpus)}); "
        f"{ctx.rounds} measured pass(es) per side after one first pass, alternating; server: "
        f"{tokenize_name(export.name)} ({tokenize_instances} python instance(s), the "
        f"checkpoint's tokenizer) + {text_name(export.name)} ({DEFAULT_CPU_INSTANCES} "
        f"instances, {served_threads} ORT thread(s) each, dynamic batching "
        f"{DEFAULT_CPU_QUEUE_DELAY_US} us) through the "
        f"{texts_name(export.name)} ensemble; client over HTTP, defaults "
        f"({client_cfg.pack_batch_size} text(s) per request, up to "
        f"{client_cfg.max_in_flight} in flight, coalescing on); in-process: transformers "
        f"tokenizer (padding max_length {local.context_length}) + ONNX Runtime on the same "
        f"model.onnx, {local.threads} intra-op threads"
    )

    def emit(case: str, sides: dict[str, _Side], ours: str, baseline: str) -> None:
        cosine, compared = _min_cosine(sides["served"].rows, sides["local"].rows)
        ctx.emit(
            Row(
                scenario=NUMBER,
                case=case,
                ours=sides["served"].side(ours, served=True),
                baseline=sides["local"].side(baseline, served=False),
                model=tower.label,
                settings=settings,
                note=(
                    f"parity: min cosine served vs in-process {cosine:.7f} over {compared} "
                    "texts (same texts, same model.onnx)"
                ),
            )
        )

    ctx.log("starting tritonserver with the text models")
    with (
        _server(repo, ctx.workdir / f"text-serve-{tower.key}") as server,
        VisionClient(server.http_url, export.name) as client,
    ):
        pid = server.pid
        if not ctx.server_version:
            ctx.server_version = _server_version(server.http_url)

        def served_batch(texts: Sequence[str]) -> tuple[list[float], Vectors]:
            batch = client.batch_embed_texts(texts).result()
            if batch.errors:
                first = next(iter(batch.errors.items()))
                raise RuntimeError(f"{len(batch.errors)} texts failed, e.g. {first}")
            return [], np.asarray(batch.embeddings, dtype=np.float32)

        def served_single(texts: Sequence[str]) -> tuple[list[float], Vectors]:
            return _threaded(texts, lambda t: client.embed_text(t).result(), CONCURRENCY)

        def local_batch(texts: Sequence[str]) -> tuple[list[float], Vectors]:
            return [], local.embed_batches(texts)

        def local_single(texts: Sequence[str]) -> tuple[list[float], Vectors]:
            return _threaded(texts, lambda t: local.embed([t])[0], CONCURRENCY)

        batch_sides = {"served": _Side(served_batch, pid), "local": _Side(local_batch, None)}
        _alternate(batch_sides, slices)
        emit(
            f"batch_embed_texts to {texts_name(export.name)} vs in-process tokenizer + ONNX "
            f"Runtime, batches of {ORT_BATCH}",
            batch_sides,
            "batch_embed_texts",
            f"in-process, batches of {ORT_BATCH}",
        )
        single_sides = {"served": _Side(served_single, pid), "local": _Side(local_single, None)}
        _alternate(single_sides, slices)
        emit(
            f"embed_text from {CONCURRENCY} caller threads to {texts_name(export.name)} vs "
            f"in-process, one text per call from {CONCURRENCY} threads",
            single_sides,
            f"embed_text x{CONCURRENCY} threads",
            f"in-process, 1 text per call x{CONCURRENCY} threads",
        )

    served = batch_sides["served"].measured
    local_batch_m = batch_sides["local"].measured
    ctx.note(
        f"Where the CPU goes per text (batch row): client {served.extra['process_cpu_ms']:.2f} "
        f"ms (HTTP, strings out, vectors in), server {served.extra['server_cpu_ms']:.2f} ms "
        "(Triton, the tokenizer stub, python-backend IPC, ORT); in-process "
        f"{local_batch_m.extra['process_cpu_ms']:.2f} ms (tokenizer + ORT) at "
        f"{fmt_rate(local_batch_m.throughput)} {UNIT}, of which the tokenizer alone "
        f"{_tokenizer_ms(local, corpus):.3f} ms (batches of {ORT_BATCH})."
    )
    if ctx.quick:
        ctx.note(
            "Quick mode uses a tiny text tower whose inference costs ~nothing: the ratio then "
            "says how much the server's fixed costs per text weigh, not what a real tower gets."
        )


SCENARIO = Scenario(NUMBER, TITLE, run)
