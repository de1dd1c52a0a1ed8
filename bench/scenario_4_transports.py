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
from collections.abc import Callable
from typing import Any

import aiohttp
import numpy as np
from _common import Measurement, Row, alternate, run_tasks, side_from

NUMBER = 4
TITLE = "Transports and encodings"
CONCURRENCY = 8


def _detail(m: Measurement) -> str:
    parts = [f"{m.extra['bytes_per_img'] / 1024:,.0f} KiB/img sent"]
    if "client_cpu_ms" in m.extra:
        parts.append(
            f"CPU/img: client {m.extra['client_cpu_ms']:.2f} ms, "
            f"server {m.extra['server_cpu_ms']:.2f} ms"
        )
    return "; ".join(parts)


def _measure_client(
    url: str, model: str, inputs: list[Any], method: str, duration_s: float, served: Any
) -> Measurement:
    """Our client (HTTP or gRPC by URL), ``method`` over ``inputs``, N concurrent tasks."""
    from tritonvision.client import AsyncVisionClient

    async def go() -> Measurement:
        async with AsyncVisionClient(url, model) as client:
            await client.model_info()
            fn = getattr(client, method)
            counter = [0]

            async def call(worker: int) -> None:
                counter[0] += 1
                await fn(inputs[counter[0] % len(inputs)])

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
    url: str,
    model: str,
    bodies: list[tuple[bytes, dict[str, str]]],
    parse: Callable[[bytes, Any], np.ndarray],
    duration_s: float,
    served: Any,
) -> Measurement:
    """Pre-encoded request bodies POSTed over one shared aiohttp session.

    Encoding happens per request inside ``bodies``' maker in the real world; here the
    JSON/binary encoding is done per call too (see ``_bodies``) so its CPU cost counts.
    """
    endpoint = f"{url}/v2/models/{model}/infer"

    async def go() -> Measurement:
        async with aiohttp.ClientSession() as session:
            counter = [0]
            sent = [0]

            async def call(worker: int) -> None:
                counter[0] += 1
                body, headers = bodies[counter[0] % len(bodies)]
                sent[0] += len(body)
                async with session.post(endpoint, data=body, headers=headers) as resp:
                    payload = await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"{model}: HTTP {resp.status}: {payload[:200]!r}")
                    parse(payload, resp.headers)

            cpu0, server0 = time.process_time(), served.cpu_seconds()
            m = await run_tasks(call, concurrency=CONCURRENCY, duration_s=duration_s)
            done = max(1, counter[0])
            m.extra["bytes_per_img"] = sent[0] / done
            m.extra["client_cpu_ms"] = (time.process_time() - cpu0) * 1000 / done
            m.extra["server_cpu_ms"] = (served.cpu_seconds() - server0) * 1000 / done
            return m

    return asyncio.run(go())


def _parse_binary(payload: bytes, headers: Any) -> np.ndarray:
    from tritonvision.client._protocol import HEADER_LENGTH_HEADER, parse_infer_response

    length = headers.get(HEADER_LENGTH_HEADER)
    return parse_infer_response(payload, header_length=int(length) if length else None).output(
        "embeddings"
    )


def _parse_json(payload: bytes, headers: Any) -> np.ndarray:
    doc = json.loads(payload)
    out = doc["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def _binary_body(name: str, array: np.ndarray, datatype: str) -> tuple[bytes, dict[str, str]]:
    from tritonvision.client._protocol import InputTensor, build_infer_request

    request = build_infer_request([InputTensor(name, array, datatype)], ["embeddings"])
    return request.body, request.headers


def _json_body(name: str, array: np.ndarray, datatype: str) -> tuple[bytes, dict[str, str]]:
    doc = {
        "inputs": [
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype,
                "data": array.reshape(-1).tolist(),
            }
        ],
        "outputs": [{"name": "embeddings", "parameters": {"binary_data": False}}],
    }
    return json.dumps(doc).encode(), {"Content-Type": "application/json"}


class _EncodeEachCall(list):  # type: ignore[type-arg]
    """A body list whose items are encoded when taken, so encoding cost is measured."""

    def __init__(
        self, encode: Callable[[np.ndarray], tuple[bytes, dict[str, str]]], arrays: list[np.ndarray]
    ) -> None:
        super().__init__(arrays)
        self._encode = encode

    def __getitem__(self, index: Any) -> Any:
        return self._encode(super().__getitem__(index))


def run(ctx: Any) -> None:
    from tritonvision.client._imaging import load_image_pixels, normalize_pixels

    served = ctx.served("tiny")
    repo = served.repo
    label = repo.encoder.spec.label
    model, fp32_model, images_model = repo.model, f"{repo.model}_fp32", repo.images_model
    served.use([model, fp32_model, repo.preprocess_model, images_model])
    photos = ctx.photos()
    jpegs = [p.read_bytes() for p in photos]
    from tritonvision.client import PreprocessSpec

    spec = PreprocessSpec.clip_default(224)
    pixels = [load_image_pixels(b, spec) for b in jpegs]
    floats = [normalize_pixels(p, spec) for p in pixels]  # (1, 3, 224, 224) each
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
    batched = [p[None] for p in pixels]
    r = alternate(
        {
            "binary": lambda: _measure_raw(
                served.http_url,
                model,
                _EncodeEachCall(lambda a: _binary_body("pixels", a, "UINT8"), batched),
                _parse_binary,
                seconds,
                served,
            ),
            "json": lambda: _measure_raw(
                served.http_url,
                model,
                _EncodeEachCall(lambda a: _json_body("pixels", a, "UINT8"), batched),
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
    if fp32_model in repo.variants:
        r = alternate(
            {
                "uint8": lambda: _measure_raw(
                    served.http_url,
                    model,
                    _EncodeEachCall(lambda a: _binary_body("pixels", a, "UINT8"), batched),
                    _parse_binary,
                    seconds,
                    served,
                ),
                "fp32": lambda: _measure_raw(
                    served.http_url,
                    fp32_model,
                    _EncodeEachCall(lambda a: _binary_body("pixel_values", a, "FP32"), floats),
                    _parse_binary,
                    seconds,
                    served,
                ),
            },
            ctx.rounds,
        )
        check = _twin_cosine(served.http_url, model, fp32_model, batched[0], floats[0])
        row(
            "uint8 pixels vs fp32 normalised pixels",
            ("uint8 NHWC", r["uint8"]),
            ("fp32 NCHW", r["fp32"]),
            "binary HTTP; fp32 goes to a twin of the model with a float input; "
            "pre-made tensors (the fp32 side's client-side normalisation is not counted)",
            note=f"the fp32 twin gives the same embedding (cosine {check:.6f})",
        )

    # Client-side preprocessing vs raw JPEG bytes to the ensemble.
    def ensemble_body(data: bytes) -> tuple[bytes, dict[str, str]]:
        return _binary_body("images", np.array([[data]], dtype=object), "BYTES")

    r = alternate(
        {
            "client": lambda: _measure_client(
                served.http_url, model, jpegs, "embed_image_bytes", seconds, served
            ),
            "ensemble": lambda: _measure_raw(
                served.http_url,
                images_model,
                _EncodeEachCall(ensemble_body, jpegs),  # type: ignore[arg-type]
                _parse_binary,
                seconds,
                served,
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


def _twin_cosine(url: str, model: str, twin: str, pixels: np.ndarray, floats: np.ndarray) -> float:
    import urllib.request

    def infer(name: str, body: tuple[bytes, dict[str, str]]) -> np.ndarray:
        request = urllib.request.Request(
            f"{url}/v2/models/{name}/infer", data=body[0], headers=body[1], method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            return _parse_binary(resp.read(), resp.headers)[0]

    a = infer(model, _binary_body("pixels", pixels, "UINT8"))
    b = infer(twin, _binary_body("pixel_values", floats, "FP32"))
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
