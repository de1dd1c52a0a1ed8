"""What a deployment needs to know about a model repository, read from its ``config.pbtxt`` files.

Configs are parsed with tritonclient's ``model_config_pb2`` and protobuf ``text_format`` (the
same parser Triton's own tooling uses), never by pattern matching, so the manifests are made
from what Triton will load. Nothing here touches the network or the model files' contents.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from tritonvision.errors import ModelConfigError

__all__ = [
    "BYTES_ITEM_ALLOWANCE",
    "PYTHON_STUB_DEFAULT_SHM_BYTES",
    "SHM_HEADROOM_BYTES",
    "ModelSummary",
    "RepositorySummary",
    "read_repository",
]

MIB = 1024 * 1024

# An encoded image is what a BYTES element carries here; 4 MiB covers a 12 MP JPEG. Shared
# memory is only reserved (a tmpfs limit), so over-estimating costs nothing until used.
BYTES_ITEM_ALLOWANCE = 4 * MIB
# Triton's python backend gives every stub a region of shm-default-byte-size (1 MiB) first.
PYTHON_STUB_DEFAULT_SHM_BYTES = 1 * MIB
# The server's own regions and the stubs' control blocks.
SHM_HEADROOM_BYTES = 64 * MIB

_ITEM_BYTES: dict[int, int] = {
    mc.TYPE_BOOL: 1,
    mc.TYPE_UINT8: 1,
    mc.TYPE_INT8: 1,
    mc.TYPE_UINT16: 2,
    mc.TYPE_INT16: 2,
    mc.TYPE_FP16: 2,
    mc.TYPE_BF16: 2,
    mc.TYPE_UINT32: 4,
    mc.TYPE_INT32: 4,
    mc.TYPE_FP32: 4,
    mc.TYPE_UINT64: 8,
    mc.TYPE_INT64: 8,
    mc.TYPE_FP64: 8,
}


@dataclass(frozen=True)
class ModelSummary:
    """One model of the repository, as far as a deployment cares."""

    name: str
    kind: str
    """``ensemble``, ``python``, ``onnxruntime`` or another backend's name."""
    max_batch_size: int
    instances_per_gpu: int
    """Instances of KIND_GPU/KIND_AUTO groups (multiplied by the GPUs a pod gets)."""
    instances_fixed: int
    """Instances of KIND_CPU/KIND_MODEL groups (and GPU groups that name their GPUs)."""
    batch_tensor_bytes: int
    """Inputs plus outputs of one full batch (BYTES tensors at :data:`BYTES_ITEM_ALLOWANCE`)."""

    @property
    def scheduled(self) -> bool:
        """Whether Triton queues and executes requests for it (ensembles only route them)."""
        return self.kind != "ensemble"

    def instances(self, gpus: int) -> int:
        """Execution instances in a pod with ``gpus`` GPUs."""
        return self.instances_fixed + self.instances_per_gpu * gpus


@dataclass(frozen=True)
class RepositorySummary:
    """The models of a repository, sorted by name."""

    path: Path
    models: tuple[ModelSummary, ...]

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)

    @property
    def scheduled_model_names(self) -> tuple[str, ...]:
        """Models with a queue of their own: what the queue-time metric is summed over."""
        return tuple(m.name for m in self.models if m.scheduled)

    def shm_bytes(self, gpus: int) -> int:
        """``/dev/shm`` a pod needs: every python-backend stub holds a request and its response.

        Per stub instance: the default region plus one full batch's inputs and outputs, twice
        (the next request is written while the last response is still read); plus headroom.
        Rounded up to whole MiB.
        """
        total = SHM_HEADROOM_BYTES
        for model in self.models:
            if model.kind != "python":
                continue
            per_stub = PYTHON_STUB_DEFAULT_SHM_BYTES + 2 * model.batch_tensor_bytes
            total += model.instances(gpus) * per_stub
        return math.ceil(total / MIB) * MIB


def _tensor_item_bytes(data_type: int, dims: Iterable[int]) -> int:
    dims = list(dims)
    if data_type == mc.TYPE_STRING or any(d < 0 for d in dims):
        # Variable-size: budget it as one encoded image.
        return BYTES_ITEM_ALLOWANCE
    size = _ITEM_BYTES.get(data_type)
    if size is None:
        raise ModelConfigError(f"unknown tensor data type {mc.DataType.Name(data_type)}")
    return size * math.prod(dims)


def _kind(config: mc.ModelConfig) -> str:
    if config.platform == "ensemble":
        return "ensemble"
    if config.platform == "onnxruntime_onnx":
        return "onnxruntime"
    if config.backend:
        return str(config.backend)
    return str(config.platform) or "unknown"


def _summarise(config: mc.ModelConfig) -> ModelSummary:
    per_gpu = 0
    fixed = 0
    if config.platform != "ensemble":
        groups = list(config.instance_group) or [mc.ModelInstanceGroup()]
        for group in groups:
            count = group.count or 1
            if group.kind in (mc.ModelInstanceGroup.KIND_CPU, mc.ModelInstanceGroup.KIND_MODEL):
                fixed += count
            elif group.gpus:
                fixed += count * len(group.gpus)
            else:
                per_gpu += count
    batch = max(config.max_batch_size, 1)
    tensors = [(t.data_type, t.dims) for t in config.input] + [
        (t.data_type, t.dims) for t in config.output
    ]
    item = sum(_tensor_item_bytes(data_type, dims) for data_type, dims in tensors)
    return ModelSummary(
        name=config.name,
        kind=_kind(config),
        max_batch_size=config.max_batch_size,
        instances_per_gpu=per_gpu,
        instances_fixed=fixed,
        batch_tensor_bytes=batch * item,
    )


def read_repository(path: str | Path) -> RepositorySummary:
    """Read every ``<model>/config.pbtxt`` under ``path``.

    Raises :class:`ModelConfigError` when the folder holds no model, a config does not
    parse, or a config's ``name`` differs from its folder (Triton refuses that too).
    """
    root = Path(path)
    if not root.is_dir():
        raise ModelConfigError(f"model repository {root} is not a folder")
    models = []
    for config_path in sorted(root.glob("*/config.pbtxt")):
        folder = config_path.parent.name
        try:
            config = text_format.Parse(config_path.read_text(), mc.ModelConfig())
        except (OSError, text_format.ParseError) as exc:
            raise ModelConfigError(f"cannot read model config {config_path}: {exc}") from exc
        if not config.name:
            config.name = folder
        elif config.name != folder:
            raise ModelConfigError(
                f"{config_path}: model name {config.name!r} differs from its folder {folder!r}"
            )
        models.append(_summarise(config))
    if not models:
        raise ModelConfigError(f"model repository {root} holds no <model>/config.pbtxt")
    return RepositorySummary(path=root, models=tuple(models))
