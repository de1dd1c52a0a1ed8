"""Decode and preprocess images: the one implementation (numpy + Pillow only).

The client runs this in its decode thread pool and the Triton python-backend model
``NAME_preprocess`` runs the very same functions, so both sides of the ensemble agree
pixel for pixel. Everything here is pure and thread-safe: no global Pillow settings are
changed (``Image.MAX_IMAGE_PIXELS`` and ``ImageFile.LOAD_TRUNCATED_IMAGES`` stay as the
application left them), and nothing is cached except the list of available formats.

Pipeline (``load_image_pixels``)::

    bytes --Image.open(allow-listed formats)--> declared size checked (decompression bomb)
          --JPEG draft (DCT downscale, keeps >= 2x the resize target)--> load (decode)
          --EXIF orientation--> RGB (transparency over WHITE, 16-bit scaled to 8-bit)
          --resize (transformers semantics)--> centre crop (zero padding) --> uint8 HWC

Rescale and normalise are not applied here: the encoder graph does them. Use
:func:`normalize_pixels` to reproduce them (parity tests, sending float).
"""

from __future__ import annotations

import functools
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ._errors import DecodeError, DecompressionBomb, InvalidInput, ModelConfigError, describe_source

__all__ = [
    "ALLOWED_FORMATS",
    "BACKGROUND_RGB",
    "CLIP_MEAN",
    "CLIP_STD",
    "DEFAULT_DRAFT_FACTOR",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEFAULT_REDUCING_GAP",
    "DEFAULT_RESCALE_FACTOR",
    "RESAMPLE_FILTERS",
    "SIGLIP_MEAN",
    "SIGLIP_STD",
    "PreprocessSpec",
    "decode_image",
    "load_image_pixels",
    "normalize_pixels",
    "pixels_from_array",
    "prepare_pixels",
    "preprocess_image",
]

# Pillow's own default for Image.MAX_IMAGE_PIXELS (~89.5 MP, ~0.25 GiB of RGB). Pillow raises
# by itself above twice its global limit at open time, so larger values of ``max_pixels``
# are capped there unless the application raises ``Image.MAX_IMAGE_PIXELS``.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485

# Raster formats whose Pillow decoders are common and well exercised. Everything else
# (EPS runs Ghostscript, plus dozens of rare formats) is refused before any parsing.
ALLOWED_FORMATS: tuple[str, ...] = (
    "JPEG",  # also MPO (multi-picture JPEGs from phone cameras)
    "PNG",  # also APNG
    "WEBP",
    "GIF",
    "BMP",
    "TIFF",
    "AVIF",  # only where Pillow was built with libavif
    "PPM",
    "ICO",
)

# Transparent pixels are composited over this colour: a fixed choice (documents render
# transparent areas as paper-white), so the same bytes always give the same embedding.
BACKGROUND_RGB = (255, 255, 255)

# Fast path: ``Image.resize(reducing_gap=...)`` first box-reduces by an integer factor while
# the remaining ratio stays >= this gap (12 MP PNG -> 224: 65 ms -> 14 ms, mean |diff| 0.2).
DEFAULT_REDUCING_GAP = 3.0

# JPEG draft decoding keeps at least this multiple of the resize target, which keeps the
# result within rounding of a full decode (see tests/test_imaging.py for measured cosines).
DEFAULT_DRAFT_FACTOR = 2.0

# Name -> PIL filter; the integer values are what HF ``preprocessor_config.json`` stores.
RESAMPLE_FILTERS: Mapping[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,  # 0
    "lanczos": Image.Resampling.LANCZOS,  # 1
    "bilinear": Image.Resampling.BILINEAR,  # 2
    "bicubic": Image.Resampling.BICUBIC,  # 3
    "box": Image.Resampling.BOX,  # 4
    "hamming": Image.Resampling.HAMMING,  # 5
}
_RESAMPLE_BY_INT = {int(v): k for k, v in RESAMPLE_FILTERS.items()}

# transformers writes 1/255 this way; keeping it makes specs compare equal.
DEFAULT_RESCALE_FACTOR = 0.00392156862745098
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

_MAX_SIDE = 16384
# A resized-but-uncropped image bigger than this is not built (extreme aspect ratios only:
# a 224 crop stays exact up to ~80:1).
_MAX_INTERMEDIATE_PIXELS = 2048 * 2048
_EXIF_ORIENTATION = 0x0112
_ROTATED_ORIENTATIONS = frozenset({5, 6, 7, 8})

ResizeMode = Literal["shortest_edge", "exact"]
UInt8Array = npt.NDArray[np.uint8]
Float32Array = npt.NDArray[np.float32]


# --------------------------------------------------------------------------- spec


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
    input_name: str = "pixels"
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
        if self.resample not in RESAMPLE_FILTERS:
            raise InvalidInput(
                f"preprocessing: resample must be one of {sorted(RESAMPLE_FILTERS)}, "
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
        """Read a transformers ``preprocessor_config.json`` (CLIP or SigLIP image processor).

        Keys the config omits take the processor class's defaults: SigLIP when
        ``image_processor_type`` (or the legacy ``feature_extractor_type``) names Siglip,
        CLIP otherwise. An int ``size`` reads as transformers reads it: a square for
        SigLIP, the shortest edge for CLIP. Raises :class:`ModelConfigError`.
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
        default = cls.siglip_default() if "siglip" in kind.lower() else cls.clip_default()
        square = default.resize_mode == "exact"
        if not cfg.get("do_resize", True):
            raise InvalidInput("do_resize is false; the encoder needs a fixed input size")

        resize: dict[str, Any]
        size = cfg.get("size")
        if size is None:
            resize = default._resize_dict()
        elif isinstance(size, int) and not isinstance(size, bool):
            resize = (
                {"mode": "exact", "height": size, "width": size}
                if square
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
        if cfg.get("do_center_crop", default.crop_height is not None):
            crop_size = cfg.get("crop_size")
            if crop_size is None:
                crop = default._crop_dict()
                if crop is None:
                    raise InvalidInput("do_center_crop is true but there is no crop_size")
            elif isinstance(crop_size, int) and not isinstance(crop_size, bool):
                crop = {"height": crop_size, "width": crop_size}
            elif isinstance(crop_size, Mapping) and set(crop_size) == {"height", "width"}:
                crop = {"height": crop_size["height"], "width": crop_size["width"]}
            else:
                raise InvalidInput(f"crop_size={crop_size!r} is not supported")

        resample_raw = cfg.get("resample", 3)
        if isinstance(resample_raw, int) and not isinstance(resample_raw, bool):
            if resample_raw not in _RESAMPLE_BY_INT:
                raise InvalidInput(f"resample={resample_raw!r} is not a known PIL filter (0..5)")
            resample = _RESAMPLE_BY_INT[resample_raw]
        elif isinstance(resample_raw, str) and resample_raw.lower() in RESAMPLE_FILTERS:
            resample = resample_raw.lower()
        else:
            raise InvalidInput(f"resample={resample_raw!r} is not a known PIL filter")

        rescale = cfg.get("rescale_factor", DEFAULT_RESCALE_FACTOR)
        if not cfg.get("do_rescale", True):
            rescale = 1.0
        if cfg.get("do_normalize", True):
            mean = _hf_channels(cfg.get("image_mean", default.mean), "image_mean")
            std = _hf_channels(cfg.get("image_std", default.std), "image_std")
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


# --------------------------------------------------------------------------- decode


@functools.cache
def _available_formats() -> tuple[str, ...]:
    # Image.open(formats=...) raises KeyError for a format this Pillow build lacks.
    Image.init()
    return tuple(f for f in ALLOWED_FORMATS if f in Image.OPEN)


def _name(data: object, source: object) -> str:
    return describe_source(data if source is None else source)


def _draft_request(img: Image.Image, spec: PreprocessSpec, factor: float) -> tuple[int, int] | None:
    """The (width, height) to ask a JPEG draft for: ``factor`` x the resize target."""
    width, height = img.size
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block must not fail the decode
        orientation = 1
    if orientation in _ROTATED_ORIENTATIONS:
        # Stored sideways: the resize target applies to the transposed image.
        th, tw = spec.resized_size(width, height)
        th, tw = tw, th
    else:
        th, tw = spec.resized_size(height, width)
    want_w, want_h = math.ceil(tw * factor), math.ceil(th * factor)
    if want_w >= width and want_h >= height:
        return None
    return (max(1, want_w), max(1, want_h))


def _open(data: bytes, name: str, source: object, max_pixels: int) -> ImageFile.ImageFile:
    if not data:
        raise DecodeError(f"{name}: empty image data (0 bytes)", source=source)
    try:
        img = Image.open(io.BytesIO(data), formats=_available_formats())
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # The warning only arrives as an exception where warnings are errors.
        raise DecompressionBomb(
            f"{name}: image declares too many pixels ({exc})", source=source
        ) from exc
    except UnidentifiedImageError as exc:
        raise DecodeError(
            f"{name}: not an image in a supported format ({', '.join(_available_formats())})",
            source=source,
        ) from exc
    except MemoryError:
        raise
    except Exception as exc:  # untrusted bytes: any parser failure is a DecodeError
        raise DecodeError(f"{name}: cannot read image header: {exc!r}", source=source) from exc
    width, height = img.size
    if width <= 0 or height <= 0:
        img.close()
        raise DecodeError(f"{name}: image has an empty size {width}x{height}", source=source)
    if width * height > max_pixels:
        img.close()
        raise DecompressionBomb(
            f"{name}: image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels}",
            source=source,
        )
    return img


def _apply_orientation(img: Image.Image) -> None:
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except Exception:  # a malformed EXIF block (common from some cameras): keep as stored
        return


def _decode(
    data: bytes,
    *,
    source: object,
    max_pixels: int,
    spec: PreprocessSpec | None,
    draft_size: tuple[int, int] | None,
    keep_gray: bool,
) -> Image.Image:
    name = _name(data, source)
    img = _open(data, name, source, max_pixels)
    try:
        if img.format in ("JPEG", "MPO"):
            request = draft_size
            if request is None and spec is not None:
                request = _draft_request(img, spec, DEFAULT_DRAFT_FACTOR)
            if request is not None:
                img.draft("RGB", request)
        img.load()
        _apply_orientation(img)
        out = _convert(img, keep_gray=keep_gray)
    except (DecodeError, MemoryError):
        img.close()
        raise
    except Exception as exc:  # untrusted bytes: any decoder failure is a DecodeError
        img.close()
        reason = str(exc) or type(exc).__name__
        raise DecodeError(f"{name}: cannot decode image: {reason}", source=source) from exc
    if out is not img:
        img.close()
    return out


def decode_image(
    data: bytes,
    *,
    source: object = None,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode encoded image bytes to an RGB ``PIL.Image`` (fully loaded).

    - Only :data:`ALLOWED_FORMATS` are tried (SVG, PDF, EPS, text... give DecodeError).
    - The declared size is checked before decoding: over ``max_pixels`` ->
      :class:`DecompressionBomb`.
    - ``draft_size=(w, h)``: JPEGs decode at the smallest DCT scale (1/2, 1/4, 1/8) that
      is still at least ``w x h`` in stored (pre-EXIF-rotation) orientation.
    - EXIF orientation is applied; animated images give their first frame.
    - Modes become RGB: transparency (RGBA, LA, PA, P/L/RGB with a transparent colour) is
      composited over :data:`BACKGROUND_RGB` (white); 16-bit (``I;16*``, ``I``) is scaled
      to 8-bit with ``round(v * 255 / 65535)`` (``I`` clipped to 0..65535 first); ``F`` is
      clipped to 0..255 as Pillow's own conversion does; CMYK, YCbCr, 1-bit, L via Pillow.
    - Any failure -> :class:`DecodeError` naming ``source`` (or the data's size).
    """
    return _decode(
        data,
        source=source,
        max_pixels=max_pixels,
        spec=None,
        draft_size=draft_size,
        keep_gray=False,
    )


_TRANSPARENT_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def _convert(img: Image.Image, *, keep_gray: bool) -> Image.Image:
    """RGB (or L when ``keep_gray``, for a 3x cheaper resize of grey images)."""
    mode = img.mode
    if mode == "P" or (mode in ("L", "RGB") and "transparency" in img.info):
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode == "RGB":
        return img
    if mode in _TRANSPARENT_MODES:
        rgba = img if mode == "RGBA" else img.convert("RGBA")
        background = Image.new("RGB", rgba.size, BACKGROUND_RGB)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if mode in _SIXTEEN_BIT_MODES:
        # "I" is 32-bit; in practice it carries 16-bit samples (PGM, some TIFFs).
        wide = np.clip(np.asarray(img), 0, 65535).astype(np.uint32)
        gray = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), mode="L")
        return gray if keep_gray else gray.convert("RGB")
    if mode == "F":
        values = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0)
        gray = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
        return gray if keep_gray else gray.convert("RGB")
    if mode in ("L", "1"):
        if keep_gray:
            return img if mode == "L" else img.convert("L")
        return img.convert("RGB")
    return img.convert("RGB")  # CMYK, YCbCr, HSV...; ValueError (e.g. LAB) -> DecodeError


# --------------------------------------------------------------------------- preprocess


def _axis_window(size: int, new_size: int, out_size: int) -> tuple[float, float, int]:
    """Source interval and resampled length, per axis, of what the centre crop keeps."""
    if new_size >= out_size:
        start = (new_size - out_size) // 2
        scale = size / new_size
        return (start * scale, (start + out_size) * scale, out_size)
    return (0.0, float(size), new_size)  # smaller than the crop: keep all, pad later


def _preprocess(
    img: Image.Image, spec: PreprocessSpec, reducing_gap: float | None = None
) -> UInt8Array:
    width, height = img.size
    new_h, new_w = spec.resized_size(height, width)
    out_h, out_w, _ = spec.output_shape
    resample = RESAMPLE_FILTERS[spec.resample]
    if spec.crop_height is None:
        if (new_w, new_h) != (width, height):
            img = img.resize((new_w, new_h), resample, reducing_gap=reducing_gap)
        arr = np.asarray(img)
    elif new_w * new_h <= _MAX_INTERMEDIATE_PIXELS:
        # Resize, then crop: what transformers does, bit for bit.
        if (new_w, new_h) != (width, height):
            img = img.resize((new_w, new_h), resample, reducing_gap=reducing_gap)
        top, left = max(0, (new_h - out_h) // 2), max(0, (new_w - out_w) // 2)
        arr = np.asarray(img.crop((left, top, left + min(out_w, new_w), top + min(out_h, new_h))))
    else:
        # Extreme aspect ratio: resample only the window the crop keeps, so a tiny 20000x20
        # file cannot make a 224000x224 intermediate (a memory-blowup vector). Pillow's
        # `box` uses the same filter centres, but its float32 box and possibly another
        # pass order move rare pixels by a level or two (measured in tests).
        x0, x1, rw = _axis_window(width, new_w, out_w)
        y0, y1, rh = _axis_window(height, new_h, out_h)
        img = img.resize((rw, rh), resample, box=(x0, y0, x1, y1), reducing_gap=reducing_gap)
        arr = np.asarray(img)
    if arr.shape[:2] != (out_h, out_w):
        arr = _crop_or_pad(arr, out_h, out_w)
    if arr.ndim == 2:  # kept grey: resizing one channel is 3x cheaper and identical
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _crop_or_pad(arr: UInt8Array, out_h: int, out_w: int) -> UInt8Array:
    # transformers' center_crop: pad with zeros by ceil((c - s) / 2) before, then crop at
    # (s - c) // 2; per axis that is "crop if larger, else pad centred (extra on top/left)".
    h, w = arr.shape[:2]
    out = np.zeros((out_h, out_w, *arr.shape[2:]), dtype=np.uint8)

    def span(size: int, out_size: int) -> tuple[slice, slice]:
        if size >= out_size:
            start = (size - out_size) // 2
            return slice(start, start + out_size), slice(0, out_size)
        start = math.ceil((out_size - size) / 2)
        return slice(0, size), slice(start, start + size)

    src_y, dst_y = span(h, out_h)
    src_x, dst_x = span(w, out_w)
    out[dst_y, dst_x] = arr[src_y, src_x]
    return out


def preprocess_image(img: Image.Image, spec: PreprocessSpec) -> UInt8Array:
    """Resize and centre-crop a PIL image exactly as the spec says: uint8 ``(H, W, 3)``.

    Any mode is accepted (converted as :func:`decode_image` does); ``img`` is not modified
    and no EXIF rotation is applied to it (the caller owns the image).
    """
    if img.mode not in ("RGB", "L") or "transparency" in img.info:
        img = _convert(img, keep_gray=True)
    return _preprocess(img, spec)


def load_image_pixels(
    data: bytes,
    spec: PreprocessSpec,
    *,
    source: object = None,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    exact: bool = False,
) -> UInt8Array:
    """Encoded bytes -> the encoder's uint8 ``(H, W, 3)`` pixels (the hot path).

    With ``exact=True`` this is ``preprocess_image(decode_image(data), spec)``, bit for bit
    what transformers' PIL image processors give. By default two shortcuts make large
    images several times cheaper, within ~0.3 grey levels on average (embedding cosine
    >= 0.999, see tests/test_imaging.py): JPEGs decode at the smallest DCT scale that keeps
    :data:`DEFAULT_DRAFT_FACTOR` x the resize target, and big downscales first box-reduce
    (``reducing_gap=DEFAULT_REDUCING_GAP``). Grey images stay one channel until after the
    resize (identical result, 3x less work) in both modes.
    """
    img = _decode(
        data,
        source=source,
        max_pixels=max_pixels,
        spec=None if exact else spec,
        draft_size=None,
        keep_gray=True,
    )
    return _preprocess(img, spec, None if exact else DEFAULT_REDUCING_GAP)


def pixels_from_array(
    arr: npt.NDArray[Any], spec: PreprocessSpec, *, source: object = None
) -> UInt8Array:
    """An ndarray input: ready pixels if it is uint8 of exactly ``spec.output_shape``.

    Otherwise a uint8 image array (``HxW``, ``HxWx3`` RGB or ``HxWx4`` RGBA) is resized
    and cropped like any image. Other dtypes/shapes -> :class:`InvalidInput`.
    """
    name = _name(arr, source)
    if not isinstance(arr, np.ndarray):
        raise InvalidInput(f"{name}: expected a numpy array", source=source)
    if arr.dtype != np.uint8:
        raise InvalidInput(
            f"{name}: array dtype {arr.dtype} is not supported; pass uint8 RGB pixels "
            "(HxWx3, 0..255)",
            source=source,
        )
    if arr.shape == spec.output_shape:
        return np.ascontiguousarray(arr)
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4)):
        if min(arr.shape[:2]) < 1:
            raise InvalidInput(f"{name}: array has an empty size {arr.shape}", source=source)
        return preprocess_image(Image.fromarray(np.ascontiguousarray(arr)), spec)
    raise InvalidInput(
        f"{name}: array shape {arr.shape} is not an image (expected HxW, HxWx3 or HxWx4)",
        source=source,
    )


def prepare_pixels(
    raw: bytes | Image.Image | npt.NDArray[Any],
    spec: PreprocessSpec,
    *,
    source: object = None,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> UInt8Array:
    """The CPU step after :func:`tritonvision.client._sources.load_source`: any loaded
    source (bytes, PIL image, ndarray) -> the encoder's uint8 ``(H, W, 3)`` pixels."""
    if isinstance(raw, bytes | bytearray | memoryview):
        return load_image_pixels(bytes(raw), spec, source=source, max_pixels=max_pixels)
    if isinstance(raw, Image.Image):
        width, height = raw.size
        if width * height > max_pixels:
            raise DecompressionBomb(
                f"{_name(raw, source)}: image is {width}x{height}, over the limit of "
                f"{max_pixels} pixels",
                source=source,
            )
        try:
            return preprocess_image(raw, spec)
        except (OSError, ValueError) as exc:
            if isinstance(exc, InvalidInput | DecodeError):
                raise
            raise DecodeError(
                f"{_name(raw, source)}: cannot use PIL image: {exc}", source=source
            ) from exc
    if isinstance(raw, np.ndarray):
        return pixels_from_array(raw, spec, source=source)
    raise InvalidInput(
        f"{_name(raw, source)}: cannot make pixels from {type(raw).__name__}", source=source
    )


def normalize_pixels(pixels: npt.NDArray[Any], spec: PreprocessSpec) -> Float32Array:
    """Rescale and normalise uint8 ``(H, W, 3)`` / ``(N, H, W, 3)`` pixels -> float32 NCHW.

    The arithmetic mirrors transformers (float64 rescale, float32 normalise), so the
    result matches an image processor's ``pixel_values``.
    """
    arr = np.asarray(pixels)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise InvalidInput(f"normalize_pixels: expected (N, H, W, 3) pixels, got {arr.shape}")
    scaled = (arr.astype(np.float64) * spec.rescale_factor).astype(np.float32)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    normed = (scaled - mean) / std
    return np.ascontiguousarray(normed.transpose(0, 3, 1, 2), dtype=np.float32)
