"""``tritonvision export``: a thin face over :func:`tritonvision.export.export_model`.

Exit codes (:mod:`._common`): 0 exported (or configs written); 1 the export failed
validation against PyTorch (nothing written); 2 bad options or checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tritonvision.contract import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MODEL
from tritonvision.export import (
    DEFAULT_INSTANCES,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_QUEUE_DELAY_US,
    DEFAULT_MAX_QUEUE_SIZE,
    DEFAULT_PREPROCESS_INSTANCES,
    DEFAULT_REPOSITORY,
    DEFAULT_VERSION,
    ENCODER_FAMILIES,
    TEXT_TOWERS,
    EncoderInfo,
    ExportOptions,
    TextInfo,
)

from ._common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, SubParsers, positive_int

if TYPE_CHECKING:
    from tritonvision.export import ExportResult

__all__ = [
    "UNTRAINED_WARNING",
    "describe_model_info",
    "describe_text_info",
    "format_summary",
    "register",
]

UNTRAINED_WARNING = (
    "WARNING: UNTRAINED: the built-in default has seeded random weights; its embeddings "
    "carry no meaning. Pass --checkpoint DIR to export a real CLIP/SigLIP encoder."
)


def register(subparsers: SubParsers) -> argparse.ArgumentParser:
    """Add ``export`` to the ``tritonvision`` subcommands."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "export",
        help="export a vision encoder (CLIP, SigLIP, DINOv2, transformers backbones) to ONNX "
        "and write a Triton model repository",
        description=(
            "Export a vision encoder (a local transformers checkpoint, or the built-in UNTRAINED "
            "CLIP ViT-B/32) to ONNX, validate it against PyTorch with ONNX Runtime, and write "
            "NAME, NAME_preprocess and NAME_images into a Triton model repository. With --text "
            "(a full CLIP or SigLIP checkpoint with its tokenizer files) also the text tower: "
            "NAME_text, NAME_tokenize and NAME_texts."
        ),
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="transformers checkpoint directory, its family read from config.json (CLIP, "
        "SigLIP, DINOv2, ViT/DeiT/BEiT/Swin/ConvNeXt backbones; read offline). "
        "Default: the built-in, UNTRAINED CLIP ViT-B/32",
    )
    parser.add_argument(
        "--pooling",
        choices=sorted({p for family in ENCODER_FAMILIES.values() for p in family.poolings}),
        help="the embedding, for a family that offers several: DINOv2 'cls' (default: the "
        "final-layer-normed CLS token) or 'cls+mean' (CLS and the mean patch token "
        "concatenated, [2D]: DINOv2's linear-probe input)",
    )
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY, help="%(default)s")
    parser.add_argument("--name", default=DEFAULT_MODEL, help="model name (default %(default)s)")
    parser.add_argument("--version", type=int, default=DEFAULT_VERSION, help="%(default)s")
    parser.add_argument(
        "--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE, help="%(default)s"
    )
    parser.add_argument("--fp16", action="store_true", help="fp16 weights (uint8 in, fp32 out)")
    parser.add_argument(
        "--no-normalize",
        dest="normalize",
        action="store_false",
        help="return raw embeddings instead of L2-normalised ones",
    )
    parser.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=DEFAULT_MAX_QUEUE_DELAY_US,
        help="dynamic batcher's wait for a fuller batch (default %(default)s)",
    )
    parser.add_argument(
        "--preferred-batch-size",
        dest="preferred_batch_sizes",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="dynamic batcher's preferred batch size (repeatable)",
    )
    parser.add_argument(
        "--instances",
        type=int,
        default=DEFAULT_INSTANCES,
        help="encoder instances per device (default %(default)s)",
    )
    parser.add_argument(
        "--preprocess-instances",
        type=int,
        default=DEFAULT_PREPROCESS_INSTANCES,
        help="CPU instances of NAME_preprocess (default %(default)s)",
    )
    parser.add_argument(
        "--max-queue-size",
        type=int,
        default=DEFAULT_MAX_QUEUE_SIZE,
        help="requests queued before Triton rejects more (default %(default)s)",
    )
    parser.add_argument(
        "--max-image-pixels",
        type=positive_int,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        metavar="N",
        help="NAME_preprocess refuses images that declare more pixels (decompression bombs; "
        "default %(default)s)",
    )
    parser.add_argument(
        "--no-tensorrt",
        dest="tensorrt",
        action="store_false",
        help="leave out the TensorRT (FP16) accelerator in the encoder config",
    )
    parser.add_argument(
        "--response-cache",
        action="store_true",
        help="enable Triton's response cache on NAME and NAME_images (with --text also "
        "NAME_text and NAME_texts): a repeated image or text is answered from the cache, not "
        "computed again (needs a server cache: "
        "`tritonvision serve --cache-size BYTES`, or tritonserver --cache-config)",
    )
    parser.add_argument(
        "--text",
        action="store_true",
        help="also export the checkpoint's text tower, validated against PyTorch like the "
        "encoder: NAME_text (token ids -> embeddings [D], same space as NAME), NAME_tokenize "
        "(strings -> token ids, with the checkpoint's own tokenizer files copied beside it) and "
        "NAME_texts (strings -> embeddings). Needs --checkpoint: a full two-tower "
        f"{' or '.join(t.model_class for t in TEXT_TOWERS.values())} checkpoint with its "
        "tokenizer; texts are padded/truncated to its context length (CLIP 77, SigLIP 64)",
    )
    parser.add_argument(
        "--configs-only",
        action="store_true",
        help="write the configs and the preprocess shim only, no model.onnx (no torch needed "
        "for the built-in default; with --text also the tokenize shim and tokenizer files)",
    )
    parser.set_defaults(func=run_export)
    return parser


def _options_from(args: argparse.Namespace) -> ExportOptions:
    return ExportOptions(
        checkpoint=args.checkpoint,
        pooling=args.pooling,
        repository=args.repository,
        name=args.name,
        version=args.version,
        max_batch_size=args.max_batch_size,
        fp16=args.fp16,
        normalize=args.normalize,
        max_queue_delay_us=args.max_queue_delay_us,
        preferred_batch_sizes=tuple(args.preferred_batch_sizes),
        instances=args.instances,
        preprocess_instances=args.preprocess_instances,
        max_queue_size=args.max_queue_size,
        tensorrt=args.tensorrt,
        max_image_pixels=args.max_image_pixels,
        response_cache=args.response_cache,
        text=args.text,
    )


def describe_model_info(info: EncoderInfo) -> list[str]:
    """Lines describing an exported encoder (with the UNTRAINED warning where it applies)."""
    lines = [
        f"encoder: {info.family}, embeddings [{info.embedding_dim}] fp32 "
        f"({'L2-normalised' if info.normalized else 'raw, not normalised'}), "
        f"weights {info.precision}, input pixels uint8 [{info.height}, {info.width}, 3]",
        f"source: {info.source}",
    ]
    if not info.trained:
        lines.append(UNTRAINED_WARNING)
    return lines


def describe_text_info(info: TextInfo) -> list[str]:
    """Lines describing an exported text tower."""
    return [
        f"text tower: {info.family}, embeddings [{info.embedding_dim}] fp32 "
        f"({'L2-normalised' if info.normalized else 'raw, not normalised'}), "
        f"weights {info.precision}, input {' + '.join(info.token_inputs)} int64 "
        f"[{info.context_length}] (context length)",
    ]


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB ({n:,} bytes)"


def format_summary(result: ExportResult) -> str:
    """The text ``tritonvision export`` prints for an :class:`ExportResult`."""
    lines = ["Export done.", *describe_model_info(result.model)]
    lines.append("validation, ONNX Runtime vs PyTorch:")
    lines += [f"  {report.describe()}" for report in result.validation]
    lines.append(
        f"time: {result.total_s:.1f} s (load {result.load_s:.1f} s, "
        f"export {result.export_s:.1f} s, validate {result.validate_s:.1f} s)"
    )
    lines.append(f"model.onnx: {_mib(result.model_bytes)}")
    lines.append("files:")
    lines += [f"  {path}" for path in (result.files.model, *result.files.image_configs)]
    text = result.text
    if text is not None:
        lines += describe_text_info(text.info)
        lines.append("text tower validation, ONNX Runtime vs PyTorch (texts of several lengths):")
        lines += [f"  {report.describe()}" for report in text.validation]
        lines.append(
            f"text time: {text.total_s:.1f} s (load {text.load_s:.1f} s, "
            f"export {text.export_s:.1f} s, validate {text.validate_s:.1f} s)"
        )
        lines.append(f"text model.onnx: {_mib(text.model_bytes)}")
        lines.append("text files:")
        lines += [f"  {path}" for path in (text.files.model, *text.files.configs)]
        lines += [f"  {path}" for path in text.files.tokenizer_files]
    return "\n".join(lines)


def run_export(args: argparse.Namespace) -> int:
    """The ``export`` handler; returns the exit code (see the module docstring)."""
    from tritonvision.export import (
        CheckpointError,
        ExportValidationError,
        describe_model,
        describe_text_model,
        export_model,
        write_repository_configs,
    )

    try:
        options = _options_from(args)
        if args.configs_only:
            text_info = describe_text_model(options) if options.text else None
            info = describe_model(options)
            files = write_repository_configs(options, info, text_info)
            lines = ["Configs written (no model.onnx).", *describe_model_info(info)]
            if text_info is not None:
                lines += describe_text_info(text_info)
            print("\n".join(lines))
            print("files:")
            print("\n".join(f"  {path}" for path in files.configs))
            if files.text is not None:
                print("\n".join(f"  {path}" for path in files.text.tokenizer_files))
            return EXIT_OK
        target = options.checkpoint or "the built-in default (UNTRAINED CLIP ViT-B/32)"
        towers = " (image and text towers)" if options.text else ""
        print(f"Exporting {target}{towers} to {options.repository / options.name} ...", flush=True)
        result = export_model(options)
    except (ValueError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ExportValidationError as exc:
        print(f"export FAILED validation, nothing written: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(format_summary(result))
    return EXIT_OK
