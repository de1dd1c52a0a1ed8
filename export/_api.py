"""``export_model``: checkpoint (or built-in default) -> validated ONNX + Triton repository.

``export_module`` does the same for the user's own ``torch.nn.Module``. With
``ExportOptions.text`` the checkpoint's text tower is exported and validated too
(:class:`TextExportResult`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Iterator
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
from ._repository import (
    RepositoryFiles,
    TextRepositoryFiles,
    repository_files,
    text_repository_files,
    write_encoder_configs,
    write_text_configs,
)
from ._text import VALIDATION_TEXTS, LoadedTextEncoder, TextInfo, load_text_encoder

if TYPE_CHECKING:
    from torch import nn

    from tritonvision.contract import PreprocessSpec

__all__ = [
    "ExportResult",
    "TextExportResult",
    "export_encoder",
    "export_model",
    "export_module",
    "export_text_encoder",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TextExportResult:
    """What the text-tower export wrote, how long it took, and how its ONNX model compared
    with PyTorch (one report per validation batch size, over texts of several lengths)."""

    info: TextInfo
    files: TextRepositoryFiles
    model_bytes: int
    validation: tuple[ValidationReport, ...]
    load_s: float
    export_s: float
    validate_s: float
    total_s: float

    @property
    def model_path(self) -> Path:
        return self.files.model


@dataclass(frozen=True, kw_only=True)
class ExportResult:
    """What an export wrote, how long it took, and how the ONNX model compared with PyTorch.

    ``text`` is the text tower's export when ``options.text`` (else None); the timings above
    it are the image encoder's, ``total_s`` covers both.
    """

    options: ExportOptions
    model: EncoderInfo
    files: RepositoryFiles
    model_bytes: int
    validation: tuple[ValidationReport, ...]
    load_s: float
    export_s: float
    validate_s: float
    total_s: float
    text: TextExportResult | None = None

    @property
    def model_path(self) -> Path:
        return self.files.model


def export_model(options: ExportOptions) -> ExportResult:
    """Export ``options.checkpoint`` (or the built-in default) into ``options.repository``.

    With ``options.text`` the text tower is loaded first (a checkpoint without one, or
    without its tokenizer, is refused before anything is written), then the image side is
    exported and validated as without it, then the text tower; the image model is committed
    last.

    Raises :class:`CheckpointError` for an unusable checkpoint and
    :class:`ExportValidationError` when an ONNX model (image or text) does not match
    PyTorch; in both cases no ``model.onnx`` is left behind.
    """
    start = time.perf_counter()
    text_encoder = _load_text(options)
    if options.checkpoint is None:
        logger.info("building the built-in default (seeded, UNTRAINED CLIP ViT-B/32)")
        encoder = builtin_encoder()
    else:
        logger.info("loading %s", options.checkpoint)
        encoder = load_encoder(options.checkpoint, pooling=options.pooling)
    return _export(encoder, options, start, text_encoder)


def export_encoder(encoder: LoadedEncoder, options: ExportOptions) -> ExportResult:
    """Export an already-loaded encoder (``options.pooling`` is not read; ``load_s`` is 0;
    ``options.checkpoint`` is read only for the text tower, with ``options.text``)."""
    start = time.perf_counter()
    return _export(encoder, options, start, _load_text(options))


def export_text_encoder(encoder: LoadedTextEncoder, options: ExportOptions) -> TextExportResult:
    """Export an already-loaded text tower alone: ``NAME_text`` (validated ONNX),
    ``NAME_tokenize`` (with ``encoder``'s tokenizer) and ``NAME_texts``; the image models are
    not touched (``options.text`` and ``options.checkpoint`` are not read; ``load_s`` is 0).

    Raises :class:`ExportValidationError` when the ONNX model does not match ``encoder``'s
    PyTorch module; then no text model file or config is written.
    """
    return _export_text(encoder, 0.0, options)


def _load_text(options: ExportOptions) -> tuple[LoadedTextEncoder, float] | None:
    """The text tower to export, and its load time, when the options ask for it."""
    if not options.text:
        return None
    assert options.checkpoint is not None  # ExportOptions refuses text without one
    start = time.perf_counter()
    logger.info("loading the text tower of %s", options.checkpoint)
    encoder = load_text_encoder(options.checkpoint)
    return encoder, time.perf_counter() - start


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


def _export(
    encoder: LoadedEncoder,
    options: ExportOptions,
    start: float,
    text: tuple[LoadedTextEncoder, float] | None = None,
) -> ExportResult:
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
    with _committed(files.model, options.repository) as partial:
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
        # The text tower before the image model is committed: a text tower that fails leaves
        # neither model.onnx behind.
        text_result = _export_text(*text, options) if text is not None else None
    write_encoder_configs(options, info)
    return ExportResult(
        options=options,
        model=info,
        files=dataclasses.replace(files, text=text_result.files if text_result else None),
        model_bytes=files.model.stat().st_size,
        validation=reports,
        load_s=loaded - start - (text[1] if text is not None else 0.0),
        export_s=exported - loaded,
        validate_s=validated - exported,
        total_s=time.perf_counter() - start,
        text=text_result,
    )


def _export_text(
    encoder: LoadedTextEncoder, load_s: float, options: ExportOptions
) -> TextExportResult:
    from ._onnx import export_text_onnx
    from ._validate import validate_text_onnx

    start = time.perf_counter()
    info = encoder.info(normalize=options.normalize, fp16=options.fp16)
    family = encoder.family
    reference = encoder.wrapper(normalize=options.normalize)
    module = reference.to_fp16() if options.fp16 else reference
    # Real sentences, tokenised as the served tokenize model does: short, empty, medium,
    # over-long (truncated at L) and non-ASCII.
    tokens = encoder.tokenize(VALIDATION_TEXTS)

    files = text_repository_files(options)
    with _committed(files.model, options.repository) as partial:
        logger.info("exporting the %s text tower to ONNX (opset %d)", family.name, family.opset)
        export_text_onnx(module, partial, family=family, tokens=tokens, metadata=info.parameters())
        exported = time.perf_counter()
        logger.info(
            "validating the text tower against PyTorch at batch sizes %s",
            options.validation_batch_sizes,
        )
        reports = validate_text_onnx(
            partial,
            reference,
            family=family,
            tokens=tokens,
            context_length=info.context_length,
            embedding_dim=info.embedding_dim,
            normalized=options.normalize,
            tolerance=family.tolerance_for(fp16=options.fp16),
            batch_sizes=options.validation_batch_sizes,
        )
        validated = time.perf_counter()
    write_text_configs(options, info, encoder.tokenizer)
    return TextExportResult(
        info=info,
        files=files,
        model_bytes=files.model.stat().st_size,
        validation=reports,
        load_s=load_s,
        export_s=exported - start,
        validate_s=validated - exported,
        total_s=load_s + time.perf_counter() - start,
    )


@contextlib.contextmanager
def _committed(model: Path, repository: Path) -> Iterator[Path]:
    """A path beside ``model`` to export and validate into, renamed to ``model`` when the block
    succeeds: a failed export leaves no model.onnx for Triton to load (nor an empty model
    directory)."""
    model.parent.mkdir(parents=True, exist_ok=True)
    partial = model.with_name(f".{model.name}.partial")
    try:
        yield partial
        os.replace(partial, model)
    finally:
        partial.unlink(missing_ok=True)
        _prune_empty(model.parent, up_to=repository)


def _prune_empty(directory: Path, *, up_to: Path) -> None:
    """Remove ``directory`` and its parents below ``up_to`` while they are empty: a failed
    export leaves no model directory without a config for Triton to trip on."""
    while directory != up_to and directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()
        directory = directory.parent
