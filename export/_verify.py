"""Compare what a live Triton model returns with PyTorch on the same pixels.

``verify_model`` is the comparison, over any ``infer(pixels) -> embeddings`` callable and the
model's config as Triton reports it (JSON); ``verify_server`` plugs in ``tritonclient.http``.
Both read the preprocessing spec the server publishes, turn sample images into pixels with
the client's own preprocessing, and run the PyTorch encoder on exactly those pixels.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tritonvision.contract import (
    DEFAULT_MODEL,
    PARAM_EMBEDDING_DIM,
    PARAM_FAMILY,
    PARAM_NORMALIZED,
    PARAM_PRECISION,
    PARAM_PREPROCESSING,
    PARAM_SOURCE,
    PARAM_TRAINED,
    PreprocessSpec,
)
from tritonvision.errors import ModelConfigError

from ._encoders import (
    ENCODER_FAMILIES,
    LoadedEncoder,
    builtin_encoder,
    describe_checkpoint,
    load_encoder,
)
from ._errors import VerificationError
from ._reports import VerifyReport
from ._validate import compare_embeddings, row_cosines

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from PIL import Image

__all__ = [
    "DEFAULT_SERVER",
    "published_parameters",
    "sample_images",
    "verify_model",
    "verify_server",
]

DEFAULT_SERVER = "localhost:8000"
REQUIRED_PARAMETERS = (
    PARAM_PREPROCESSING,
    PARAM_FAMILY,
    PARAM_TRAINED,
    PARAM_EMBEDDING_DIM,
    PARAM_NORMALIZED,
)

Infer = Callable[["npt.NDArray[np.uint8]"], "npt.NDArray[Any]"]


def sample_images() -> list[tuple[str, Image.Image]]:
    """Made-up images of assorted sizes and shapes, plus scikit-image's samples if present."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:240, 0:320]
    gradient = np.stack([xs * 255 // 319, ys * 255 // 239, (xs + ys) * 255 // 558], axis=-1)
    checker = ((np.indices((300, 200)).sum(axis=0) // 25) % 2 * 255).astype(np.uint8)
    images = [
        ("gradient-320x240", Image.fromarray(gradient.astype(np.uint8), "RGB")),
        ("checkerboard-200x300", Image.fromarray(checker, "L").convert("RGB")),
        ("noise-257x199", Image.fromarray(rng.integers(0, 256, (199, 257, 3), dtype=np.uint8))),
        ("solid-48x64", Image.new("RGB", (48, 64), (200, 40, 90))),
    ]
    try:
        from skimage import data
    except ImportError:
        return images
    for name in ("astronaut", "coffee", "chelsea"):
        try:
            images.append((f"skimage-{name}", Image.fromarray(getattr(data, name)())))
        except (ImportError, OSError, ValueError):
            continue  # sample files that would need a download
    return images


def published_parameters(config: Mapping[str, Any]) -> dict[str, str]:
    """The ``parameters`` of a model config as Triton's JSON gives them, as plain strings."""
    params = config.get("parameters") or {}
    out: dict[str, str] = {}
    for key, value in params.items():
        out[key] = value.get("string_value", "") if isinstance(value, Mapping) else str(value)
    return out


def _uses_fp16(config: Mapping[str, Any], params: Mapping[str, str]) -> bool:
    if params.get(PARAM_PRECISION) == "fp16":
        return True
    # TensorRT at FP16 on a GPU instance computes in half precision even for fp32 weights.
    accelerators = (
        (config.get("optimization") or {})
        .get("execution_accelerators", {})
        .get("gpu_execution_accelerator", [])
    )
    return any(
        str(a.get("parameters", {}).get("precision_mode", "")).upper() == "FP16"
        for a in accelerators
    )


def _reference_encoder(checkpoint: Path | None, served_dim: str) -> LoadedEncoder:
    """The PyTorch encoder to compare with: ``checkpoint`` loaded, else the built-in default.

    A family with several embeddings (DINOv2: ``cls`` [N, D], ``cls+mean`` [N, 2D]) publishes
    only ``D``; its poolings differ in ``D``, so the served ``D`` says which one to load.
    """
    if checkpoint is None:
        return builtin_encoder()
    default = describe_checkpoint(checkpoint)  # with the family's default pooling
    if str(default.embedding_dim) != served_dim:
        for pooling in ENCODER_FAMILIES[default.family].poolings[1:]:
            if str(describe_checkpoint(checkpoint, pooling=pooling).embedding_dim) == served_dim:
                return load_encoder(checkpoint, pooling=pooling)
    return load_encoder(checkpoint)


def verify_model(
    config: Mapping[str, Any],
    infer: Infer,
    *,
    checkpoint: Path | None = None,
    images: Sequence[tuple[str, Image.Image]] | None = None,
    encoder: LoadedEncoder | None = None,
) -> VerifyReport:
    """Check a served encoder against PyTorch; raise :class:`VerificationError` on a mismatch.

    ``config`` is the encoder's model config as Triton's HTTP API returns it; ``infer`` sends
    uint8 pixels [N, H, W, 3] to it and returns the embeddings [N, D]. The reference is
    ``encoder`` (e.g. :func:`module_encoder` of your own module), else ``checkpoint`` loaded
    (with the pooling whose size the server publishes), else the built-in default.
    """
    import numpy as np
    import torch

    from tritonvision.client._imaging import preprocess_image

    name = str(config.get("name", "?"))
    params = published_parameters(config)
    missing = [k for k in REQUIRED_PARAMETERS if k not in params]
    if missing:
        raise VerificationError(f"{name}: model config does not publish {', '.join(missing)}")
    try:
        spec = PreprocessSpec.from_json(params[PARAM_PREPROCESSING])
    except ModelConfigError as exc:
        raise VerificationError(f"{name}: {exc.message}") from exc

    if encoder is None:
        encoder = _reference_encoder(checkpoint, params[PARAM_EMBEDDING_DIM])
    problems: list[str] = []
    served = {
        PARAM_FAMILY: encoder.family.name,
        PARAM_EMBEDDING_DIM: str(encoder.embedding_dim),
        PARAM_TRAINED: "true" if encoder.trained else "false",
    }
    for key, expected in served.items():
        if params[key] != expected:
            problems.append(f"{key} is {params[key]!r} on the server, {expected!r} here")
    if json.loads(spec.to_json()) != json.loads(encoder.preprocessing.to_json()):
        problems.append(
            f"server preprocessing {spec.to_json()} != reference {encoder.preprocessing.to_json()}"
        )
    if problems:
        raise VerificationError(
            f"{name} does not serve the reference encoder ({encoder.source}): "
            + "; ".join(problems)
        )

    samples = list(images) if images is not None else sample_images()
    if not samples:
        raise VerificationError("no images to verify with")
    pixels = np.stack([preprocess_image(img, spec) for _, img in samples])
    max_batch = int(config.get("max_batch_size", 0)) or 1
    reference_module = encoder.wrapper(normalize=params[PARAM_NORMALIZED] == "true")
    got_parts, want_parts = [], []
    for start in range(0, len(pixels), max_batch):
        chunk = pixels[start : start + max_batch]
        got_parts.append(np.asarray(infer(chunk)))
        with torch.no_grad():
            want_parts.append(reference_module(torch.from_numpy(chunk)).numpy())
    got, want = np.concatenate(got_parts), np.concatenate(want_parts)
    if got.shape != want.shape:
        raise VerificationError(f"{name}: server returned shape {got.shape}, expected {want.shape}")

    tolerance = encoder.family.tolerance_for(fp16=_uses_fp16(config, params))
    max_abs, min_cos, passed = compare_embeddings(got, want, tolerance)
    cosines = row_cosines(got, want)
    report = VerifyReport(
        model_name=name,
        served_source=params.get(PARAM_SOURCE, ""),
        reference_source=encoder.source,
        images=tuple(n for n, _ in samples),
        cosines=tuple(float(c) for c in cosines),
        max_abs_diff=max_abs,
        min_cosine=min_cos,
        tolerance=tolerance,
        passed=passed,
    )
    if not passed:
        raise VerificationError(report.describe(), report=report)
    return report


def _host_port(url: str) -> str:
    # tritonclient.http wants host:port; accept a URL too.
    for scheme in ("http://", "https://"):
        if url.startswith(scheme):
            url = url[len(scheme) :]
    return url.rstrip("/")


def verify_server(
    url: str = DEFAULT_SERVER,
    *,
    checkpoint: Path | None = None,
    name: str = DEFAULT_MODEL,
    images: Sequence[tuple[str, Image.Image]] | None = None,
    encoder: LoadedEncoder | None = None,
    timeout_s: float = 120.0,
    headers: Mapping[str, str] | None = None,
) -> VerifyReport:
    """:func:`verify_model` against model ``name`` on the Triton HTTP endpoint ``url``.

    ``headers`` go with every request to Triton (an authenticating proxy, restricted APIs).
    """
    import numpy as np
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    host = _host_port(url)
    sent_headers = dict(headers or {})
    client = httpclient.InferenceServerClient(
        host, connection_timeout=timeout_s, network_timeout=timeout_s
    )
    try:
        try:
            if not client.is_model_ready(name, headers=sent_headers):
                raise VerificationError(f"model {name!r} is not ready on {host}")
            config = client.get_model_config(name, headers=sent_headers)
        except (InferenceServerException, OSError) as exc:
            raise VerificationError(f"cannot read model {name!r} from {host}: {exc}") from exc
        input_name = config["input"][0]["name"]
        output_name = config["output"][0]["name"]

        def infer(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[Any]:
            tensor = httpclient.InferInput(input_name, list(pixels.shape), "UINT8")
            tensor.set_data_from_numpy(np.ascontiguousarray(pixels), binary_data=True)
            wanted = httpclient.InferRequestedOutput(output_name, binary_data=True)
            try:
                result = client.infer(name, [tensor], outputs=[wanted], headers=sent_headers)
            except (InferenceServerException, OSError) as exc:
                raise VerificationError(f"inference on {name!r} at {host} failed: {exc}") from exc
            out: npt.NDArray[Any] | None = result.as_numpy(output_name)
            if out is None:
                raise VerificationError(f"{name!r} at {host} returned no {output_name!r}")
            return out

        return verify_model(config, infer, checkpoint=checkpoint, images=images, encoder=encoder)
    finally:
        client.close()
