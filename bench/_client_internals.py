"""The one place the benchmarks reach into the client's private modules.

Two things the public client API does not offer, and the benchmarks need:

- the client's own preprocessing (decode + resize + crop to uint8 pixels, and the
  normalisation an unoptimised stack would do on the client), so scenarios 1, 4, 5 and 6
  compare against exactly what ``VisionClient`` does, and scenario 5 times it alone;
- the client's own KServe v2 binary request encoder and response parser, so the per-call
  bug (``_percall_bug``) differs from ``VisionClient`` only in its runtime, and scenario 4
  compares binary and JSON tensors on the same harness.

The client's internals are being reorganised; when they move, only this module follows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from tritonvision.client._imaging import load_image_pixels, normalize_pixels, pixels_from_array
from tritonvision.client._protocol import (
    HEADER_LENGTH_HEADER,
    InputTensor,
    build_infer_request,
    config_path,
    infer_path,
    parse_infer_response,
)
from tritonvision.contract import EMBEDDINGS_OUTPUT

__all__ = [
    "HEADER_LENGTH_HEADER",
    "binary_request",
    "config_path",
    "infer_path",
    "load_image_pixels",
    "normalize_pixels",
    "parse_binary_response",
    "pixels_from_array",
]


def binary_request(
    name: str, array: npt.NDArray[Any], datatype: str
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a binary-tensor inference request asking for the embeddings."""
    request = build_infer_request([InputTensor(name, array, datatype)], [EMBEDDINGS_OUTPUT])
    return request.body, request.headers


def parse_binary_response(body: bytes, header_length: str | None) -> npt.NDArray[np.float32]:
    """The embeddings of a (binary or JSON) inference response; ``header_length`` is the
    response's :data:`HEADER_LENGTH_HEADER` header, absent for a JSON-only response."""
    parsed = parse_infer_response(body, header_length=int(header_length) if header_length else None)
    return parsed.output(EMBEDDINGS_OUTPUT).astype(np.float32, copy=False)
