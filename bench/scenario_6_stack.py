"""6. Stack efficiency: the whole stack end to end vs bare ONNX Runtime in-process.

Ours: ``tritonvision embed FOLDER --server URL`` as a user runs it (a new process: start,
list the folder, read, decode, resize, send to the local Triton, write .npy/.parquet),
timed by wall clock; and the same job in-process through ``VisionClient.
batch_embed_images`` + ``np.save`` (no interpreter start-up). Baseline: the same
``model.onnx`` in ONNX Runtime in this process on pre-made uint8 tensors of the same
photos, batches of 32, with the same thread budget (intra-op threads = cores; the server
gives its one instance the same). Everything shares the same cores, as it would on a
machine that runs both the client and the server.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tritonvision.contract import PIXELS_INPUT

from ._client_internals import load_image_pixels
from ._context import Context, Scenario
from ._load import children_cpu_s
from ._report import Row, Side, fmt_rate
from ._repos import ServedRepository

__all__ = ["SCENARIO"]

NUMBER = 6
TITLE = "Stack efficiency: end to end vs bare ONNX Runtime"
TARGET = 0.7
ORT_BATCH = 32


# (wall s, client or process CPU s, server CPU s) of one run of a side
Run = tuple[float, float, float]


def _folder(ctx: Context, count: int) -> Path:
    folder = ctx.workdir / f"folder-{count}"
    if not folder.exists():
        folder.mkdir()
        photos = ctx.photos()
        for i in range(count):
            src = photos[i % len(photos)]
            shutil.copyfile(src, folder / f"{i:05d}_{src.name}")
    return folder


def _run_cli(served: ServedRepository, model: str, folder: Path, out: Path) -> Run:
    """Wall seconds, client CPU seconds, server CPU seconds of one ``tritonvision embed``."""
    if out.parent.exists():
        shutil.rmtree(out.parent)
    out.parent.mkdir(parents=True)
    cmd = [
        sys.executable,
        "-m",
        "tritonvision",
        "embed",
        str(folder),
        "--server",
        served.http_url,
        "--model",
        model,
        "--output",
        str(out),
        "-qq",
    ]
    cpu0, server0 = children_cpu_s(), served.cpu_seconds()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(
            f"tritonvision embed exited {proc.returncode}: {(proc.stdout + proc.stderr)[-800:]}"
        )
    return wall, children_cpu_s() - cpu0, served.cpu_seconds() - server0


def _run_library(served: ServedRepository, model: str, paths: list[str], out: Path) -> Run:
    from tritonvision.client import VisionClient

    cpu0, server0 = time.process_time(), served.cpu_seconds()
    t0 = time.perf_counter()
    with VisionClient(served.http_url, model) as client:
        batch = client.batch_embed_images(paths).result()
    if batch.errors:
        raise RuntimeError(
            f"{len(batch.errors)} images failed: {next(iter(batch.errors.values()))}"
        )
    np.save(out, batch.embeddings)
    wall = time.perf_counter() - t0
    return wall, time.process_time() - cpu0, served.cpu_seconds() - server0


def _ort_session(onnx_path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(
        str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
    )


def _run_ort(session: Any, pixels: npt.NDArray[np.uint8]) -> tuple[float, float]:
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    for start in range(0, len(pixels), ORT_BATCH):
        session.run(None, {PIXELS_INPUT: pixels[start : start + ORT_BATCH]})
    return time.perf_counter() - t0, time.process_time() - cpu0


def run(ctx: Context) -> None:
    key = "tiny" if ctx.quick else "b32"
    count = 24 if ctx.quick else 128
    served = ctx.served(key)
    repo = served.repo
    model = repo.model
    served.use([model])
    folder = _folder(ctx, count)
    paths = sorted(str(p) for p in folder.iterdir())
    spec = repo.preprocessing
    pixels = np.stack([load_image_pixels(Path(p).read_bytes(), spec) for p in paths])
    session = _ort_session(repo.encoder.onnx_path, ctx.cores)
    _run_ort(session, pixels[:ORT_BATCH])  # warm-up: ORT's first run allocates
    threads = 1 if key == "tiny" else ctx.cores
    settings = (
        f"{count} photos (the sample photos, JPEG q90, 0.1-0.4 MP) in one folder; server: 2 "
        f"instances, {threads} ORT thread(s) in all, dynamic batching 0 us; bare ORT: "
        f"{ctx.cores} intra-op threads, batches of {ORT_BATCH}"
    )
    sides: dict[str, list[Run]] = {"cli": [], "lib": [], "ort": []}
    out_dir = ctx.workdir / "embed-out"
    for r in range(ctx.rounds):
        order = ["cli", "lib", "ort"] if r % 2 == 0 else ["ort", "lib", "cli"]
        for name in order:
            if name == "cli":
                sides["cli"].append(_run_cli(served, model, folder, out_dir / "emb.npy"))
            elif name == "lib":
                out_dir.mkdir(exist_ok=True)
                sides["lib"].append(_run_library(served, model, paths, out_dir / "lib.npy"))
            else:
                wall, cpu = _run_ort(session, pixels)
                sides["ort"].append((wall, cpu, 0.0))

    def per_image_ms(runs: list[Run], field: int) -> float:
        """Milliseconds per image of a ``Run`` field (1: client CPU, 2: server CPU)."""
        return sum(x[field] for x in runs) * 1000 / (count * len(runs))

    def make_side(label: str, runs: list[Run]) -> Side:
        wall = sum(x[0] for x in runs)
        client_ms = per_image_ms(runs, 1)
        server_ms = per_image_ms(runs, 2)
        detail = (
            f"CPU/img: {'process' if label.startswith('bare') else 'client'} {client_ms:.1f} ms"
        )
        if server_ms:
            detail += f", server {server_ms:.1f} ms"
        return Side(label=label, value=count * len(runs) / wall, unit="img/s", detail=detail)

    ort_side = make_side("bare ONNX Runtime", sides["ort"])
    model_label = repo.encoder.spec.label
    ctx.emit(
        Row(
            scenario=NUMBER,
            case="`tritonvision embed` end to end vs bare ONNX Runtime",
            ours=make_side("tritonvision embed", sides["cli"]),
            baseline=ort_side,
            model=model_label,
            settings=settings + "; the CLI's wall time includes interpreter start-up",
            target=TARGET if key == "b32" else None,
        )
    )
    ctx.emit(
        Row(
            scenario=NUMBER,
            case="VisionClient.batch_embed_images + np.save vs bare ONNX Runtime",
            ours=make_side("batch_embed_images", sides["lib"]),
            baseline=ort_side,
            model=model_label,
            settings=settings + "; in-process, no interpreter start-up",
        )
    )
    lib_client = per_image_ms(sides["lib"], 1)
    lib_server = per_image_ms(sides["lib"], 2)
    ort_cpu = per_image_ms(sides["ort"], 1)
    ctx.note(
        f"Where the CPU goes per image (library path): client {lib_client:.1f} ms (read, "
        f"decode, resize, HTTP, write), server {lib_server:.1f} ms (Triton, the "
        f"python-backend IPC, ORT); bare ORT needs {ort_cpu:.1f} ms per image for the "
        f"inference alone, at {fmt_rate(ort_side.value)} img/s."
    )
    if key == "tiny":
        ctx.note(
            "Quick mode uses the tiny encoder, whose inference costs ~nothing: the ratio "
            "then only says how much the stack's fixed costs weigh, not how efficient it is."
        )


SCENARIO = Scenario(NUMBER, TITLE, run)
