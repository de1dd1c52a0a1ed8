"""``export_model``: checkpoint (or built-in default) -> validated ONNX + Triton repository.

``export_module`` does the same for the user's own ``torch.nn.Module``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ._encoders import (
    EncoderInfo,
    LoadedEncoder,
    builtin_encoder,
    embedding_dim_of,
    load_encoder,
    module_encoder,
)
from ._errors import ExportValidationError
from ._options import ExportOptions
from ._reports import ValidationReport
from ._repository import RepositoryFiles, repository_files, write_repository_configs

if TYPE_CHECKING:
    from torch import nn

    from tritonvision.contract import PreprocessSpec

__all__ = ["ExportResult", "export_encoder", "export_model", "export_module"]

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
        encoder = load_encoder(options.checkpoint, pooling=options.pooling)
    return _export(encoder, options, start)


def export_encoder(encoder: LoadedEncoder, options: ExportOptions) -> ExportResult:
    """Export an already-loaded encoder (``options.checkpoint`` and ``options.pooling`` are not
    read; ``load_s`` is 0)."""
    return _export(encoder, options, time.perf_counter())


def export_module(
    module: nn.Module,
    *,
    preprocess: PreprocessSpec,
    repository: Path | str | None = None,
    name: str | None = None,
    source: str | None = None,
    options: ExportOptions | None = None,
) -> ExportResult:
    """Export your own ``torch.nn.Module`` through the same validated path as a checkpoint.

    ``module`` maps normalised NCHW float32 pixels ``[N, 3, H, W]`` to embeddings ``[N, D]``;
    ``preprocess`` says how images become those pixels (resize, crop, rescale, mean/std; ``H x
    W`` is its output size) and is published for the client and the preprocess model, while
    rescale and normalisation run inside the exported graph (uint8 NHWC in, L2-normalised
    fp32 out unless ``options.normalize`` is false). ``repository`` and ``name`` override
    ``options``' (whose other settings apply: batching, fp16, ...); ``source`` is published
    as ``tritonvision.source`` (default ``module:<class qualname>``).

    Raises :class:`ExportValidationError` when the module fails on a dummy batch or does not
    return ``[N, D]``, :class:`OnnxExportError` when ``torch.onnx.export`` cannot convert it,
    and :class:`ExportValidationError` when the ONNX model does not match the module.
    """
    base = options if options is not None else ExportOptions()
    final = dataclasses.replace(
        base,
        checkpoint=None,
        pooling=None,
        repository=Path(repository) if repository is not None else base.repository,
        name=name if name is not None else base.name,
    )
    start = time.perf_counter()
    encoder = module_encoder(module, preprocess=preprocess, source=source)
    return _export(encoder, final, start)


def _export(encoder: LoadedEncoder, options: ExportOptions, start: float) -> ExportResult:
    from ._onnx import export_onnx
    from ._validate import validate_onnx

    loaded = time.perf_counter()
    info = encoder.info(normalize=options.normalize, fp16=options.fp16)
    family = encoder.family
    reference = encoder.wrapper(normalize=options.normalize)
    module = reference.to_fp16() if options.fp16 else reference

    # One PyTorch run first: a family's described D (or the user's module) that does not give
    # [N, D] fails here, named, before the exporter reports something cryptic.
    probed = embedding_dim_of(reference, family=family, height=info.height, width=info.width)
    if probed != info.embedding_dim:
        problem = f"the {family.name} encoder gives [N, {probed}] embeddings, not the described "
        problem += f"[N, {info.embedding_dim}]"
        raise ExportValidationError(problem, problems=[problem])

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
