"""7. Ray Data pipeline vs the single-machine path, same images, same server, same run.

Ours: ``read_binary_files`` + :class:`tritonvision.ray.TritonEmbedder` as an actor pool,
materialised (``embed_dataset(...).materialize()``), on a local Ray runtime with this
machine's cores. Baseline: ``VisionClient.batch_embed_images`` over the same files in this
process (what ``tritonvision embed`` does, without interpreter start-up). Both talk to the
same local Triton.

Where the time goes is measured, not guessed: Ray's start-up (``ray.init``, once, not in
either rate), and the same pipeline with an identity actor in place of the embedder: the
cost of reading the files into blocks, starting the actor pool and moving the blocks
through Ray's object store, with no inference at all. On a machine whose cores also run
Triton and the client, that overhead competes with the work it schedules; on a cluster it
runs on other nodes than the replicas.

Needs ``tritonvision[ray]``; Ray is imported only when this scenario runs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ._context import Context, Scenario
from ._report import Row, Side, fmt_rate
from ._repos import ServedRepository

__all__ = ["SCENARIO"]

NUMBER = 7
TITLE = "Ray Data pipeline vs single machine"
# Rows per actor call: several batches per actor even for the quick run's folder.
RAY_BATCH = 32

# (wall s, server CPU s) of one run of a side
Run = tuple[float, float]


class _Identity:
    """The embedder's place in the overhead run: the same actor pool, no work."""

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        return batch


def _folder(ctx: Context, count: int) -> Path:
    """``count`` distinct photos: the samples, each copy cropped a few pixels differently.

    Distinct pixels matter: the client sends identical images of one batch call once, and
    a Ray batch holds fewer duplicates than the whole folder, which would favour one side.
    """
    from PIL import Image

    folder = ctx.workdir / f"ray-folder-{count}"
    if not folder.exists():
        folder.mkdir()
        photos = ctx.photos()
        for i in range(count):
            src = photos[i % len(photos)]
            copy = i // len(photos)
            with Image.open(src) as img:
                w, h = img.size
                left, top = copy % 16, copy // 16 % 16
                img.convert("RGB").crop((left, top, w, h)).save(
                    folder / f"{i:05d}_{src.stem}.jpg", "JPEG", quality=90
                )
    return folder


def _run_single(served: ServedRepository, model: str, paths: list[str]) -> Run:
    from tritonvision.client import VisionClient

    server0 = served.cpu_seconds()
    t0 = time.perf_counter()
    with VisionClient(served.http_url, model) as client:
        batch = client.batch_embed_images(paths).result()
    wall = time.perf_counter() - t0
    if batch.errors:
        raise RuntimeError(
            f"{len(batch.errors)} images failed: {next(iter(batch.errors.values()))}"
        )
    return wall, served.cpu_seconds() - server0


def _run_ray(served: ServedRepository, model: str, folder: Path, actors: int) -> Run:
    import ray.data

    from tritonvision.ray import ERROR_COLUMN, embed_dataset

    server0 = served.cpu_seconds()
    t0 = time.perf_counter()
    ds = embed_dataset(
        ray.data.read_binary_files(str(folder)),
        served.http_url,
        model=model,
        concurrency=actors,
        batch_size=RAY_BATCH,
        num_cpus=0.5,
    ).materialize()
    wall = time.perf_counter() - t0
    failed = sum(
        len(b) - b.column(ERROR_COLUMN).null_count
        for b in ds.select_columns([ERROR_COLUMN]).iter_batches(batch_format="pyarrow")
    )
    if failed:
        raise RuntimeError(f"{failed} rows failed in the Ray pipeline")
    return wall, served.cpu_seconds() - server0


def _run_overhead(folder: Path, actors: int) -> float:
    import ray.data

    t0 = time.perf_counter()
    ray.data.read_binary_files(str(folder)).map_batches(
        _Identity,
        compute=ray.data.ActorPoolStrategy(size=actors),
        batch_size=RAY_BATCH,
        num_cpus=0.5,
    ).materialize()
    return time.perf_counter() - t0


def run(ctx: Context) -> None:
    import ray
    import ray.data

    key = "tiny" if ctx.quick else "b32"
    count = 48 if ctx.quick else 256
    served = ctx.served(key)
    model = served.repo.model
    served.use([model])
    folder = _folder(ctx, count)
    paths = sorted(str(p) for p in folder.iterdir())
    actors = max(1, min(2, ctx.cores // 2))

    t0 = time.perf_counter()
    ray.init(num_cpus=ctx.cores, include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - t0
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        _run_ray(served, model, folder, actors)  # warm-up: worker processes, imports
        sides: dict[str, list[Run]] = {"ray": [], "single": []}
        overhead: list[float] = []
        for r in range(ctx.rounds):
            order = ["ray", "single", "overhead"] if r % 2 == 0 else ["overhead", "single", "ray"]
            for name in order:
                if name == "ray":
                    sides["ray"].append(_run_ray(served, model, folder, actors))
                elif name == "single":
                    sides["single"].append(_run_single(served, model, paths))
                else:
                    overhead.append(_run_overhead(folder, actors))
    finally:
        ray.shutdown()

    def make_side(label: str, runs: list[Run]) -> Side:
        wall = sum(x[0] for x in runs)
        images = count * len(runs)
        server_ms = sum(x[1] for x in runs) * 1000 / images
        return Side(
            label=label,
            value=images / wall,
            unit="img/s",
            detail=f"{wall / len(runs):.2f} s per run; CPU/img: server {server_ms:.1f} ms",
        )

    ray_side = make_side("Ray Data pipeline", sides["ray"])
    single_side = make_side("batch_embed_images", sides["single"])
    ctx.emit(
        Row(
            scenario=NUMBER,
            case="Ray Data (read_binary_files + TritonEmbedder actors) vs batch_embed_images",
            ours=ray_side,
            baseline=single_side,
            model=served.repo.encoder.spec.label,
            settings=(
                f"{count} distinct photos (the sample photos cropped, JPEG q90, 0.1-0.4 MP) in "
                "one folder; one "
                f"local Triton; Ray: local runtime with {ctx.cores} CPUs, {actors} actor(s) of "
                f"0.5 CPU, batches of {RAY_BATCH}, materialised in the object store; single: "
                "one VisionClient in-process; ray.init not counted"
            ),
        )
    )
    ray_s = sum(x[0] for x in sides["ray"]) / len(sides["ray"])
    single_s = sum(x[0] for x in sides["single"]) / len(sides["single"])
    overhead_s = sum(overhead) / len(overhead)
    ctx.note(
        f"Where the Ray pipeline's {ray_s:.2f} s go: {overhead_s:.2f} s is Ray Data's own cost "
        f"with no inference (read tasks, the {actors}-actor pool's start-up, blocks through "
        f"the object store: the identity pipeline over the same files); the single-machine "
        f"path needs {single_s:.2f} s for all of the work; ray.init took {init_s:.1f} s once "
        f"(not counted). Single machine: {fmt_rate(single_side.value)} img/s; Ray: "
        f"{fmt_rate(ray_side.value)} img/s."
    )
    ctx.note(
        "On one small machine Ray's scheduler, raylet, object store and actor processes "
        "share the cores with Triton and the decoding they feed; its fixed cost per job "
        "matters for small folders and fades for the millions of images it is meant for, "
        "where the actors also run on other machines than the replicas (docs/SCALING.md)."
    )


SCENARIO = Scenario(NUMBER, TITLE, run)
