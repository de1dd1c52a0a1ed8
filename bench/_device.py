"""The GPU path measured in one go: ``bench/device.sh OUT`` (``tritonvision bench --device OUT``).

On a GPU machine: export the default encoder fp32 and fp16 into one repository, serve it
with ``--device gpu``, run perf_analyzer over concurrency 1..256 on both, then the client end
to end (JPEG bytes decoded by the client vs raw JPEG bytes to the ``_images`` ensemble,
where the preprocess model decodes, with nvImageCodec when it runs), and compare the GPU
JPEG decoder's pixels with Pillow's. Writes ``device.json`` and ``device.md`` (a Markdown
section naming the card) into the output folder.

``dry_run=True`` is the same pipeline on this CPU machine with small counts: the tiny
encoder, ``--device cpu``, perf_analyzer only if it is already set up (never downloaded),
the GPU decoder reported as skipped with its reason. The test suite runs it
(``tests/e2e/test_bench_device.py``) so the script cannot rot.
"""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import logging
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tritonvision.contract import DEFAULT_MODEL, IMAGES_INPUT, PreprocessSpec, ensemble_name

from ._client_internals import (
    binary_request,
    infer_path,
    load_image_pixels,
    normalize_pixels,
    parse_binary_response,
)
from ._load import Measurement, post_infer, run_tasks
from ._machine import machine_info
from ._perf_analyzer import find_perf_analyzer
from ._repos import TINY

__all__ = ["DRY_RUN", "FULL", "DeviceRunSettings", "run_device_benchmark"]

logger = logging.getLogger(__name__)

SCHEMA = 1
BUDGET_S = 480.0  # the whole script, installs included, on a fresh GPU machine
# The decode parity tolerance the client's fast path meets against transformers
# (tests/unit/test_client_imaging.py), after normalisation: see tritonvision.serve._device.
TOLERANCE_MAX = 0.1
TOLERANCE_MEAN = 0.006


@dataclass(frozen=True)
class DeviceRunSettings:
    device: str
    concurrencies: tuple[int, ...]
    measurement_ms: int
    max_trials: int
    stability_percent: int
    client_concurrency: int
    client_s: float
    decode_images: int
    tiny: bool
    allow_download: bool


FULL = DeviceRunSettings(
    device="gpu",
    concurrencies=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    measurement_ms=1500,
    max_trials=4,
    stability_percent=25,
    client_concurrency=32,
    client_s=5.0,
    decode_images=64,
    tiny=False,
    allow_download=True,
)
DRY_RUN = DeviceRunSettings(
    device="cpu",
    concurrencies=(1, 2),
    measurement_ms=500,  # the CPU batcher stalls ~500 ms now and then: no empty windows
    max_trials=3,
    stability_percent=1000,  # a pipeline check: any three windows will do
    client_concurrency=2,
    client_s=0.5,
    decode_images=4,
    tiny=True,
    allow_download=False,
)

# ----------------------------------------------------------------------------- machine


def gpu_cards(
    *,
    which: Callable[[str], str | None] = shutil.which,
    run: Callable[..., Any] = subprocess.run,
) -> list[dict[str, Any]]:
    """``nvidia-smi --query-gpu=name,memory.total``: one dict per card (empty without)."""
    smi = which("nvidia-smi")
    if not smi:
        return []
    try:
        proc = run(
            [smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    cards = []
    for line in proc.stdout.splitlines():
        name, _, memory = line.rpartition(",")
        if name.strip():
            try:
                cards.append({"name": name.strip(), "memory_total_mib": float(memory)})
            except ValueError:
                cards.append({"name": line.strip(), "memory_total_mib": None})
    return cards


def _version(module: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return None


_SOFTWARE = (
    "onnxruntime-gpu",
    "onnxruntime",
    "nvidia-nvimgcodec-cu12",
    "tensorrt",
    "nvidia-pytriton",
    "torch",
)


def _software() -> dict[str, str]:
    """Installed versions of what the run depends on (absent ones left out)."""
    return {name: v for name in _SOFTWARE if (v := _version(name))}


# ----------------------------------------------------------------------------- images


def _jpegs(count: int) -> list[bytes]:
    """JPEG q90 photos: the sample photos installed packages ship, at their size and at
    1080p, else (none installed) smooth synthetic scenes with sensor-like noise."""
    from PIL import Image

    from tritonvision._samples import sample_photo_paths

    bases: list[Image.Image] = []
    for path in sample_photo_paths():
        with Image.open(path) as img:
            bases.append(img.convert("RGB"))
    if not bases:
        rng = np.random.default_rng(0)
        for w, h in ((640, 480), (1280, 853)):
            y, x = np.mgrid[0:h, 0:w].astype(np.float64)
            rgb = np.stack(
                [127 + 120 * np.sin(x / 37.0), 255 * (x + y) / (w + h), 127 + 120 * np.cos(y / 53)],
                axis=-1,
            )
            noisy = np.clip(rgb + rng.normal(0, 8, rgb.shape), 0, 255).astype(np.uint8)
            bases.append(Image.fromarray(noisy))
    images = bases + [b.resize((1920, 1080), Image.Resampling.BICUBIC) for b in bases]
    out = []
    for image in images:
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return [out[i % len(out)] for i in range(max(count, len(out)))][: max(count, 1)]


# ----------------------------------------------------------------------------- export


def _export(repository: Path, settings: DeviceRunSettings) -> list[dict[str, Any]]:
    from tritonvision.export import ExportOptions, builtin_encoder, export_encoder

    vision_config: Any = None
    if settings.tiny:
        from transformers import CLIPVisionConfig

        vision_config = CLIPVisionConfig(**(TINY.vision_config or {}))
    exports = []
    for precision, name in (("fp32", DEFAULT_MODEL), ("fp16", f"{DEFAULT_MODEL}_fp16")):
        started = time.perf_counter()
        result = export_encoder(
            builtin_encoder(vision_config),
            ExportOptions(repository=repository, name=name, fp16=precision == "fp16"),
        )
        exports.append(
            {
                "model": name,
                "precision": precision,
                "export_s": time.perf_counter() - started,
                "onnx_mib": result.model_path.stat().st_size / 2**20,
                "encoder": TINY.label
                if settings.tiny
                else "built-in default (CLIP ViT-B/32 shape, untrained)",
            }
        )
    return exports


# ----------------------------------------------------------------------------- measure


# Triton quotes what a python model logs: I1201 ... python_be.cc:...] "NAME: ..."
_DECODER_LINE = re.compile(r"([\w.-]+): decoding images with (.+?)\"?$")
_PROVIDER_LINE = re.compile(r"([\w.-]+): ONNX Runtime providers (.+?) \(instance")


def _server_lines(log: str) -> dict[str, dict[str, str]]:
    decoders: dict[str, str] = {}
    providers: dict[str, str] = {}
    for line in log.splitlines():
        if m := _DECODER_LINE.search(line):
            decoders[m.group(1)] = m.group(2).strip()
        if m := _PROVIDER_LINE.search(line):
            providers[m.group(1)] = m.group(2).strip()
    return {"decoders": decoders, "providers": providers}


def _perf_analyzer(
    grpc_host_port: str,
    models: Sequence[dict[str, Any]],
    spec_shape: tuple[int, ...],
    settings: DeviceRunSettings,
    cache_dir: Path,
) -> dict[str, Any]:
    pa, reason = find_perf_analyzer(allow_download=settings.allow_download, cache_dir=cache_dir)
    if pa is None:
        return {"status": "skipped", "reason": reason, "runs": []}
    runs: list[dict[str, Any]] = []
    for export in models:
        for concurrency in settings.concurrencies:
            entry: dict[str, Any] = {
                "model": export["model"],
                "precision": export["precision"],
                "concurrency": concurrency,
            }
            for attempt in (1, 2):  # one retry: an unstable window is not a result
                try:
                    result = pa.run(
                        model=export["model"],
                        url=grpc_host_port,
                        protocol="grpc",
                        concurrency=concurrency,
                        shape=spec_shape,
                        measurement_ms=settings.measurement_ms,
                        max_trials=settings.max_trials,
                        stability_percent=settings.stability_percent,
                        timeout_s=120,
                    )
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    entry["error"] = str(exc)
                else:
                    entry.pop("error", None)
                    entry.update(
                        throughput=result.throughput,
                        p50_ms=result.p50_ms,
                        p99_ms=result.p99_ms,
                        attempts=attempt,
                    )
                    break
            runs.append(entry)
    return {
        "status": "ok",
        "reason": "",
        "protocol": "grpc",
        "input": "random uint8 pixels, 1 image per request",
        "runs": runs,
    }


def _measurement_row(m: Measurement) -> dict[str, float]:
    return {
        "images_per_s": m.throughput,
        "p50_ms": m.percentile_ms(50) or 0.0,
        "p99_ms": m.percentile_ms(99) or 0.0,
        "client_cpu_ms_per_image": m.extra.get("client_cpu_ms", 0.0),
    }


def _client_end_to_end(
    http_url: str, model: str, jpegs: Sequence[bytes], settings: DeviceRunSettings
) -> dict[str, dict[str, float]]:
    """Client decode (``embed_image_bytes``) vs raw JPEG bytes to the ensemble."""
    import aiohttp

    from tritonvision.client import AsyncVisionClient

    async def client_side() -> Measurement:
        async with AsyncVisionClient(http_url, model) as client:
            await client.model_info()
            counter = [0]

            async def call(worker: int) -> None:
                counter[0] += 1
                await client.embed_image_bytes(jpegs[counter[0] % len(jpegs)])

            cpu0 = time.process_time()
            m = await run_tasks(
                call, concurrency=settings.client_concurrency, duration_s=settings.client_s
            )
            m.extra["client_cpu_ms"] = (time.process_time() - cpu0) * 1000 / max(1, counter[0])
            return m

    async def ensemble() -> Measurement:
        endpoint = f"{http_url}{infer_path(ensemble_name(model))}"
        async with aiohttp.ClientSession() as session:
            counter = [0]

            async def call(worker: int) -> None:
                counter[0] += 1
                data = jpegs[counter[0] % len(jpegs)]
                body, headers = binary_request(
                    IMAGES_INPUT, np.array([[data]], dtype=np.object_), "BYTES"
                )
                await post_infer(session, endpoint, body, headers, parse_binary_response)

            cpu0 = time.process_time()
            m = await run_tasks(
                call, concurrency=settings.client_concurrency, duration_s=settings.client_s
            )
            m.extra["client_cpu_ms"] = (time.process_time() - cpu0) * 1000 / max(1, counter[0])
            return m

    return {
        "client_decode": _measurement_row(asyncio.run(client_side())),
        "ensemble_bytes": _measurement_row(asyncio.run(ensemble())),
    }


def _decode_check(
    jpegs: Sequence[bytes], spec: PreprocessSpec, settings: DeviceRunSettings
) -> dict[str, Any]:
    """Pillow's decode rate (one thread) and, where it runs, nvImageCodec's: batched GPU
    decode + the same resize/crop, its pixels against Pillow's (the parity tolerance)."""
    from PIL import Image

    from tritonvision.client._imaging import DEFAULT_REDUCING_GAP, resize_and_crop
    from tritonvision.serve._device import NvJpegDecoder, choose_image_decoder, probe_device

    items = list(jpegs[: settings.decode_images])
    started = time.perf_counter()
    pillow = [load_image_pixels(data, spec) for data in items]
    pillow_s = time.perf_counter() - started
    result: dict[str, Any] = {
        "images": len(items),
        "pillow_images_per_s": len(items) / pillow_s if pillow_s > 0 else 0.0,
        "tolerance": {"max_abs": TOLERANCE_MAX, "mean_abs": TOLERANCE_MEAN},
    }
    probe = probe_device(look_at_onnxruntime=False)
    if not probe.gpus:
        result["nvimgcodec"] = {"status": "skipped", "reason": probe.gpu_note}
        return result
    module, why = choose_image_decoder("GPU")
    if module is None:
        result["nvimgcodec"] = {"status": "skipped", "reason": why}
        return result
    decoder = NvJpegDecoder(module)
    decoder.decode_batch(items[:2], 2**31)  # first call: CUDA context, nvJPEG handles
    started = time.perf_counter()
    decoded = decoder.decode_batch(items, 2**31)
    gpu = [
        resize_and_crop(Image.fromarray(d), spec, DEFAULT_REDUCING_GAP) if d is not None else None
        for d in decoded
    ]
    gpu_s = time.perf_counter() - started
    pairs = [(g, p) for g, p in zip(gpu, pillow, strict=True) if g is not None]
    diffs = [np.abs(normalize_pixels(g, spec) - normalize_pixels(p, spec)) for g, p in pairs]
    max_abs = float(max(d.max() for d in diffs)) if diffs else float("nan")
    mean_abs = float(np.mean([d.mean() for d in diffs])) if diffs else float("nan")
    result["nvimgcodec"] = {
        "status": "ok",
        "decoded_on_gpu": len(pairs),
        "images_per_s": len(items) / gpu_s if gpu_s > 0 else 0.0,
        "max_abs_diff": max_abs,
        "mean_abs_diff": mean_abs,
        "within_tolerance": bool(max_abs < TOLERANCE_MAX and mean_abs < TOLERANCE_MEAN),
    }
    return result


# ----------------------------------------------------------------------------- report


def _fmt(value: Any, digits: int = 1) -> str:
    return f"{value:,.{digits}f}" if isinstance(value, int | float) else str(value)


def markdown(report: dict[str, Any]) -> str:
    """The Markdown section of one device run (for BENCHMARKS.md)."""
    card = report["machine"]["card"]
    if report["dry_run"]:
        title = "Device run: DRY RUN on CPU (a pipeline check, not figures)"
    else:
        title = f"GPU: {card}"
    lines = [
        f"## {title}",
        "",
        f"- **Card**: {card}",
        f"- **Host**: {report['machine']['cpu']} ({report['machine']['cores']} cores)",
        f"- **Served**: `tritonvision serve --device {report['serve']['requested']}` -> "
        f"{report['serve']['device']} ({report['serve']['reason']})",
        "- **Software**: " + ", ".join(f"{k} {v}" for k, v in report["software"].items() if v),
        f"- **Command**: `{report['command']}`; {report['elapsed_s']:.0f} s in all "
        f"(budget {BUDGET_S:.0f} s with installs)",
        "",
    ]
    for model, providers in report["serve"]["providers"].items():
        lines.append(f"- `{model}`: ONNX Runtime providers {providers}")
    for model, decoder in report["serve"]["decoders"].items():
        lines.append(f"- `{model}`: decodes with {decoder}")
    lines += ["", "| export | precision | ONNX MiB | export s |", "|---|---|---:|---:|"]
    for e in report["exports"]:
        lines.append(
            f"| `{e['model']}` | {e['precision']} | {_fmt(e['onnx_mib'])} | {_fmt(e['export_s'])} |"
        )
    pa = report["perf_analyzer"]
    lines += ["", "### perf_analyzer (gRPC, random uint8 pixels, 1 image per request)", ""]
    if pa["status"] != "ok":
        lines.append(f"Skipped: {pa['reason']}")
    else:
        lines += [
            "| model | concurrency | infer/s | p50 ms | p99 ms |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in pa["runs"]:
            if "error" in r:
                lines.append(f"| `{r['model']}` | {r['concurrency']} | error: {r['error']} | | |")
            else:
                lines.append(
                    f"| `{r['model']}` | {r['concurrency']} | {_fmt(r['throughput'])} | "
                    f"{_fmt(r['p50_ms'], 2)} | {_fmt(r['p99_ms'], 2)} |"
                )
    lines += [
        "",
        f"### Client end to end (JPEG q90, concurrency {report['client_concurrency']})",
        "",
        "| model | path | images/s | p50 ms | p99 ms | client CPU ms/img |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in report["client"]:
        label = {
            "client_decode": "client decode + uint8 pixels",
            "ensemble_bytes": "raw JPEG bytes to `_images`",
        }[r["path"]]
        lines.append(
            f"| `{r['model']}` | {label} | {_fmt(r['images_per_s'])} | {_fmt(r['p50_ms'], 2)} | "
            f"{_fmt(r['p99_ms'], 2)} | {_fmt(r['client_cpu_ms_per_image'], 2)} |"
        )
    dec = report["decode"]
    lines += [
        "",
        "### JPEG decode (+ resize/crop) in process",
        "",
        f"- Pillow, one thread: {_fmt(dec['pillow_images_per_s'])} images/s "
        f"({dec['images']} images)",
    ]
    nv = dec["nvimgcodec"]
    if nv["status"] == "ok":
        lines.append(
            f"- nvImageCodec (batched): {_fmt(nv['images_per_s'])} images/s; pixels vs Pillow "
            f"after normalisation: max {nv['max_abs_diff']:.4f}, mean {nv['mean_abs_diff']:.5f} "
            f"(tolerance {TOLERANCE_MAX} / {TOLERANCE_MEAN}: "
            f"{'within' if nv['within_tolerance'] else 'OUTSIDE'})"
        )
    else:
        lines.append(f"- nvImageCodec: skipped ({nv['reason']})")
    return "\n".join(lines) + "\n"


def run_device_benchmark(
    out_dir: Path,
    *,
    dry_run: bool,
    cache_dir: Path,
    command: str = "bench/device.sh",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the device benchmark; write ``device.json`` and ``device.md`` into ``out_dir``."""
    from tritonvision.serve import LocalTriton, ServerPorts, free_port
    from tritonvision.serve._device import probe_device, resolve_device

    settings = DRY_RUN if dry_run else FULL
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    machine = machine_info()
    cards = gpu_cards()
    card = ", ".join(f"{c['name']} ({_fmt(c['memory_total_mib'], 0)} MiB)" for c in cards)
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "dry_run": dry_run,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": {
            "card": card or "no GPU",
            "gpus": cards,
            "cpu": machine.cpu_model,
            "cores": machine.cores,
        },
        "software": _software(),
        "client_concurrency": settings.client_concurrency,
    }
    try:
        if settings.device != "cpu":
            # Fail before minutes of exporting when this machine cannot run the GPU path.
            resolve_device(settings.device, probe_device())
        log(f"exporting fp32 and fp16 ({'tiny encoder' if settings.tiny else 'default encoder'})")
        repository = work / "repository"
        report["exports"] = _export(repository, settings)
        jpegs = _jpegs(max(settings.decode_images, 8))
        ports = ServerPorts(http=free_port(), grpc=free_port(), metrics=free_port())
        server = LocalTriton(
            repository,
            ports=ports,
            device=settings.device,
            log_path=out_dir / "tritonserver.log",
        )
        log(f"serving with --device {settings.device}")
        server.start(ready_timeout_s=600)
        try:
            plan = server.device_plan
            report["serve"] = {
                "requested": settings.device,
                "device": plan.device if plan else settings.device,
                "reason": plan.reason if plan else "",
                **_server_lines(server.log_text()),
            }
            spec = _spec_of(repository / DEFAULT_MODEL / "config.pbtxt")
            log("perf_analyzer: concurrency " + ", ".join(map(str, settings.concurrencies)))
            report["perf_analyzer"] = _perf_analyzer(
                f"{server.host}:{ports.grpc}",
                report["exports"],
                spec.output_shape,
                settings,
                cache_dir,
            )
            report["client"] = []
            for export in report["exports"]:
                log(f"client end to end: {export['model']}")
                rows = _client_end_to_end(server.http_url, export["model"], jpegs, settings)
                for path, row in rows.items():
                    report["client"].append(
                        {"model": export["model"], "precision": export["precision"], "path": path}
                        | row
                    )
        finally:
            server.stop()
        log("JPEG decode check")
        report["decode"] = _decode_check(jpegs, spec, settings)
    except Exception as exc:
        # What was measured before the failure is still worth having (a GPU hour is dear).
        report["error"] = f"{type(exc).__name__}: {exc}"
        report["elapsed_s"] = time.perf_counter() - started
        (out_dir / "device.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["elapsed_s"] = time.perf_counter() - started
    (out_dir / "device.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    (out_dir / "device.md").write_text(markdown(report))
    return report


def _spec_of(config_path: Path) -> PreprocessSpec:
    from tritonvision.contract import PARAM_PREPROCESSING
    from tritonvision.serve._runtime_repo import read_model_config

    config = read_model_config(config_path)
    return PreprocessSpec.from_json(config.parameters[PARAM_PREPROCESSING].string_value)
