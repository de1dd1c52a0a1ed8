"""Encoder families: one declarative description each, a registry, and checkpoint loading.

A family says how to export and check one kind of vision encoder: the opset, the tolerances,
the graph's input/output names with their named dynamic axes, a dummy-input maker, the image
processor its checkpoints use, its embedding choices (``poolings``), and how to build the
embedder (normalised pixels -> [N, D]) from a transformers checkpoint. The families:

- ``clip``: CLIP vision tower + visual projection;
- ``siglip``: SigLIP vision tower, attention-pooled output;
- ``dinov2``: ``Dinov2Model``, the final-layer-normed CLS token (``pooling="cls"``, the
  default) or CLS + mean of the patch tokens, concatenated (``"cls+mean"``, [N, 2D]);
- ``backbone``: a transformers vision backbone with a pooled output (ViT, DeiT, BEiT, Swin,
  ConvNeXt, ...), its ``pooler_output``;
- ``module``: the user's own ``torch.nn.Module`` (:func:`module_encoder`; no checkpoint).

Every family in ``ENCODER_FAMILIES`` is exported by the tests.

torch and transformers are imported inside functions so importing this module stays cheap.
"""

from __future__ import annotations

import dataclasses
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
    PreprocessSpec,
)

from ._errors import CheckpointError, ExportValidationError
from ._preprocessing import spec_from_processor_config
from ._reports import Tolerance

if TYPE_CHECKING:
    import torch
    from torch import nn

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
    "module_encoder",
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


# (checkpoint dir, config.json model_type, pooling) -> the embedder: normalised NCHW float
# pixels -> [N, D], fp32, eval mode.
LoadEmbedder = Callable[[Path, str, str | None], "nn.Module"]
# (transformers config, pooling) -> (embedding_dim, the input size the model requires, or
# None where the model takes the processor's size as it comes).
DescribeConfig = Callable[[Any, str | None], tuple[int, int | None]]


# What every family uses unless it says otherwise.
DEFAULT_OPSET = 18
_TRANSFORMER_TOLERANCE = Tolerance(atol=1e-4, rtol=1e-3, min_cosine=0.99999)
_FP16_TOLERANCE = Tolerance(atol=1e-2, rtol=5e-2, min_cosine=0.999)


def make_random_pixels(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Seeded uint8 NHWC pixels: the dummy input for export and the validation input."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, height, width, 3), dtype=torch.uint8, generator=generator)


@dataclass(frozen=True, kw_only=True, eq=False)
class EncoderFamily:
    """The declarative description of one encoder family."""

    name: str
    description: str
    # config.json `model_type` values this family reads (none: not loaded from checkpoints).
    model_types: tuple[str, ...]
    opset: int = DEFAULT_OPSET
    tolerance: Tolerance = _TRANSFORMER_TOLERANCE
    fp16_tolerance: Tolerance = _FP16_TOLERANCE
    input_name: str = PIXELS_INPUT
    output_name: str = EMBEDDINGS_OUTPUT
    # input/output name -> {axis: symbolic name}; only the batch axis is dynamic.
    dynamic_axes: Mapping[str, Mapping[int, str]] = field(
        default_factory=lambda: {
            PIXELS_INPUT: {0: BATCH_AXIS},
            EMBEDDINGS_OUTPUT: {0: BATCH_AXIS},
        }
    )
    make_dummy_input: Callable[[int, int, int, int], torch.Tensor] = make_random_pixels
    # The embeddings a checkpoint offers; the first is the default. Empty: one fixed embedding.
    poolings: tuple[str, ...] = ()
    # The image processor a checkpoint's preprocessor_config.json means when it names none
    # (None: refuse such a config).
    processor_type: str | None = None
    # image size -> the preprocessing of a checkpoint without preprocessor_config.json
    # (None: refuse such a checkpoint).
    default_preprocessing: Callable[[int | None], PreprocessSpec] | None = None
    describe_config: DescribeConfig | None = None
    load_embedder: LoadEmbedder | None = None
    # Said when a checkpoint lacks weights the embedding needs.
    weights_hint: str = ""

    def tolerance_for(self, *, fp16: bool) -> Tolerance:
        return self.fp16_tolerance if fp16 else self.tolerance

    def resolve_pooling(self, pooling: str | None) -> str | None:
        """The pooling an export uses: the default for ``None``; refuses one it lacks."""
        if not self.poolings:
            if pooling is not None:
                offering = [f.name for f in ENCODER_FAMILIES.values() if f.poolings]
                raise CheckpointError(
                    f"pooling {pooling!r} does not apply to {self.name} encoders (only to "
                    f"{', '.join(offering)})"
                )
            return None
        if pooling is None:
            return self.poolings[0]
        if pooling not in self.poolings:
            raise CheckpointError(
                f"pooling {pooling!r} is not one of {self.name}'s: {', '.join(self.poolings)}"
            )
        return pooling


def _vision_weight(key: str) -> bool:
    """Whether an image encoder needs weight ``key`` (not the text tower of a two-tower one)."""
    return not key.startswith(_UNUSED_WEIGHTS)


def _require_weights(
    info: Mapping[str, Any],
    checkpoint: Path,
    hint: str,
    *,
    needed: Callable[[str], bool] = _vision_weight,
    what: str = "weights the encoder needs",
) -> None:
    # transformers fills missing weights with random ones and only logs it; an export of that
    # would look fine (ONNX matches PyTorch) and embed garbage.
    missing = [k for k in info.get("missing_keys", ()) if needed(k)]
    mismatched = [str(k) for k in info.get("mismatched_keys", ())]
    problems = missing + mismatched
    if problems:
        shown = ", ".join(sorted(problems)[:5]) + (", ..." if len(problems) > 5 else "")
        raise CheckpointError(
            f"{checkpoint}: checkpoint lacks {what} ({shown}); {hint}", checkpoint=checkpoint
        )


def _load_pretrained(
    cls: Any,
    checkpoint: Path,
    hint: str,
    *,
    needed: Callable[[str], bool] = _vision_weight,
    what: str = "weights the encoder needs",
    **kwargs: Any,
) -> Any:
    """``cls.from_pretrained`` offline, in fp32, refusing missing ``needed`` weights; eval mode."""
    import torch

    model, info = cls.from_pretrained(
        checkpoint, local_files_only=True, dtype=torch.float32, output_loading_info=True, **kwargs
    )
    _require_weights(info, checkpoint, hint, needed=needed, what=what)
    return model.eval()


def _load_clip(checkpoint: Path, model_type: str, pooling: str | None) -> nn.Module:
    from transformers import CLIPModel, CLIPVisionModelWithProjection

    from ._wrapper import PooledProjection

    cls = CLIPModel if model_type == "clip" else CLIPVisionModelWithProjection
    model = _load_pretrained(cls, checkpoint, CLIP.weights_hint)
    return PooledProjection(model.vision_model, model.visual_projection).eval()


def _load_siglip(checkpoint: Path, model_type: str, pooling: str | None) -> nn.Module:
    from transformers import SiglipModel, SiglipVisionModel

    from ._wrapper import PooledOutput

    cls = SiglipModel if model_type == "siglip" else SiglipVisionModel
    model = _load_pretrained(cls, checkpoint, SIGLIP.weights_hint)
    # SiglipModel holds the tower as .vision_model; transformers 5's SiglipVisionModel is the
    # tower itself (4.x wrapped it in .vision_model too).
    tower = getattr(model, "vision_model", model)
    if not getattr(tower, "use_head", True):
        raise CheckpointError(
            f"{checkpoint}: SigLIP vision tower has vision_use_head=false, so no pooled embedding",
            checkpoint=checkpoint,
        )
    return PooledOutput(tower).eval()


def _load_dinov2(checkpoint: Path, model_type: str, pooling: str | None) -> nn.Module:
    from transformers import Dinov2Model

    from ._wrapper import DINOV2_POOLINGS, Dinov2Pooling

    model = _load_pretrained(Dinov2Model, checkpoint, DINOV2.weights_hint)
    return Dinov2Pooling(model, pooling or DINOV2_POOLINGS[0]).eval()


def _load_backbone(checkpoint: Path, model_type: str, pooling: str | None) -> nn.Module:
    from transformers import AutoModel

    from ._wrapper import PooledOutput

    # Swin's SDPA path reshapes a non-contiguous tensor, which torch.export cannot decompose
    # with a symbolic batch; its eager attention computes the same and exports.
    extra: dict[str, Any] = (
        {"attn_implementation": "eager"} if model_type in _EAGER_ATTENTION else {}
    )
    model = _load_pretrained(AutoModel, checkpoint, BACKBONE.weights_hint, **extra)
    # ViTModel(add_pooling_layer=False) and kin keep `pooler = None`: no pooled output.
    if getattr(model, "pooler", True) is None:
        raise CheckpointError(
            f"{checkpoint}: {type(model).__name__} was built without a pooling layer, so it has "
            "no pooled output to embed with",
            checkpoint=checkpoint,
        )
    return PooledOutput(model).eval()


def _describe_clip(config: Any, pooling: str | None) -> tuple[int, int | None]:
    vision = getattr(config, "vision_config", config)
    # A full CLIPConfig carries the projection size at top level; vision_config's own
    # projection_dim is unused there.
    return int(config.projection_dim), int(vision.image_size)


def _describe_siglip(config: Any, pooling: str | None) -> tuple[int, int | None]:
    vision = getattr(config, "vision_config", config)
    return int(vision.hidden_size), int(vision.image_size)


def _describe_dinov2(config: Any, pooling: str | None) -> tuple[int, int | None]:
    hidden = int(config.hidden_size)
    # Dinov2Embeddings interpolates its position embeddings to any input size (the released
    # checkpoints say image_size 518 and are run at the processor's 224 crop).
    return (2 * hidden if pooling == "cls+mean" else hidden), None


_EAGER_ATTENTION = frozenset({"swin"})
# Backbones whose pooled output does not depend on a fixed input size (fully convolutional).
_ANY_SIZE_BACKBONES = frozenset({"convnext", "convnextv2"})


def _describe_backbone(config: Any, pooling: str | None) -> tuple[int, int | None]:
    # ConvNeXt pools its last stage (hidden_sizes[-1]); ViT/DeiT/BEiT pool hidden_size, and
    # Swin's config sets hidden_size to its last stage's width. Validation checks the figure
    # against the exported graph's output.
    sizes = getattr(config, "hidden_sizes", None)
    dim = int(sizes[-1]) if sizes else int(config.hidden_size)
    image_size = getattr(config, "image_size", None)
    if config.model_type in _ANY_SIZE_BACKBONES or not isinstance(image_size, int):
        return dim, None
    return dim, image_size


def _clip_default(image_size: int | None) -> PreprocessSpec:
    return PreprocessSpec.clip_default(image_size or 224)


def _siglip_default(image_size: int | None) -> PreprocessSpec:
    return PreprocessSpec.siglip_default(image_size or 224)


# DINOv2's own evaluation transform: Resize(256, bicubic), CenterCrop(224), ImageNet mean/std.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _dinov2_default(image_size: int | None) -> PreprocessSpec:
    return PreprocessSpec(
        resize_mode="shortest_edge",
        shortest_edge=256,
        crop_height=224,
        crop_width=224,
        resample="bicubic",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )


CLIP = EncoderFamily(
    name="clip",
    description="CLIP vision tower + visual projection (CLIPModel / CLIPVisionModelWithProjection)",
    model_types=("clip", "clip_vision_model"),
    processor_type="CLIPImageProcessor",
    default_preprocessing=_clip_default,
    describe_config=_describe_clip,
    load_embedder=_load_clip,
    weights_hint="a vision-only CLIP checkpoint must be saved from CLIPVisionModelWithProjection",
)

SIGLIP = EncoderFamily(
    name="siglip",
    description="SigLIP vision tower, attention-pooled output (SiglipModel / SiglipVisionModel)",
    model_types=("siglip", "siglip_vision_model"),
    processor_type="SiglipImageProcessor",
    default_preprocessing=_siglip_default,
    describe_config=_describe_siglip,
    load_embedder=_load_siglip,
    weights_hint="save it from SiglipModel or SiglipVisionModel",
)

DINOV2 = EncoderFamily(
    name="dinov2",
    description=(
        "DINOv2 (Dinov2Model): final-layer-normed CLS token, or CLS + mean of the patch "
        "tokens (pooling cls+mean, [N, 2D])"
    ),
    model_types=("dinov2",),
    poolings=("cls", "cls+mean"),
    processor_type="BitImageProcessor",
    default_preprocessing=_dinov2_default,
    describe_config=_describe_dinov2,
    load_embedder=_load_dinov2,
    weights_hint="save it from Dinov2Model (or a Dinov2 model that contains one)",
)

BACKBONE = EncoderFamily(
    name="backbone",
    description=(
        "transformers vision backbone with a pooled output (AutoModel: ViT, DeiT, BEiT, Swin, "
        "Swinv2, ConvNeXt, ConvNeXt V2), its pooler_output"
    ),
    model_types=("vit", "deit", "beit", "swin", "swinv2", "convnext", "convnextv2"),
    describe_config=_describe_backbone,
    load_embedder=_load_backbone,
    weights_hint=(
        "the pooled output needs trained pooler weights (a checkpoint saved from an "
        "*ForImageClassification model may lack them)"
    ),
)

MODULE = EncoderFamily(
    name="module",
    description="your own torch.nn.Module: normalised NCHW float pixels -> [N, D] (export_module)",
    model_types=(),
)

ENCODER_FAMILIES: Mapping[str, EncoderFamily] = MappingProxyType(
    {f.name: f for f in (CLIP, SIGLIP, DINOV2, BACKBONE, MODULE)}
)


def family_for_model_type(model_type: str) -> EncoderFamily:
    for family in ENCODER_FAMILIES.values():
        if model_type in family.model_types:
            return family
    known = sorted(t for f in ENCODER_FAMILIES.values() for t in f.model_types)
    raise CheckpointError(f"unsupported model_type {model_type!r}; supported: {', '.join(known)}")


@dataclass(frozen=True, kw_only=True, eq=False)
class LoadedEncoder:
    """An encoder's PyTorch embedder plus what gets published about it.

    ``embedder`` maps normalised NCHW float pixels to [N, ``embedding_dim``] (before the L2
    norm); ``pooling`` is the embedding chosen among the family's ``poolings`` (or None).
    """

    family: EncoderFamily
    source: str
    trained: bool
    embedding_dim: int
    preprocessing: PreprocessSpec
    embedder: nn.Module
    pooling: str | None = None

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
            self.embedder,
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


def _checkpoint_model_type(checkpoint: Path) -> str:
    """``config.json``'s ``model_type``; :class:`CheckpointError` when ``checkpoint`` is not a
    directory or its config names none."""
    if not checkpoint.is_dir():
        raise CheckpointError(f"{checkpoint} is not a directory", checkpoint=checkpoint)
    model_type = _read_json(checkpoint / "config.json").get("model_type")
    if not isinstance(model_type, str):
        raise CheckpointError(f"{checkpoint}/config.json has no model_type", checkpoint=checkpoint)
    return model_type


@dataclass(frozen=True)
class _Description:
    family: EncoderFamily
    model_type: str
    pooling: str | None
    embedding_dim: int
    preprocessing: PreprocessSpec


def _checkpoint_description(checkpoint: Path, pooling: str | None) -> _Description:
    """What a checkpoint's JSON files say: family, model_type, embedding size, preprocessing."""
    from transformers import AutoConfig

    model_type = _checkpoint_model_type(checkpoint)
    family = family_for_model_type(model_type)
    pooling = family.resolve_pooling(pooling)
    assert family.describe_config is not None  # every checkpoint family describes its config
    config = AutoConfig.from_pretrained(checkpoint, local_files_only=True)
    embedding_dim, image_size = family.describe_config(config, pooling)

    processor_path = checkpoint / "preprocessor_config.json"
    if processor_path.exists():
        spec = spec_from_processor_config(
            _read_json(processor_path), processor_type=family.processor_type, path=processor_path
        )
    elif family.default_preprocessing is not None:
        logger.info(
            "%s has no preprocessor_config.json; using %s defaults", checkpoint, family.name
        )
        spec = family.default_preprocessing(image_size)
    else:
        raise CheckpointError(
            f"{checkpoint} has no preprocessor_config.json, so its preprocessing is unknown; "
            "save the model's image processor beside it (processor.save_pretrained(DIR))",
            checkpoint=checkpoint,
        )
    if image_size is not None and spec.output_shape != (image_size, image_size, 3):
        raise CheckpointError(
            f"{checkpoint}: preprocessing gives {spec.output_shape} pixels but the model takes "
            f"{image_size}x{image_size}x3",
            checkpoint=checkpoint,
        )
    return _Description(family, model_type, pooling, embedding_dim, spec)


def describe_checkpoint(
    checkpoint: Path, *, normalize: bool = True, fp16: bool = False, pooling: str | None = None
) -> EncoderInfo:
    """What an export of ``checkpoint`` would publish, from its JSON files (no weights loaded)."""
    described = _checkpoint_description(checkpoint, pooling)
    return EncoderInfo(
        family=described.family.name,
        source=str(checkpoint.resolve()),
        trained=True,
        embedding_dim=described.embedding_dim,
        normalized=normalize,
        fp16=fp16,
        preprocessing=described.preprocessing,
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
        preprocessing=_clip_default(BUILTIN_CLIP_CONFIG["image_size"]),
    )


def load_encoder(checkpoint: Path, *, pooling: str | None = None) -> LoadedEncoder:
    """Load a checkpoint directory (transformers format) of any registered family, offline.

    The family comes from ``config.json``'s ``model_type``; ``pooling`` picks among the
    family's embeddings (DINOv2: ``cls``, the default, or ``cls+mean``).
    """
    described = _checkpoint_description(checkpoint, pooling)
    family = described.family
    assert family.load_embedder is not None  # every checkpoint family loads an embedder
    embedder = family.load_embedder(checkpoint, described.model_type, described.pooling)
    return LoadedEncoder(
        family=family,
        source=str(checkpoint.resolve()),
        trained=True,
        embedding_dim=described.embedding_dim,
        preprocessing=described.preprocessing,
        embedder=embedder,
        pooling=described.pooling,
    )


def builtin_encoder(vision_config: Any = None) -> LoadedEncoder:
    """The built-in default: CLIP ViT-B/32 image tower + projection, weights from seed 0.

    UNTRAINED. The shape is :data:`BUILTIN_CLIP_CONFIG`; ``vision_config`` (a
    ``CLIPVisionConfig``) replaces it, for tests; the source then reads ``builtin:clip-custom``.
    """
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from ._wrapper import PooledProjection

    shape: dict[str, Any] = dict(BUILTIN_CLIP_CONFIG)
    config = vision_config if vision_config is not None else CLIPVisionConfig(**shape)
    # Seed without disturbing the caller's RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(BUILTIN_SEED)
        model = CLIPVisionModelWithProjection(config)
        model.train(False)  # eval(); transformers' own eval() override is untyped
    embedding_dim, image_size = _describe_clip(config, None)
    return LoadedEncoder(
        family=CLIP,
        source=BUILTIN_SOURCE if vision_config is None else "builtin:clip-custom",
        trained=False,
        embedding_dim=embedding_dim,
        preprocessing=_clip_default(image_size),
        embedder=PooledProjection(model.vision_model, model.visual_projection).eval(),
    )


# The batch a module is first run on in PyTorch, to learn D and check it returns [N, D].
_PROBE_BATCH = 2


def embedding_dim_of(
    wrapper: EmbeddingWrapper, *, family: EncoderFamily, height: int, width: int
) -> int:
    """Run ``wrapper``'s embedder once in PyTorch; its ``D``, checked to be [N, D].

    Raises :class:`ExportValidationError` when it fails or returns anything but a float
    tensor of shape [N, D].
    """
    import torch

    pixels = family.make_dummy_input(_PROBE_BATCH, height, width, 0)
    shape = f"[{_PROBE_BATCH}, 3, {height}, {width}]"
    try:
        with torch.no_grad():
            out = wrapper.embedder(wrapper.pixel_values(pixels))
    except Exception as exc:  # the user's module: any failure is the module's, reported as one
        problem = f"the module failed on normalised pixels {shape}: {type(exc).__name__}: {exc}"
        raise ExportValidationError(problem, problems=[problem]) from exc
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != _PROBE_BATCH:
        got = f"tensor {list(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        problem = (
            f"the module must return a tensor [N, D] (one embedding per image); on pixels "
            f"{shape} it returned {got}"
        )
        raise ExportValidationError(problem, problems=[problem])
    if out.shape[1] < 1 or not out.is_floating_point():
        problem = f"the module returned {out.dtype} {list(out.shape)}; need float [N, D], D >= 1"
        raise ExportValidationError(problem, problems=[problem])
    return int(out.shape[1])


def module_encoder(
    module: nn.Module,
    *,
    preprocess: PreprocessSpec,
    source: str | None = None,
    trained: bool = True,
) -> LoadedEncoder:
    """Your own ``torch.nn.Module`` as an encoder of the ``module`` family.

    ``module`` maps normalised NCHW float32 pixels ``[N, 3, H, W]`` (``preprocess``'s resize,
    crop, rescale and mean/std applied; ``H x W`` its output size) to ``[N, D]``. It is run
    once here to learn ``D``; a failure, or an output that is not a float ``[N, D]`` tensor,
    raises :class:`ExportValidationError`. ``source`` is published (default
    ``module:<class qualname>``).
    """
    from torch import nn

    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(preprocess, PreprocessSpec):
        raise TypeError(f"preprocess must be a PreprocessSpec, got {type(preprocess).__name__}")
    module.eval()
    height, width, _ = preprocess.output_shape
    cls = type(module)
    unprobed = LoadedEncoder(
        family=MODULE,
        source=source if source is not None else f"module:{cls.__module__}.{cls.__qualname__}",
        trained=trained,
        embedding_dim=0,  # learnt from the probe just below
        preprocessing=preprocess,
        embedder=module,
    )
    probe = unprobed.wrapper(normalize=False)
    dim = embedding_dim_of(probe, family=MODULE, height=height, width=width)
    return dataclasses.replace(unprobed, embedding_dim=dim)
