"""Write a Triton model repository: encoder, python-backend preprocess model, ensemble.

Configs are built as ``model_config_pb2.ModelConfig`` messages and printed with protobuf's
``text_format``, so they are valid by construction, parse back in tests, and print the same
bytes for the same options (map entries print sorted by key).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tritonvision.contract import (
    EMBEDDINGS_OUTPUT,
    IMAGES_INPUT,
    PARAM_MAX_IMAGE_PIXELS,
    PIXELS_INPUT,
)

from ._encoders import EncoderInfo, builtin_encoder_info, describe_checkpoint
from ._options import ExportOptions

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2

__all__ = [
    "CONFIG_HEADER",
    "PREPROCESS_MODEL_PY",
    "RepositoryFiles",
    "config_text",
    "describe_model",
    "encoder_config",
    "ensemble_config",
    "preprocess_config",
    "write_repository_configs",
]

# The python-backend model file: a shim, so the implementation ships (and is tested) in the package.
PREPROCESS_MODEL_PY = (
    '"""Triton python-backend model: encoded image bytes -> pixels.\n\n'
    'The logic lives in tritonvision.serve.backends.preprocess.\n"""\n'
    "\n"
    "from tritonvision.serve.backends.preprocess import TritonPythonModel  # noqa: F401\n"
)
CONFIG_HEADER = "# Written by `tritonvision export`; change the export options, not this file.\n"
TENSORRT_PARAMETERS = {"precision_mode": "FP16", "max_workspace_size_bytes": str(1 << 30)}
WARMUP_NAME = "zero_pixels"


@dataclass(frozen=True)
class RepositoryFiles:
    """The files an export owns in a repository (``model`` is written only by a full export)."""

    encoder_config: Path
    model: Path
    preprocess_config: Path
    preprocess_model: Path
    ensemble_config: Path
    ensemble_placeholder: Path

    @property
    def configs(self) -> tuple[Path, ...]:
        """Every file :func:`write_repository_configs` writes."""
        return (
            self.encoder_config,
            self.preprocess_config,
            self.preprocess_model,
            self.ensemble_config,
            self.ensemble_placeholder,
        )


def repository_files(options: ExportOptions) -> RepositoryFiles:
    repo, version = options.repository, str(options.version)
    return RepositoryFiles(
        encoder_config=repo / options.name / "config.pbtxt",
        model=repo / options.name / version / "model.onnx",
        preprocess_config=repo / options.preprocess_name / "config.pbtxt",
        preprocess_model=repo / options.preprocess_name / version / "model.py",
        ensemble_config=repo / options.ensemble_name / "config.pbtxt",
        # Triton needs the ensemble's version directory to exist; git keeps no empty dirs.
        ensemble_placeholder=repo / options.ensemble_name / version / ".gitkeep",
    )


def describe_model(options: ExportOptions) -> EncoderInfo:
    """What ``options`` would publish, without loading weights."""
    if options.checkpoint is None:
        return builtin_encoder_info(normalize=options.normalize, fp16=options.fp16)
    return describe_checkpoint(
        options.checkpoint, normalize=options.normalize, fp16=options.fp16, pooling=options.pooling
    )


def _pb() -> Any:
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


def _set_parameters(config: model_config_pb2.ModelConfig, info: EncoderInfo) -> None:
    for key, value in info.parameters().items():
        config.parameters[key].string_value = value


def _queue_policy(options: ExportOptions) -> model_config_pb2.ModelQueuePolicy:
    pb = _pb()
    # Bounded, so overload is refused at once instead of queueing without limit; REJECT plus
    # allow_timeout_override lets a request's own timeout drop it from the queue.
    return pb.ModelQueuePolicy(
        timeout_action=pb.ModelQueuePolicy.REJECT,
        allow_timeout_override=True,
        max_queue_size=options.max_queue_size,
    )


def encoder_config(options: ExportOptions, info: EncoderInfo) -> model_config_pb2.ModelConfig:
    """``NAME``: the ONNX encoder, uint8 pixels [H, W, 3] -> fp32 embeddings [D]."""
    pb = _pb()
    pixel_dims = [info.height, info.width, 3]
    config = pb.ModelConfig(
        name=options.name,
        platform="onnxruntime_onnx",
        backend="onnxruntime",
        max_batch_size=options.max_batch_size,
        input=[pb.ModelInput(name=PIXELS_INPUT, data_type=pb.TYPE_UINT8, dims=pixel_dims)],
        output=[
            pb.ModelOutput(
                name=EMBEDDINGS_OUTPUT, data_type=pb.TYPE_FP32, dims=[info.embedding_dim]
            )
        ],
        # KIND_AUTO (the default, so not printed): GPU where Triton has one, else CPU; the same
        # file loads on both.
        instance_group=[pb.ModelInstanceGroup(count=options.instances)],
        dynamic_batching=pb.ModelDynamicBatching(
            preferred_batch_size=list(options.preferred_batch_sizes),
            max_queue_delay_microseconds=options.max_queue_delay_us,
            default_queue_policy=_queue_policy(options),
        ),
        model_warmup=[
            pb.ModelWarmup(
                name=WARMUP_NAME,
                batch_size=1,
                inputs={
                    PIXELS_INPUT: pb.ModelWarmup.Input(
                        data_type=pb.TYPE_UINT8, dims=pixel_dims, zero_data=True
                    )
                },
            )
        ],
    )
    if options.tensorrt:
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add()
        accelerator.name = "tensorrt"
        accelerator.parameters.update(TENSORRT_PARAMETERS)
    if options.response_cache:
        config.response_cache.enable = True
    _set_parameters(config, info)
    return config


def preprocess_config(options: ExportOptions, info: EncoderInfo) -> model_config_pb2.ModelConfig:
    """``NAME_preprocess``: python backend, encoded image bytes [1] -> uint8 pixels [H, W, 3].

    Besides the published parameters it carries ``PARAM_MAX_IMAGE_PIXELS``, the
    decompression-bomb limit the backend enforces while decoding.
    """
    pb = _pb()
    config = pb.ModelConfig(
        name=options.preprocess_name,
        backend="python",
        max_batch_size=options.max_batch_size,
        input=[pb.ModelInput(name=IMAGES_INPUT, data_type=pb.TYPE_STRING, dims=[1])],
        output=[
            pb.ModelOutput(
                name=PIXELS_INPUT, data_type=pb.TYPE_UINT8, dims=[info.height, info.width, 3]
            )
        ],
        # Decoding is CPU work whatever the box.
        instance_group=[
            pb.ModelInstanceGroup(
                count=options.preprocess_instances, kind=pb.ModelInstanceGroup.KIND_CPU
            )
        ],
        dynamic_batching=pb.ModelDynamicBatching(default_queue_policy=_queue_policy(options)),
    )
    _set_parameters(config, info)
    config.parameters[PARAM_MAX_IMAGE_PIXELS].string_value = str(options.max_image_pixels)
    return config


def ensemble_config(options: ExportOptions, info: EncoderInfo) -> model_config_pb2.ModelConfig:
    """``NAME_images``: images -> NAME_preprocess -> NAME -> embeddings."""
    pb = _pb()
    step = pb.ModelEnsembling.Step
    config = pb.ModelConfig(
        name=options.ensemble_name,
        platform="ensemble",
        max_batch_size=options.max_batch_size,
        input=[pb.ModelInput(name=IMAGES_INPUT, data_type=pb.TYPE_STRING, dims=[1])],
        output=[
            pb.ModelOutput(
                name=EMBEDDINGS_OUTPUT, data_type=pb.TYPE_FP32, dims=[info.embedding_dim]
            )
        ],
        ensemble_scheduling=pb.ModelEnsembling(
            step=[
                step(
                    model_name=options.preprocess_name,
                    model_version=-1,
                    input_map={IMAGES_INPUT: IMAGES_INPUT},
                    output_map={PIXELS_INPUT: PIXELS_INPUT},
                ),
                step(
                    model_name=options.name,
                    model_version=-1,
                    input_map={PIXELS_INPUT: PIXELS_INPUT},
                    output_map={EMBEDDINGS_OUTPUT: EMBEDDINGS_OUTPUT},
                ),
            ]
        ),
    )
    if options.response_cache:
        # Triton caches the ensemble's own (top-level) responses: a hit skips decoding too.
        config.response_cache.enable = True
    _set_parameters(config, info)
    return config


def config_text(config: model_config_pb2.ModelConfig) -> str:
    """The ``config.pbtxt`` text of a config message."""
    from google.protobuf import text_format

    return CONFIG_HEADER + text_format.MessageToString(config)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))


def write_repository_configs(
    options: ExportOptions, info: EncoderInfo | None = None
) -> RepositoryFiles:
    """Write the three configs, the preprocess shim and the ensemble placeholder (no model.onnx).

    ``info`` defaults to :func:`describe_model` of ``options`` (reads the checkpoint's JSON only).
    """
    if info is None:
        info = describe_model(options)
    files = repository_files(options)
    _write(files.encoder_config, config_text(encoder_config(options, info)))
    _write(files.preprocess_config, config_text(preprocess_config(options, info)))
    _write(files.preprocess_model, PREPROCESS_MODEL_PY)
    _write(files.ensemble_config, config_text(ensemble_config(options, info)))
    _write(files.ensemble_placeholder, "")
    return files
