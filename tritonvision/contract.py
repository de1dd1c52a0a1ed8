"""The served-model contract: every name that export, serve, client and bench must agree on.

One home for the contract between the model repository and its users (PyTriton's
``constants.py`` is the model): model-config parameter keys, tensor names, model-name
suffixes, defaults, the local cache root, and :class:`PreprocessSpec` with its readers.
``docs/DESIGN.md`` lists the keys from this module (a test checks it does).

A leaf module: it imports nothing of tritonvision's but the error tree, and nothing heavy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tritonvision.errors import InvalidInput, ModelConfigError

__all__ = [
    "ATTENTION_MASK",
    "BATCH_AXIS",
    "CLIP_MEAN",
    "CLIP_STD",
    "DEFAULT_CACHE_DIR",
    "DEFAULT_GRPC_PORT",
    "DEFAULT_HTTP_PORT",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEFAULT_METRICS_PORT",
    "DEFAULT_MODEL",
    "DEFAULT_RESCALE_FACTOR",
    "EMBEDDINGS_OUTPUT",
    "ENSEMBLE_SUFFIX",
    "ERRORS_SUFFIX",
    "HF_IMAGE_PROCESSORS",
    "IMAGES_INPUT",
    "INPUT_IDS",
    "NPY_SUFFIX",
    "PARAM_CONTEXT_LENGTH",
    "PARAM_EMBEDDING_DIM",
    "PARAM_FAMILY",
    "PARAM_MAX_IMAGE_PIXELS",
    "PARAM_NORMALIZED",
    "PARAM_ONNX_FILE",
    "PARAM_ORT_PROVIDERS",
    "PARAM_ORT_THREADS",
    "PARAM_PRECISION",
    "PARAM_PREPROCESSING",
    "PARAM_SOURCE",
    "PARAM_TRAINED",
    "PARQUET_SUFFIX",
    "PARTS_SUFFIX",
    "PIXELS_INPUT",
    "PREPROCESS_SUFFIX",
    "PUBLISHED_PARAMETERS",
    "RESAMPLE_NAMES",
    "RUNTIME_PARAMETERS",
    "SIGLIP_MEAN",
    "SIGLIP_STD",
    "SOURCES_SUFFIX",
    "TEXTS_INPUT",
    "TEXTS_SUFFIX",
    "TEXT_SUFFIX",
    "TOKENIZER_DIR",
    "TOKENIZE_SUFFIX",
    "TOKEN_INPUTS",
    "PreprocessSpec",
    "ensemble_name",
    "preprocess_name",
    "text_name",
    "texts_name",
    "tokenize_name",
]

# ---------------------------------------------------------------------- model names

DEFAULT_MODEL = "vision_encoder"
"""The encoder's model name when none is given (export ``--name``, the client's ``model``)."""
PREPROCESS_SUFFIX = "_preprocess"
"""``NAME_preprocess``: the python-backend model that decodes bytes into pixels."""
ENSEMBLE_SUFFIX = "_images"
"""``NAME_images``: the ensemble from encoded image bytes to embeddings."""


TEXT_SUFFIX = "_text"
"""``NAME_text``: the ONNX text tower (token tensors -> embeddings), in the image space."""
TOKENIZE_SUFFIX = "_tokenize"
"""``NAME_tokenize``: the python-backend model that turns strings into token tensors."""
TEXTS_SUFFIX = "_texts"
"""``NAME_texts``: the ensemble from UTF-8 strings to text embeddings."""
TOKENIZER_DIR = "tokenizer"
"""``NAME_tokenize/<version>/tokenizer/``: the checkpoint's tokenizer files, copied by export."""


def preprocess_name(model: str) -> str:
    """The preprocess model of encoder ``model``."""
    return model + PREPROCESS_SUFFIX


def ensemble_name(model: str) -> str:
    """The raw-bytes ensemble of encoder ``model``."""
    return model + ENSEMBLE_SUFFIX


def text_name(model: str) -> str:
    """The text tower of encoder ``model``."""
    return model + TEXT_SUFFIX


def tokenize_name(model: str) -> str:
    """The tokenizer model of encoder ``model``."""
    return model + TOKENIZE_SUFFIX


def texts_name(model: str) -> str:
    """The strings-to-embeddings ensemble of encoder ``model`` (the client's text model)."""
    return model + TEXTS_SUFFIX


# ---------------------------------------------------------------------- tensor names

PIXELS_INPUT = "pixels"
"""Encoder input (and preprocess output): UINT8 ``[N, H, W, 3]``."""
IMAGES_INPUT = "images"
"""Preprocess and ensemble input: BYTES ``[N, 1]`` of encoded images."""
EMBEDDINGS_OUTPUT = "embeddings"
"""Encoder and ensemble output: FP32 ``[N, D]``."""
TEXTS_INPUT = "texts"
"""Tokenizer and text-ensemble input: BYTES ``[N, 1]`` of UTF-8 strings."""
INPUT_IDS = "input_ids"
"""Tokenizer output and text-tower input: INT64 ``[N, L]`` token ids, ``L`` the context length."""
ATTENTION_MASK = "attention_mask"
"""Tokenizer output and text-tower input, when the checkpoint's tokenizer gives it: INT64
``[N, L]``."""
TOKEN_INPUTS: tuple[str, ...] = (INPUT_IDS, ATTENTION_MASK)
"""The token tensors a text tower may take, in order: those its tokenizer's
``model_input_names`` name (CLIP and SigLIP in transformers 5: both)."""
BATCH_AXIS = "batch"
"""The ONNX graph's named dynamic axis."""

# ------------------------------------------------------------- model-config parameters

PARAM_PREPROCESSING = "tritonvision.preprocessing"
"""JSON of :class:`PreprocessSpec` (``to_json``): how the encoder wants its images."""
PARAM_FAMILY = "tritonvision.family"
"""Encoder family: ``clip``, ``siglip``, ``dinov2``, ``backbone`` or ``module``."""
PARAM_SOURCE = "tritonvision.source"
"""Checkpoint path, or ``builtin:clip-vit-b32``."""
PARAM_TRAINED = "tritonvision.trained"
"""``true`` / ``false`` (the built-in default is seeded and untrained)."""
PARAM_EMBEDDING_DIM = "tritonvision.embedding_dim"
"""``D``, as a decimal string."""
PARAM_NORMALIZED = "tritonvision.normalized"
"""``true`` when the graph L2-normalises its output."""
PARAM_PRECISION = "tritonvision.precision"
"""``fp32`` / ``fp16`` (weights; input stays UINT8, output FP32)."""
PARAM_CONTEXT_LENGTH = "tritonvision.context_length"
"""Text models: ``L``, the tokens every text is padded or truncated to (decimal string), read
from the checkpoint (CLIP 77, SigLIP 64)."""
PARAM_MAX_IMAGE_PIXELS = "tritonvision.max_image_pixels"
"""Decompression-bomb limit of the preprocess model (pixels, decimal string)."""
PARAM_ONNX_FILE = "tritonvision.onnx_file"
"""Runtime repository only: the ONNX file the python-backend encoder loads."""
PARAM_ORT_PROVIDERS = "tritonvision.ort_providers"
"""Runtime repository only: ONNX Runtime execution providers in priority order, JSON
``[[name, {option: value}], ...]`` (absent: CPU only); written by ``serve --device gpu``."""
PARAM_ORT_THREADS = "tritonvision.ort_intra_op_threads"
"""Runtime repository only: ONNX Runtime intra-op threads per instance."""

PUBLISHED_PARAMETERS: tuple[str, ...] = (
    PARAM_PREPROCESSING,
    PARAM_FAMILY,
    PARAM_SOURCE,
    PARAM_TRAINED,
    PARAM_EMBEDDING_DIM,
    PARAM_NORMALIZED,
    PARAM_PRECISION,
    PARAM_CONTEXT_LENGTH,
)
"""What export writes: all but the context length on the encoder, the preprocess model and
the ensemble; all but the preprocessing on the text models (``NAME_text``, ``NAME_tokenize``,
``NAME_texts``)."""
RUNTIME_PARAMETERS: tuple[str, ...] = (
    PARAM_MAX_IMAGE_PIXELS,
    PARAM_ONNX_FILE,
    PARAM_ORT_PROVIDERS,
    PARAM_ORT_THREADS,
)
"""Operational keys: written by export (max pixels) or by serve's runtime repository."""

# --------------------------------------------------------------------------- defaults

DEFAULT_CACHE_DIR = Path("~/.cache/tritonvision")
"""Where exported encoders and tools are cached (``expanduser()`` before use)."""

# Triton's own defaults; serve, compose, the image and the generated manifests all use them.
DEFAULT_HTTP_PORT = 8000
"""Triton's HTTP/REST (KServe v2) port."""
DEFAULT_GRPC_PORT = 8001
"""Triton's gRPC (KServe v2) port."""
DEFAULT_METRICS_PORT = 8002
"""Triton's Prometheus ``/metrics`` port."""

# Pillow's own default for Image.MAX_IMAGE_PIXELS (~89.5 MP, ~0.25 GiB of RGB). Pillow raises
# by itself above twice its global limit at open time, so larger values of ``max_pixels``
# are capped there unless the application raises ``Image.MAX_IMAGE_PIXELS``.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485

# ----------------------------------------------------------- embed's output layout

# ``tritonvision embed --output BASE`` writes ``BASE`` + each suffix; ``tritonvision
# search`` reads the first two back. Here so search need not import embed (and its client).
NPY_SUFFIX = ".npy"
"""``BASE.npy``: the (N, D) float32 embeddings, one row per input."""
SOURCES_SUFFIX = ".sources.jsonl"
"""``BASE.sources.jsonl``: line i is ``{"row": i, "source": KEY}``."""
PARQUET_SUFFIX = ".parquet"
"""``BASE.parquet``: the same rows as columns ``source`` and ``embedding``."""
ERRORS_SUFFIX = ".errors.jsonl"
"""``BASE.errors.jsonl``: one line per failed input."""
PARTS_SUFFIX = ".parts"
"""``BASE.parts/``: the work dir of an unfinished job."""

# ------------------------------------------------------------------ preprocessing spec

# transformers writes 1/255 this way; keeping it makes specs compare equal.
DEFAULT_RESCALE_FACTOR = 0.00392156862745098
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

# Filter names in the order of PIL's integer codes, which HF ``preprocessor_config.json``
# stores (0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming).
RESAMPLE_NAMES: tuple[str, ...] = ("nearest", "lanczos", "bilinear", "bicubic", "box", "hamming")
_RESAMPLE_BY_INT = dict(enumerate(RESAMPLE_NAMES))

_MAX_SIDE = 16384

ResizeMode = Literal["shortest_edge", "exact"]


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"preprocessing: {what} must be an integer, got {value!r}")
    if not 0 < value <= _MAX_SIDE:
        raise InvalidInput(f"preprocessing: {what} must be in 1..{_MAX_SIDE}, got {value}")
    return value


def _three_floats(value: object, what: str) -> tuple[float, float, float]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != 3:
        raise InvalidInput(f"preprocessing: {what} must be 3 numbers (R, G, B), got {value!r}")
    out: list[float] = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise InvalidInput(f"preprocessing: {what} must be 3 finite numbers, got {value!r}")
        out.append(float(v))
    return (out[0], out[1], out[2])


@dataclass(frozen=True, kw_only=True)
class PreprocessSpec:
    """How an encoder wants its images: resize, optional centre crop, normalisation.

    Semantics match transformers' ``CLIPImageProcessor`` / ``SiglipImageProcessor``:

    - ``resize_mode="shortest_edge"``: the short side becomes ``shortest_edge`` and the
      long side ``int(shortest_edge * long / short)``; needs a crop (else the shape varies).
    - ``resize_mode="exact"``: resize to ``resize_height`` x ``resize_width``.
    - crop (``crop_height``/``crop_width``, both or neither): centred with
      ``top = (h - ch) // 2``, ``left = (w - cw) // 2``, zero-padded where the image is
      smaller, as transformers does.

    ``rescale_factor``, ``mean`` and ``std`` are applied by the encoder graph (see
    :func:`normalize_pixels`). ``input_*`` describe the model input; ``input_height`` /
    ``input_width`` default to :attr:`output_shape` and must agree with it.

    The constructor raises :class:`InvalidInput` on bad values; the ``from_*`` readers
    raise :class:`ModelConfigError` (the spec came from a model or checkpoint).
    """

    resize_mode: ResizeMode
    shortest_edge: int | None = None
    resize_height: int | None = None
    resize_width: int | None = None
    crop_height: int | None = None
    crop_width: int | None = None
    resample: str = "bicubic"
    rescale_factor: float = DEFAULT_RESCALE_FACTOR
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    input_name: str = PIXELS_INPUT
    input_datatype: str = "UINT8"
    input_layout: str = "NHWC"
    input_height: int = field(default=0)
    input_width: int = field(default=0)

    def __post_init__(self) -> None:
        if self.resize_mode == "shortest_edge":
            _positive_int(self.shortest_edge, "resize.shortest_edge")
            if self.resize_height is not None or self.resize_width is not None:
                raise InvalidInput(
                    "preprocessing: a shortest_edge resize takes no resize height/width"
                )
            if self.crop_height is None:
                raise InvalidInput(
                    "preprocessing: a shortest_edge resize without a centre crop gives images "
                    "of varying size; the encoder needs a fixed input size"
                )
        elif self.resize_mode == "exact":
            _positive_int(self.resize_height, "resize.height")
            _positive_int(self.resize_width, "resize.width")
            if self.shortest_edge is not None:
                raise InvalidInput("preprocessing: an exact resize takes no shortest_edge")
        else:
            raise InvalidInput(
                f"preprocessing: resize mode must be 'shortest_edge' or 'exact', "
                f"got {self.resize_mode!r}"
            )
        if (self.crop_height is None) != (self.crop_width is None):
            raise InvalidInput("preprocessing: crop needs both height and width, or neither")
        if self.crop_height is not None:
            _positive_int(self.crop_height, "crop.height")
            _positive_int(self.crop_width, "crop.width")
        if self.resample not in RESAMPLE_NAMES:
            raise InvalidInput(
                f"preprocessing: resample must be one of {sorted(RESAMPLE_NAMES)}, "
                f"got {self.resample!r}"
            )
        rescale = self.rescale_factor
        if isinstance(rescale, bool) or not isinstance(rescale, int | float):
            raise InvalidInput(f"preprocessing: rescale_factor must be a number, got {rescale!r}")
        if not (math.isfinite(rescale) and rescale > 0):
            raise InvalidInput(f"preprocessing: rescale_factor must be > 0, got {rescale!r}")
        object.__setattr__(self, "rescale_factor", float(rescale))
        object.__setattr__(self, "mean", _three_floats(self.mean, "mean"))
        std = _three_floats(self.std, "std")
        if any(s <= 0 for s in std):
            raise InvalidInput(f"preprocessing: std must be > 0, got {list(std)}")
        object.__setattr__(self, "std", std)
        if not isinstance(self.input_name, str) or not self.input_name:
            raise InvalidInput(f"preprocessing: input.name must be a name, got {self.input_name!r}")
        if self.input_datatype != "UINT8":
            raise InvalidInput(
                f"preprocessing: input.datatype {self.input_datatype!r} is not supported "
                "(the client sends UINT8 pixels)"
            )
        if self.input_layout != "NHWC":
            raise InvalidInput(
                f"preprocessing: input.layout {self.input_layout!r} is not supported (NHWC only)"
            )
        height, width, _ = self.output_shape
        for attr, expected in (("input_height", height), ("input_width", width)):
            value = getattr(self, attr)
            if value == 0:
                object.__setattr__(self, attr, expected)
            elif value != expected:
                raise InvalidInput(
                    f"preprocessing: {attr.replace('_', '.')}={value!r} does not match the "
                    f"preprocessed size {height}x{width}"
                )

    # ---- geometry

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """``(H, W, 3)`` of the uint8 pixels the encoder takes."""
        if self.crop_height is not None and self.crop_width is not None:
            return (self.crop_height, self.crop_width, 3)
        assert self.resize_height is not None and self.resize_width is not None
        return (self.resize_height, self.resize_width, 3)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """``(height, width)`` after the resize step, for an image of ``height x width``."""
        if self.resize_mode == "exact":
            assert self.resize_height is not None and self.resize_width is not None
            return (self.resize_height, self.resize_width)
        assert self.shortest_edge is not None
        size = self.shortest_edge
        # transformers' get_resize_output_image_size(default_to_square=False), verbatim.
        if width <= height:
            return (int(size * height / width), size)
        return (size, int(size * width / height))

    # ---- constructors

    @classmethod
    def clip_default(cls, size: int = 224) -> PreprocessSpec:
        """OpenAI CLIP: short side to ``size`` (bicubic), centre crop ``size x size``."""
        return cls(
            resize_mode="shortest_edge",
            shortest_edge=size,
            crop_height=size,
            crop_width=size,
            mean=CLIP_MEAN,
            std=CLIP_STD,
        )

    @classmethod
    def siglip_default(cls, size: int = 224) -> PreprocessSpec:
        """SigLIP: resize to exactly ``size x size`` (bicubic), no crop, mean = std = 0.5."""
        return cls(
            resize_mode="exact",
            resize_height=size,
            resize_width=size,
            mean=SIGLIP_MEAN,
            std=SIGLIP_STD,
        )

    @classmethod
    def from_hf_processor_config(cls, cfg: Mapping[str, Any]) -> PreprocessSpec:
        """Read a transformers ``preprocessor_config.json``, exactly as its processor applies it.

        ``image_processor_type`` (or the legacy ``feature_extractor_type``) names the
        processor; the ones understood are :data:`HF_IMAGE_PROCESSORS` (CLIP when the config
        names none). Keys the config omits take that class's defaults, and an int ``size``
        reads as the class reads it (a square, or the shortest edge). ConvNeXt's ``crop_pct``
        rule (shortest edge ``S < 384``: short side to ``int(S / crop_pct)``, centre crop
        ``S x S``; ``S >= 384``: warp to ``S x S``) becomes that resize and crop. A processor or
        a key this spec cannot reproduce exactly (another processor, ``do_pad``, ``crop_pct``
        outside ConvNeXt, ...) is refused, never approximated. Raises :class:`ModelConfigError`.
        """
        try:
            return cls._from_hf(cfg)
        except InvalidInput as exc:
            raise ModelConfigError(f"preprocessor config: {exc.message}") from exc
        except (TypeError, ValueError, KeyError) as exc:
            raise ModelConfigError(f"preprocessor config: unreadable ({exc!r})") from exc

    @classmethod
    def _from_hf(cls, cfg: Mapping[str, Any]) -> PreprocessSpec:
        if not isinstance(cfg, Mapping):
            raise InvalidInput(f"expected a JSON object, got {type(cfg).__name__}")
        kind = str(cfg.get("image_processor_type") or cfg.get("feature_extractor_type") or "")
        rule = _hf_processor_rule(kind)
        defaults = _HF_DEFAULTS[rule]
        if cfg.get("do_pad"):
            raise InvalidInput("do_pad is true: padding to a batch size is not reproduced")
        crop_pct = cfg.get("crop_pct", defaults.get("crop_pct"))
        if crop_pct is not None and rule != "convnext":
            raise InvalidInput(
                f"crop_pct={crop_pct!r} on {kind or 'CLIPImageProcessor'}: only ConvNeXt's "
                "crop_pct rule is understood"
            )
        if not cfg.get("do_resize", True):
            raise InvalidInput("do_resize is false; the encoder needs a fixed input size")

        resize: dict[str, Any]
        size = cfg.get("size")
        if size is None:
            size = defaults["size"]
        if isinstance(size, int) and not isinstance(size, bool):
            resize = (
                {"mode": "exact", "height": size, "width": size}
                if defaults["square"]
                else {"mode": "shortest_edge", "shortest_edge": size}
            )
        elif isinstance(size, Mapping) and set(size) == {"shortest_edge"}:
            resize = {"mode": "shortest_edge", "shortest_edge": size["shortest_edge"]}
        elif isinstance(size, Mapping) and set(size) == {"height", "width"}:
            resize = {"mode": "exact", "height": size["height"], "width": size["width"]}
        else:
            raise InvalidInput(
                f"size={size!r} is not supported "
                "(expected {'shortest_edge': S} or {'height': H, 'width': W})"
            )

        crop: dict[str, Any] | None = None
        if cfg.get("do_center_crop", defaults["do_center_crop"]):
            crop_size = cfg.get("crop_size", defaults["crop_size"])
            if crop_size is None:
                raise InvalidInput("do_center_crop is true but there is no crop_size")
            if isinstance(crop_size, int) and not isinstance(crop_size, bool):
                crop = {"height": crop_size, "width": crop_size}
            elif isinstance(crop_size, Mapping) and set(crop_size) == {"height", "width"}:
                crop = {"height": crop_size["height"], "width": crop_size["width"]}
            else:
                raise InvalidInput(f"crop_size={crop_size!r} is not supported")
        if rule == "convnext":
            resize, crop = _convnext_resize(resize, crop, crop_pct)

        resample_raw = cfg.get("resample", defaults["resample"])
        if isinstance(resample_raw, int) and not isinstance(resample_raw, bool):
            if resample_raw not in _RESAMPLE_BY_INT:
                raise InvalidInput(f"resample={resample_raw!r} is not a known PIL filter (0..5)")
            resample = _RESAMPLE_BY_INT[resample_raw]
        elif isinstance(resample_raw, str) and resample_raw.lower() in RESAMPLE_NAMES:
            resample = resample_raw.lower()
        else:
            raise InvalidInput(f"resample={resample_raw!r} is not a known PIL filter")

        rescale = cfg.get("rescale_factor", DEFAULT_RESCALE_FACTOR)
        if not cfg.get("do_rescale", True):
            rescale = 1.0
        if cfg.get("do_normalize", True):
            mean = _hf_channels(cfg.get("image_mean", defaults["mean"]), "image_mean")
            std = _hf_channels(cfg.get("image_std", defaults["std"]), "image_std")
        else:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        return cls._from_parts(resize, crop, resample, rescale, mean, std, None)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessSpec:
        """Read the DESIGN.md spec object; raises :class:`ModelConfigError` if invalid.

        Unknown keys are refused rather than ignored: a step this client does not know
        would otherwise be silently skipped, and the embeddings would be wrong.
        """
        try:
            if not isinstance(data, Mapping):
                raise InvalidInput(f"expected a JSON object, got {type(data).__name__}")
            _check_keys(
                data,
                {"resize", "crop", "resample", "rescale_factor", "mean", "std"},
                {"input"},
                "spec",
            )
            resize = data["resize"]
            if not isinstance(resize, Mapping):
                raise InvalidInput(f"resize must be an object, got {resize!r}")
            crop = data["crop"]
            if crop is not None and not isinstance(crop, Mapping):
                raise InvalidInput(f"crop must be an object or null, got {crop!r}")
            if crop is not None:
                _check_keys(crop, {"height", "width"}, set(), "crop")
            inp = data.get("input")
            if inp is not None:
                if not isinstance(inp, Mapping):
                    raise InvalidInput(f"input must be an object, got {inp!r}")
                _check_keys(inp, set(), {"name", "datatype", "layout", "height", "width"}, "input")
            return cls._from_parts(
                resize,
                crop,
                data["resample"],
                data["rescale_factor"],
                data["mean"],
                data["std"],
                inp,
            )
        except InvalidInput as exc:
            raise ModelConfigError(f"preprocessing spec: {exc.message}") from exc

    @classmethod
    def from_json(cls, text: str | bytes) -> PreprocessSpec:
        """Parse the published JSON (DESIGN.md); raises :class:`ModelConfigError`."""
        try:
            data = json.loads(text)
        except (ValueError, TypeError) as exc:
            raise ModelConfigError(f"preprocessing spec is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def _from_parts(
        cls,
        resize: Mapping[str, Any],
        crop: Mapping[str, Any] | None,
        resample: object,
        rescale: object,
        mean: object,
        std: object,
        inp: Mapping[str, Any] | None,
    ) -> PreprocessSpec:
        mode = resize.get("mode")
        if mode == "shortest_edge":
            _check_keys(resize, {"mode", "shortest_edge"}, set(), "resize")
        elif mode == "exact":
            _check_keys(resize, {"mode", "height", "width"}, set(), "resize")
        else:
            raise InvalidInput(f"resize.mode must be 'shortest_edge' or 'exact', got {mode!r}")
        if not isinstance(resample, str):
            raise InvalidInput(f"resample must be a filter name, got {resample!r}")
        extra: dict[str, Any] = {}
        if inp is not None:
            for key in ("name", "datatype", "layout", "height", "width"):
                if key in inp:
                    extra[f"input_{key}"] = inp[key]
            for key in ("input_height", "input_width"):
                if key in extra:
                    _positive_int(extra[key], key.replace("_", "."))
        return cls(
            resize_mode=mode,
            shortest_edge=resize.get("shortest_edge"),
            resize_height=resize.get("height"),
            resize_width=resize.get("width"),
            crop_height=None if crop is None else crop["height"],
            crop_width=None if crop is None else crop["width"],
            resample=resample.lower(),
            rescale_factor=rescale,  # type: ignore[arg-type]  # validated in __post_init__
            mean=mean,  # type: ignore[arg-type]
            std=std,  # type: ignore[arg-type]
            **extra,
        )

    # ---- serialisation

    def _resize_dict(self) -> dict[str, Any]:
        if self.resize_mode == "shortest_edge":
            return {"mode": "shortest_edge", "shortest_edge": self.shortest_edge}
        return {"mode": "exact", "height": self.resize_height, "width": self.resize_width}

    def _crop_dict(self) -> dict[str, Any] | None:
        if self.crop_height is None:
            return None
        return {"height": self.crop_height, "width": self.crop_width}

    def to_dict(self) -> dict[str, Any]:
        """The DESIGN.md spec object (JSON-able)."""
        return {
            "resize": self._resize_dict(),
            "crop": self._crop_dict(),
            "resample": self.resample,
            "rescale_factor": self.rescale_factor,
            "mean": list(self.mean),
            "std": list(self.std),
            "input": {
                "name": self.input_name,
                "datatype": self.input_datatype,
                "layout": self.input_layout,
                "height": self.input_height,
                "width": self.input_width,
            },
        }

    def to_json(self) -> str:
        """The published form: ``json.dumps(to_dict(), sort_keys=True)``."""
        return json.dumps(self.to_dict(), sort_keys=True)


# transformers' IMAGENET_STANDARD_MEAN / _STD.
_HALF = (0.5, 0.5, 0.5)
# The image processors ``from_hf_processor_config`` reproduces, by rule name, with the class
# defaults that stand in for keys a config omits (transformers 5's PIL processors). ``square``:
# how an int ``size`` reads (the class's ``default_to_square``; SigLIP's reads square, as
# its checkpoints mean it). BiT's rule is CLIP's: DINOv2 checkpoints name BitImageProcessor.
_CLIP_DEFAULTS: Mapping[str, Any] = {
    "size": {"shortest_edge": 224},
    "square": False,
    "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224},
    "resample": 3,
    "mean": CLIP_MEAN,
    "std": CLIP_STD,
}
_HF_DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    "clip": _CLIP_DEFAULTS,
    "bit": _CLIP_DEFAULTS,
    "siglip": {
        "size": {"height": 224, "width": 224},
        "square": True,
        "do_center_crop": False,
        "crop_size": None,
        "resample": 3,
        "mean": SIGLIP_MEAN,
        "std": SIGLIP_STD,
    },
    "vit": {
        "size": {"height": 224, "width": 224},
        "square": True,
        "do_center_crop": False,
        "crop_size": None,
        "resample": 2,
        "mean": _HALF,
        "std": _HALF,
    },
    "deit": {
        "size": {"height": 256, "width": 256},
        "square": True,
        "do_center_crop": True,
        "crop_size": {"height": 224, "width": 224},
        "resample": 3,
        "mean": _HALF,
        "std": _HALF,
    },
    "beit": {
        "size": {"height": 224, "width": 224},
        "square": True,
        "do_center_crop": False,
        "crop_size": {"height": 224, "width": 224},
        "resample": 3,
        "mean": _HALF,
        "std": _HALF,
    },
    "convnext": {
        "size": {"shortest_edge": 384},
        "square": False,
        "do_center_crop": False,
        "crop_size": None,
        "resample": 3,
        "mean": _HALF,
        "std": _HALF,
        "crop_pct": 224 / 256,
    },
}
# image_processor_type (less its suffixes, lower-cased) -> rule.
_HF_PROCESSOR_RULES: Mapping[str, str] = {
    "": "clip",
    "clip": "clip",
    "bit": "bit",
    "siglip": "siglip",
    "vit": "vit",
    "deit": "deit",
    "beit": "beit",
    "convnext": "convnext",
}
HF_IMAGE_PROCESSORS: tuple[str, ...] = (
    "BeitImageProcessor",
    "BitImageProcessor",
    "CLIPImageProcessor",
    "ConvNextImageProcessor",
    "DeiTImageProcessor",
    "SiglipImageProcessor",
    "ViTImageProcessor",
)
"""The transformers image processors :meth:`PreprocessSpec.from_hf_processor_config` reads
(also their ``Fast`` / ``Pil`` variants and legacy ``*FeatureExtractor`` names)."""
_PROCESSOR_SUFFIXES = (
    "imageprocessorfast",
    "imageprocessorpil",
    "imageprocessor",
    "featureextractor",
)
# ConvNeXt warps to a square at and above this shortest edge instead of resize + crop.
_CONVNEXT_WARP_EDGE = 384


def _hf_processor_rule(kind: str) -> str:
    key = kind.lower()
    for suffix in _PROCESSOR_SUFFIXES:
        if key.endswith(suffix):
            key = key[: -len(suffix)]
            break
    rule = _HF_PROCESSOR_RULES.get(key)
    if rule is None:
        raise InvalidInput(
            f"image processor {kind!r} is not supported: its resize rule is not known to be "
            f"reproducible (supported: {', '.join(HF_IMAGE_PROCESSORS)})"
        )
    return rule


def _convnext_resize(
    resize: Mapping[str, Any], crop: Mapping[str, Any] | None, crop_pct: object
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """ConvNeXt's resize as (resize, crop), per ``ConvNextImageProcessor.resize``, verbatim."""
    if resize.get("mode") != "shortest_edge":
        raise InvalidInput(f"ConvNeXt needs size={{'shortest_edge': S}}, got {dict(resize)!r}")
    edge = _positive_int(resize["shortest_edge"], "size.shortest_edge")
    if edge >= _CONVNEXT_WARP_EDGE:
        warped: dict[str, Any] = {"mode": "exact", "height": edge, "width": edge}
        return warped, None if crop is None else dict(crop)
    if isinstance(crop_pct, bool) or not isinstance(crop_pct, int | float) or not crop_pct > 0:
        raise InvalidInput(f"ConvNeXt crop_pct={crop_pct!r} must be a number > 0")
    # ConvNeXt crops S x S inside its resize; a further centre crop of another size would
    # round its offsets twice, which one crop cannot reproduce.
    if crop is not None and (crop["height"], crop["width"]) != (edge, edge):
        raise InvalidInput(
            f"ConvNeXt crop_pct resize (crop {edge}x{edge}) followed by do_center_crop to "
            f"{crop['height']}x{crop['width']} is not supported"
        )
    # int(S / crop_pct) is transformers' own expression, so the float rounding agrees too.
    resized = {"mode": "shortest_edge", "shortest_edge": int(edge / crop_pct)}
    return resized, {"height": edge, "width": edge}


def _check_keys(data: Mapping[str, Any], required: set[str], optional: set[str], what: str) -> None:
    keys = set(data)
    missing = required - keys
    if missing:
        raise InvalidInput(f"{what} is missing {sorted(missing)}")
    unknown = keys - required - optional
    if unknown:
        raise InvalidInput(f"{what} has unknown keys {sorted(unknown)}")


def _hf_channels(value: object, what: str) -> tuple[float, float, float]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        v = float(value)
        return (v, v, v)
    return _three_floats(value, what)
