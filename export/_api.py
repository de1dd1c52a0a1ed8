"""``export_model``: checkpoint (or built-in default) -> validated ONNX + Triton repository."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ._encoders import EncoderInfo, LoadedEncoder, builtin_encoder, load_encoder
from ._options import ExportOptions
from ._reports import ValidationReport
from ._repository import RepositoryFiles, repository_files, write_repository_configs

__all__ = ["ExportResult", "export_encoder", "export_model"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ExportResult:
    """What an export wrote, how long it took, and how the ONNX model compared with PyTorch."""

    options: ExportOptions
    model: EncoderInfo
    files: RepositoryFiles
    model_bytes: int
    validation: tuple[ValidationReport, ...]
    load_s: float
    export_s: float
    validate_s: float
    total_s: float

    @property
    def model_path(self) -> Path:
        return self.files.model


def export_model(options: ExportOptions) -> ExportResult:
    """Export ``options.checkpoint`` (or the built-in default) into ``options.repository``.

    Raises :class:`CheckpointError` for an unusable checkpoint and
    :class:`ExportValidationError` when the ONNX model does not match PyTorch; in both cases
    no ``model.onnx`` is left behind.
    """
    start = time.perf_counter()
    if options.checkpoint is None:
        logger.info("building the built-in default (seeded, UNTRAINED CLIP ViT-B/32)")
        encoder = builtin_encoder()
    else:
        logger.info("loading %s", options.checkpoint)
        encoder = load_encoder(options.checkpoint)
    return _export(encoder, options, start)


def export_encoder(encoder: LoadedEncoder, options: ExportOptions) -> ExportResult:
    """Export an already-loaded encoder (``options.checkpoint`` is not read; ``load_s`` is 0)."""
    return _export(encoder, options, time.perf_counter())


def _export(encoder: LoadedEncoder, options: ExportOptions, start: float) -> ExportResult:
    from ._onnx import export_onnx
    from ._validate import validate_onnx

    loaded = time.perf_counter()
    info = encoder.info(normalize=options.normalize, fp16=options.fp16)
    family = encoder.family
    reference = encoder.wrapper(normalize=options.normalize)
    module = reference.to_fp16() if options.fp16 else reference

    files = repository_files(options)
    files.model.parent.mkdir(parents=True, exist_ok=True)
    # Export and validate beside the final path, then rename: a failed export leaves no
    # model.onnx for Triton to load.
    partial = files.model.with_name(f".{files.model.name}.partial")
    try:
        logger.info("exporting %s to ONNX (opset %d)", family.name, family.opset)
        export_onnx(
            module,
            partial,
            family=family,
            height=info.height,
            width=info.width,
            metadata=info.parameters(),
        )
        exported = time.perf_counter()
        logger.info("validating against PyTorch at batch sizes %s", options.validation_batch_sizes)
        reports = validate_onnx(
            partial,
            reference,
            family=family,
            height=info.height,
            width=info.width,
            embedding_dim=info.embedding_dim,
            normalized=options.normalize,
            tolerance=family.tolerance_for(fp16=options.fp16),
            batch_sizes=options.validation_batch_sizes,
        )
        validated = time.perf_counter()
        os.replace(partial, files.model)
    finally:
        partial.unlink(missing_ok=True)
    write_repository_configs(options, info)
    return ExportResult(
        options=options,
        model=info,
        files=files,
        model_bytes=files.model.stat().st_size,
        validation=reports,
        load_s=loaded - start,
        export_s=exported - loaded,
        validate_s=validated - exported,
        total_s=time.perf_counter() - start,
    )
