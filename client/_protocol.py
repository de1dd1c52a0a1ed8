"""Sans-IO KServe v2 protocol: build inference requests, parse responses and errors.

Everything here is a pure function over bytes and numpy arrays: no sockets, no event
loop. The transports (``_transports/``) only move the bytes this module produces and
hand back the bytes the server sent, so the whole wire format is unit-tested without a
network.

The HTTP body uses Triton's binary tensor extension: a JSON header followed by the raw
tensor bytes, the header's length sent as ``Inference-Header-Content-Length``. Pixels
and embeddings never travel as JSON numbers. BYTES tensors use tritonclient's own
(de)serialisation; the body builder is ours because it sends a numeric tensor's buffer
with one copy where tritonclient makes several (measured: docs/DESIGN.md, "Protocol").

Server errors are classified in exactly one place, :func:`classify_server_error`, for
both transports: HTTP statuses come straight from the response, gRPC status codes are
first mapped to their HTTP equivalents (:data:`GRPC_TO_HTTP_STATUS`).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from tritonvision.errors import (
    AuthenticationError,
    ProtocolError,
    RequestTimeout,
    ServerError,
    ServerOverloaded,
    ServerUnavailable,
    TritonVisionError,
)

__all__ = [
    "GRPC_TO_HTTP_STATUS",
    "HEADER_LENGTH_HEADER",
    "EncodedRequest",
    "InferResponse",
    "InputTensor",
    "ModelConfig",
    "ProtocolError",
    "TensorInfo",
    "build_infer_request",
    "classify_server_error",
    "config_path",
    "datatype_of",
    "dtype_of",
    "error_from_grpc",
    "error_from_http",
    "error_message_from_body",
    "infer_path",
    "parse_infer_response",
    "parse_model_config",
]

HEADER_LENGTH_HEADER = "Inference-Header-Content-Length"
"""HTTP header carrying the JSON header's byte length when binary tensors follow it."""

_BYTES = "BYTES"
_NUMERIC_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_MAX_ERROR_TEXT = 2000

# gRPC status names (``grpc.StatusCode.X.name``) -> the HTTP status Triton uses for them.
GRPC_TO_HTTP_STATUS: Mapping[str, int] = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}

# Triton's wording when its scheduler queue rejects work (HTTP 503 / gRPC UNAVAILABLE).
_OVERLOAD_MARKERS = ("queue full", "maximum queue size", "too many requests", "server busy")
# Triton's wording when a request's ``timeout`` parameter expires in the queue.
_TIMEOUT_MARKERS = ("timeout expired", "timed out", "deadline exceeded")
# gRPC core's wording when the channel cannot reach the server at all.
_UNREACHABLE_MARKERS = (
    "failed to connect",
    "connection refused",
    "connection reset",
    "socket closed",
    "dns resolution failed",
    "connections to all backends failing",
    "broken pipe",
    "end of tcp stream",
)


# --------------------------------------------------------------------------- datatypes


def dtype_of(datatype: str) -> np.dtype[Any]:
    """The numpy dtype for a KServe datatype name (``BYTES`` -> object)."""
    if datatype == _BYTES:
        return np.dtype(np.object_)
    try:
        return _NUMERIC_DTYPES[datatype]
    except KeyError:
        raise ValueError(f"unsupported tensor datatype {datatype!r}") from None


def datatype_of(array: npt.NDArray[Any]) -> str:
    """The KServe datatype name for a numpy array's dtype."""
    if array.dtype == np.object_ or array.dtype.kind in "SU":
        return _BYTES
    for name, dtype in _NUMERIC_DTYPES.items():
        if array.dtype == dtype or array.dtype.newbyteorder("<") == dtype:
            return name
    raise ValueError(f"no KServe datatype for numpy dtype {array.dtype}")


# ----------------------------------------------------------------------- BYTES tensors


def _bytes_items(buffer: bytes | memoryview, count: int, name: str) -> npt.NDArray[np.object_]:
    """Exactly ``count`` BYTES items spanning ``buffer`` (tritonclient's wire format).

    Raises :class:`ValueError` if the buffer is truncated or holds another number of items.
    """
    try:
        items: npt.NDArray[np.object_] = deserialize_bytes_tensor(buffer)
    except struct.error as exc:  # a length prefix running past the end of the buffer
        raise ValueError(f"output {name!r}: BYTES tensor is truncated ({exc})") from None
    if len(items) != count:
        raise ValueError(
            f"output {name!r}: BYTES tensor holds {len(items)} items, its shape says {count}"
        )
    return items


# ----------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class InputTensor:
    """One named input tensor of an inference request (numeric, or BYTES as object array)."""

    name: str
    array: npt.NDArray[Any]
    datatype: str = ""

    def __post_init__(self) -> None:
        if not self.datatype:
            object.__setattr__(self, "datatype", datatype_of(self.array))
        else:
            dtype_of(self.datatype)  # validates the name

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.array.shape)

    @property
    def nbytes(self) -> int:
        """The tensor's bytes on the wire (BYTES: each item's 4-byte length + its bytes)."""
        if self.datatype == _BYTES:
            return sum(
                4 + len(item.encode("utf-8") if isinstance(item, str) else item)
                for item in self.array.flat
            )
        return int(self.array.size) * dtype_of(self.datatype).itemsize

    def raw(self) -> bytes | memoryview:
        """The tensor's wire bytes (little-endian, row-major), without a needless copy."""
        if self.datatype == _BYTES:
            packed = serialize_byte_tensor(np.asarray(self.array, dtype=np.object_))
            return bytes(packed.item()) if packed.size else b""
        dtype = dtype_of(self.datatype)
        array = np.ascontiguousarray(self.array, dtype=dtype)
        return array.data.cast("B")


@dataclass(frozen=True)
class EncodedRequest:
    """A KServe v2 binary-extension request body, ready for ``POST .../infer``."""

    body: bytes
    header_length: int

    @property
    def headers(self) -> dict[str, str]:
        return {
            "Content-Type": "application/octet-stream",
            HEADER_LENGTH_HEADER: str(self.header_length),
        }


def build_infer_request(
    inputs: Sequence[InputTensor],
    outputs: Sequence[str] = (),
    *,
    request_id: str = "",
    timeout_us: int | None = None,
    parameters: Mapping[str, str | int | bool] | None = None,
) -> EncodedRequest:
    """Encode an inference request: JSON header, then each input's raw bytes in order.

    Every input travels as binary data and every requested output is asked back as
    binary data. ``timeout_us`` becomes the request's ``timeout`` parameter, which
    Triton applies while the request waits in a dynamic batcher's queue.
    """
    chunks: list[bytes | memoryview] = []
    header_inputs: list[dict[str, Any]] = []
    for tensor in inputs:
        raw = tensor.raw()
        chunks.append(raw)
        header_inputs.append(
            {
                "name": tensor.name,
                "shape": list(tensor.shape),
                "datatype": tensor.datatype,
                "parameters": {"binary_data_size": len(raw)},
            }
        )
    header: dict[str, Any] = {}
    if request_id:
        header["id"] = request_id
    params: dict[str, Any] = dict(parameters or {})
    if timeout_us is not None:
        params["timeout"] = int(timeout_us)
    if params:
        header["parameters"] = params
    header["inputs"] = header_inputs
    if outputs:
        header["outputs"] = [{"name": n, "parameters": {"binary_data": True}} for n in outputs]
    else:
        params["binary_data_output"] = True
        header["parameters"] = params
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return EncodedRequest(body=b"".join([header_bytes, *chunks]), header_length=len(header_bytes))


def infer_path(model: str, version: str = "") -> str:
    """The REST path of a model's inference endpoint."""
    return _model_path(model, version) + "/infer"


def config_path(model: str, version: str = "") -> str:
    """The REST path of a model's configuration endpoint."""
    return _model_path(model, version) + "/config"


def _model_path(model: str, version: str) -> str:
    from urllib.parse import quote

    path = f"/v2/models/{quote(model, safe='')}"
    return f"{path}/versions/{quote(version, safe='')}" if version else path


# ---------------------------------------------------------------------------- responses


@dataclass(frozen=True)
class InferResponse:
    """A parsed inference response: output name -> numpy array (BYTES as object arrays)."""

    model_name: str
    model_version: str
    id: str
    outputs: Mapping[str, npt.NDArray[Any]]
    parameters: Mapping[str, Any] = field(default_factory=dict)

    def output(self, name: str) -> npt.NDArray[Any]:
        try:
            return self.outputs[name]
        except KeyError:
            raise ProtocolError(
                f"response from model {self.model_name!r} has no output {name!r} "
                f"(it has {sorted(self.outputs)})",
                status=200,
                model=self.model_name or None,
            ) from None


def parse_infer_response(
    body: bytes, *, header_length: int | None = None, status: int = 200
) -> InferResponse:
    """Parse a successful KServe v2 response (JSON, or JSON header + binary tensors).

    Anything malformed raises :class:`ProtocolError`, never a bare ``ValueError``,
    ``KeyError`` or ``IndexError``.
    """
    try:
        return _parse_infer_response(body, header_length)
    except ProtocolError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError) as exc:
        raise ProtocolError(
            f"malformed inference response from Triton: {exc}", status=status
        ) from exc


def _parse_infer_response(body: bytes, header_length: int | None) -> InferResponse:
    if header_length is None:
        header_length = len(body)
    if not 0 < header_length <= len(body):
        raise ValueError(f"header length {header_length} does not fit a {len(body)}-byte body")
    header = json.loads(bytes(body[:header_length]))
    if not isinstance(header, dict):
        raise ValueError("response header is not a JSON object")
    binary = memoryview(body)[header_length:]
    offset = 0
    outputs: dict[str, npt.NDArray[Any]] = {}
    raw_outputs = header.get("outputs", [])
    if not isinstance(raw_outputs, list):
        raise ValueError("'outputs' is not a list")
    for entry in raw_outputs:
        if not isinstance(entry, dict):
            raise ValueError("an output entry is not a JSON object")
        name = _str_field(entry, "name")
        datatype = _str_field(entry, "datatype")
        dtype = dtype_of(datatype)
        shape = _shape(entry.get("shape"))
        count = math.prod(shape)
        params = entry.get("parameters") or {}
        if not isinstance(params, dict):
            raise ValueError(f"output {name!r}: 'parameters' is not an object")
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ValueError(f"output {name!r}: bad binary_data_size {size!r}")
            if offset + size > len(binary):
                raise ValueError(f"output {name!r}: binary data runs past the end of the body")
            chunk = binary[offset : offset + size]
            offset += size
            if datatype == _BYTES:
                array = _bytes_items(chunk, count, name).reshape(shape)
            else:
                if size != count * dtype.itemsize:
                    raise ValueError(
                        f"output {name!r}: {size} bytes for shape {shape} of {datatype}"
                    )
                # Copy out of the body so callers own (and may write to) the array.
                array = np.frombuffer(chunk, dtype=dtype).reshape(shape).copy()
        elif "data" in entry:
            array = _json_data(entry["data"], datatype, dtype, shape, name)
        else:
            raise ValueError(f"output {name!r} carries neither 'data' nor binary data")
        outputs[name] = array
    if offset != len(binary):
        raise ValueError(f"{len(binary) - offset} unclaimed bytes after the response header")
    parameters = header.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ValueError("response 'parameters' is not an object")
    return InferResponse(
        model_name=str(header.get("model_name", "")),
        model_version=str(header.get("model_version", "")),
        id=str(header.get("id", "")),
        outputs=outputs,
        parameters=parameters,
    )


def _str_field(entry: Mapping[str, Any], key: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str):
        raise ValueError(f"output field {key!r} is missing or not a string")
    return value


def _shape(raw: object) -> tuple[int, ...]:
    if not isinstance(raw, list):
        raise ValueError("output 'shape' is missing or not a list")
    dims: list[int] = []
    for d in raw:
        value = _as_int(d)
        if value < 0:
            raise ValueError(f"negative dimension in shape {raw!r}")
        dims.append(value)
    return tuple(dims)


def _as_int(value: object) -> int:
    # Protobuf's JSON mapping writes int64 as strings; HTTP JSON writes plain ints.
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ValueError(f"expected an integer, got {value!r}")


def _json_data(
    data: object, datatype: str, dtype: np.dtype[Any], shape: tuple[int, ...], name: str
) -> npt.NDArray[Any]:
    flat = np.asarray(data, dtype=np.object_).reshape(-1)
    if flat.size != math.prod(shape):
        raise ValueError(f"output {name!r}: {flat.size} values for shape {shape}")
    if datatype == _BYTES:
        items = [v.encode("utf-8") if isinstance(v, str) else v for v in flat.tolist()]
        if not all(isinstance(v, bytes) for v in items):
            raise ValueError(f"output {name!r}: BYTES data must be strings")
        out = np.empty(len(items), dtype=np.object_)
        out[:] = items
        return out.reshape(shape)
    values = flat.tolist()
    if not all(isinstance(v, int | float) for v in values):
        raise ValueError(f"output {name!r}: {datatype} data must be numbers")
    if dtype.kind in "iu":
        # numpy 1.x would wrap -1 to 255 (with only a DeprecationWarning): refuse instead.
        info = np.iinfo(dtype)
        if not all(isinstance(v, int) and info.min <= v <= info.max for v in values):
            raise ValueError(
                f"output {name!r}: {datatype} data must be integers in [{info.min}, {info.max}]"
            )
    try:
        # A float past the dtype's range would silently become inf: refuse it.
        with np.errstate(over="raise", invalid="raise"):
            return flat.astype(dtype).reshape(shape)
    except FloatingPointError as exc:
        raise ValueError(f"output {name!r}: {datatype} data out of range ({exc})") from exc


# ------------------------------------------------------------------------------- errors


def error_message_from_body(body: bytes) -> str:
    """Triton's error text from an error response body (``{"error": "..."}``), or the body."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        message: str = doc["error"]
    else:
        message = body.decode("utf-8", errors="replace").strip()
    return message[:_MAX_ERROR_TEXT]


def classify_server_error(
    status: int, message: str, *, model: str | None = None, source: object = None
) -> TritonVisionError:
    """The one place a Triton error (status + text) becomes a typed exception.

    - queue timeouts (``timeout expired``, 408/504) -> :class:`RequestTimeout`
    - 429/503 and queue-full messages -> :class:`ServerOverloaded` (retried)
    - 401/403 (a proxy's or Triton's refusal) -> :class:`AuthenticationError` (never retried)
    - anything else -> :class:`ServerError` (never retried)
    """
    lowered = message.lower()
    where = f" (model {model!r})" if model else ""
    if status in (401, 403):
        return AuthenticationError(
            f"authentication failed: Triton refused the request{where}, HTTP {status}: "
            f"{message} (check the client's headers: ClientConfig.headers, "
            "TRITONVISION_HEADERS, --header)",
            source=source,
            status=status,
            server_message=message,
            model=model,
        )
    if status in (408, 504) or any(m in lowered for m in _TIMEOUT_MARKERS):
        return RequestTimeout(f"Triton timed out the request{where}: {message}", source=source)
    if status in (429, 503) or any(m in lowered for m in _OVERLOAD_MARKERS):
        return ServerOverloaded(
            f"Triton is overloaded{where}, HTTP {status}: {message}",
            source=source,
            status=status,
            server_message=message,
            model=model,
        )
    return ServerError(
        f"Triton answered HTTP {status}{where}: {message}",
        source=source,
        status=status,
        server_message=message,
        model=model,
    )


def error_from_http(
    status: int, body: bytes, *, model: str | None = None, source: object = None
) -> TritonVisionError:
    """A typed error for an HTTP error response from Triton."""
    return classify_server_error(status, error_message_from_body(body), model=model, source=source)


def error_from_grpc(
    code: str, message: str, *, model: str | None = None, source: object = None
) -> TritonVisionError:
    """A typed error for a gRPC status (``"UNAVAILABLE"`` or ``"StatusCode.UNAVAILABLE"``)."""
    name = code.rsplit(".", 1)[-1].upper()
    lowered = message.lower()
    if name == "UNAVAILABLE" and any(m in lowered for m in _UNREACHABLE_MARKERS):
        return ServerUnavailable(f"cannot reach Triton over gRPC: {message}", source=source)
    if name == "UNAVAILABLE" and "restricted" in lowered:
        # --grpc-restricted-protocol refuses a missing header with UNAVAILABLE; it is a
        # permission problem (HTTP gives 403), not a busy server: never retried.
        return classify_server_error(403, message, model=model, source=source)
    if name == "DEADLINE_EXCEEDED":
        return RequestTimeout(f"Triton did not answer in time (gRPC): {message}", source=source)
    return classify_server_error(
        GRPC_TO_HTTP_STATUS.get(name, 500), message, model=model, source=source
    )


# ------------------------------------------------------------------------- model config


@dataclass(frozen=True)
class TensorInfo:
    """A model input or output as declared in its config (dims exclude the batch dim)."""

    name: str
    datatype: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class ModelConfig:
    """The parts of a Triton model config the client uses."""

    name: str
    max_batch_size: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    parameters: Mapping[str, str]


def parse_model_config(doc: Mapping[str, Any] | bytes | str) -> ModelConfig:
    """Parse a model config from HTTP JSON, or gRPC's ``as_json`` form (``{"config": ...}``).

    Tolerates protobuf's JSON mapping (int64 as strings, default values omitted).
    Raises :class:`ProtocolError` for anything malformed.
    """
    try:
        if isinstance(doc, bytes | str):
            doc = json.loads(doc)
        if not isinstance(doc, Mapping):
            raise ValueError("model config is not a JSON object")
        if "config" in doc and isinstance(doc["config"], Mapping):
            doc = doc["config"]
        params: dict[str, str] = {}
        for key, value in (doc.get("parameters") or {}).items():
            if isinstance(value, Mapping):
                params[str(key)] = str(value.get("string_value", ""))
            else:
                params[str(key)] = str(value)
        return ModelConfig(
            name=str(doc.get("name", "")),
            max_batch_size=_as_int(doc.get("max_batch_size", 0)),
            inputs=tuple(_tensor_info(t) for t in doc.get("input") or ()),
            outputs=tuple(_tensor_info(t) for t in doc.get("output") or ()),
            parameters=params,
        )
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        raise ProtocolError(f"malformed model config from Triton: {exc}", status=200) from exc


def _tensor_info(raw: Mapping[str, Any]) -> TensorInfo:
    datatype = str(raw.get("data_type", ""))
    datatype = datatype.removeprefix("TYPE_")
    if datatype == "STRING":
        datatype = _BYTES
    return TensorInfo(
        name=str(raw["name"]),
        datatype=datatype,
        dims=tuple(_as_int(d) for d in raw.get("dims") or ()),
    )
