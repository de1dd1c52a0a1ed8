"""4. Transports and encodings: what goes on the wire, and what it costs.

All on the tiny encoder (its compute is negligible, so wire and parsing costs show), with
the same concurrency and the same images:

- HTTP with binary tensors vs gRPC (our client, both transports);
- binary tensors vs the plain KServe v2 JSON encoding (``"data": [...]``), both over one
  shared aiohttp session;
- uint8 pixels (what we send) vs float32 normalised NCHW pixels (what an unoptimised stack
  sends: 4x the bytes), the latter to an fp32-input twin of the same weights;
- client-side decode + resize (our client) vs raw JPEG bytes to the ``_images`` ensemble
  (the server decodes in its python-backend preprocess model).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
import numpy as np
import numpy.typing as npt

from tritonvision.contract import EMBEDDINGS_OUTPUT, IMAGES_INPUT, PIXELS_INPUT

from ._client_internals import (
    HEADER_LENGTH_HEADER,
    binary_request,
    infer_path,
    load_image_pixels,
    normalize_pixels,
    parse_binary_response,
)
from ._context import Context, Scenario
from ._load import Measurement, alternate, post_infer, run_tasks, side_from
from ._report import Row
from ._repos import FP32, FP32_INPUT, ServedRepository

__all__ = ["SCENARIO"]

NUMBER = 4
TITLE = "Transports and encodings"
CONCURRENCY = 8
# The fp32 twin must give the uint8 model's embedding (its floats are exact uint8 levels).
TWIN_MIN_COSINE = 0.9999

Body = tuple[bytes, dict[str, str]]
Parse = Callable[[bytes, "str | None"], npt.NDArray[np.float32]]


def _detail(m: Measurement) -> str:
    parts = [f"{m.extra['bytes_per_img'] / 1024:,.0f} KiB/img sent"]
    if "client_cpu_ms" in m.extra:
        parts.append(
            f"CPU/img: client {m.extra['client_cpu_ms']:.2f} ms, "
            f"server {m.extra['server_cpu_ms']:.2f} ms"
        )
    return "; ".join(parts)


def _measure_client(
    url: str,
    model: str,
    inputs: Sequence[Any],
    method: str,
    duration_s: float,
    served: ServedRepository,
) -> Measurement:
    """Our client (HTTP or gRPC by URL), ``method`` over ``inputs``, N concurrent tasks."""
    from tritonvision.client import AsyncVisionClient

    async def go() -> Measurement:
        async with AsyncVisionClient(url, model) as client:
            await client.model_info()
            embed = {"embed": client.embed, "embed_image_bytes": client.embed_image_bytes}[method]
            counter = [0]

            async def call(worker: int) -> None:
                counter[0] += 1
                await embed(inputs[counter[0] % len(inputs)])

            before = client.stats()
            cpu0, server0 = time.process_time(), served.cpu_seconds()
            m = await run_tasks(call, concurrency=CONCURRENCY, duration_s=duration_s)
            after = client.stats()
            done = max(1, counter[0])
            m.extra["bytes_per_img"] = (after.bytes_sent - before.bytes_sent) / max(
                1, after.requests - before.requests
            )
            m.extra["client_cpu_ms"] = (time.process_time() - cpu0) * 1000 / done
            m.extra["server_cpu_ms"] = (served.cpu_seconds() - server0) * 1000 / done
            return m

    return asyncio.run(go())


def _measure_raw(
    model: str,
    items: Sequence[Any],
    encode: Callable[[Any], Body],
    parse: Parse,
    duration_s: float,
    served: ServedRepository,
) -> Measurement:
    """Requests POSTed over one shared aiohttp session, each encoded from ``items`` as it is
    sent (so the encoding's CPU cost counts) and its response parsed."""
    endpoint = f"{served.http_url}{infer_path(model)}"

    async def go() -> Measurement:
        async with aiohttp.ClientSession() as session:
            counter = [0]
            sent = [0]

            async def call(worker: int) -> None:
                counter[0] += 1
                body, headers = encode(items[counter[0] % len(items)])
                sent[0] += len(body)
                await post_infer(session, endpoint, body, headers, parse)

            cpu0, server0 = time.process_time(), served.cpu_seconds()
            m = await run_tasks(call, concurrency=CONCURRENCY, duration_s=duration_s)
            done = max(1, counter[0])
            m.extra["bytes_per_img"] = sent[0] / done
            m.extra["client_cpu_ms"] = (time.process_time() - cpu0) * 1000 / done
            m.extra["server_cpu_ms"] = (served.cpu_seconds() - server0) * 1000 / done
            return m

    return asyncio.run(go())


def _parse_json(payload: bytes, header_length: str | None) -> npt.NDArray[np.float32]:
    doc = json.loads(payload)
    out = doc["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def _json_request(name: str, array: npt.NDArray[Any], datatype: str) -> Body:
    """The plain KServe v2 JSON encoding: every element a JSON number."""
    doc = {
        "inputs": [
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype,
                "data": array.reshape(-1).tolist(),
            }
        ],
        "outputs": [{"name": EMBEDDINGS_OUTPUT, "parameters": {"binary_data": False}}],
    }
    return json.dumps(doc).encode(), {"Content-Type": "application/json"}


def _uint8_request(pixels: npt.NDArray[Any]) -> Body:
    return binary_request(PIXELS_INPUT, pixels, "UINT8")


def _fp32_request(floats: npt.NDArray[Any]) -> Body:
    return binary_request(FP32_INPUT, floats, "FP32")


def _ensemble_request(data: bytes) -> Body:
    return binary_request(IMAGES_INPUT, np.array([[data]], dtype=np.object_), "BYTES")


def run(ctx: Context) -> None:
    served = ctx.served("tiny")
    repo = served.repo
    label = repo.encoder.spec.label
    model, fp32_model, images_model = repo.model, repo.name_of(FP32), repo.images_model
    if fp32_model not in repo.variants:
        raise RuntimeError(f"the run repository has no fp32 twin {fp32_model!r}")
    served.use([model, fp32_model, repo.preprocess_model, images_model])
    photos = ctx.photos()
    jpegs = [p.read_bytes() for p in photos]
    spec = repo.preprocessing
    pixels = [load_image_pixels(b, spec) for b in jpegs]
    floats = [normalize_pixels(p, spec) for p in pixels]  # (1, 3, H, W) each
    batched = [p[None] for p in pixels]
    common = f"concurrency {CONCURRENCY}, 1 image per request, {len(photos)} sample photos"
    seconds = ctx.measure_s

    def row(
        case: str,
        ours: tuple[str, Measurement],
        base: tuple[str, Measurement],
        settings: str,
        note: str = "",
    ) -> None:
        ctx.emit(
            Row(
                scenario=NUMBER,
                case=case,
                ours=side_from(ours[0], ours[1], detail=_detail(ours[1])),
                baseline=side_from(base[0], base[1], detail=_detail(base[1])),
                model=label,
                settings=f"{common}; {settings}",
                note=note,
            )
        )

    # HTTP binary vs gRPC, our client on both.
    r = alternate(
        {
            "http": lambda: _measure_client(
                served.http_url, model, pixels, "embed", seconds, served
            ),
            "grpc": lambda: _measure_client(
                served.grpc_url, model, pixels, "embed", seconds, served
            ),
        },
        ctx.rounds,
    )
    row(
        "HTTP (binary tensors) vs gRPC",
        ("HTTP binary", r["http"]),
        ("gRPC", r["grpc"]),
        "pre-made uint8 pixels, AsyncVisionClient.embed",
    )

    # Binary vs JSON encoding, same harness (one aiohttp session, encoding per call).
    r = alternate(
        {
            "binary": lambda: _measure_raw(
                model, batched, _uint8_request, parse_binary_response, seconds, served
            ),
            "json": lambda: _measure_raw(
                model,
                batched,
                lambda a: _json_request(PIXELS_INPUT, a, "UINT8"),
                _parse_json,
                seconds,
                served,
            ),
        },
        ctx.rounds,
    )
    row(
        "HTTP binary tensors vs HTTP JSON tensors",
        ("binary", r["binary"]),
        ("JSON", r["json"]),
        "uint8 pixels, request encoded per call, one aiohttp session",
    )

    # uint8 pixels vs fp32 normalised pixels (4x the bytes) to the fp32 twin.
    r = alternate(
        {
            "uint8": lambda: _measure_raw(
                model, batched, _uint8_request, parse_binary_response, seconds, served
            ),
            "fp32": lambda: _measure_raw(
                fp32_model, floats, _fp32_request, parse_binary_response, seconds, served
            ),
        },
        ctx.rounds,
    )
    cosine = _twin_cosine(served.http_url, model, fp32_model, batched[0], floats[0])
    if cosine < TWIN_MIN_COSINE:
        raise RuntimeError(
            f"the fp32 twin's embedding differs from the model's: cosine {cosine:.6f} "
            f"< {TWIN_MIN_COSINE}"
        )
    row(
        "uint8 pixels vs fp32 normalised pixels",
        ("uint8 NHWC", r["uint8"]),
        ("fp32 NCHW", r["fp32"]),
        "binary HTTP; fp32 goes to a twin of the model with a float input (a prologue maps "
        "the floats back to uint8 levels, then the same graph); pre-made tensors (the fp32 "
        "side's client-side normalisation is not counted)",
        note=f"the fp32 twin gives the same embedding (cosine {cosine:.6f})",
    )

    # Client-side preprocessing vs raw JPEG bytes to the ensemble.
    r = alternate(
        {
            "client": lambda: _measure_client(
                served.http_url, model, jpegs, "embed_image_bytes", seconds, served
            ),
            "ensemble": lambda: _measure_raw(
                images_model, jpegs, _ensemble_request, parse_binary_response, seconds, served
            ),
        },
        ctx.rounds,
    )
    row(
        "client-side preprocessing vs raw bytes to the _images ensemble",
        ("client decode + uint8 pixels", r["client"]),
        ("JPEG bytes to ensemble", r["ensemble"]),
        "JPEG q90 photos as bytes; client: AsyncVisionClient.embed_image_bytes (decode pool "
        f"of {ctx.cores}); ensemble: preprocess model with 2 python-backend instances",
    )
    served.use([])


def _twin_cosine(
    url: str,
    model: str,
    twin: str,
    pixels: npt.NDArray[Any],
    floats: npt.NDArray[Any],
) -> float:
    def infer(name: str, body: Body) -> npt.NDArray[np.float32]:
        request = urllib.request.Request(
            f"{url}{infer_path(name)}", data=body[0], headers=body[1], method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            batch = parse_binary_response(resp.read(), resp.headers.get(HEADER_LENGTH_HEADER))
        first: npt.NDArray[np.float32] = batch[0]
        return first

    a = infer(model, _uint8_request(pixels))
    b = infer(twin, _fp32_request(floats))
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


SCENARIO = Scenario(NUMBER, TITLE, run)
