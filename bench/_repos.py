"""Exported encoders (cached), per-run model repositories with variants, and served models.

An export is slow (ViT-B/32 takes minutes on a small machine), so each encoder is exported
once, through :func:`tritonvision.export.export_encoder`, into
``<cache>/bench-repos/<encoder>-<key>``, keyed by the encoder's shape, the export options
and a hash of the export code. Each run then builds a small repository that links the
cached ``model.onnx`` files and adds the variants the scenarios compare (dynamic batching
off, other queue delays and instance counts, an fp32-input twin), with configs edited
through ``model_config_pb2`` + ``text_format``, never by string templates.

The server runs with ``--model-control-mode=explicit``: a scenario loads the models it
measures and the others are unloaded, so no idle python-backend stub holds memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tritonvision.contract import (
    DEFAULT_MODEL,
    PARAM_ORT_THREADS,
    PARAM_PREPROCESSING,
    PIXELS_INPUT,
    PreprocessSpec,
    ensemble_name,
    preprocess_name,
)

# serve does not export its CPU serving defaults; the variants are defined against them.
from tritonvision.serve._runtime_repo import DEFAULT_CPU_INSTANCES, DEFAULT_CPU_QUEUE_DELAY_US

from ._load import cpu_seconds_of_group

__all__ = [
    "BASE",
    "ENCODERS",
    "FP32",
    "FP32_INPUT",
    "NO_BATCHING",
    "EncoderSpec",
    "ExportedEncoder",
    "RunRepository",
    "ServedRepository",
    "Variant",
    "build_run_repository",
    "cached_export",
    "exported",
]

logger = logging.getLogger(__name__)

# The fp32 twin's input: float32 NCHW, already rescaled and normalised (bench-only model).
FP32_INPUT = "pixel_values"


# ----------------------------------------------------------------------------- encoders


@dataclass(frozen=True)
class EncoderSpec:
    """An encoder the benchmarks export: the built-in ViT-B/32 or a tiny CLIP."""

    key: str
    label: str
    model_name: str
    # CLIPVisionConfig keyword arguments; None means the built-in default (ViT-B/32).
    vision_config: dict[str, Any] | None
    max_batch_size: int = 32
    # Also export an fp32-input twin (float NCHW, already normalised) for scenario 4.
    fp32_twin: bool = False


TINY = EncoderSpec(
    key="tiny",
    label="tiny CLIP (224 px input, 2 layers, width 32, d=16)",
    model_name="tiny",
    vision_config={
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 224,
        "patch_size": 32,
        "projection_dim": 16,
    },
    fp32_twin=True,
)

B32 = EncoderSpec(
    key="b32",
    label="CLIP ViT-B/32 (built-in default, untrained, d=512)",
    model_name=DEFAULT_MODEL,
    vision_config=None,
)

ENCODERS = {e.key: e for e in (TINY, B32)}


def _export_code_hash() -> str:
    import tritonvision.export

    root = Path(tritonvision.export.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _cache_key(spec: EncoderSpec) -> str:
    from importlib import metadata

    blob = json.dumps(
        {
            "vision_config": spec.vision_config,
            "name": spec.model_name,
            "max_batch_size": spec.max_batch_size,
            "fp32_twin": spec.fp32_twin,
            "tritonvision": metadata.version("tritonvision"),
            "export_code": _export_code_hash(),
            "torch": metadata.version("torch"),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ExportedEncoder:
    spec: EncoderSpec
    repository: Path
    export_s: float  # 0 when it came from the cache

    @property
    def onnx_path(self) -> Path:
        return self.repository / self.spec.model_name / "1" / "model.onnx"

    @property
    def fp32_onnx_path(self) -> Path:
        return self.repository / "_fp32" / "model.onnx"


def cached_export(
    cache_dir: Path, key: str, digest: str, export: Callable[[Path], None]
) -> tuple[Path, float]:
    """``<cache>/bench-repos/<key>-<digest>``, exported now by ``export(dir)`` unless cached.

    Returns the folder and the seconds the export took (0 from the cache). Exports go to a
    partial folder renamed into place, so a killed run never leaves a half export; older
    exports of ``key`` (other options or export code) are removed: ViT-B/32 is ~350 MB each.
    """
    cache = cache_dir.expanduser() / "bench-repos"
    dest = cache / f"{key}-{digest}"
    if (dest / ".complete").exists():
        return dest, 0.0
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f".{dest.name}.{os.getpid()}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    started = time.perf_counter()
    try:
        with _quiet():
            export(partial)
        (partial / ".complete").write_text(json.dumps({"exported": time.time()}))
        try:
            os.replace(partial, dest)
        except OSError:  # another run finished first: keep theirs
            if not (dest / ".complete").exists():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    for stale in cache.glob(f"{key}-*"):
        if stale != dest and (stale / ".complete").exists():
            shutil.rmtree(stale, ignore_errors=True)
    return dest, time.perf_counter() - started


def exported(spec: EncoderSpec, cache_dir: Path) -> ExportedEncoder:
    """The encoder's exported repository, from the cache or exported now (then cached)."""
    dest, seconds = cached_export(
        cache_dir, spec.key, _cache_key(spec), lambda partial: _export(spec, partial)
    )
    return ExportedEncoder(spec, dest, seconds)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress chatter (warnings and INFO logs) in bench output."""
    import warnings

    names = ("torch", "torch.onnx", "onnxscript", "onnx_ir", "tritonvision.export")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _export(spec: EncoderSpec, repository: Path) -> None:
    from tritonvision.export import ExportOptions, builtin_encoder, export_encoder

    vision_config: Any = None
    if spec.vision_config is not None:
        from transformers import CLIPVisionConfig

        vision_config = CLIPVisionConfig(**spec.vision_config)
    result = export_encoder(
        builtin_encoder(vision_config),
        ExportOptions(
            repository=repository, name=spec.model_name, max_batch_size=spec.max_batch_size
        ),
    )
    if spec.fp32_twin:
        _write_fp32_twin(
            result.model_path, result.model.preprocessing, repository / "_fp32" / "model.onnx"
        )


def _write_fp32_twin(onnx_path: Path, spec: PreprocessSpec, dest: Path) -> None:
    """The exported graph behind a float32 NCHW ``pixel_values`` input (already rescaled and
    normalised): what a stack that normalises on the client sends, 4x the bytes of uint8.

    Made by editing the exported graph rather than by a second export, so both models share
    every weight and op: a prologue maps the floats back to the uint8 pixels they came from
    (``(x * std + mean) / rescale``, rounded, NCHW -> NHWC) and feeds the encoder's own
    input. The prologue adds a few elementwise ops per image to the twin's server side.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    (pixels,) = [i for i in graph.input if i.name == PIXELS_INPUT]
    batch_dim = pixels.type.tensor_type.shape.dim[0]
    batch: str | int = batch_dim.dim_param or batch_dim.dim_value
    height, width, _ = spec.output_shape
    graph.input.remove(pixels)
    graph.input.insert(
        0, helper.make_tensor_value_info(FP32_INPUT, TensorProto.FLOAT, [batch, 3, height, width])
    )
    std = np.asarray(spec.std, dtype=np.float32).reshape(1, 3, 1, 1)
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    rescale = np.float32(spec.rescale_factor)
    constants = {
        "bench_fp32_scale": std / rescale,
        "bench_fp32_offset": mean / rescale,
        "bench_fp32_low": np.asarray(0.0, dtype=np.float32),
        "bench_fp32_high": np.asarray(255.0, dtype=np.float32),
    }
    graph.initializer.extend(numpy_helper.from_array(v, name=k) for k, v in constants.items())
    prologue = [
        helper.make_node("Mul", [FP32_INPUT, "bench_fp32_scale"], ["bench_fp32_scaled"]),
        helper.make_node("Add", ["bench_fp32_scaled", "bench_fp32_offset"], ["bench_fp32_levels"]),
        helper.make_node("Round", ["bench_fp32_levels"], ["bench_fp32_rounded"]),
        helper.make_node(
            "Clip", ["bench_fp32_rounded", "bench_fp32_low", "bench_fp32_high"], ["bench_fp32_c"]
        ),
        helper.make_node("Cast", ["bench_fp32_c"], ["bench_fp32_u8"], to=TensorProto.UINT8),
        helper.make_node("Transpose", ["bench_fp32_u8"], [PIXELS_INPUT], perm=[0, 2, 3, 1]),
    ]
    for node in reversed(prologue):
        graph.node.insert(0, node)
    onnx.checker.check_model(model, full_check=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dest))


# ---------------------------------------------------------------------- run repository


@dataclass(frozen=True)
class Variant:
    """A served copy of the encoder with other serving settings (same ``model.onnx``)."""

    suffix: str
    dynamic_batching: bool = True
    max_queue_delay_us: int | None = DEFAULT_CPU_QUEUE_DELAY_US  # serve's; None: as exported
    instances: int = DEFAULT_CPU_INSTANCES  # what `tritonvision serve` uses
    ort_threads: int | None = None  # None: the run's cores split between the instances
    fp32_input: bool = False

    def describe(self) -> str:
        if not self.dynamic_batching:
            batching = "dynamic batching off"
        elif self.max_queue_delay_us is None:
            batching = "dynamic batching on (exported queue delay, 2 ms)"
        else:
            batching = f"dynamic batching on, queue delay {self.max_queue_delay_us} us"
        threads = f", {self.ort_threads} ORT thread(s) each" if self.ort_threads else ""
        return f"{batching}, {self.instances} instance(s){threads}"


BASE = Variant("")
NO_BATCHING = Variant("_nobatch", dynamic_batching=False)
FP32 = Variant("_fp32", fp32_input=True)


def _read_config(path: Path) -> Any:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _write_config(path: Path, config: Any) -> None:
    from google.protobuf import text_format

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text_format.MessageToString(config))


def _variant_config(
    base: Any, name: str, variant: Variant, threads: int, spec: PreprocessSpec
) -> Any:
    from tritonclient.grpc import model_config_pb2 as mc

    config = mc.ModelConfig()
    config.CopyFrom(base)
    config.name = name
    if not variant.dynamic_batching:
        config.ClearField("dynamic_batching")
    elif variant.max_queue_delay_us is not None:
        config.dynamic_batching.max_queue_delay_microseconds = variant.max_queue_delay_us
    del config.instance_group[:]
    config.instance_group.add(count=variant.instances)
    config.parameters[PARAM_ORT_THREADS].string_value = str(threads)
    if variant.fp32_input:
        height, width, _ = spec.output_shape
        del config.input[:]
        config.input.add(name=FP32_INPUT, data_type=mc.TYPE_FP32, dims=[3, height, width])
        config.ClearField("model_warmup")
        # Our client reads this to decide what to send; this twin takes something else.
        del config.parameters[PARAM_PREPROCESSING]
    return config


@dataclass
class RunRepository:
    """A per-run repository: the cached export's models plus serving variants."""

    encoder: ExportedEncoder
    path: Path
    preprocessing: PreprocessSpec
    variants: dict[str, Variant] = field(default_factory=dict)

    @property
    def model(self) -> str:
        return self.encoder.spec.model_name

    @property
    def images_model(self) -> str:
        return ensemble_name(self.model)

    @property
    def preprocess_model(self) -> str:
        return preprocess_name(self.model)

    def name_of(self, variant: Variant) -> str:
        return self.model + variant.suffix


def build_run_repository(
    encoder: ExportedEncoder, dest: Path, variants: Iterable[Variant], *, default_threads: int
) -> RunRepository:
    """Write ``dest``: the export's models (ONNX linked, not copied) plus ``variants``."""
    spec_name = encoder.spec.model_name
    source = encoder.repository
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    base_config = _read_config(source / spec_name / "config.pbtxt")
    spec = PreprocessSpec.from_json(base_config.parameters[PARAM_PREPROCESSING].string_value)
    for model_dir in source.iterdir():
        if model_dir.is_dir() and model_dir.name not in (spec_name, "_fp32"):
            shutil.copytree(model_dir, dest / model_dir.name)
    repo = RunRepository(encoder, dest, spec)
    unique = {v.suffix: v for v in (BASE, *variants)}
    for variant in unique.values():
        if variant.fp32_input and not encoder.fp32_onnx_path.exists():
            continue
        name = repo.name_of(variant)
        threads = variant.ort_threads or max(1, default_threads // variant.instances)
        config = _variant_config(base_config, name, variant, threads, spec)
        _write_config(dest / name / "config.pbtxt", config)
        onnx = encoder.fp32_onnx_path if variant.fp32_input else encoder.onnx_path
        (dest / name / "1").mkdir(parents=True, exist_ok=True)
        os.symlink(onnx.resolve(), dest / name / "1" / "model.onnx")
        repo.variants[name] = variant
    return repo


# ----------------------------------------------------------------------------- serving


class ServedRepository:
    """A ``LocalTriton`` on free ports serving a run repository, models loaded on demand."""

    def __init__(self, repo: RunRepository, workdir: Path) -> None:
        from tritonvision.serve import LocalTriton, ServerPorts, free_port

        self.repo = repo
        self.server = LocalTriton(
            repo.path,
            ports=ServerPorts(http=free_port(), grpc=free_port(), metrics=free_port()),
            workdir=workdir,
            extra_args=("--model-control-mode=explicit",),
            # The variants set their own instance groups and queue delays.
            cpu_instances=None,
            queue_delay_us=None,
            # Explicit model control: nothing is loaded until a scenario asks, so there is
            # nothing to warm up at start; each measurement makes its own warm-up calls.
            warm_up=False,
        )
        self.loaded: set[str] = set()
        self.start_s = 0.0
        self.version = "?"

    @property
    def http_url(self) -> str:
        return self.server.http_url

    @property
    def grpc_url(self) -> str:
        return self.server.grpc_url

    @property
    def host_port(self) -> str:
        return self.http_url.removeprefix("http://")

    def start(self) -> ServedRepository:
        started = time.perf_counter()
        self.server.start(ready_timeout_s=300)
        self.start_s = time.perf_counter() - started
        with urllib.request.urlopen(f"{self.http_url}/v2", timeout=10) as response:
            self.version = str(json.loads(response.read()).get("version", "?"))
        return self

    def stop(self) -> None:
        self.server.stop()
        self.loaded.clear()

    def _repository_call(self, model: str, action: str) -> None:
        request = urllib.request.Request(
            f"{self.http_url}/v2/repository/models/{model}/{action}", data=b"{}", method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise RuntimeError(f"cannot {action} model {model!r}: {detail}") from exc

    def use(self, models: Sequence[str]) -> None:
        """Make exactly ``models`` loaded: unload the others first (frees their stubs)."""
        wanted = set(models)
        for model in sorted(self.loaded - wanted):
            with contextlib.suppress(RuntimeError):
                self._repository_call(model, "unload")
            self.loaded.discard(model)
        for model in models:
            if model not in self.loaded:
                self._repository_call(model, "load")
                self.loaded.add(model)

    def cpu_seconds(self) -> float:
        pid = self.server.pid
        return cpu_seconds_of_group(pid) if pid else 0.0
