"""Bounded fuzzing (hypothesis) of the two parsers that read untrusted bytes.

- Decode + preprocess (``load_image_pixels``, ``decode_image``) on mutated valid JPEG,
  PNG, GIF and WebP files: bit flips, byte overwrites, truncation, insertion, deletion,
  duplicated spans, and header fields set to extreme values.
- The KServe v2 response side of ``client/_protocol.py``: ``parse_infer_response`` (JSON
  and binary-extension bodies, mutated and generated), ``parse_model_config``,
  ``error_from_http`` / ``error_message_from_body`` / ``error_from_grpc``, and the
  published preprocessing spec (``PreprocessSpec.from_json``); plus base64 / ``data:``
  decoding of ``client/_sources.py``.

The property everywhere: the function returns a well-formed value or raises one of
the client's typed errors (:class:`TritonVisionError` subclasses); never another
exception, never a hang. Examples are bounded (``max_examples``), ``deadline`` is off
(CI machines stall), and no example database is written. Inputs that once broke a
property stay here as explicit ``@example`` regression cases.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import struct
import warnings
import zlib
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from tritonclient.utils import serialize_byte_tensor

from tritonvision.client import PreprocessSpec, TritonVisionError
from tritonvision.client._imaging import decode_image, load_image_pixels
from tritonvision.client._protocol import (
    InferResponse,
    ModelConfig,
    error_from_grpc,
    error_from_http,
    error_message_from_body,
    parse_infer_response,
    parse_model_config,
)
from tritonvision.client._sources import _decode_base64, _decode_data_uri

pytestmark = pytest.mark.timeout(120)

# ``TRITONVISION_FUZZ_EXAMPLES=20000 pytest tests/unit/test_client_fuzz.py`` for a long campaign.
FUZZ = settings(
    max_examples=int(os.environ.get("TRITONVISION_FUZZ_EXAMPLES", "250")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SPEC = PreprocessSpec.clip_default(32)
# Mutated headers may declare large sizes; 4 MP keeps each example fast while still
# exercising the bomb check (the default limit is tested in test_client_imaging.py).
MAX_PIXELS = 1 << 22


# ------------------------------------------------------------------------ image seeds


def _seed_image(width: int = 24, height: int = 16) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 10 % 256, y * 15 % 256, (x + y) * 7 % 256], -1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def _encode(fmt: str) -> bytes:
    buf = io.BytesIO()
    img = _seed_image()
    if fmt == "GIF":
        frames = [img, _seed_image().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
        frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=30)
    elif fmt == "PNG_RGBA":
        img.convert("RGBA").save(buf, "PNG")
    elif fmt == "JPEG_EXIF":
        exif = Image.Exif()
        exif[0x0112] = 6
        img.save(buf, "JPEG", quality=80, exif=exif.tobytes())
    elif fmt == "WEBP":
        img.save(buf, "WEBP", quality=80)
    else:
        img.save(buf, fmt)
    return buf.getvalue()


SEEDS: dict[str, bytes] = {
    fmt: _encode(fmt) for fmt in ("JPEG", "JPEG_EXIF", "PNG", "PNG_RGBA", "GIF", "WEBP")
}


def _fix_png_crcs(data: bytearray) -> bytearray:
    """Recompute every PNG chunk CRC, so mutations reach the decoders instead of stopping
    at the checksum."""
    pos = 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        end = pos + 8 + length
        if end + 4 > len(data):
            break
        struct.pack_into(">I", data, end, zlib.crc32(bytes(data[pos + 4 : end])))
        pos = end + 4
    return data


@st.composite
def mutated_images(draw: st.DrawFn) -> tuple[str, bytes]:
    fmt = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[fmt])
    for _ in range(draw(st.integers(1, 6))):
        if len(data) <= 8:
            break
        op = draw(
            st.sampled_from(["flip", "set", "extreme", "truncate", "insert", "delete", "dup"])
        )
        # Mostly past the magic bytes (else Pillow just says "not an image"); headers
        # matter most, so half the edits land in bytes 8..63.
        low = 0 if draw(st.integers(0, 7)) == 0 else 8
        high = len(data) - 1 if draw(st.booleans()) else min(len(data) - 1, 63)
        pos = draw(st.integers(min(low, high), high))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[pos] = draw(st.integers(0, 255))
        elif op == "extreme":  # a 16/32-bit field set to 0 or all ones (sizes, lengths)
            width = draw(st.sampled_from([2, 4]))
            value = draw(st.sampled_from([b"\x00", b"\xff", b"\x7f"])) * width
            data[pos : pos + width] = value
        elif op == "truncate":
            del data[max(pos, 8) :]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        else:
            end = min(len(data), pos + draw(st.integers(1, 256)))
            data[pos:pos] = data[pos:end]
    if fmt.startswith("PNG") and draw(st.booleans()):
        data = _fix_png_crcs(data)
    return fmt, bytes(data)


def _check_pixels(pixels: Any) -> None:
    assert isinstance(pixels, np.ndarray)
    assert pixels.shape == SPEC.output_shape and pixels.dtype == np.uint8


# ------------------------------------------------------------------------ decode fuzz


def test_seeds_decode() -> None:
    for fmt, data in SEEDS.items():
        _check_pixels(load_image_pixels(data, SPEC, source=fmt))


@FUZZ
@given(mutated_images())
def test_mutated_images_decode_or_raise_a_typed_error(case: tuple[str, bytes]) -> None:
    fmt, data = case
    for exact in (False, True):
        try:
            pixels = load_image_pixels(
                data, SPEC, source=f"fuzz.{fmt}", max_pixels=MAX_PIXELS, exact=exact
            )
        except TritonVisionError as exc:
            assert exc.source == f"fuzz.{fmt}"
            continue
        _check_pixels(pixels)


@FUZZ
@given(mutated_images())
def test_mutated_images_decode_the_same_with_warnings_ignored(case: tuple[str, bytes]) -> None:
    # The suite turns warnings into errors; in production Pillow's warnings (truncated
    # EXIF, bomb warnings) are just printed. Both paths must end typed.
    _, data = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            img = decode_image(data, source="fuzz", max_pixels=MAX_PIXELS)
        except TritonVisionError:
            return
    assert img.mode == "RGB" and min(img.size) >= 1


@FUZZ
@given(st.binary(max_size=2048))
@example(b"")
@example(b"\x89PNG\r\n\x1a\n")
@example(b"\xff\xd8\xff")
@example(b"GIF89a\xff\xff\xff\xff\x00\x00\x00")
@example(b"RIFF\x00\x00\x00\x00WEBPVP8 ")
def test_random_bytes_never_escape_as_untyped_errors(data: bytes) -> None:
    with contextlib.suppress(TritonVisionError):
        _check_pixels(load_image_pixels(data, SPEC, source="random", max_pixels=MAX_PIXELS))


# ---------------------------------------------------------------------- protocol fuzz

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
DATATYPES = st.sampled_from(
    ["FP32", "FP16", "FP64", "UINT8", "INT64", "BOOL", "BYTES", "fp32", "", "COMPLEX", 7]
)


@st.composite
def output_entries(draw: st.DrawFn) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    if draw(st.booleans()):
        entry["name"] = draw(st.sampled_from(["embeddings", "x", ""]) | JSON)
    else:
        entry["name"] = "embeddings"
    entry["datatype"] = draw(DATATYPES | JSON) if draw(st.booleans()) else "FP32"
    entry["shape"] = draw(
        st.lists(st.integers(-2, 2**40) | st.sampled_from(["2", "-1", "x", None, 1.5]), max_size=4)
        | JSON
    )
    if draw(st.booleans()):
        entry["parameters"] = draw(
            st.fixed_dictionaries({"binary_data_size": st.integers(-8, 4096) | JSON}) | JSON
        )
    if draw(st.booleans()):
        entry["data"] = draw(JSON)
    return entry


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, int | None]:
    header: Any = {
        "model_name": draw(st.text(max_size=8) | JSON),
        "outputs": draw(st.lists(output_entries(), max_size=3) | JSON),
    }
    if draw(st.booleans()):
        header["parameters"] = draw(JSON)
    if draw(st.integers(0, 9)) == 0:
        header = draw(JSON)
    text = json.dumps(header).encode()
    binary = draw(st.binary(max_size=512))
    body = text + binary
    mode = draw(st.sampled_from(["exact", "none", "random"]))
    if mode == "exact":
        length: int | None = len(text)
    elif mode == "none":
        length = None
    else:
        length = draw(st.integers(-5, len(body) + 5))
    return body, length


def _valid_response(rows: int = 2, dim: int = 16) -> tuple[bytes, int]:
    emb = np.arange(rows * dim, dtype=np.float32).reshape(rows, dim)
    names = np.array([b"a", b"bc"], dtype=np.object_)
    raw_names = serialize_byte_tensor(names).item()
    header = {
        "model_name": "m",
        "outputs": [
            {
                "name": "embeddings",
                "datatype": "FP32",
                "shape": [rows, dim],
                "parameters": {"binary_data_size": emb.nbytes},
            },
            {
                "name": "names",
                "datatype": "BYTES",
                "shape": [2],
                "parameters": {"binary_data_size": len(raw_names)},
            },
            {"name": "json_out", "datatype": "INT64", "shape": [2], "data": [1, 2]},
        ],
    }
    text = json.dumps(header).encode()
    return text + emb.tobytes() + raw_names, len(text)


VALID_BODY, VALID_HEADER_LENGTH = _valid_response()


def _check_parse(body: bytes, header_length: int | None) -> None:
    try:
        parsed = parse_infer_response(body, header_length=header_length)
    except TritonVisionError:
        return
    assert isinstance(parsed, InferResponse)
    for array in parsed.outputs.values():
        assert isinstance(array, np.ndarray)


def test_the_valid_response_parses() -> None:
    parsed = parse_infer_response(VALID_BODY, header_length=VALID_HEADER_LENGTH)
    assert parsed.outputs["embeddings"].shape == (2, 16)
    assert list(parsed.outputs["names"]) == [b"a", b"bc"]


@FUZZ
@given(responses())
# Regression seeds: shapes and sizes that once looked risky for a parser like this one.
@example(
    (
        b'{"outputs":[{"name":"e","datatype":"BYTES","shape":[1099511627776],'
        b'"parameters":{"binary_data_size":8}}]}' + b"\0" * 8,
        None,
    )
)
@example(
    (
        b'{"outputs":[{"name":"e","datatype":"FP32","shape":[' + b"1," * 40 + b'1],"data":[1.0]}]}',
        None,
    )
)
@example((b'{"outputs":[{"name":"e","datatype":"UINT8","shape":[1],"data":[-1]}]}', None))
@example((b'{"outputs":[{"name":"e","datatype":"UINT8","shape":[1],"data":[1e400]}]}', None))
@example(
    (b'{"outputs":[{"name":"e","datatype":"INT64","shape":[1],"data":[' + b"9" * 30 + b"]}]}", None)
)
@example(
    (
        b'{"outputs":[{"name":"e","datatype":"FP32","shape":["' + b"9" * 5000 + b'"],"data":[]}]}',
        None,
    )
)
@example((b"[" * 100_000 + b"]" * 100_000, None))
@example((b"\xff\xfe{}", None))
def test_generated_responses_parse_or_raise_protocol_error(case: tuple[bytes, int | None]) -> None:
    _check_parse(*case)


@FUZZ
@given(st.data())
def test_mutated_valid_responses_parse_or_raise_protocol_error(data: st.DataObject) -> None:
    body = bytearray(VALID_BODY)
    for _ in range(data.draw(st.integers(1, 6))):
        if not body:
            break
        pos = data.draw(st.integers(0, len(body) - 1))
        op = data.draw(st.sampled_from(["set", "truncate", "insert", "delete"]))
        if op == "set":
            body[pos] = data.draw(st.integers(0, 255))
        elif op == "truncate":
            del body[max(1, pos) :]
        elif op == "insert":
            body[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        else:
            del body[pos : pos + data.draw(st.integers(1, 16))]
    length = data.draw(
        st.sampled_from([VALID_HEADER_LENGTH, None]) | st.integers(-2, len(body) + 2)
    )
    _check_parse(bytes(body), length)


@FUZZ
@given(JSON | st.binary(max_size=256) | st.text(max_size=64))
@example({"input": "abc"})
@example({"input": {"name": "x"}})
@example({"max_batch_size": "9" * 5000})
@example({"config": {"parameters": [1, 2]}})
@example({"output": [{"name": "e", "dims": [True]}]})
@example(b"\xff")
def test_model_configs_parse_or_raise_protocol_error(doc: Any) -> None:
    try:
        parsed = parse_model_config(doc)
    except TritonVisionError:
        return
    assert isinstance(parsed, ModelConfig)
    assert isinstance(parsed.max_batch_size, int)
    assert all(isinstance(v, str) for v in parsed.parameters.values())


@FUZZ
@given(
    st.integers(-(2**40), 2**40),
    st.binary(max_size=512) | JSON.map(lambda v: json.dumps(v).encode()),
)
@example(503, b'{"error": "Exceeds maximum queue size"}')
@example(400, b"[" * 50_000)
def test_error_responses_always_give_a_typed_error(status: int, body: bytes) -> None:
    err = error_from_http(status, body, model="m")
    assert isinstance(err, TritonVisionError)
    assert len(error_message_from_body(body)) <= 2000


@FUZZ
@given(st.text(max_size=40), st.text(max_size=200))
@example("StatusCode.UNAVAILABLE", "failed to connect to all addresses")
@example("", "")
def test_grpc_errors_always_give_a_typed_error(code: str, message: str) -> None:
    assert isinstance(error_from_grpc(code, message, model="m"), TritonVisionError)


@FUZZ
@given(st.data())
def test_published_preprocessing_specs_parse_or_raise_model_config_error(
    data: st.DataObject,
) -> None:
    doc: Any = json.loads(SPEC.to_json())
    for _ in range(data.draw(st.integers(1, 4))):
        target = doc
        path = data.draw(st.lists(st.sampled_from(sorted(_keys(doc))), min_size=1, max_size=2))
        for key in path[:-1]:
            if isinstance(target, dict) and isinstance(target.get(key), dict):
                target = target[key]
        if isinstance(target, dict):
            if data.draw(st.booleans()):
                target[path[-1]] = data.draw(JSON)
            else:
                target.pop(path[-1], None)
    text = json.dumps(doc) if data.draw(st.integers(0, 4)) else data.draw(st.text(max_size=64))
    try:
        spec = PreprocessSpec.from_json(text)
    except TritonVisionError:
        return
    height, width, channels = spec.output_shape
    assert height > 0 and width > 0 and channels == 3


def _keys(doc: Any) -> set[str]:
    keys: set[str] = set()
    if isinstance(doc, dict):
        for key, value in doc.items():
            keys.add(key)
            keys |= _keys(value)
    return keys


# ------------------------------------------------------------------ base64 / data URIs


@FUZZ
@given(st.text(max_size=200) | st.binary(max_size=150).map(lambda b: base64.b64encode(b).decode()))
@example("iVBORw0KGgo=")
@example("====")
@example("A")
def test_base64_and_data_uris_decode_or_raise_invalid_input(text: str) -> None:
    for call in (
        lambda: _decode_base64(text, source="b64", max_bytes=64),
        lambda: _decode_data_uri("data:image/png;base64," + text, max_bytes=64),
        lambda: _decode_data_uri("data:" + text, max_bytes=64),
    ):
        try:
            out = call()
        except TritonVisionError:
            continue
        assert isinstance(out, bytes) and 0 < len(out) <= 64
