"""bench/device.sh: the dry run end to end on CPU (so the GPU script cannot rot), and the
report's pieces (nvidia-smi parsing, the Markdown section naming the card)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tritonvision.bench._device import DRY_RUN, FULL, gpu_cards, markdown

ROOT = Path(__file__).resolve().parents[2]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.e2e
def test_device_script_dry_run_writes_json_and_markdown_with_numbers(tmp_path: Path) -> None:
    out = tmp_path / "device-out"
    env = {**os.environ, "PYTHON": sys.executable, "TRITONVISION_ORT_THREADS": "1"}
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "device.sh"), str(out), "--dry-run"],
        cwd=tmp_path,  # the script finds the repository itself
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "device.json").read_text())
    assert report["dry_run"] is True and "error" not in report
    assert _number(report["elapsed_s"]) and report["elapsed_s"] > 0
    assert report["machine"]["card"] and _number(report["machine"]["cores"])
    assert [(e["precision"], e["model"]) for e in report["exports"]] == [
        ("fp32", "vision_encoder"),
        ("fp16", "vision_encoder_fp16"),
    ]
    assert all(_number(e["export_s"]) and e["onnx_mib"] > 0 for e in report["exports"])
    # Served on the CPU; the server's own log says what ran where.
    serve = report["serve"]
    assert (serve["requested"], serve["device"]) == ("cpu", "cpu")
    assert serve["providers"] == {
        "vision_encoder": "CPUExecutionProvider",
        "vision_encoder_fp16": "CPUExecutionProvider",
    }
    assert serve["decoders"] == {
        "vision_encoder_preprocess": "Pillow (instance kind CPU)",
        "vision_encoder_fp16_preprocess": "Pillow (instance kind CPU)",
    }
    pa = report["perf_analyzer"]
    if pa["status"] == "ok":
        assert [(r["model"], r["concurrency"]) for r in pa["runs"]] == [
            (m, c) for m in ("vision_encoder", "vision_encoder_fp16") for c in DRY_RUN.concurrencies
        ]
        for run in pa["runs"]:
            assert "error" not in run, run
            assert all(_number(run[k]) for k in ("throughput", "p50_ms", "p99_ms")), run
            assert run["throughput"] > 0
    else:
        assert pa["status"] == "skipped" and "perf_analyzer" in pa["reason"] and not pa["runs"]
    paths = {(r["model"], r["path"]) for r in report["client"]}
    assert paths == {
        (m, p)
        for m in ("vision_encoder", "vision_encoder_fp16")
        for p in ("client_decode", "ensemble_bytes")
    }
    for row in report["client"]:
        for key in ("images_per_s", "p50_ms", "p99_ms", "client_cpu_ms_per_image"):
            assert _number(row[key]), (key, row)
        assert row["images_per_s"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0
    decode = report["decode"]
    assert _number(decode["pillow_images_per_s"]) and decode["pillow_images_per_s"] > 0
    assert decode["nvimgcodec"]["status"] == "skipped" and decode["nvimgcodec"]["reason"]
    text = (out / "device.md").read_text()
    assert text.startswith("## Device run: DRY RUN on CPU")
    for heading in ("### perf_analyzer", "### Client end to end", "### JPEG decode"):
        assert heading in text
    assert "`vision_encoder_preprocess`: decodes with Pillow (instance kind CPU)" in text
    assert (out / "tritonserver.log").exists() and not (out / "work").exists()


def test_device_script_refuses_bad_arguments() -> None:
    for args in ([], ["--bogus", "x"], ["a", "b"]):
        proc = subprocess.run(
            ["bash", str(ROOT / "bench" / "device.sh"), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert proc.returncode == 2 and "usage: bench/device.sh OUT" in proc.stderr


def test_full_run_covers_concurrency_1_to_256_on_the_gpu() -> None:
    assert FULL.device == "gpu" and not FULL.tiny and FULL.allow_download
    assert FULL.concurrencies == tuple(2**i for i in range(9))
    assert DRY_RUN.device == "cpu" and DRY_RUN.tiny and not DRY_RUN.allow_download


def test_gpu_cards_parse_nvidia_smi() -> None:
    def run(cmd: list[str], **kwargs: Any) -> SimpleNamespace:
        assert cmd[1:] == ["--query-gpu=name,memory.total", "--format=csv,noheader,nounits"]
        return SimpleNamespace(stdout="NVIDIA H100 80GB HBM3, 81559\nNVIDIA L4, 23034\n")

    cards = gpu_cards(which=lambda _: "/usr/bin/nvidia-smi", run=run)
    assert cards == [
        {"name": "NVIDIA H100 80GB HBM3", "memory_total_mib": 81559.0},
        {"name": "NVIDIA L4", "memory_total_mib": 23034.0},
    ]
    assert gpu_cards(which=lambda _: None, run=run) == []


def test_markdown_of_a_gpu_run_names_the_card_and_flags_decoder_parity() -> None:
    report = {
        "dry_run": False,
        "machine": {"card": "NVIDIA L4 (23,034 MiB)", "cpu": "AMD EPYC", "cores": 16},
        "serve": {
            "requested": "gpu",
            "device": "gpu",
            "reason": "1 GPU(s) visible, onnxruntime-gpu with CUDA",
            "providers": {"vision_encoder": "CUDAExecutionProvider, CPUExecutionProvider"},
            "decoders": {"vision_encoder_preprocess": "nvImageCodec on GPU 0 (JPEG; ...)"},
        },
        "software": {"onnxruntime-gpu": "1.22.0"},
        "command": "bench/device.sh OUT",
        "elapsed_s": 300.0,
        "exports": [
            {"model": "vision_encoder", "precision": "fp32", "onnx_mib": 335.0, "export_s": 40.0}
        ],
        "perf_analyzer": {
            "status": "ok",
            "runs": [{"model": "vision_encoder", "concurrency": 1, "error": "boom"}],
        },
        "client_concurrency": 32,
        "client": [],
        "decode": {
            "images": 64,
            "pillow_images_per_s": 100.0,
            "nvimgcodec": {
                "status": "ok",
                "images_per_s": 900.0,
                "max_abs_diff": 0.2,
                "mean_abs_diff": 0.001,
                "within_tolerance": False,
            },
        },
    }
    text = markdown(report)
    assert text.startswith("## GPU: NVIDIA L4 (23,034 MiB)\n")
    assert "CUDAExecutionProvider" in text and "nvImageCodec on GPU 0" in text
    assert "error: boom" in text
    assert "OUTSIDE" in text


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tritonvision", "bench", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_dry_run_needs_the_device_option() -> None:
    proc = _cli("--dry-run")
    assert proc.returncode == 2 and "--dry-run goes with --device OUT" in proc.stderr


def test_full_device_run_fails_before_exporting_on_a_machine_without_a_gpu(
    tmp_path: Path,
) -> None:
    from tritonvision.serve._device import probe_device

    if probe_device().gpus:
        pytest.skip("this machine has a GPU")
    proc = _cli("--device", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "--device gpu: this machine cannot run the GPU path" in proc.stderr
    assert "exporting" not in proc.stdout
    report = json.loads((tmp_path / "out" / "device.json").read_text())
    assert report["error"].startswith("DeviceUnavailable") and report["dry_run"] is False
