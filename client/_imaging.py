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
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from tritonvision.contract import DEFAULT_MAX_IMAGE_PIXELS, RESAMPLE_NAMES, PreprocessSpec
from tritonvision.errors import DecodeError, DecompressionBomb, InvalidInput, describe_source

__all__ = [
    "ALLOWED_FORMATS",
    "BACKGROUND_RGB",
    "DEFAULT_DRAFT_FACTOR",
    "DEFAULT_REDUCING_GAP",
    "RESAMPLE_FILTERS",
    "decode_image",
    "load_image_pixels",
    "normalize_pixels",
    "pixels_from_array",
    "prepare_pixels",
    "preprocess_image",
    "resize_and_crop",
]

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
# the remaining ratio stays >= this gap (bench scenario 5 measures the speed and the error).
DEFAULT_REDUCING_GAP = 3.0

# JPEG draft decoding keeps at least this multiple of the resize target, which keeps the
# result within rounding of a full decode (tests/unit/test_client_imaging.py measures it).
DEFAULT_DRAFT_FACTOR = 2.0

# Contract filter name -> PIL filter; PIL's integer codes follow RESAMPLE_NAMES' order.
RESAMPLE_FILTERS: Mapping[str, Image.Resampling] = {
    name: Image.Resampling(code) for code, name in enumerate(RESAMPLE_NAMES)
}

# A resized-but-uncropped image bigger than this is not built (extreme aspect ratios only:
# a 224 crop stays exact up to ~80:1).
_MAX_INTERMEDIATE_PIXELS = 2048 * 2048
_EXIF_ORIENTATION = 0x0112
_ROTATED_ORIENTATIONS = frozenset({5, 6, 7, 8})

UInt8Array = npt.NDArray[np.uint8]
Float32Array = npt.NDArray[np.float32]


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


def resize_and_crop(
    img: Image.Image, spec: PreprocessSpec, reducing_gap: float | None = None
) -> UInt8Array:
    """A decoded RGB image -> the spec's uint8 ``[H, W, 3]`` pixels (resize, centre crop).

    ``reducing_gap`` trades exactness for speed as Pillow's own argument does (None: exact,
    as transformers). Also the GPU decode path's second half (``NAME_preprocess``).
    """
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
    return resize_and_crop(img, spec)


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
    images cheaper, within a fraction of a grey level on average (embedding cosine >= 0.999,
    tested in tests/unit/test_client_imaging.py): JPEGs decode at the smallest DCT scale that keeps
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
    return resize_and_crop(img, spec, None if exact else DEFAULT_REDUCING_GAP)


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
