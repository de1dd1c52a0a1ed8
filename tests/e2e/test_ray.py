"""tritonvision.ray end to end: a real local Ray runtime against real tritonservers.

One Ray runtime (``ray.init(num_cpus=2)``) serves the whole session. Server A is the
suite's Triton (conftest); server B (for two replicas) and server C (killed mid-job) are
more ``LocalTriton``s over the same tiny repository. The images are made here: a few
hundred small PNG/JPEG files plus broken ones and an empty one.

These tests fail, not skip, when Ray is missing: CI installs ``tritonvision[ray]``.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow.parquet as pq
import pytest
import ray
import ray.data
from PIL import Image

import tritonvision.errors
from tritonvision.client import VisionClient
from tritonvision.errors import ClientClosed, InvalidInput, TritonVisionError
from tritonvision.ray import (
    EMBEDDING_COLUMN,
    ERROR_COLUMN,
    TritonEmbedder,
    embed_dataset,
)

pytestmark = [
    pytest.mark.ray,
    pytest.mark.e2e,
    # Ray Data warns about its own deprecated settings while it builds its context.
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*"),
]

GOOD_IMAGES = 240
# name -> contents of the files that must fail, each with its own error.
BROKEN = {
    "empty.png": b"",
    "truncated.png": None,  # a real PNG cut in half (filled in by the fixture)
    "noise.jpg": bytes(range(256)) * 4,
    "notes.png": b"this is not an image\n",
}
COSINE_MIN = 0.99999
ERROR_TYPES = {
    name
    for name, value in vars(tritonvision.errors).items()
    if isinstance(value, type) and issubclass(value, TritonVisionError)
}
# The client's own retries on a dead server are fast but not free: keep them few.
FAST_FAIL = {"max_retries": 1, "connect_timeout_s": 2.0, "request_timeout_s": 20.0}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def ray_runtime() -> Iterator[None]:
    """One local Ray runtime for the session; test modules are importable by workers."""
    # This module (its _Gate class runs in workers) and tests/ (shared helpers).
    here = Path(__file__).resolve()
    tests_dir = os.pathsep.join([str(here.parent), str(here.parents[1])])
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": tests_dir}},
    )
    # Ray Data logs every operator's metrics at DEBUG: keep failure reports readable.
    logging.getLogger("ray").setLevel(logging.INFO)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()


def _image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = 32 + seed % 33, 32 + (seed * 7) % 33  # 32..64 px, mixed aspect ratios
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    arr[:, :, seed % 3] = (seed * 37) % 256  # distinct per seed
    return Image.fromarray(arr, "RGB")


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ray-images")
    for i in range(GOOD_IMAGES):
        fmt, ext = ("JPEG", "jpg") if i % 3 == 0 else ("PNG", "png")
        (folder / f"img{i:04d}.{ext}").write_bytes(_encode(_image(i), fmt))
    for name, data in BROKEN.items():
        if data is None:
            whole = _encode(_image(10_000), "PNG")
            data = whole[: len(whole) // 2]
        (folder / name).write_bytes(data)
    return folder


def _all_paths(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.iterdir())


@pytest.fixture(scope="session")
def reference(triton: Any, image_folder: Path) -> dict[str, npt.NDArray[np.float32] | str]:
    """The single-machine result per file: its embedding, or its error type."""
    paths = _all_paths(image_folder)
    with VisionClient(triton.http_url, triton.model) as client:
        result = client.batch_embed_images(paths).result()
    out: dict[str, npt.NDArray[np.float32] | str] = {}
    for i, path in enumerate(paths):
        exc = result.errors.get(i)
        out[path] = type(exc).__name__ if exc is not None else result.embeddings[i]
    assert {Path(p).name for p, v in out.items() if isinstance(v, str)} == set(BROKEN)
    return out


def _start_triton(repository: Path, workdir: Path) -> Any:
    from tritonvision.serve import LocalTriton, ServerPorts, free_port

    os.environ.setdefault("TRITONVISION_ORT_THREADS", "1")
    ports = ServerPorts(http=free_port(), grpc=free_port(), metrics=free_port())
    server = LocalTriton(repository, ports=ports, workdir=workdir, queue_delay_us=None)
    return server.start(ready_timeout_s=180)


@pytest.fixture(scope="session")
def triton_b(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    server = _start_triton(tiny_repository, tmp_path_factory.mktemp("triton-b"))
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------- helpers


def _cosine(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _check_rows(
    paths: list[str],
    embeddings: npt.NDArray[np.float32],
    errors: list[str | None],
    reference: dict[str, npt.NDArray[np.float32] | str],
    dim: int,
    *,
    same_error_types: bool = True,
) -> None:
    """Every reference file exactly once; good rows match, failed rows carry error + NaN.

    ``same_error_types``: a failed row's error type is the single-machine one (for the
    same kind of source; a data: URI of an empty file fails earlier, as InvalidInput).
    """
    assert sorted(paths) == sorted(reference), "rows lost, duplicated or invented"
    assert embeddings.shape == (len(paths), dim)
    assert embeddings.dtype == np.float32
    for path, row, error in zip(paths, embeddings, errors, strict=True):
        expected = reference[path]
        if isinstance(expected, str):
            assert error is not None, path
            kind = error.split(": ", 1)[0]
            assert kind == expected if same_error_types else kind in ERROR_TYPES, (path, error)
            assert np.isnan(row).all(), path
        else:
            assert error is None, (path, error)
            assert _cosine(row, expected) >= COSINE_MIN, path


def reference_of(reference: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    return {p: reference[p] for p in paths}


def _rows(ds: ray.data.Dataset, *columns: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {c: [] for c in columns}
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        for c in columns:
            out[c].extend(list(batch[c]))
    return out


def _successes(metrics_url: str, model: str) -> int:
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    pattern = rf'^nv_inference_request_success{{[^}}]*model="{re.escape(model)}"[^}}]*}} (\S+)$'
    return int(sum(float(m) for m in re.findall(pattern, text, flags=re.MULTILINE)))


# ------------------------------------------------------------------- in-process checks


def test_importing_the_client_does_not_import_ray() -> None:
    code = "import sys, tritonvision.client; print('ray' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "False"


def test_embedder_keeps_columns_and_closes_its_one_client(
    triton: Any, image_folder: Path, reference: dict[str, Any]
) -> None:
    good = [p for p in _all_paths(image_folder) if Path(p).name.startswith("img")]
    paths = [*good[:6], str(image_folder / "empty.png")]
    batch = {
        "bytes": np.array([Path(p).read_bytes() for p in paths], dtype=object),
        "path": np.array(paths, dtype=object),
        "n": np.arange(len(paths)),
    }
    embedder = TritonEmbedder(triton.http_url, triton.model, max_retries=0)
    session = embedder.client.async_client.session
    assert session is not None and not session.closed  # opened once, when made
    out = embedder(batch)
    out2 = embedder(batch)
    assert embedder.client.async_client.session is session  # the same session serves on
    embedder.close()
    embedder.close()  # twice is harmless
    assert session.closed
    assert list(out) == ["bytes", "path", "n", EMBEDDING_COLUMN, ERROR_COLUMN]
    assert out["n"].tolist() == list(range(len(paths)))
    assert list(out["path"]) == paths
    _check_rows(
        paths,
        out[EMBEDDING_COLUMN],
        out[ERROR_COLUMN].to_pylist(),
        reference_of(reference, paths),
        triton.embedding_dim,
    )
    np.testing.assert_array_equal(out[EMBEDDING_COLUMN], out2[EMBEDDING_COLUMN])


def test_embedder_takes_pandas_and_arrow_batches_and_refuses_use_after_close(
    triton: Any, image_folder: Path, reference: dict[str, Any]
) -> None:
    import pandas as pd
    import pyarrow as pa

    paths = [str(image_folder / "img0001.png"), str(image_folder / "notes.png")]
    embedder = TritonEmbedder(triton.http_url, triton.model, column="path", max_retries=0)
    try:
        for batch in (pd.DataFrame({"path": paths}), pa.table({"path": paths})):
            out = embedder(batch)
            assert list(out["path"]) == paths
            _check_rows(
                paths,
                out[EMBEDDING_COLUMN],
                out[ERROR_COLUMN].to_pylist(),
                reference_of(reference, paths),
                triton.embedding_dim,
            )
    finally:
        embedder.close()
    with pytest.raises(ClientClosed):
        embedder({"path": np.array(paths, dtype=object)})


def test_embedder_refuses_unknown_options_and_missing_columns(triton: Any) -> None:
    with pytest.raises(InvalidInput, match="unknown client option 'max_retires'"):
        TritonEmbedder(triton.http_url, triton.model, max_retires=2)
    with pytest.raises(InvalidInput, match="max_in_flight"):
        TritonEmbedder(triton.http_url, triton.model, max_in_flight=0)
    embedder = TritonEmbedder(triton.http_url, triton.model, column="image")
    try:
        with pytest.raises(InvalidInput, match="no column 'image'"):
            embedder({"bytes": np.array([b"x"], dtype=object)})
        with pytest.raises(InvalidInput, match="already has a 'error' column"):
            embedder({"image": np.array([b"x"], dtype=object), "error": np.array([None])})
    finally:
        embedder.close()


def test_embedder_fails_at_start_when_no_server_answers() -> None:
    from tritonvision.serve import free_port

    with pytest.raises(TritonVisionError):
        TritonEmbedder(f"http://127.0.0.1:{free_port()}", "tiny_clip", max_retries=0)


# --------------------------------------------------------------------- Ray Data jobs


def test_binary_files_to_parquet_give_every_row_once_matching_single_machine(
    ray_runtime: None,
    triton: Any,
    image_folder: Path,
    reference: dict[str, Any],
    tmp_path: Path,
) -> None:
    ds = ray.data.read_binary_files(str(image_folder), include_paths=True)
    ds = ds.map_batches(
        TritonEmbedder,
        fn_constructor_kwargs={"url": triton.http_url, "model": triton.model},
        compute=ray.data.ActorPoolStrategy(size=2),
        batch_size=32,
        num_cpus=0.5,
    )
    ds.write_parquet(str(tmp_path / "out"))

    table = pq.read_table(tmp_path / "out")  # read back as any Parquet reader would
    assert set(table.column_names) == {"bytes", "path", EMBEDDING_COLUMN, ERROR_COLUMN}
    paths = table.column("path").to_pylist()
    embeddings = np.array(table.column(EMBEDDING_COLUMN).to_pylist(), dtype=np.float32)
    _check_rows(
        paths, embeddings, table.column(ERROR_COLUMN).to_pylist(), reference, triton.embedding_dim
    )
    by_path = dict(zip(paths, table.column("bytes").to_pylist(), strict=True))
    assert by_path[str(image_folder / "img0001.png")] == (image_folder / "img0001.png").read_bytes()


@pytest.mark.parametrize("kind", ["path", "data_uri"])
def test_string_column_of_paths_or_data_uris_works_the_same(
    ray_runtime: None, triton: Any, image_folder: Path, reference: dict[str, Any], kind: str
) -> None:
    paths = _all_paths(image_folder)
    if kind == "path":
        items = [{"path": p, "image": p} for p in paths]
    else:
        items = [
            {
                "path": p,
                "image": "data:image/png;base64," + base64.b64encode(Path(p).read_bytes()).decode(),
            }
            for p in paths
        ]
    ds = embed_dataset(
        ray.data.from_items(items, override_num_blocks=4),
        triton.http_url,
        model=triton.model,
        column="image",
        concurrency=2,
        batch_size=32,
        num_cpus=0.5,
    )
    rows = _rows(ds, "path", "image", EMBEDDING_COLUMN, ERROR_COLUMN)
    by_path = {i["path"]: i["image"] for i in items}
    assert all(by_path[p] == v for p, v in zip(rows["path"], rows["image"], strict=True))
    _check_rows(
        rows["path"],
        np.stack(rows[EMBEDDING_COLUMN]),
        rows[ERROR_COLUMN],
        reference,
        triton.embedding_dim,
        same_error_types=kind == "path",
    )


def test_each_actor_makes_one_loop_and_one_session_for_all_its_batches(
    ray_runtime: None, triton: Any, image_folder: Path
) -> None:
    ds = ray.data.read_binary_files(str(image_folder), include_paths=True)
    ds = ds.map_batches(
        TritonEmbedder,
        fn_constructor_kwargs={
            "url": triton.http_url,
            "model": triton.model,
            "probe_runtime": True,
        },
        compute=ray.data.ActorPoolStrategy(size=2),
        batch_size=8,
        num_cpus=0.5,
    )
    rows = _rows(ds, "probe_pid", "probe_batches", "probe_loops", "probe_sessions")
    per_actor: dict[int, dict[str, int]] = {}
    for pid, batches, loops, sessions in zip(
        rows["probe_pid"],
        rows["probe_batches"],
        rows["probe_loops"],
        rows["probe_sessions"],
        strict=True,
    ):
        seen = per_actor.setdefault(int(pid), {"batches": 0, "loops": 0, "sessions": 0})
        seen["batches"] = max(seen["batches"], int(batches))
        seen["loops"] = max(seen["loops"], int(loops))
        seen["sessions"] = max(seen["sessions"], int(sessions))
    print(f"per-actor runtime counts: {per_actor}")  # the figures for the closing note
    # probe_batches is the actor's running count, so its maximum is what that actor served.
    assert sum(s["batches"] for s in per_actor.values()) >= -(-len(rows["probe_pid"]) // 8)
    assert os.getpid() not in per_actor  # counted inside the actors, not here
    assert max(s["batches"] for s in per_actor.values()) >= 3
    for pid, seen in per_actor.items():
        assert seen["loops"] == 1, (pid, seen)
        assert seen["sessions"] == 1, (pid, seen)


def test_two_servers_both_serve_and_results_are_unchanged(
    ray_runtime: None,
    triton: Any,
    triton_b: Any,
    image_folder: Path,
    reference: dict[str, Any],
) -> None:
    before = {
        "a": _successes(triton.metrics_url, triton.model),
        "b": _successes(triton_b.metrics_url, triton.model),
    }
    ds = ray.data.read_binary_files(str(image_folder), include_paths=True).map_batches(
        TritonEmbedder,
        fn_constructor_kwargs={
            "url": [triton.http_url, triton_b.http_url],
            "model": triton.model,
            "probe_runtime": True,
        },
        compute=ray.data.ActorPoolStrategy(size=2),
        batch_size=32,
        num_cpus=0.5,
    )
    rows = _rows(ds, "path", "probe_url", EMBEDDING_COLUMN, ERROR_COLUMN)
    after = {
        "a": _successes(triton.metrics_url, triton.model),
        "b": _successes(triton_b.metrics_url, triton.model),
    }
    served = {k: after[k] - before[k] for k in before}
    print(f"requests served per replica: {served}")
    assert served["a"] > 0 and served["b"] > 0, served
    assert set(rows["probe_url"]) == {triton.http_url, triton_b.http_url}
    _check_rows(
        rows["path"],
        np.stack(rows[EMBEDDING_COLUMN]),
        rows[ERROR_COLUMN],
        reference,
        triton.embedding_dim,
    )


class _Gate:
    """Holds each block whose first row is at or past ``first_held`` until ``flag`` exists.

    Marks its rows ``held``; a block is held or not as a whole, so some rows past
    ``first_held`` may pass freely.
    """

    def __init__(self, flag: str, first_held: int, timeout_s: float = 60.0) -> None:
        self.flag = flag
        self.first_held = first_held
        self.timeout_s = timeout_s

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        held = int(batch["n"].min()) >= self.first_held
        deadline = time.monotonic() + self.timeout_s
        while held and not os.path.exists(self.flag):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the test never opened the gate {self.flag}")
            time.sleep(0.05)
        batch["held"] = np.full(len(batch["n"]), held)
        return batch


def test_server_killed_mid_job_gives_typed_errors_and_loses_no_row(
    ray_runtime: None,
    tiny_repository: Path,
    triton: Any,
    image_folder: Path,
    reference: dict[str, Any],
    tmp_path: Path,
) -> None:
    from tritonvision.serve._server import stub_shm_regions

    paths = _all_paths(image_folder)
    first_held = 60
    flag = tmp_path / "killed"
    rows: list[dict[str, Any]] = []
    killed_after = -1  # rows received before the kill
    server = _start_triton(tiny_repository, tmp_path / "triton-c")
    try:
        items = [{"n": n, "path": p} for n, p in enumerate(paths)]
        # Blocks from row 60 on wait at the gate until the server is dead.
        ds = ray.data.from_items(items, override_num_blocks=8).map_batches(
            _Gate(str(flag), first_held), batch_size=None, num_cpus=0.1
        )
        ds = embed_dataset(
            ds,
            server.http_url,
            model=triton.model,
            column="path",
            concurrency=1,
            batch_size=16,
            num_cpus=0.5,
            **FAST_FAIL,
        )
        # No prefetching: the driver must see the free rows while the rest are held.
        for batch in ds.iter_batches(batch_format="numpy", batch_size=None, prefetch_batches=0):
            for i in range(len(batch["n"])):
                rows.append({k: batch[k][i] for k in ("n", "path", "held", EMBEDDING_COLUMN)})
                rows[-1][ERROR_COLUMN] = batch[ERROR_COLUMN][i]
            received = {int(r["n"]) for r in rows}
            if killed_after < 0 and set(range(first_held)) <= received:
                assert not any(r["held"] for r in rows)  # the gate held
                regions = stub_shm_regions(server.pid)
                os.killpg(server.pid, signal.SIGKILL)
                server.stop()
                for region in regions:
                    region.unlink(missing_ok=True)
                killed_after = len(rows)
                flag.touch()
    finally:
        server.stop()
    assert killed_after > 0, "the server was never killed"
    assert sorted(int(r["n"]) for r in rows) == list(range(len(paths)))  # each row, once
    before, after = rows[:killed_after], rows[killed_after:]
    _check_rows(
        [r["path"] for r in before],
        np.stack([r[EMBEDDING_COLUMN] for r in before]),
        [r[ERROR_COLUMN] for r in before],
        reference_of(reference, [r["path"] for r in before]),
        triton.embedding_dim,
    )
    held = [r for r in after if r["held"]]
    assert len(held) >= len(paths) // 2, "too few rows were held back for the kill"
    for r in after:
        expected = reference[r["path"]]
        error = r[ERROR_COLUMN]
        if r["held"] or error is not None:
            assert error is not None and np.isnan(r[EMBEDDING_COLUMN]).all(), r["path"]
            # A file that cannot be decoded fails before any request; the rest find no server.
            allowed = {expected} if isinstance(expected, str) else {"ServerUnavailable"}
            assert error.split(":", 1)[0] in allowed, (r["path"], error)
        else:  # a free row that was still on its way out when the server died
            assert _cosine(r[EMBEDDING_COLUMN], expected) >= COSINE_MIN, r["path"]
