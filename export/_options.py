"""Export settings."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from tritonvision.contract import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MODEL,
    ensemble_name,
    preprocess_name,
    text_name,
    texts_name,
    tokenize_name,
)

__all__ = [
    "DEFAULT_INSTANCES",
    "DEFAULT_MAX_BATCH_SIZE",
    "DEFAULT_MAX_QUEUE_DELAY_US",
    "DEFAULT_MAX_QUEUE_SIZE",
    "DEFAULT_PREPROCESS_INSTANCES",
    "DEFAULT_REPOSITORY",
    "DEFAULT_VERSION",
    "ExportOptions",
]

DEFAULT_REPOSITORY = Path("model_repository")
DEFAULT_VERSION = 1
DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_MAX_QUEUE_DELAY_US = 2000
DEFAULT_MAX_QUEUE_SIZE = 256
DEFAULT_INSTANCES = 1
DEFAULT_PREPROCESS_INSTANCES = 2
DEFAULT_VALIDATION_BATCH_SIZES = (1, 3)

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True, kw_only=True)
class ExportOptions:
    """What to export and how the Triton repository serves it.

    ``checkpoint=None`` exports the built-in default (seeded, UNTRAINED CLIP ViT-B/32).
    ``pooling`` picks the embedding of a family that offers several (DINOv2: ``cls``, the
    default, or ``cls+mean``); ``None`` takes the family's default.
    ``tensorrt`` adds ORT's TensorRT accelerator (FP16) to the encoder config: the GPU
    deployment's choice; Triton only applies it to GPU instances. ``max_image_pixels`` is
    the preprocess model's decompression-bomb limit (written as ``PARAM_MAX_IMAGE_PIXELS``).
    ``response_cache`` writes ``response_cache { enable: true }`` on the encoder and the
    ensemble (not on the python-backend preprocess model: an ensemble hit skips it, a miss
    re-decodes); Triton uses it only when started with a cache (``serve --cache-size``).
    ``text`` also exports the checkpoint's text tower (a full two-tower CLIP or SigLIP
    checkpoint with its tokenizer files): ``NAME_text``, ``NAME_tokenize`` and ``NAME_texts``
    (docs/DESIGN.md, "Text models"); the batching, instance, fp16, normalisation and cache
    settings apply to them as to the image models.
    """

    checkpoint: Path | None = None
    pooling: str | None = None
    repository: Path = DEFAULT_REPOSITORY
    name: str = DEFAULT_MODEL
    version: int = DEFAULT_VERSION
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    fp16: bool = False
    normalize: bool = True
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US
    preferred_batch_sizes: tuple[int, ...] = ()
    instances: int = DEFAULT_INSTANCES
    preprocess_instances: int = DEFAULT_PREPROCESS_INSTANCES
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    tensorrt: bool = True
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    response_cache: bool = False
    validation_batch_sizes: tuple[int, ...] = field(default=DEFAULT_VALIDATION_BATCH_SIZES)
    text: bool = False

    def __post_init__(self) -> None:
        if self.checkpoint is not None and not isinstance(self.checkpoint, Path):
            object.__setattr__(self, "checkpoint", Path(self.checkpoint))
        if not isinstance(self.repository, Path):
            object.__setattr__(self, "repository", Path(self.repository))
        if not _MODEL_NAME.fullmatch(self.name):
            raise ValueError(f"name={self.name!r}: use letters, digits, '_', '.', '-'")
        for attr in (
            "version",
            "max_batch_size",
            "instances",
            "preprocess_instances",
            "max_image_pixels",
        ):
            if getattr(self, attr) < 1:
                raise ValueError(f"{attr}={getattr(self, attr)!r} must be >= 1")
        if self.pooling is not None and self.checkpoint is None:
            raise ValueError(
                f"pooling={self.pooling!r} needs a checkpoint; the built-in default has one "
                "embedding"
            )
        if self.text and self.checkpoint is None:
            raise ValueError(
                "text=True needs a checkpoint (a full CLIP or SigLIP model with its tokenizer "
                "files); the built-in default is image-only: it has no trained text tower or "
                "tokenizer"
            )
        if self.max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us={self.max_queue_delay_us!r} must be >= 0")
        if self.max_queue_size < 1:
            raise ValueError(f"max_queue_size={self.max_queue_size!r} must be >= 1")
        preferred = tuple(sorted(set(self.preferred_batch_sizes)))
        bad = [b for b in preferred if not 1 <= b <= self.max_batch_size]
        if bad:
            raise ValueError(
                f"preferred_batch_sizes {bad} outside 1..max_batch_size ({self.max_batch_size})"
            )
        object.__setattr__(self, "preferred_batch_sizes", preferred)
        sizes = tuple(self.validation_batch_sizes)
        if len(set(sizes)) < 2 or min(sizes) < 1 or max(sizes) < 2:
            raise ValueError(
                f"validation_batch_sizes={sizes!r}: need two distinct sizes >= 1, one of them > 1"
            )
        object.__setattr__(self, "validation_batch_sizes", sizes)

    @property
    def preprocess_name(self) -> str:
        return preprocess_name(self.name)

    @property
    def ensemble_name(self) -> str:
        return ensemble_name(self.name)

    @property
    def text_name(self) -> str:
        return text_name(self.name)

    @property
    def tokenize_name(self) -> str:
        return tokenize_name(self.name)

    @property
    def texts_name(self) -> str:
        return texts_name(self.name)
