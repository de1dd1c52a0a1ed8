"""Export vision encoders to ONNX and write Triton model repositories.

``export_model(ExportOptions(...))`` loads a checkpoint of any registered family
(:data:`ENCODER_FAMILIES`: CLIP, SigLIP, DINOv2, transformers vision backbones with a pooled
output), or builds the built-in, UNTRAINED CLIP ViT-B/32; ``export_module(module,
preprocess=...)`` takes your own ``torch.nn.Module``. Either way it exports
``pixels uint8 [N,H,W,3] -> embeddings fp32 [N,D]`` to one ONNX file, validates it against
PyTorch with ONNX Runtime (a mismatch raises :class:`ExportValidationError`), and writes the
encoder, preprocess and ensemble models of docs/DESIGN.md, using the names of
:mod:`tritonvision.contract`. ``write_repository_configs`` writes the configs alone;
``verify_server`` compares a live Triton with PyTorch.

With ``ExportOptions(text=True)`` (``export --text``) a full two-tower CLIP or SigLIP
checkpoint's text tower is exported too, ``token tensors INT64 [N, L] -> embeddings fp32
[N, D]`` in the image embeddings' space, validated the same way over real tokenised texts,
with the tokenize model (the checkpoint's own tokenizer files) and the texts ensemble
(:class:`TextExportResult`, :func:`load_text_encoder`, :data:`TEXT_TOWERS`). Errors derive from
:class:`ExportError`, a branch of :class:`tritonvision.errors.TritonVisionError`.

Importing this package is cheap: torch, onnx, onnxruntime and transformers are imported
inside the functions that need them.
"""

from __future__ import annotations

from ._api import (
    ExportResult,
    TextExportResult,
    export_encoder,
    export_model,
    export_module,
    export_text_encoder,
)
from ._encoders import (
    BUILTIN_CLIP_CONFIG,
    BUILTIN_SOURCE,
    ENCODER_FAMILIES,
    EncoderFamily,
    EncoderInfo,
    LoadedEncoder,
    builtin_encoder,
    builtin_encoder_info,
    describe_checkpoint,
    load_encoder,
    module_encoder,
)
from ._errors import (
    CheckpointError,
    ExportError,
    ExportValidationError,
    OnnxExportError,
    VerificationError,
)
from ._options import (
    DEFAULT_INSTANCES,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_QUEUE_DELAY_US,
    DEFAULT_MAX_QUEUE_SIZE,
    DEFAULT_PREPROCESS_INSTANCES,
    DEFAULT_REPOSITORY,
    DEFAULT_VERSION,
    ExportOptions,
)
from ._reports import Tolerance, ValidationReport, VerifyReport
from ._repository import (
    PREPROCESS_MODEL_PY,
    RepositoryFiles,
    TextRepositoryFiles,
    describe_model,
    describe_text_model,
    repository_files,
    write_repository_configs,
    write_text_configs,
)
from ._text import (
    TEXT_TOWERS,
    LoadedTextEncoder,
    TextInfo,
    TextTower,
    describe_text_checkpoint,
    load_text_encoder,
)
from ._validate import validate_onnx, validate_text_onnx
from ._verify import (
    DEFAULT_SERVER,
    TextVerifyReport,
    sample_images,
    sample_texts,
    verify_model,
    verify_server,
    verify_text_model,
    verify_text_server,
)

__all__ = [
    "BUILTIN_CLIP_CONFIG",
    "BUILTIN_SOURCE",
    "DEFAULT_INSTANCES",
    "DEFAULT_MAX_BATCH_SIZE",
    "DEFAULT_MAX_QUEUE_DELAY_US",
    "DEFAULT_MAX_QUEUE_SIZE",
    "DEFAULT_PREPROCESS_INSTANCES",
    "DEFAULT_REPOSITORY",
    "DEFAULT_SERVER",
    "DEFAULT_VERSION",
    "ENCODER_FAMILIES",
    "PREPROCESS_MODEL_PY",
    "TEXT_TOWERS",
    "CheckpointError",
    "EncoderFamily",
    "EncoderInfo",
    "ExportError",
    "ExportOptions",
    "ExportResult",
    "ExportValidationError",
    "LoadedEncoder",
    "LoadedTextEncoder",
    "OnnxExportError",
    "RepositoryFiles",
    "TextExportResult",
    "TextInfo",
    "TextRepositoryFiles",
    "TextTower",
    "TextVerifyReport",
    "Tolerance",
    "ValidationReport",
    "VerificationError",
    "VerifyReport",
    "builtin_encoder",
    "builtin_encoder_info",
    "describe_checkpoint",
    "describe_model",
    "describe_text_checkpoint",
    "describe_text_model",
    "export_encoder",
    "export_model",
    "export_module",
    "export_text_encoder",
    "load_encoder",
    "load_text_encoder",
    "module_encoder",
    "repository_files",
    "sample_images",
    "sample_texts",
    "validate_onnx",
    "validate_text_onnx",
    "verify_model",
    "verify_server",
    "verify_text_model",
    "verify_text_server",
    "write_repository_configs",
    "write_text_configs",
]
