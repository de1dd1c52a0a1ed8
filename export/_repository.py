"""Write a Triton model repository: encoder, python-backend preprocess model, ensemble, and
with ``ExportOptions.text`` the text tower, the python-backend tokenize model (with the
checkpoint's tokenizer files) and the texts ensemble.

Configs are built as ``model_config_pb2.ModelConfig`` messages and printed with protobuf's
``text_format``, so they are valid by construction, parse back in tests, and print the same
bytes for the same options (map entries print sorted by key).
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tritonvision.contract import (
    EMBEDDINGS_OUTPUT,
    IMAGES_INPUT,
    PARAM_MAX_IMAGE_PIXELS,
    PIXELS_INPUT,
    TEXTS_INPUT,
    TOKENIZER_DIR,
)

from ._encoders import EncoderInfo, builtin_encoder_info, describe_checkpoint
from ._options import ExportOptions
from ._text import TextInfo, _described_with_tokenizer, load_tokenizer

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2

__all__ = [
    "CONFIG_HEADER",
    "PREPROCESS_MODEL_PY",
    "TOKENIZE_MODEL_PY",
    "RepositoryFiles",
    "TextRepositoryFiles",
    "config_text",
    "describe_model",
    "describe_text_model",
    "encoder_config",
    "ensemble_config",
    "preprocess_config",
    "save_tokenizer",
    "text_config",
    "text_repository_files",
    "texts_config",
    "tokenize_config",
    "write_encoder_configs",
    "write_repository_configs",
    "write_text_configs",
]

# The python-backend model file: a shim, so the implementation ships (and is tested) in the package.
PREPROCESS_MODEL_PY = (
    '"""Triton python-backend model: encoded image bytes -> pixels.\n\n'
    'The logic lives in tritonvision.serve.backends.preprocess.\n"""\n'
    "\n"
    "from tritonvision.serve.backends.preprocess import TritonPythonModel  # noqa: F401\n"
)
TOKENIZE_MODEL_PY = (
    '"""Triton python-backend model: UTF-8 strings -> token tensors.\n\n'
    "The logic lives in tritonvision.serve.backends.tokenize; the tokenizer files are in\n"
    'tokenizer/ beside this file.\n"""\n'
    "\n"
    "from tritonvision.serve.backends.tokenize import TritonPythonModel  # noqa: F401\n"
)
CONFIG_HEADER = "# Written by `tritonvision export`; change the export options, not this file.\n"
TENSORRT_PARAMETERS = {"precision_mode": "FP16", "max_workspace_size_bytes": str(1 << 30)}
WARMUP_NAME = "zero_pixels"
TEXT_WARMUP_NAME = "zero_tokens"


@dataclass(frozen=True)
class TextRepositoryFiles:
    """The files a text export owns (``model`` is written only by a full export)."""

    text_config: Path
    model: Path
    tokenize_config: Path
    tokenize_model: Path
    tokenizer_dir: Path
    texts_config: Path
    texts_placeholder: Path

    @property
    def configs(self) -> tuple[Path, ...]:
        """Every file :func:`write_text_configs` writes, but the tokenizer's own files."""
        return (
            self.text_config,
            self.tokenize_config,
            self.tokenize_model,
            self.texts_config,
            self.texts_placeholder,
        )

    @property
    def tokenizer_files(self) -> tuple[Path, ...]:
        """The tokenizer files written into ``tokenizer_dir`` (empty before they are)."""
        if not self.tokenizer_dir.is_dir():
            return ()
        return tuple(sorted(p for p in self.tokenizer_dir.iterdir() if p.is_file()))


@dataclass(frozen=True)
class RepositoryFiles:
    """The files an export owns in a repository (``model`` is written only by a full export)."""

    encoder_config: Path
    model: Path
    preprocess_config: Path
    preprocess_model: Path
    ensemble_config: Path
    ensemble_placeholder: Path
    # The text models' files, when the options export the text tower.
    text: TextRepositoryFiles | None = None

    @property
    def image_configs(self) -> tuple[Path, ...]:
        """The image models' configs, shim and placeholder."""
        return (
            self.encoder_config,
            self.preprocess_config,
            self.preprocess_model,
            self.ensemble_config,
            self.ensemble_placeholder,
        )

    @property
    def configs(self) -> tuple[Path, ...]:
        """Every file :func:`write_repository_configs` writes (the text models' too, but the
        tokenizer's own files)."""
        return self.image_configs + (self.text.configs if self.text is not None else ())


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
        text=text_repository_files(options) if options.text else None,
    )


def text_repository_files(options: ExportOptions) -> TextRepositoryFiles:
    """Where ``NAME_text``, ``NAME_tokenize`` and ``NAME_texts`` live (docs/DESIGN.md)."""
    repo, version = options.repository, str(options.version)
    return TextRepositoryFiles(
        text_config=repo / options.text_name / "config.pbtxt",
        model=repo / options.text_name / version / "model.onnx",
        tokenize_config=repo / options.tokenize_name / "config.pbtxt",
        tokenize_model=repo / options.tokenize_name / version / "model.py",
        tokenizer_dir=repo / options.tokenize_name / version / TOKENIZER_DIR,
        texts_config=repo / options.texts_name / "config.pbtxt",
        texts_placeholder=repo / options.texts_name / version / ".gitkeep",
    )


def describe_model(options: ExportOptions) -> EncoderInfo:
    """What ``options`` would publish, without loading weights."""
    if options.checkpoint is None:
        return builtin_encoder_info(normalize=options.normalize, fp16=options.fp16)
    return describe_checkpoint(
        options.checkpoint, normalize=options.normalize, fp16=options.fp16, pooling=options.pooling
    )


def describe_text_model(options: ExportOptions) -> TextInfo:
    """What ``options``' text models would publish, from the checkpoint's JSON and tokenizer
    files (no weights, no torch). Raises :class:`CheckpointError` without a text tower."""
    return _describe_text(options)[0]


def _text_checkpoint(options: ExportOptions) -> Path:
    if options.checkpoint is None:
        raise ValueError("the text tower needs a checkpoint; the built-in default has none")
    return options.checkpoint


def _describe_text(options: ExportOptions) -> tuple[TextInfo, Any]:
    """:func:`describe_text_model` and the checkpoint's tokenizer, each file read once."""
    return _described_with_tokenizer(
        _text_checkpoint(options), normalize=options.normalize, fp16=options.fp16
    )


def _pb() -> Any:
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


def _set_parameters(config: model_config_pb2.ModelConfig, info: EncoderInfo | TextInfo) -> None:
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


# (name, model_config_pb2 data type, dims after the batch axis)
_Tensor = tuple[str, int, list[int]]


def _onnx_config(
    options: ExportOptions,
    info: EncoderInfo | TextInfo,
    *,
    name: str,
    inputs: list[_Tensor],
    warmup_name: str,
) -> model_config_pb2.ModelConfig:
    """An ONNX model served as the encoder is: ``inputs`` -> fp32 embeddings [D], the ONNX
    batching, a zero-data warm-up of every input, TensorRT and response cache as the options
    say, the published parameters."""
    pb = _pb()
    config = pb.ModelConfig(
        name=name,
        platform="onnxruntime_onnx",
        backend="onnxruntime",
        max_batch_size=options.max_batch_size,
        input=[pb.ModelInput(name=n, data_type=dtype, dims=d) for n, dtype, d in inputs],
        output=[_embeddings_output(info)],
        # KIND_AUTO (the default, so not printed): GPU where Triton has one, else CPU; the same
        # file loads on both.
        instance_group=[pb.ModelInstanceGroup(count=options.instances)],
        dynamic_batching=_onnx_batching(options),
        model_warmup=[
            pb.ModelWarmup(
                name=warmup_name,
                batch_size=1,
                inputs={
                    n: pb.ModelWarmup.Input(data_type=dtype, dims=d, zero_data=True)
                    for n, dtype, d in inputs
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


def _python_config(
    options: ExportOptions,
    info: EncoderInfo | TextInfo,
    *,
    name: str,
    input_name: str,
    outputs: list[_Tensor],
) -> model_config_pb2.ModelConfig:
    """A python-backend step: strings [1] -> ``outputs``, on CPU instances (decoding and
    tokenising are CPU work whatever the box), the bounded queue, the published parameters."""
    pb = _pb()
    config = pb.ModelConfig(
        name=name,
        backend="python",
        max_batch_size=options.max_batch_size,
        input=[pb.ModelInput(name=input_name, data_type=pb.TYPE_STRING, dims=[1])],
        output=[pb.ModelOutput(name=n, data_type=dtype, dims=d) for n, dtype, d in outputs],
        instance_group=[
            pb.ModelInstanceGroup(
                count=options.preprocess_instances, kind=pb.ModelInstanceGroup.KIND_CPU
            )
        ],
        dynamic_batching=pb.ModelDynamicBatching(default_queue_policy=_queue_policy(options)),
    )
    _set_parameters(config, info)
    return config


def _ensemble_config(
    options: ExportOptions,
    info: EncoderInfo | TextInfo,
    *,
    name: str,
    input_name: str,
    steps: tuple[str, str],
    between: tuple[str, ...],
) -> model_config_pb2.ModelConfig:
    """A two-step ensemble: strings [1] ``input_name`` -> ``steps[0]`` -> the ``between``
    tensors (each mapped by its own name) -> ``steps[1]`` -> fp32 embeddings [D]."""
    pb = _pb()
    step = pb.ModelEnsembling.Step
    tensors = {tensor: tensor for tensor in between}
    config = pb.ModelConfig(
        name=name,
        platform="ensemble",
        max_batch_size=options.max_batch_size,
        input=[pb.ModelInput(name=input_name, data_type=pb.TYPE_STRING, dims=[1])],
        output=[_embeddings_output(info)],
        ensemble_scheduling=pb.ModelEnsembling(
            step=[
                step(
                    model_name=steps[0],
                    model_version=-1,
                    input_map={input_name: input_name},
                    output_map=tensors,
                ),
                step(
                    model_name=steps[1],
                    model_version=-1,
                    input_map=tensors,
                    output_map={EMBEDDINGS_OUTPUT: EMBEDDINGS_OUTPUT},
                ),
            ]
        ),
    )
    if options.response_cache:
        # Triton caches the ensemble's own (top-level) responses: a hit skips the first step too.
        config.response_cache.enable = True
    _set_parameters(config, info)
    return config


def _embeddings_output(info: EncoderInfo | TextInfo) -> model_config_pb2.ModelOutput:
    pb = _pb()
    return pb.ModelOutput(name=EMBEDDINGS_OUTPUT, data_type=pb.TYPE_FP32, dims=[info.embedding_dim])


def _onnx_batching(options: ExportOptions) -> model_config_pb2.ModelDynamicBatching:
    """The ONNX models' dynamic batching: preferred sizes, queue delay, bounded queue."""
    pb = _pb()
    return pb.ModelDynamicBatching(
        preferred_batch_size=list(options.preferred_batch_sizes),
        max_queue_delay_microseconds=options.max_queue_delay_us,
        default_queue_policy=_queue_policy(options),
    )


def _pixels(info: EncoderInfo) -> _Tensor:
    return (PIXELS_INPUT, _pb().TYPE_UINT8, [info.height, info.width, 3])


def _tokens(info: TextInfo) -> list[_Tensor]:
    return [(name, _pb().TYPE_INT64, [info.context_length]) for name in info.token_inputs]


def encoder_config(options: ExportOptions, info: EncoderInfo) -> model_config_pb2.ModelConfig:
    """``NAME``: the ONNX encoder, uint8 pixels [H, W, 3] -> fp32 embeddings [D]."""
    return _onnx_config(
        options, info, name=options.name, inputs=[_pixels(info)], warmup_name=WARMUP_NAME
    )


def preprocess_config(options: ExportOptions, info: EncoderInfo) -> model_config_pb2.ModelConfig:
    """``NAME_preprocess``: python backend, encoded image bytes [1] -> uint8 pixels [H, W, 3].

    Besides the published parameters it carries ``PARAM_MAX_IMAGE_PIXELS``, the
    decompression-bomb limit the backend enforces while decoding.
    """
    config = _python_config(
        options,
        info,
        name=options.preprocess_name,
        input_name=IMAGES_INPUT,
        outputs=[_pixels(info)],
    )
    config.parameters[PARAM_MAX_IMAGE_PIXELS].string_value = str(options.max_image_pixels)
    return config


def ensemble_config(options: ExportOptions, info: EncoderInfo) -> model_config_pb2.ModelConfig:
    """``NAME_images``: images -> NAME_preprocess -> NAME -> embeddings."""
    return _ensemble_config(
        options,
        info,
        name=options.ensemble_name,
        input_name=IMAGES_INPUT,
        steps=(options.preprocess_name, options.name),
        between=(PIXELS_INPUT,),
    )


def text_config(options: ExportOptions, info: TextInfo) -> model_config_pb2.ModelConfig:
    """``NAME_text``: the ONNX text tower, INT64 token tensors [L] -> fp32 embeddings [D]."""
    return _onnx_config(
        options, info, name=options.text_name, inputs=_tokens(info), warmup_name=TEXT_WARMUP_NAME
    )


def tokenize_config(options: ExportOptions, info: TextInfo) -> model_config_pb2.ModelConfig:
    """``NAME_tokenize``: python backend, UTF-8 strings [1] -> INT64 token tensors [L]."""
    return _python_config(
        options, info, name=options.tokenize_name, input_name=TEXTS_INPUT, outputs=_tokens(info)
    )


def texts_config(options: ExportOptions, info: TextInfo) -> model_config_pb2.ModelConfig:
    """``NAME_texts``: texts -> NAME_tokenize -> NAME_text -> embeddings."""
    return _ensemble_config(
        options,
        info,
        name=options.texts_name,
        input_name=TEXTS_INPUT,
        steps=(options.tokenize_name, options.text_name),
        between=info.token_inputs,
    )


def config_text(config: model_config_pb2.ModelConfig) -> str:
    """The ``config.pbtxt`` text of a config message."""
    from google.protobuf import text_format

    return CONFIG_HEADER + text_format.MessageToString(config)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))


def write_encoder_configs(
    options: ExportOptions, info: EncoderInfo | None = None
) -> RepositoryFiles:
    """Write the image side only: three configs, the preprocess shim, the ensemble placeholder."""
    if info is None:
        info = describe_model(options)
    files = repository_files(options)
    _write(files.encoder_config, config_text(encoder_config(options, info)))
    _write(files.preprocess_config, config_text(preprocess_config(options, info)))
    _write(files.preprocess_model, PREPROCESS_MODEL_PY)
    _write(files.ensemble_config, config_text(ensemble_config(options, info)))
    _write(files.ensemble_placeholder, "")
    return dataclasses.replace(files, text=None)


def save_tokenizer(tokenizer: Any, directory: Path) -> None:
    """``tokenizer.save_pretrained`` into ``directory``, replacing what was there: written
    beside it, then swapped in, so no file of an earlier export's tokenizer survives."""
    partial = directory.with_name(f".{directory.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        tokenizer.save_pretrained(str(partial))
        shutil.rmtree(directory, ignore_errors=True)
        partial.rename(directory)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def write_text_configs(
    options: ExportOptions, info: TextInfo | None = None, tokenizer: Any = None
) -> TextRepositoryFiles:
    """Write the text side but its model.onnx: the three configs, the tokenize shim with the
    checkpoint's tokenizer files, and the texts ensemble placeholder.

    ``info`` defaults to :func:`describe_text_model` of ``options`` and ``tokenizer`` to the
    checkpoint's own (both read its files only; no torch).
    """
    if info is None:
        info, described = _describe_text(options)
        tokenizer = described if tokenizer is None else tokenizer
    if tokenizer is None:
        tokenizer = load_tokenizer(_text_checkpoint(options))
    files = text_repository_files(options)
    _write(files.text_config, config_text(text_config(options, info)))
    _write(files.tokenize_config, config_text(tokenize_config(options, info)))
    _write(files.tokenize_model, TOKENIZE_MODEL_PY)
    save_tokenizer(tokenizer, files.tokenizer_dir)
    _write(files.texts_config, config_text(texts_config(options, info)))
    _write(files.texts_placeholder, "")
    return files


def write_repository_configs(
    options: ExportOptions, info: EncoderInfo | None = None, text_info: TextInfo | None = None
) -> RepositoryFiles:
    """Write every config, shim, placeholder (and with ``options.text`` the tokenizer files),
    but no model.onnx.

    ``info`` defaults to :func:`describe_model` of ``options`` and ``text_info`` to
    :func:`describe_text_model` (both read the checkpoint's JSON and tokenizer files only).
    The text side is described first, so a checkpoint without one writes nothing.
    """
    tokenizer = None
    if options.text and text_info is None:
        text_info, tokenizer = _describe_text(options)
    files = write_encoder_configs(options, info)
    if not options.text:
        return files
    return dataclasses.replace(files, text=write_text_configs(options, text_info, tokenizer))
