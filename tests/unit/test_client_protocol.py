"""Pure unit tests of the sans-IO KServe v2 protocol: no network, no event loop."""

from __future__ import annotations

import dataclasses
import json
import pickle
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import serialize_byte_tensor

from tritonvision.client import BatchEmbedding, BatchError, ClientConfig
from tritonvision.client._config import DEFAULT_REQUEST_TIMEOUT_S
from tritonvision.client._protocol import (
    HEADER_LENGTH_HEADER,
    InputTensor,
    ProtocolError,
    build_infer_request,
    classify_server_error,
    config_path,
    datatype_of,
    error_from_grpc,
    error_from_http,
    error_message_from_body,
    infer_path,
    parse_infer_response,
    parse_model_config,
)
from tritonvision.errors import (
    DecodeError,
    InvalidInput,
    RequestTimeout,
    ServerError,
    ServerOverloaded,
    ServerUnavailable,
)


def _split_request(body: bytes, header_length: int) -> tuple[dict[str, object], bytes]:
    return json.loads(body[:header_length]), body[header_length:]


def _binary_response(
    outputs: list[tuple[str, str, list[int], bytes]], **extra: object
) -> tuple[bytes, int]:
    header = {
        "model_name": "m",
        "model_version": "1",
        "outputs": [
            {"name": n, "datatype": dt, "shape": shape, "parameters": {"binary_data_size": len(b)}}
            for n, dt, shape, b in outputs
        ],
        **extra,
    }
    head = json.dumps(header).encode()
    return head + b"".join(b for *_, b in outputs), len(head)


# ------------------------------------------------------------------------------ requests


def test_build_request_puts_uint8_pixels_in_binary_after_json_header() -> None:
    pixels = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    req = build_infer_request(
        [InputTensor("pixels", pixels)], ["embeddings"], request_id="r1", timeout_us=1_500_000
    )
    header, binary = _split_request(req.body, req.header_length)
    assert header["id"] == "r1"
    assert header["parameters"] == {"timeout": 1_500_000}
    assert header["inputs"] == [
        {
            "name": "pixels",
            "shape": [2, 4, 4, 3],
            "datatype": "UINT8",
            "parameters": {"binary_data_size": pixels.nbytes},
        }
    ]
    assert header["outputs"] == [{"name": "embeddings", "parameters": {"binary_data": True}}]
    assert binary == pixels.tobytes()
    assert req.headers[HEADER_LENGTH_HEADER] == str(req.header_length)
    assert req.headers["Content-Type"] == "application/octet-stream"


def test_build_request_without_outputs_asks_every_output_as_binary() -> None:
    req = build_infer_request([InputTensor("x", np.zeros((1, 2), np.float32))])
    header, _ = _split_request(req.body, req.header_length)
    assert header["parameters"] == {"binary_data_output": True}
    assert "outputs" not in header


def test_build_request_serializes_bytes_tensor_with_length_prefixes() -> None:
    images = np.array([[b"\x89PNG..."], [b""]], dtype=np.object_)
    req = build_infer_request([InputTensor("images", images)], ["embeddings"])
    header, binary = _split_request(req.body, req.header_length)
    entry = header["inputs"][0]  # type: ignore[index]
    assert entry["datatype"] == "BYTES"
    assert entry["shape"] == [2, 1]
    assert binary == struct.pack("<I", 7) + b"\x89PNG..." + struct.pack("<I", 0)
    assert entry["parameters"]["binary_data_size"] == len(binary)


def test_build_request_converts_non_contiguous_arrays() -> None:
    arr = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]
    req = build_infer_request([InputTensor("x", arr)], ["y"])
    _, binary = _split_request(req.body, req.header_length)
    assert np.array_equal(np.frombuffer(binary, np.float32).reshape(4, 3), arr)


def test_bytes_tensor_sent_in_a_request_parses_back_from_a_response() -> None:
    items = np.array([b"a", b"", b"\x00\xff" * 10, "text"], dtype=np.object_)
    req = build_infer_request([InputTensor("names", items)], ["names"])
    _, binary = _split_request(req.body, req.header_length)
    body, hl = _binary_response([("names", "BYTES", [4], binary)])
    out = parse_infer_response(body, header_length=hl).output("names")
    assert out.tolist() == [b"a", b"", b"\x00\xff" * 10, b"text"]


@pytest.mark.parametrize(
    "raw",
    [
        struct.pack("<I", 5) + b"abc",
        struct.pack("<I", 1) + b"a" + b"x",
        struct.pack("<I", 1) + b"a" + struct.pack("<I", 0),
        b"\x01\x00",
        b"",
    ],
)
def test_bytes_output_truncated_or_with_extra_items_is_a_protocol_error(raw: bytes) -> None:
    body, hl = _binary_response([("names", "BYTES", [1], raw)])
    with pytest.raises(ProtocolError, match="names"):
        parse_infer_response(body, header_length=hl)


def test_datatype_of_maps_numpy_dtypes() -> None:
    assert datatype_of(np.zeros(1, np.uint8)) == "UINT8"
    assert datatype_of(np.zeros(1, np.float32)) == "FP32"
    assert datatype_of(np.zeros(1, np.float16)) == "FP16"
    assert datatype_of(np.array([b"x"], dtype=np.object_)) == "BYTES"
    with pytest.raises(ValueError):
        datatype_of(np.zeros(1, np.complex64))


def test_paths_quote_model_names_and_versions() -> None:
    assert infer_path("vision_encoder") == "/v2/models/vision_encoder/infer"
    assert config_path("a/b", "2") == "/v2/models/a%2Fb/versions/2/config"


# ----------------------------------------------------------------------------- responses


def test_parse_binary_fp32_response() -> None:
    emb = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    body, hl = _binary_response([("embeddings", "FP32", [3, 8], emb.tobytes())], id="x")
    resp = parse_infer_response(body, header_length=hl)
    assert resp.model_name == "m" and resp.model_version == "1" and resp.id == "x"
    out = resp.output("embeddings")
    assert out.dtype == np.float32 and np.array_equal(out, emb)
    out[0, 0] = 42.0  # callers own the array


def test_parse_binary_response_with_two_outputs_in_order() -> None:
    a = np.arange(4, dtype=np.int64)
    b = serialize_byte_tensor(np.array([b"hi", b"there"], dtype=np.object_)).item()
    body, hl = _binary_response([("a", "INT64", [4], a.tobytes()), ("b", "BYTES", [2], b)])
    resp = parse_infer_response(body, header_length=hl)
    assert resp.output("a").tolist() == [0, 1, 2, 3]
    assert resp.output("b").tolist() == [b"hi", b"there"]


def test_parse_json_response() -> None:
    body = json.dumps(
        {
            "model_name": "m",
            "outputs": [
                {"name": "e", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4.5]},
                {"name": "s", "datatype": "BYTES", "shape": [1], "data": ["ok"]},
            ],
        }
    ).encode()
    resp = parse_infer_response(body)
    assert resp.output("e").tolist() == [[1.0, 2.0], [3.0, 4.5]]
    assert resp.output("e").dtype == np.float32
    assert resp.output("s").tolist() == [b"ok"]


def test_missing_output_is_a_protocol_error() -> None:
    body, hl = _binary_response([("x", "FP32", [1], b"\0\0\0\0")])
    with pytest.raises(ProtocolError, match="no output 'embeddings'"):
        parse_infer_response(body, header_length=hl).output("embeddings")


@pytest.mark.parametrize(
    ("body", "hl"),
    [
        (b"", None),
        (b"not json", None),
        (b"[1, 2]", None),
        (b'{"outputs": 3}', None),
        (b'{"outputs": [{"name": "e", "datatype": "FP32", "shape": [2]}]}', None),
        (b'{"outputs": [{"name": "e", "datatype": "FP32", "shape": [2], "data": [1]}]}', None),
        (b'{"outputs": [{"name": "e", "datatype": "NOPE", "shape": [1], "data": [1]}]}', None),
        (b'{"outputs": [{"name": "e", "datatype": "FP32", "shape": [-1], "data": []}]}', None),
        (b'{"outputs": [{"name": "e", "datatype": "FP32", "shape": [1], "data": ["x"]}]}', None),
        (b'{"outputs": []}garbage', 14),
        (b'{"outputs": []}', 999),
    ],
)
def test_malformed_responses_raise_protocol_error(body: bytes, hl: int | None) -> None:
    with pytest.raises(ProtocolError):
        parse_infer_response(body, header_length=hl)


def test_binary_size_mismatch_is_a_protocol_error() -> None:
    body, hl = _binary_response([("e", "FP32", [3], b"\0" * 8)])
    with pytest.raises(ProtocolError, match="8 bytes for shape"):
        parse_infer_response(body, header_length=hl)


# A tiny valid response to mutate, so the fuzzer also explores near-valid bodies.
_VALID_BODY, _VALID_HL = _binary_response(
    [("embeddings", "FP32", [1, 2], np.ones((1, 2), np.float32).tobytes())]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=256),
        st.builds(
            lambda cut, junk: _VALID_BODY[:cut] + junk,
            st.integers(0, len(_VALID_BODY)),
            st.binary(max_size=16),
        ),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
            lambda c: (
                st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4)
            ),
            max_leaves=20,
        ).map(lambda doc: json.dumps({"outputs": [doc]}).encode()),
    ),
    st.one_of(st.none(), st.integers(-5, 300), st.just(_VALID_HL)),
)
def test_fuzzed_responses_raise_only_protocol_error(body: bytes, hl: int | None) -> None:
    try:
        resp = parse_infer_response(body, header_length=hl)
    except ProtocolError as exc:
        assert isinstance(exc, ServerError)
        return
    for array in resp.outputs.values():
        assert isinstance(array, np.ndarray)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 8))
def test_fuzzed_bytes_outputs_raise_only_protocol_error(raw: bytes, count: int) -> None:
    body, hl = _binary_response([("names", "BYTES", [count], raw)])
    try:
        out = parse_infer_response(body, header_length=hl).output("names")
    except ProtocolError:
        return
    assert out.shape == (count,) and all(isinstance(item, bytes) for item in out.tolist())


# -------------------------------------------------------------------------------- errors


def test_error_body_json_is_unwrapped() -> None:
    assert error_message_from_body(b'{"error":"unknown model"}') == "unknown model"
    assert error_message_from_body(b"plain text\n") == "plain text"
    assert error_message_from_body(b'{"other": 1}') == '{"other": 1}'


def test_http_404_is_a_server_error_with_status_and_model() -> None:
    err = error_from_http(404, b'{"error":"Request for unknown model"}', model="m", source="x")
    assert type(err) is ServerError
    assert err.status == 404 and err.model == "m" and err.source == "x"
    assert err.server_message == "Request for unknown model"
    assert "unknown model" in str(err)


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (503, "Server not ready"),
        (429, "slow down"),
        (400, "Exceeds maximum queue size"),
        (500, "queue full"),
    ],
)
def test_overload_is_classified_as_server_overloaded(status: int, message: str) -> None:
    err = classify_server_error(status, message, model="m")
    assert isinstance(err, ServerOverloaded)
    assert err.status == status


@pytest.mark.parametrize(("status", "message"), [(503, "Request timeout expired"), (504, "x")])
def test_queue_timeout_is_a_request_timeout(status: int, message: str) -> None:
    err = classify_server_error(status, message)
    assert isinstance(err, RequestTimeout) and isinstance(err, TimeoutError)


def test_bad_input_is_not_transient() -> None:
    err = classify_server_error(400, "unexpected shape for input 'pixels'")
    assert type(err) is ServerError


def test_grpc_codes_map_to_http_statuses() -> None:
    assert isinstance(
        error_from_grpc("StatusCode.UNAVAILABLE", "failed to connect to all addresses"),
        ServerUnavailable,
    )
    overloaded = error_from_grpc("StatusCode.UNAVAILABLE", "Exceeds maximum queue size")
    assert isinstance(overloaded, ServerOverloaded) and overloaded.status == 503
    assert isinstance(error_from_grpc("DEADLINE_EXCEEDED", "Deadline Exceeded"), RequestTimeout)
    not_found = error_from_grpc("StatusCode.NOT_FOUND", "unknown model", model="m")
    assert type(not_found) is ServerError and not_found.status == 404
    invalid = error_from_grpc("StatusCode.INVALID_ARGUMENT", "bad shape")
    assert type(invalid) is ServerError and invalid.status == 400


def test_protocol_errors_pickle_with_their_fields() -> None:
    err = ProtocolError("bad", status=200, model="m", server_message="x")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is ProtocolError and back.status == 200 and back.model == "m"


# -------------------------------------------------------------------------- model config

_HTTP_CONFIG = {
    "name": "enc",
    "max_batch_size": 8,
    "input": [{"name": "pixels", "data_type": "TYPE_UINT8", "dims": [32, 32, 3]}],
    "output": [{"name": "embeddings", "data_type": "TYPE_FP32", "dims": [16]}],
    "parameters": {"tritonvision.preprocessing": {"string_value": '{"a": 1}'}},
}


def test_parse_http_model_config() -> None:
    cfg = parse_model_config(json.dumps(_HTTP_CONFIG).encode())
    assert cfg.name == "enc" and cfg.max_batch_size == 8
    assert cfg.inputs[0].name == "pixels" and cfg.inputs[0].datatype == "UINT8"
    assert cfg.inputs[0].dims == (32, 32, 3)
    assert cfg.outputs[0].dims == (16,)
    assert cfg.parameters["tritonvision.preprocessing"] == '{"a": 1}'


def test_parse_grpc_json_model_config_with_string_int64s_and_omitted_defaults() -> None:
    doc = {
        "config": {
            "name": "enc",
            "input": [{"name": "images", "data_type": "TYPE_STRING", "dims": ["1"]}],
            "output": [{"name": "embeddings", "data_type": "TYPE_FP32", "dims": ["16"]}],
        }
    }
    cfg = parse_model_config(doc)
    assert cfg.max_batch_size == 0
    assert cfg.inputs[0].datatype == "BYTES" and cfg.inputs[0].dims == (1,)
    assert cfg.parameters == {}


@pytest.mark.parametrize("doc", [b"[]", b"{", {"input": [{"dims": [1]}]}, {"max_batch_size": "x"}])
def test_malformed_model_config_raises_protocol_error(doc: object) -> None:
    with pytest.raises(ProtocolError):
        parse_model_config(doc)  # type: ignore[arg-type]


# ------------------------------------------------------- pure value types (config, results)


def test_client_config_is_frozen_keyword_only_and_validated() -> None:
    cfg = ClientConfig()
    assert cfg.request_timeout_s == DEFAULT_REQUEST_TIMEOUT_S
    assert cfg.pack_batch_size == 1
    with pytest.raises(TypeError):
        ClientConfig(5.0)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.max_in_flight = 3  # type: ignore[misc]
    with pytest.raises(InvalidInput, match="max_in_flight"):
        ClientConfig(max_in_flight=0)
    with pytest.raises(InvalidInput, match="max_retries"):
        ClientConfig(max_retries=-1)


def test_client_config_replace_reaches_the_fetch_policy() -> None:
    cfg = ClientConfig().replace(allow_private_addresses=True, max_in_flight=4)
    assert cfg.fetch.allow_private_addresses is True
    assert cfg.max_in_flight == 4
    assert ClientConfig().fetch.allow_private_addresses is False


def test_client_config_lookahead_is_bounded_by_default_and_overridable() -> None:
    cfg = ClientConfig(max_in_flight=3, pack_batch_size=2, decode_workers=1)
    assert cfg.lookahead_items == 12
    assert ClientConfig(max_lookahead_items=5).lookahead_items == 5


def test_client_config_from_env_reads_only_prefixed_variables() -> None:
    cfg = ClientConfig.from_env(
        {
            "TRITONVISION_REQUEST_TIMEOUT_S": "2.5",
            "TRITONVISION_MAX_IN_FLIGHT": "7",
            "TRITONVISION_MAX_LOOKAHEAD_ITEMS": "none",
            "TRITONVISION_ALLOW_PRIVATE_ADDRESSES": "yes",
            "MAX_IN_FLIGHT": "99",
        }
    )
    assert cfg.request_timeout_s == 2.5 and cfg.max_in_flight == 7
    assert cfg.max_lookahead_items is None
    assert cfg.fetch.allow_private_addresses is True
    with pytest.raises(InvalidInput, match="TRITONVISION_MAX_RETRIES"):
        ClientConfig.from_env({"TRITONVISION_MAX_RETRIES": "many"})


def test_batch_embedding_reports_every_failure_in_order() -> None:
    emb = np.arange(12, dtype=np.float32).reshape(4, 3)
    emb[1] = np.nan
    emb[3] = np.nan
    errors = {3: DecodeError("x: bad", source="x"), 1: InvalidInput("y: missing", source="y")}
    result = BatchEmbedding(emb, errors)
    assert len(result) == 4 and not result.ok
    assert result.failed_indices == [1, 3]
    items = list(result)
    assert items[1] is errors[1] and items[3] is errors[3]
    np.testing.assert_array_equal(items[0], emb[0])
    with pytest.raises(BatchError, match=r"2 of 4 inputs failed: \[1\] InvalidInput") as info:
        result.raise_for_errors()
    assert info.value.__cause__ is errors[1]
    assert dict(info.value.errors) == errors
    assert BatchEmbedding(emb[:1]).ok
    BatchEmbedding(emb[:1]).raise_for_errors()


def test_batch_error_pickles_with_its_errors() -> None:
    err = BatchError("1 of 1 inputs failed", errors={0: DecodeError("bad")})
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is BatchError and isinstance(back.errors[0], DecodeError)
