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
    EncoderInfo,
    ExportOptions,
)

from ._common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, SubParsers, positive_int

if TYPE_CHECKING:
    from tritonvision.export import ExportResult

__all__ = ["UNTRAINED_WARNING", "describe_model_info", "format_summary", "register"]

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
            "NAME, NAME_preprocess and NAME_images into a Triton model repository."
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
        help="enable Triton's response cache on NAME and NAME_images: a repeated image is "
        "answered from the cache, not computed again (needs a server cache: "
        "`tritonvision serve --cache-size BYTES`, or tritonserver --cache-config)",
    )
    parser.add_argument(
        "--configs-only",
        action="store_true",
        help="write the configs and the preprocess shim only, no model.onnx (no torch needed "
        "for the built-in default)",
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
    lines += [f"  {path}" for path in (result.files.model, *result.files.configs)]
    return "\n".join(lines)


def run_export(args: argparse.Namespace) -> int:
    """The ``export`` handler; returns the exit code (see the module docstring)."""
    from tritonvision.export import (
        CheckpointError,
        ExportValidationError,
        describe_model,
        export_model,
        write_repository_configs,
    )

    try:
        options = _options_from(args)
        if args.configs_only:
            info = describe_model(options)
            files = write_repository_configs(options, info)
            print("\n".join(["Configs written (no model.onnx).", *describe_model_info(info)]))
            print("files:")
            print("\n".join(f"  {path}" for path in files.configs))
            return EXIT_OK
        target = options.checkpoint or "the built-in default (UNTRAINED CLIP ViT-B/32)"
        print(f"Exporting {target} to {options.repository / options.name} ...", flush=True)
        result = export_model(options)
    except (ValueError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ExportValidationError as exc:
        print(f"export FAILED validation, nothing written: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(format_summary(result))
    return EXIT_OK
