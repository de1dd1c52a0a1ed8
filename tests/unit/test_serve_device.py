"""`tritonvision serve --device`: detection, the GPU derivation as a pure function, the CPU
fallbacks (auto == cpu here, byte for byte), and the preprocess model's decoder choice.

This machine has no GPU: the GPU repository is checked as written config, the GPU decoder
through a stand-in nvImageCodec module given to NvJpegDecoder's constructor (its public seam).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pytest
from google.protobuf import text_format
from PIL import Image
from tritonclient.grpc import model_config_pb2 as mc

from tritonvision.client._imaging import (
    DEFAULT_REDUCING_GAP,
    load_image_pixels,
    normalize_pixels,
    resize_and_crop,
)
from tritonvision.contract import (
    PARAM_ONNX_FILE,
    PARAM_ORT_PROVIDERS,
    PARAM_ORT_THREADS,
    PreprocessSpec,
)
from tritonvision.export import ExportOptions, write_repository_configs
from tritonvision.serve import derive_runtime_repository, free_port
from tritonvision.serve._device import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    TENSORRT_PROVIDER,
    DeviceProbe,
    DeviceUnavailable,
    NvJpegDecoder,
    check_providers,
    choose_image_decoder,
    parse_providers,
    probe_device,
    providers_for_instance,
    resolve_device,
)
from tritonvision.serve._runtime_repo import DEFAULT_GPU_INSTANCES

GPU_PROBE = DeviceProbe(
    gpus=("GPU 0: NVIDIA H100 80GB HBM3",),
    ort_distribution="onnxruntime-gpu",
    ort_providers=(TENSORRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER),
)


def _config(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def _snapshot(root: Path) -> dict[str, tuple[str, bytes | str]]:
    """Every path under ``root``: a link's target, a file's bytes, or 'dir'."""
    out: dict[str, tuple[str, bytes | str]] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_file():
            out[rel] = ("file", path.read_bytes())
        else:
            out[rel] = ("dir", "")
    return out


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    write_repository_configs(ExportOptions(repository=repo, name="enc"))
    onnx = repo / "enc" / "1" / "model.onnx"
    onnx.parent.mkdir(parents=True, exist_ok=True)
    onnx.write_bytes(b"placeholder")
    return repo


# ----------------------------------------------------------------------------- detection


def test_probe_sees_no_gpu_when_cuda_visible_devices_hides_them(tmp_path: Path) -> None:
    (tmp_path / "nvidia0").touch()
    probe = probe_device(env={"CUDA_VISIBLE_DEVICES": ""}, dev_dir=tmp_path, which=lambda _: None)
    assert probe.gpus == ()
    assert "CUDA_VISIBLE_DEVICES" in probe.gpu_note


def test_probe_finds_device_nodes_without_nvidia_smi(tmp_path: Path) -> None:
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        (tmp_path / name).touch()
    probe = probe_device(env={}, dev_dir=tmp_path, which=lambda _: None, look_at_onnxruntime=False)
    assert probe.gpus == (str(tmp_path / "nvidia0"), str(tmp_path / "nvidia1"))
    empty = tmp_path / "empty"
    empty.mkdir()
    none = probe_device(env={}, dev_dir=empty, which=lambda _: None)
    assert none.gpus == () and "no NVIDIA GPU visible" in none.gpu_note


def test_probe_lists_gpus_by_nvidia_smi(tmp_path: Path) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA L4 (UUID: GPU-1)'\n")
    smi.chmod(0o755)
    probe = probe_device(
        env={}, dev_dir=tmp_path, which=lambda _: str(smi), look_at_onnxruntime=False
    )
    assert probe.gpus == ("GPU 0: NVIDIA L4 (UUID: GPU-1)",)


def test_auto_is_cpu_on_this_machine_and_says_why() -> None:
    probe = probe_device()
    if probe.gpus and CUDA_PROVIDER in probe.ort_providers:
        pytest.skip("this machine can run the GPU path")
    plan = resolve_device("auto", probe)
    assert plan.device == "cpu"
    assert plan.reason.startswith("auto: ")


def test_auto_picks_the_gpu_only_with_a_gpu_and_cuda_in_onnxruntime() -> None:
    assert resolve_device("auto", GPU_PROBE).device == "gpu"
    assert resolve_device("cpu", GPU_PROBE).device == "cpu"
    cpu_ort = DeviceProbe(gpus=GPU_PROBE.gpus, ort_distribution="onnxruntime")
    assert resolve_device("auto", cpu_ort).device == "cpu"
    no_cuda = DeviceProbe(
        gpus=GPU_PROBE.gpus, ort_distribution="onnxruntime-gpu", ort_providers=(CPU_PROVIDER,)
    )
    assert resolve_device("auto", no_cuda).device == "cpu"
    trt = DeviceProbe(**{**GPU_PROBE.__dict__, "tensorrt": True})
    assert resolve_device("gpu", trt).tensorrt


def test_gpu_without_a_gpu_fails_naming_everything_missing() -> None:
    probe = DeviceProbe(gpu_note="no NVIDIA GPU visible (test)", ort_distribution="onnxruntime")
    with pytest.raises(DeviceUnavailable) as info:
        resolve_device("gpu", probe)
    message = str(info.value)
    assert "no NVIDIA GPU visible (test)" in message
    assert "onnxruntime-gpu is not installed" in message
    assert len(info.value.missing) == 2
    with pytest.raises(ValueError, match="choose from"):
        resolve_device("tpu", probe)


def test_serve_device_gpu_fails_at_start_on_this_machine(repo: Path) -> None:
    if probe_device().gpus:
        pytest.skip("this machine has a GPU")
    cmd = [
        sys.executable,
        "-c",
        "import sys; from tritonvision.cli import main; sys.exit(main(sys.argv[1:]))",
        "serve",
        "--device",
        "gpu",
        "--repository",
        str(repo),
        "--http-port",
        str(free_port()),
        "--grpc-port",
        str(free_port()),
        "--metrics-port",
        str(free_port()),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "--device gpu: this machine cannot run the GPU path" in proc.stderr
    assert "onnxruntime-gpu" in proc.stderr


# ----------------------------------------------------------------------------- derivation


def test_auto_derives_the_cpu_repository_byte_for_byte(repo: Path, tmp_path: Path) -> None:
    plan = resolve_device("auto", probe_device())
    if plan.device != "cpu":
        pytest.skip("this machine runs auto on the GPU")
    auto = derive_runtime_repository(repo, tmp_path / "auto", device=plan.device)
    cpu = derive_runtime_repository(repo, tmp_path / "cpu", device="cpu")
    default = derive_runtime_repository(repo, tmp_path / "default")
    assert _snapshot(auto.path) == _snapshot(cpu.path) == _snapshot(default.path)
    assert (auto.models, auto.converted) == (cpu.models, cpu.converted)
    # Today's CPU repository: no provider parameter, every non-ONNX model linked as is.
    enc = _config(cpu.path / "enc" / "config.pbtxt")
    assert PARAM_ORT_PROVIDERS not in enc.parameters
    assert (cpu.path / "enc_preprocess").is_symlink()
    manifest = json.loads((cpu.path / ".tritonvision-runtime.json").read_text())
    assert set(manifest) == {"source", "converted"}


def test_gpu_derivation_writes_gpu_instances_and_names_the_providers(
    repo: Path, tmp_path: Path
) -> None:
    runtime = derive_runtime_repository(repo, tmp_path / "gpu", device="gpu")
    source = _config(repo / "enc" / "config.pbtxt")
    enc = _config(runtime.path / "enc" / "config.pbtxt")
    assert enc.backend == "python" and not enc.platform and not enc.HasField("optimization")
    assert [(g.kind, g.count) for g in enc.instance_group] == [
        (mc.ModelInstanceGroup.KIND_GPU, DEFAULT_GPU_INSTANCES)
    ]
    providers = parse_providers(enc.parameters[PARAM_ORT_PROVIDERS].string_value)
    assert [name for name, _ in providers] == [CUDA_PROVIDER, CPU_PROVIDER]
    assert enc.parameters[PARAM_ONNX_FILE].string_value == "model.onnx"
    assert int(enc.parameters[PARAM_ORT_THREADS].string_value) >= 1
    # The GPU keeps the repository's queue delay (the CPU default of 0 us is for CPUs).
    assert enc.dynamic_batching == source.dynamic_batching
    for field in ("input", "output", "max_batch_size", "model_warmup"):
        assert getattr(enc, field) == getattr(source, field), field
    assert (runtime.path / "enc" / "1" / "model.onnx").resolve() == (
        repo / "enc" / "1" / "model.onnx"
    ).resolve()
    # The preprocess model runs on GPU instances (nvImageCodec's precondition), its code
    # linked as is; the ensemble is untouched.
    pre_source = _config(repo / "enc_preprocess" / "config.pbtxt")
    pre = _config(runtime.path / "enc_preprocess" / "config.pbtxt")
    assert [g.kind for g in pre.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    assert pre.instance_group[0].count == sum(g.count for g in pre_source.instance_group)
    assert pre.parameters == pre_source.parameters and pre.input == pre_source.input
    assert (runtime.path / "enc_preprocess" / "1").resolve() == (
        repo / "enc_preprocess" / "1"
    ).resolve()
    assert (runtime.path / "enc_images").resolve() == (repo / "enc_images").resolve()
    manifest = json.loads((runtime.path / ".tritonvision-runtime.json").read_text())
    assert manifest["device"] == "gpu"
    assert _config(repo / "enc" / "config.pbtxt") == source  # never edited


def test_gpu_derivation_with_tensorrt_caches_engines_and_keeps_the_accelerator_settings(
    repo: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "work" / "tensorrt_cache"
    runtime = derive_runtime_repository(repo, tmp_path / "gpu", device="gpu", tensorrt_cache=cache)
    enc = _config(runtime.path / "enc" / "config.pbtxt")
    providers = parse_providers(enc.parameters[PARAM_ORT_PROVIDERS].string_value)
    assert [name for name, _ in providers] == [TENSORRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER]
    trt = providers[0][1]
    assert trt["trt_engine_cache_enable"] == "True"
    assert trt["trt_engine_cache_path"] == str(cache)
    # The export's TensorRT accelerator (FP16, 1 GiB workspace) becomes the provider's options.
    assert trt["trt_fp16_enable"] == "True"
    assert trt["trt_max_workspace_size"] == "1073741824"


def test_fp16_repository_is_served_as_exported_on_the_gpu(tmp_path: Path) -> None:
    repo = tmp_path / "repo16"
    write_repository_configs(ExportOptions(repository=repo, name="enc", fp16=True))
    onnx = repo / "enc" / "1" / "model.onnx"
    onnx.parent.mkdir(parents=True, exist_ok=True)
    onnx.write_bytes(b"fp16 placeholder")
    runtime = derive_runtime_repository(repo, tmp_path / "gpu", device="gpu")
    enc = _config(runtime.path / "enc" / "config.pbtxt")
    assert enc.parameters["tritonvision.precision"].string_value == "fp16"
    assert (runtime.path / "enc" / "1" / "model.onnx").read_bytes() == b"fp16 placeholder"
    assert [name for name, _ in parse_providers(enc.parameters[PARAM_ORT_PROVIDERS].string_value)]


def test_derivation_refuses_an_unresolved_device(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="resolve 'auto' first"):
        derive_runtime_repository(repo, tmp_path / "x", device="auto")


# ----------------------------------------------------------------------------- providers


def test_gpu_providers_are_pinned_to_the_instance_device() -> None:
    providers = [
        (TENSORRT_PROVIDER, {"trt_fp16_enable": "True"}),
        (CUDA_PROVIDER, {}),
        (CPU_PROVIDER, {}),
    ]
    pinned = providers_for_instance(providers, kind="GPU", device_id=3)
    assert pinned == [
        (TENSORRT_PROVIDER, {"trt_fp16_enable": "True", "device_id": "3"}),
        (CUDA_PROVIDER, {"device_id": "3"}),
        (CPU_PROVIDER, {}),
    ]
    assert providers_for_instance(providers, kind="CPU", device_id=0) == providers


def test_provider_parameter_parses_and_defaults_to_cpu() -> None:
    assert parse_providers("") == [(CPU_PROVIDER, {})]
    assert parse_providers('[["CUDAExecutionProvider", {"a": 1}]]') == [(CUDA_PROVIDER, {"a": "1"})]
    for bad in ("{", "[]", '[["x"]]'):
        with pytest.raises(ValueError, match=PARAM_ORT_PROVIDERS):
            parse_providers(bad)


def test_missing_cuda_provider_is_named_with_the_fix() -> None:
    with pytest.raises(
        RuntimeError, match=r"lacks CUDAExecutionProvider \(install onnxruntime-gpu\)"
    ):
        check_providers([CUDA_PROVIDER, CPU_PROVIDER], [CPU_PROVIDER], "1.0")
    check_providers([CPU_PROVIDER], [CPU_PROVIDER], "1.0")


def test_cpu_onnxruntime_here_refuses_the_cuda_provider() -> None:
    import onnxruntime as ort

    if CUDA_PROVIDER in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed")
    with pytest.raises(RuntimeError, match="CUDAExecutionProvider"):
        check_providers([CUDA_PROVIDER], ort.get_available_providers(), ort.__version__)


# ----------------------------------------------------------------------------- decoding


def test_cpu_instances_decode_with_pillow_and_say_so() -> None:
    def must_not_load() -> ModuleType:
        raise AssertionError("a CPU instance must not import nvImageCodec")

    module, why = choose_image_decoder("CPU", must_not_load)
    assert module is None and why == "Pillow (instance kind CPU)"


def test_gpu_instance_without_nvimgcodec_falls_back_to_pillow_naming_the_package() -> None:
    module, why = choose_image_decoder("GPU")  # the real import: not installed here
    try:
        import nvidia.nvimgcodec  # noqa: F401
    except Exception:
        assert module is None
        assert why.startswith("Pillow (GPU instance, but nvImageCodec does not import")
        assert "nvidia-nvimgcodec-cu12" in why
    else:
        assert module is not None and why.startswith("nvImageCodec")


def test_gpu_instance_with_nvimgcodec_uses_it() -> None:
    fake = ModuleType("nvidia.nvimgcodec")
    module, why = choose_image_decoder("GPU", lambda: fake)
    assert module is fake and why.startswith("nvImageCodec")


class _HostImage:
    """What nvImageCodec's ``Image.cpu()`` gives: an object NumPy reads as HWC uint8."""

    def __init__(self, arr: np.ndarray) -> None:
        self._arr = arr

    def cpu(self) -> np.ndarray:
        return self._arr


class _FakeDecoder:
    """Stand-in for ``nvimgcodec.Decoder``: decodes in full with Pillow (no draft), drops
    items it cannot decode from a batch as nvImageCodec does."""

    calls: ClassVar[list[int]] = []

    def __init__(self, device_id: int = 0, options: str = "") -> None:
        assert options == ":fancy_upsampling=1"
        self.device_id = device_id

    def _one(self, data: bytes) -> _HostImage | None:
        if data.endswith(b"BROKEN"):
            return None
        with Image.open(io.BytesIO(data)) as img:
            return _HostImage(np.asarray(img.convert("RGB")))

    def decode(self, data: Any, params: Any = None) -> Any:
        if isinstance(data, list):
            _FakeDecoder.calls.append(len(data))
            return [img for img in (self._one(d) for d in data) if img is not None]
        return self._one(data)


def _fake_nvimgcodec() -> Any:
    return SimpleNamespace(Decoder=_FakeDecoder, DecodeParams=lambda **kw: kw)


def _photo(width: int, height: int, mode: str = "RGB", fmt: str = "JPEG") -> bytes:
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    rgb = np.stack(
        [127 + 120 * np.sin(x / 23.0), 255 * x / width, 127 + 120 * np.cos((x - y) / 41.0)],
        axis=-1,
    )
    noise = np.random.default_rng(0).normal(0, 6, rgb.shape)
    img = Image.fromarray(np.clip(rgb + noise, 0, 255).astype(np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


CLIP = PreprocessSpec.from_json(
    json.dumps(
        {
            "resize": {"mode": "shortest_edge", "shortest_edge": 224},
            "crop": {"height": 224, "width": 224},
            "resample": "bicubic",
            "rescale_factor": 1 / 255,
            "mean": [0.48145466, 0.4578275, 0.40821073],
            "std": [0.26862954, 0.26130258, 0.27577711],
            "input": {
                "name": "pixels",
                "datatype": "UINT8",
                "layout": "NHWC",
                "height": 224,
                "width": 224,
            },
        }
    )
)


def test_gpu_decoder_takes_jpegs_and_leaves_everything_else_to_pillow() -> None:
    decoder = NvJpegDecoder(_fake_nvimgcodec(), device_id=1)
    jpeg, grey = _photo(640, 480), _photo(300, 200, mode="L")
    items = [jpeg, _photo(64, 48, fmt="PNG"), _photo(64, 48, mode="CMYK"), grey, b"\xff\xd8junk"]
    out = decoder.decode_batch(items, max_pixels=10_000_000)
    assert out[0] is not None and out[0].shape == (480, 640, 3)
    assert out[1] is None and out[2] is None and out[4] is None  # PNG, CMYK, no header
    assert out[3] is not None and out[3].shape == (200, 300, 3)
    # Over the pixel limit: refused before any decoding (Pillow then names the item).
    assert decoder.decode_batch([jpeg], max_pixels=640 * 480 - 1) == [None]


def test_gpu_decoder_decodes_one_by_one_when_a_batch_item_fails() -> None:
    decoder = NvJpegDecoder(_fake_nvimgcodec())
    good = _photo(320, 240)
    broken = good + b"BROKEN"  # a valid header the stand-in refuses to decode
    _FakeDecoder.calls.clear()
    out = decoder.decode_batch([good, broken, good], max_pixels=10_000_000)
    assert _FakeDecoder.calls == [3]  # one batched call, then per item
    assert out[0] is not None and out[1] is None and out[2] is not None


def test_gpu_decoded_pixels_stay_within_the_client_parity_tolerance() -> None:
    # Only the decode step changes: a full decode + the same resize/crop against Pillow's
    # fast path (JPEG draft). The tolerance is the one the client's fast path meets
    # against transformers in tests/unit/test_client_imaging.py.
    decoder = NvJpegDecoder(_fake_nvimgcodec())
    for size in ((640, 480), (1920, 1080), (500, 1300)):
        data = _photo(*size)
        (decoded,) = decoder.decode_batch([data], max_pixels=100_000_000)
        assert decoded is not None
        gpu = resize_and_crop(Image.fromarray(decoded), CLIP, DEFAULT_REDUCING_GAP)
        cpu = load_image_pixels(data, CLIP)
        assert gpu.shape == cpu.shape == CLIP.output_shape
        diff = np.abs(normalize_pixels(gpu, CLIP) - normalize_pixels(cpu, CLIP))
        assert diff.max() < 0.1, size
        assert diff.mean() < 0.006, size
