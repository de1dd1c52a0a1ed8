"""Encoder families: one declarative description each, a registry, and checkpoint loading.

A family says how to export and check one kind of vision encoder: the opset, the tolerances,
the graph's input/output names with their named dynamic axes, a dummy-input maker, the default
preprocessing, and how to pull (vision tower, projection) out of a transformers checkpoint.
Every family in ``ENCODER_FAMILIES`` is exported by the tests.

torch and transformers are imported inside functions so importing this module stays cheap.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from tritonvision.contract import (
    BATCH_AXIS,
    EMBEDDINGS_OUTPUT,
    PARAM_EMBEDDING_DIM,
    PARAM_FAMILY,
    PARAM_NORMALIZED,
    PARAM_PRECISION,
    PARAM_PREPROCESSING,
    PARAM_SOURCE,
    PARAM_TRAINED,
    PIXELS_INPUT,
)

from ._errors import CheckpointError
from ._preprocessing import default_spec, spec_from_processor_config
from ._reports import Tolerance

if TYPE_CHECKING:
    import torch
    from torch import nn

    from tritonvision.contract import PreprocessSpec

    from ._wrapper import EmbeddingWrapper

__all__ = [
    "BUILTIN_CLIP_CONFIG",
    "BUILTIN_SOURCE",
    "ENCODER_FAMILIES",
    "EncoderFamily",
    "EncoderInfo",
    "LoadedEncoder",
    "builtin_encoder",
    "builtin_encoder_info",
    "describe_checkpoint",
    "family_for_model_type",
    "load_encoder",
]

logger = logging.getLogger(__name__)

BUILTIN_SOURCE = "builtin:clip-vit-b32"
BUILTIN_SEED = 0
# The one description of the built-in encoder's shape (ViT-B/32): builtin_encoder builds its
# CLIPVisionConfig from it and builtin_encoder_info reads the published sizes from it, so a
# configs-only export needs neither torch nor transformers. Spelled out rather than taken from
# CLIPVisionConfig's defaults, which a transformers release could change under a fixed seed.
BUILTIN_CLIP_CONFIG: Mapping[str, int] = MappingProxyType(
    {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "image_size": 224,
        "patch_size": 32,
        "projection_dim": 512,
    }
)
# Weights of two-tower checkpoints that the image encoder does not use.
_UNUSED_WEIGHTS = ("text_model.", "text_projection.", "logit_scale", "logit_bias")


@dataclass(frozen=True, kw_only=True)
class EncoderInfo:
    """What a model repository publishes about an encoder; needs no weights to build."""

    family: str
    source: str
    trained: bool
    embedding_dim: int
    normalized: bool
    fp16: bool
    preprocessing: PreprocessSpec

    @property
    def height(self) -> int:
        return int(self.preprocessing.output_shape[0])

    @property
    def width(self) -> int:
        return int(self.preprocessing.output_shape[1])

    @property
    def precision(self) -> str:
        return "fp16" if self.fp16 else "fp32"

    def parameters(self) -> dict[str, str]:
        """The published model-config ``parameters`` (``PUBLISHED_PARAMETERS``, DESIGN.md)."""
        return {
            PARAM_PREPROCESSING: self.preprocessing.to_json(),
            PARAM_FAMILY: self.family,
            PARAM_SOURCE: self.source,
            PARAM_TRAINED: _bool(self.trained),
            PARAM_EMBEDDING_DIM: str(self.embedding_dim),
            PARAM_NORMALIZED: _bool(self.normalized),
            PARAM_PRECISION: self.precision,
        }


def _bool(value: bool) -> str:
    return "true" if value else "false"


# (vision tower, projection) as pulled out of a checkpoint.
VisionParts = tuple["nn.Module", "nn.Module"]


@dataclass(frozen=True, kw_only=True, eq=False)
class EncoderFamily:
    """The declarative description of one encoder family."""

    name: str
    description: str
    # config.json `model_type` values this family reads: the full two-tower model and the
    # vision-only model.
    model_types: tuple[str, ...]
    opset: int
    tolerance: Tolerance
    fp16_tolerance: Tolerance
    input_name: str = PIXELS_INPUT
    output_name: str = EMBEDDINGS_OUTPUT
    # input/output name -> {axis: symbolic name}; only the batch axis is dynamic.
    dynamic_axes: Mapping[str, Mapping[int, str]] = field(
        default_factory=lambda: {
            PIXELS_INPUT: {0: BATCH_AXIS},
            EMBEDDINGS_OUTPUT: {0: BATCH_AXIS},
        }
    )
    make_dummy_input: Callable[[int, int, int, int], torch.Tensor]
    # transformers config -> (embedding_dim, image_size)
    describe_config: Callable[[Any], tuple[int, int]]
    # (checkpoint dir, model_type) -> (tower, projection), fp32, eval mode
    load_parts: Callable[[Path, str], VisionParts]

    def tolerance_for(self, *, fp16: bool) -> Tolerance:
        return self.fp16_tolerance if fp16 else self.tolerance

    def default_preprocessing(self, image_size: int) -> PreprocessSpec:
        """The spec for a checkpoint that ships no ``preprocessor_config.json``."""
        return default_spec(self.name, image_size)


def make_random_pixels(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Seeded uint8 NHWC pixels: the dummy input for export and the validation input."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, height, width, 3), dtype=torch.uint8, generator=generator)


def _require_weights(info: Mapping[str, Any], checkpoint: Path) -> None:
    # transformers fills missing weights with random ones and only logs it; an export of that
    # would look fine and embed garbage. The text tower of a two-tower checkpoint is not used.
    missing = [k for k in info.get("missing_keys", ()) if not k.startswith(_UNUSED_WEIGHTS)]
    mismatched = [str(k) for k in info.get("mismatched_keys", ())]
    problems = missing + mismatched
    if problems:
        shown = ", ".join(problems[:5]) + (", ..." if len(problems) > 5 else "")
        raise CheckpointError(
            f"{checkpoint}: checkpoint lacks weights the encoder needs ({shown}); a "
            "vision-only CLIP checkpoint must be saved from CLIPVisionModelWithProjection",
            checkpoint=checkpoint,
        )


def _load_pretrained(cls: Any, checkpoint: Path) -> Any:
    """``cls.from_pretrained`` offline, in fp32, refusing missing vision weights; eval mode."""
    import torch

    model, info = cls.from_pretrained(
        checkpoint, local_files_only=True, dtype=torch.float32, output_loading_info=True
    )
    _require_weights(info, checkpoint)
    return model.eval()


def _load_clip(checkpoint: Path, model_type: str) -> VisionParts:
    from transformers import CLIPModel, CLIPVisionModelWithProjection

    cls = CLIPModel if model_type == "clip" else CLIPVisionModelWithProjection
    model = _load_pretrained(cls, checkpoint)
    return model.vision_model, model.visual_projection


def _load_siglip(checkpoint: Path, model_type: str) -> VisionParts:
    from torch import nn
    from transformers import SiglipModel, SiglipVisionModel

    cls = SiglipModel if model_type == "siglip" else SiglipVisionModel
    model = _load_pretrained(cls, checkpoint)
    # SiglipModel holds the tower as .vision_model; transformers 5's SiglipVisionModel is the
    # tower itself (4.x wrapped it in .vision_model too).
    tower = getattr(model, "vision_model", model)
    if not getattr(tower, "use_head", True):
        raise CheckpointError(
            f"{checkpoint}: SigLIP vision tower has vision_use_head=false, so no pooled embedding",
            checkpoint=checkpoint,
        )
    return tower, nn.Identity()


def _describe_clip(config: Any) -> tuple[int, int]:
    vision = getattr(config, "vision_config", config)
    # A full CLIPConfig carries the projection size at top level; vision_config's own
    # projection_dim is unused there.
    return int(config.projection_dim), int(vision.image_size)


def _describe_siglip(config: Any) -> tuple[int, int]:
    vision = getattr(config, "vision_config", config)
    return int(vision.hidden_size), int(vision.image_size)


CLIP = EncoderFamily(
    name="clip",
    description="CLIP vision tower + visual projection (CLIPModel / CLIPVisionModelWithProjection)",
    model_types=("clip", "clip_vision_model"),
    opset=18,
    tolerance=Tolerance(atol=1e-4, rtol=1e-3, min_cosine=0.99999),
    fp16_tolerance=Tolerance(atol=1e-2, rtol=5e-2, min_cosine=0.999),
    make_dummy_input=make_random_pixels,
    describe_config=_describe_clip,
    load_parts=_load_clip,
)

SIGLIP = EncoderFamily(
    name="siglip",
    description="SigLIP vision tower, attention-pooled output (SiglipModel / SiglipVisionModel)",
    model_types=("siglip", "siglip_vision_model"),
    opset=18,
    tolerance=Tolerance(atol=1e-4, rtol=1e-3, min_cosine=0.99999),
    fp16_tolerance=Tolerance(atol=1e-2, rtol=5e-2, min_cosine=0.999),
    make_dummy_input=make_random_pixels,
    describe_config=_describe_siglip,
    load_parts=_load_siglip,
)

ENCODER_FAMILIES: Mapping[str, EncoderFamily] = MappingProxyType(
    {f.name: f for f in (CLIP, SIGLIP)}
)


def family_for_model_type(model_type: str) -> EncoderFamily:
    for family in ENCODER_FAMILIES.values():
        if model_type in family.model_types:
            return family
    known = sorted(t for f in ENCODER_FAMILIES.values() for t in f.model_types)
    raise CheckpointError(f"unsupported model_type {model_type!r}; supported: {', '.join(known)}")


@dataclass(frozen=True, kw_only=True, eq=False)
class LoadedEncoder:
    """An encoder's PyTorch parts plus what gets published about it."""

    family: EncoderFamily
    source: str
    trained: bool
    embedding_dim: int
    preprocessing: PreprocessSpec
    tower: nn.Module
    projection: nn.Module

    def info(self, *, normalize: bool, fp16: bool) -> EncoderInfo:
        return EncoderInfo(
            family=self.family.name,
            source=self.source,
            trained=self.trained,
            embedding_dim=self.embedding_dim,
            normalized=normalize,
            fp16=fp16,
            preprocessing=self.preprocessing,
        )

    def wrapper(self, *, normalize: bool) -> EmbeddingWrapper:
        """The fp32 module to export (and the reference it is validated against)."""
        from ._wrapper import EmbeddingWrapper

        spec = self.preprocessing
        return EmbeddingWrapper(
            self.tower,
            self.projection,
            rescale_factor=spec.rescale_factor,
            mean=spec.mean,
            std=spec.std,
            normalize=normalize,
        ).eval()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}", checkpoint=path.parent) from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object", checkpoint=path.parent)
    return data


def _checkpoint_description(
    checkpoint: Path,
) -> tuple[EncoderFamily, str, int, PreprocessSpec]:
    """(family, model_type, embedding_dim, preprocessing) from a checkpoint's JSON files."""
    from transformers import AutoConfig

    if not checkpoint.is_dir():
        raise CheckpointError(f"{checkpoint} is not a directory", checkpoint=checkpoint)
    model_type = _read_json(checkpoint / "config.json").get("model_type")
    if not isinstance(model_type, str):
        raise CheckpointError(f"{checkpoint}/config.json has no model_type", checkpoint=checkpoint)
    family = family_for_model_type(model_type)
    config = AutoConfig.from_pretrained(checkpoint, local_files_only=True)
    embedding_dim, image_size = family.describe_config(config)

    processor_path = checkpoint / "preprocessor_config.json"
    if processor_path.exists():
        spec = spec_from_processor_config(
            _read_json(processor_path), family=family.name, path=processor_path
        )
    else:
        logger.info(
            "%s has no preprocessor_config.json; using %s defaults", checkpoint, family.name
        )
        spec = family.default_preprocessing(image_size)
    if spec.output_shape != (image_size, image_size, 3):
        raise CheckpointError(
            f"{checkpoint}: preprocessing gives {spec.output_shape} pixels but the model takes "
            f"{image_size}x{image_size}x3",
            checkpoint=checkpoint,
        )
    return family, model_type, embedding_dim, spec


def describe_checkpoint(
    checkpoint: Path, *, normalize: bool = True, fp16: bool = False
) -> EncoderInfo:
    """What an export of ``checkpoint`` would publish, from its JSON files (no weights loaded)."""
    family, _, embedding_dim, spec = _checkpoint_description(checkpoint)
    return EncoderInfo(
        family=family.name,
        source=str(checkpoint.resolve()),
        trained=True,
        embedding_dim=embedding_dim,
        normalized=normalize,
        fp16=fp16,
        preprocessing=spec,
    )


def builtin_encoder_info(*, normalize: bool = True, fp16: bool = False) -> EncoderInfo:
    """What an export of the built-in default (seeded, untrained CLIP ViT-B/32) publishes.

    Read from :data:`BUILTIN_CLIP_CONFIG`, the config :func:`builtin_encoder` builds, without
    building it.
    """
    return EncoderInfo(
        family=CLIP.name,
        source=BUILTIN_SOURCE,
        trained=False,
        embedding_dim=BUILTIN_CLIP_CONFIG["projection_dim"],
        normalized=normalize,
        fp16=fp16,
        preprocessing=CLIP.default_preprocessing(BUILTIN_CLIP_CONFIG["image_size"]),
    )


def load_encoder(checkpoint: Path) -> LoadedEncoder:
    """Load a CLIP or SigLIP checkpoint directory (transformers format), offline."""
    family, model_type, embedding_dim, spec = _checkpoint_description(checkpoint)
    tower, projection = family.load_parts(checkpoint, model_type)
    return LoadedEncoder(
        family=family,
        source=str(checkpoint.resolve()),
        trained=True,
        embedding_dim=embedding_dim,
        preprocessing=spec,
        tower=tower,
        projection=projection,
    )


def builtin_encoder(vision_config: Any = None) -> LoadedEncoder:
    """The built-in default: CLIP ViT-B/32 image tower + projection, weights from seed 0.

    UNTRAINED. The shape is :data:`BUILTIN_CLIP_CONFIG`; ``vision_config`` (a
    ``CLIPVisionConfig``) replaces it, for tests; the source then reads ``builtin:clip-custom``.
    """
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    shape: dict[str, Any] = dict(BUILTIN_CLIP_CONFIG)
    config = vision_config if vision_config is not None else CLIPVisionConfig(**shape)
    # Seed without disturbing the caller's RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(BUILTIN_SEED)
        model = CLIPVisionModelWithProjection(config)
        model.train(False)  # eval(); transformers' own eval() override is untyped
    embedding_dim, image_size = _describe_clip(config)
    return LoadedEncoder(
        family=CLIP,
        source=BUILTIN_SOURCE if vision_config is None else "builtin:clip-custom",
        trained=False,
        embedding_dim=embedding_dim,
        preprocessing=CLIP.default_preprocessing(image_size),
        tower=model.vision_model,
        projection=model.visual_projection,
    )
