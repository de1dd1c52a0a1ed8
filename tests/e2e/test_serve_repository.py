"""The committed repository, its CPU runtime derivation, docker-compose, serve failures."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from tritonvision.export import ExportOptions, write_repository_configs
from tritonvision.serve import (
    LocalTriton,
    RepositoryError,
    ServeError,
    ServerPorts,
    derive_runtime_repository,
    free_port,
)

ROOT = Path(__file__).resolve().parents[2]
REPO = ROOT / "model_repository"


def _config(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        # Written by export (model.onnx) or by Python when Triton ran the repository.
        if p.is_file() and p.suffix not in (".onnx", ".pyc")
    }


def test_committed_repository_is_exactly_what_export_writes_for_the_default(tmp_path):
    write_repository_configs(ExportOptions(repository=tmp_path))
    assert _tree(tmp_path) == _tree(REPO)


def test_runtime_repository_turns_onnxruntime_models_into_python_backend_over_same_file(tmp_path):
    repo = tmp_path / "repo"
    write_repository_configs(ExportOptions(repository=repo, name="enc"))
    onnx = repo / "enc" / "1" / "model.onnx"
    onnx.parent.mkdir(parents=True, exist_ok=True)
    onnx.write_bytes(b"placeholder")
    runtime = derive_runtime_repository(repo, tmp_path / "runtime")

    assert set(runtime.models) == {"enc", "enc_preprocess", "enc_images"}
    assert runtime.converted == ("enc",)
    source = _config(repo / "enc" / "config.pbtxt")
    cpu = _config(runtime.path / "enc" / "config.pbtxt")
    assert source.backend == "onnxruntime" and cpu.backend == "python"
    assert not cpu.platform and not cpu.HasField("optimization")
    assert [(g.kind, g.count) for g in cpu.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 2)]
    threads = int(cpu.parameters["tritonvision.ort_intra_op_threads"].string_value)
    assert threads == max(1, (os.cpu_count() or 1) // 2)
    kept = derive_runtime_repository(repo, tmp_path / "kept", cpu_instances=None)
    kept_cpu = _config(kept.path / "enc" / "config.pbtxt")
    assert [g.count for g in kept_cpu.instance_group] == [g.count for g in source.instance_group]
    kept = derive_runtime_repository(repo, tmp_path / "kept2", queue_delay_us=None)
    kept_cpu = _config(kept.path / "enc" / "config.pbtxt")
    assert kept_cpu.dynamic_batching == source.dynamic_batching
    # Everything that defines the model's contract is carried over untouched.
    for field in ("input", "output", "max_batch_size", "model_warmup"):
        assert getattr(cpu, field) == getattr(source, field), field
    # On CPU the batcher takes what queued while busy, without waiting to fill a batch.
    assert cpu.dynamic_batching.max_queue_delay_microseconds == 0
    assert cpu.dynamic_batching.default_queue_policy == source.dynamic_batching.default_queue_policy
    assert (
        dict(cpu.parameters)["tritonvision.preprocessing"]
        == dict(source.parameters)["tritonvision.preprocessing"]
    )
    linked = runtime.path / "enc" / "1" / "model.onnx"
    assert linked.resolve() == onnx.resolve()
    assert "onnx_encoder" in (runtime.path / "enc" / "1" / "model.py").read_text()
    # Non-ONNX models are used as they are; the source repository is never edited.
    assert (runtime.path / "enc_images").resolve() == (repo / "enc_images").resolve()
    assert _config(repo / "enc" / "config.pbtxt") == source


def test_runtime_repository_refuses_a_repository_without_exported_model(tmp_path):
    write_repository_configs(ExportOptions(repository=tmp_path / "repo"))
    with pytest.raises(RepositoryError, match="run `tritonvision export` first"):
        derive_runtime_repository(tmp_path / "repo", tmp_path / "runtime")
    with pytest.raises(RepositoryError, match="not found"):
        derive_runtime_repository(tmp_path / "missing", tmp_path / "runtime")


def test_serve_reports_a_taken_port_before_starting(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        server = LocalTriton(
            REPO, ports=ServerPorts(http=port, grpc=free_port(), metrics=free_port())
        )
        with pytest.raises(ServeError, match=f"HTTP port {port} is already in use"):
            server.start()


@pytest.mark.e2e
def test_serve_shows_tritons_reason_when_a_model_fails_to_load(tiny_repository, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_repository, broken, symlinks=False)
    (broken / "tiny_clip" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    ports = ServerPorts(http=free_port(), grpc=free_port(), metrics=free_port())
    server = LocalTriton(broken, ports=ports)
    with pytest.raises(ServeError) as info:
        server.start(ready_timeout_s=120)
    message = str(info.value)
    assert "tiny_clip" in message and "failed to load" in message
    assert not server.running


def _stub_pids(marker: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "triton_python_backend_stub" in cmdline and marker in cmdline:
            pids.append(int(proc.name))
    return pids


@pytest.mark.e2e
def test_serve_cli_prints_endpoints_and_stops_cleanly_on_sigterm(tiny_repository, tmp_path):
    ports = [free_port(), free_port(), free_port()]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tritonvision",
            "serve",
            "--repository",
            str(tiny_repository),
            "--http-port",
            str(ports[0]),
            "--grpc-port",
            str(ports[1]),
            "--metrics-port",
            str(ports[2]),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "metrics" in line:
                break
        text = "".join(lines)
        assert f"http://127.0.0.1:{ports[0]}" in text and f"grpc://127.0.0.1:{ports[1]}" in text
        workdir = next(ln for ln in lines if "log:" in ln).split("log: ")[1].rsplit("/", 1)[0]
        assert _stub_pids(workdir), "python-backend stubs should be running"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert "Triton stopped" in proc.stdout.read()
        time.sleep(0.5)
        assert _stub_pids(workdir) == [], "no orphaned python-backend stubs after stop"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()


def test_client_import_stays_torch_free():
    code = (
        "import sys, tritonvision.client, tritonvision.client._imaging; "
        "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'transformers') "
        "if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_docker_compose_agrees_with_the_repository():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    triton = compose["services"]["triton"]
    export = compose["services"]["export"]
    from tritonvision.deploy import DEFAULT_IMAGE

    assert triton["image"] == DEFAULT_IMAGE
    published = {p.rsplit(":", 1)[1] for p in triton["ports"]}
    assert published == {"8000", "8001", "8002"}
    # gRPC and metrics stay on loopback.
    assert all(p.startswith("127.0.0.1:") for p in triton["ports"] if not p.endswith(":8000"))
    mounts = {v.split(":")[1]: v.split(":")[0] for v in triton["volumes"]}
    assert mounts["/models"] == "./model_repository" and (ROOT / "model_repository").is_dir()
    command = " ".join(triton["command"])
    assert "--model-repository=/models" in command
    assert "--http-port=8000" in command and "--grpc-port=8001" in command
    assert "--metrics-port=8002" in command
    assert triton["depends_on"]["export"]["condition"] == "service_completed_successfully"
    assert triton["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "./model_repository:/models" in export["volumes"]
    assert export["command"].split()[:2] == ["--repository", "/models"]
    # The models compose serves are the ones the repository holds.
    names = {_config(p).name for p in REPO.glob("*/config.pbtxt")}
    assert names == {"vision_encoder", "vision_encoder_preprocess", "vision_encoder_images"}
    ensemble = _config(REPO / "vision_encoder_images" / "config.pbtxt")
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [
        "vision_encoder_preprocess",
        "vision_encoder",
    ]
