"""Compare what a live Triton model returns with PyTorch on the same pixels, or the same texts.

``verify_model`` is the comparison, over any ``infer(pixels) -> embeddings`` callable and the
model's config as Triton reports it (JSON); ``verify_server`` plugs in ``tritonclient.http``.
Both read the preprocessing spec the server publishes, turn sample images into pixels with
the client's own preprocessing, and run the PyTorch encoder on exactly those pixels.

The text side (``tritonvision export --text``): ``verify_text_model`` sends sample sentences
(short, over-long so that they are truncated, non-ASCII) as plain strings through the
``NAME_texts`` ensemble, so the served tokenizer is checked too, and compares the embeddings
with transformers' own ``get_text_features`` of the checkpoint, tokenised by the checkpoint's
tokenizer at the context length it publishes; ``verify_text_server`` plugs in
``tritonclient.http``. Without a checkpoint, both sides use the one the model was exported
from when its published ``tritonvision.source`` is a directory on this machine.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from tritonvision.contract import (
    DEFAULT_MODEL,
    EMBEDDINGS_OUTPUT,
    PARAM_CONTEXT_LENGTH,
    PARAM_EMBEDDING_DIM,
    PARAM_FAMILY,
    PARAM_NORMALIZED,
    PARAM_PRECISION,
    PARAM_PREPROCESSING,
    PARAM_SOURCE,
    PARAM_TRAINED,
    TEXTS_INPUT,
    PreprocessSpec,
    texts_name,
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
from ._reports import Tolerance, VerifyReport
from ._validate import compare_embeddings, row_cosines

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from PIL import Image

__all__ = [
    "DEFAULT_SERVER",
    "TextVerifyReport",
    "published_checkpoint",
    "published_parameters",
    "sample_images",
    "sample_texts",
    "verify_model",
    "verify_server",
    "verify_text_model",
    "verify_text_server",
]

DEFAULT_SERVER = "localhost:8000"
REQUIRED_PARAMETERS = (
    PARAM_PREPROCESSING,
    PARAM_FAMILY,
    PARAM_TRAINED,
    PARAM_EMBEDDING_DIM,
    PARAM_NORMALIZED,
)

REQUIRED_TEXT_PARAMETERS = (
    PARAM_FAMILY,
    PARAM_EMBEDDING_DIM,
    PARAM_NORMALIZED,
    PARAM_CONTEXT_LENGTH,
)

Infer = Callable[["npt.NDArray[np.uint8]"], "npt.NDArray[Any]"]
InferTexts = Callable[[Sequence[str]], "npt.NDArray[Any]"]
_Report = TypeVar("_Report", bound=VerifyReport)


@dataclass(frozen=True, kw_only=True)
class TextVerifyReport(VerifyReport):
    """A :class:`VerifyReport` over sentences: ``images`` holds the sentences' names."""

    def describe(self) -> str:
        figures = self.tolerance.describe(self.max_abs_diff, self.min_cosine, self.passed)
        return f"{self.model_name}: {len(self.images)} sentences, {figures}"


def sample_texts() -> list[tuple[str, str]]:
    """Named sentences: short, empty, over-long (past any context length: truncated by the
    tokenizer), and non-ASCII (accents, CJK, emoji)."""
    return [
        ("short", "a photo of a dog"),
        ("short-punctuated", "A CAT, sitting on a mat; in the sun!"),
        ("empty", ""),
        ("long-truncated", " ".join(["the quick brown fox jumps over the lazy dog"] * 40)),
        ("non-ascii-accents", "héllo wörld, ça va très bien"),
        ("non-ascii-cjk", "日本語のテキスト、猫の写真"),
        ("non-ascii-emoji", "a dog 🐶 on the beach 🏖️"),
    ]


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


def published_checkpoint(params: Mapping[str, str]) -> Path | None:
    """The checkpoint a model was exported from, when its published ``tritonvision.source`` is
    a checkpoint directory on this machine (``builtin:...`` and ``module:...`` are not)."""
    source = params.get(PARAM_SOURCE, "")
    path = Path(source)
    if source and path.is_absolute() and (path / "config.json").is_file():
        return path
    return None


def _published(config: Mapping[str, Any], required: Sequence[str]) -> tuple[str, dict[str, str]]:
    """The model's name and published parameters; :class:`VerificationError` naming those of
    ``required`` it does not publish."""
    name = str(config.get("name", "?"))
    params = published_parameters(config)
    missing = [k for k in required if k not in params]
    if missing:
        raise VerificationError(f"{name}: model config does not publish {', '.join(missing)}")
    return name, params


def _mismatches(params: Mapping[str, str], expected: Mapping[str, str]) -> list[str]:
    """The published parameters that differ from what the reference says they should be."""
    return [
        f"{key} is {params[key]!r} on the server, {want!r} here"
        for key, want in expected.items()
        if params[key] != want
    ]


def _compared(
    report_type: type[_Report],
    *,
    name: str,
    params: Mapping[str, str],
    reference_source: str,
    samples: Sequence[str],
    got: npt.NDArray[Any],
    want: npt.NDArray[Any],
    tolerance: Tolerance,
) -> _Report:
    """Served embeddings ``got`` against the reference's ``want`` (one row per sample): the
    report, or :class:`VerificationError` carrying it."""
    if got.shape != want.shape:
        raise VerificationError(f"{name}: server returned shape {got.shape}, expected {want.shape}")
    max_abs, min_cos, passed = compare_embeddings(got, want, tolerance)
    report = report_type(
        model_name=name,
        served_source=params.get(PARAM_SOURCE, ""),
        reference_source=reference_source,
        images=tuple(samples),
        cosines=tuple(float(c) for c in row_cosines(got, want)),
        max_abs_diff=max_abs,
        min_cosine=min_cos,
        tolerance=tolerance,
        passed=passed,
    )
    if not passed:
        raise VerificationError(report.describe(), report=report)
    return report


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
    (with the pooling whose size the server publishes), else the published source when it is
    a checkpoint directory here (:func:`published_checkpoint`), else the built-in default.
    """
    import numpy as np
    import torch

    from tritonvision.client._imaging import preprocess_image

    name, params = _published(config, REQUIRED_PARAMETERS)
    try:
        spec = PreprocessSpec.from_json(params[PARAM_PREPROCESSING])
    except ModelConfigError as exc:
        raise VerificationError(f"{name}: {exc.message}") from exc

    if encoder is None:
        encoder = _reference_encoder(
            checkpoint or published_checkpoint(params), params[PARAM_EMBEDDING_DIM]
        )
    problems = _mismatches(
        params,
        {
            PARAM_FAMILY: encoder.family.name,
            PARAM_EMBEDDING_DIM: str(encoder.embedding_dim),
            PARAM_TRAINED: "true" if encoder.trained else "false",
        },
    )
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
    return _compared(
        VerifyReport,
        name=name,
        params=params,
        reference_source=encoder.source,
        samples=[n for n, _ in samples],
        got=np.concatenate(got_parts),
        want=np.concatenate(want_parts),
        tolerance=encoder.family.tolerance_for(fp16=_uses_fp16(config, params)),
    )


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

    with contextlib.closing(_Server(url, timeout_s=timeout_s, headers=headers)) as server:
        config = server.config(name)
        input_name = config["input"][0]["name"]
        output_name = config["output"][0]["name"]

        def infer(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[Any]:
            tensor = httpclient.InferInput(input_name, list(pixels.shape), "UINT8")
            tensor.set_data_from_numpy(np.ascontiguousarray(pixels), binary_data=True)
            return server.infer(name, tensor, output_name)

        return verify_model(config, infer, checkpoint=checkpoint, images=images, encoder=encoder)


class _Server:
    """One Triton HTTP endpoint (``tritonclient.http``) and the headers every request carries;
    its failures are :class:`VerificationError` naming the model and the host."""

    def __init__(
        self, url: str, *, timeout_s: float, headers: Mapping[str, str] | None = None
    ) -> None:
        import tritonclient.http as httpclient

        self.host = _host_port(url)
        self.headers = dict(headers or {})
        self.client = httpclient.InferenceServerClient(
            self.host, connection_timeout=timeout_s, network_timeout=timeout_s
        )

    def close(self) -> None:
        self.client.close()

    @overload
    def config(self, model: str, *, optional: Literal[False] = False) -> dict[str, Any]: ...
    @overload
    def config(self, model: str, *, optional: bool) -> dict[str, Any] | None: ...
    def config(self, model: str, *, optional: bool = False) -> dict[str, Any] | None:
        """``model``'s config as Triton's JSON gives it, once the model is ready.

        ``optional``: None when it is not ready because the repository does not list it.
        """
        from tritonclient.utils import InferenceServerException

        try:
            if not self.client.is_model_ready(model, headers=self.headers):
                if optional and not _in_repository(self.client, model, self.headers):
                    return None
                raise VerificationError(f"model {model!r} is not ready on {self.host}")
            config: dict[str, Any] = self.client.get_model_config(model, headers=self.headers)
        except (InferenceServerException, OSError) as exc:
            raise VerificationError(f"cannot read model {model!r} from {self.host}: {exc}") from exc
        return config

    def infer(self, model: str, tensor: Any, output_name: str) -> npt.NDArray[Any]:
        """One request of ``tensor`` to ``model``; its ``output_name`` output."""
        import tritonclient.http as httpclient
        from tritonclient.utils import InferenceServerException

        wanted = httpclient.InferRequestedOutput(output_name, binary_data=True)
        try:
            result = self.client.infer(model, [tensor], outputs=[wanted], headers=self.headers)
        except (InferenceServerException, OSError) as exc:
            raise VerificationError(f"inference on {model!r} at {self.host} failed: {exc}") from exc
        out: npt.NDArray[Any] | None = result.as_numpy(output_name)
        if out is None:
            raise VerificationError(f"{model!r} at {self.host} returned no {output_name!r}")
        return out


# ---------------------------------------------------------------------------------- text


@dataclass(frozen=True)
class _TextReference:
    """transformers' own text embeddings of one checkpoint, as its users compute them."""

    source: str
    family: str
    embedding_dim: int
    context_length: int
    tolerance_fp32: Tolerance
    tolerance_fp16: Tolerance
    tokenizer: Any
    model: Any

    def embed(self, texts: Sequence[str], *, normalize: bool) -> npt.NDArray[Any]:
        import torch

        batch = self.tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.context_length,
            return_tensors="pt",
        )
        with torch.no_grad():
            out = self.model.get_text_features(**batch)
        # transformers 5 returns the projected features as ``pooler_output``; 4 a tensor.
        features = out if isinstance(out, torch.Tensor) else out.pooler_output
        features = features.float()
        if normalize:
            features = torch.nn.functional.normalize(features, dim=-1)
        result: npt.NDArray[Any] = features.numpy()
        return result


def _text_reference(checkpoint: Path) -> _TextReference:
    """Load ``checkpoint``'s two-tower model and tokenizer (offline); CheckpointError if it
    has no text tower or no tokenizer."""
    import transformers

    from ._text import _describe

    described = _describe(checkpoint)  # config and tokenizer, each read once
    tower = described.tower
    model_class = getattr(transformers, tower.model_class)
    model = model_class.from_pretrained(checkpoint, local_files_only=True)
    model.train(False)
    return _TextReference(
        source=str(checkpoint.resolve()),
        family=tower.family.name,
        embedding_dim=described.embedding_dim,
        context_length=described.context_length,
        tolerance_fp32=tower.family.tolerance_for(fp16=False),
        tolerance_fp16=tower.family.tolerance_for(fp16=True),
        tokenizer=described.tokenizer,
        model=model,
    )


def verify_text_model(
    config: Mapping[str, Any],
    infer: InferTexts,
    *,
    checkpoint: Path | None = None,
    texts: Sequence[tuple[str, str]] | None = None,
) -> TextVerifyReport:
    """Check a served text model (``NAME_texts``: strings in) against transformers.

    ``config`` is the text model's config as Triton's HTTP API returns it; ``infer`` sends a
    list of strings and returns their embeddings [N, D]. The reference is ``checkpoint``'s own
    ``get_text_features`` (else the checkpoint the model publishes as its source, when it is
    here), tokenised at the published context length, L2-normalised when the model publishes
    ``normalized``. Raises :class:`VerificationError` on a mismatch, or when there is no
    checkpoint to compare with; :class:`CheckpointError` when the checkpoint has no text tower.
    """
    import numpy as np

    name, params = _published(config, REQUIRED_TEXT_PARAMETERS)
    if checkpoint is None:
        checkpoint = published_checkpoint(params)
    if checkpoint is None:
        raise VerificationError(
            f"{name}: exported from {params.get(PARAM_SOURCE, '?')!r}, which is not a checkpoint "
            "directory here; give the checkpoint the text tower was exported from (--checkpoint)"
        )
    reference = _text_reference(Path(checkpoint))
    problems = _mismatches(
        params,
        {
            PARAM_FAMILY: reference.family,
            PARAM_EMBEDDING_DIM: str(reference.embedding_dim),
            PARAM_CONTEXT_LENGTH: str(reference.context_length),
        },
    )
    if problems:
        raise VerificationError(
            f"{name} does not serve the text tower of {reference.source}: " + "; ".join(problems)
        )

    samples = list(texts) if texts is not None else sample_texts()
    if not samples:
        raise VerificationError("no texts to verify with")
    sentences = [text for _, text in samples]
    max_batch = int(config.get("max_batch_size", 0)) or 1
    normalize = params[PARAM_NORMALIZED] == "true"
    got_parts = [
        np.asarray(infer(sentences[start : start + max_batch]))
        for start in range(0, len(sentences), max_batch)
    ]
    fp16 = _uses_fp16(config, params)
    return _compared(
        TextVerifyReport,
        name=name,
        params=params,
        reference_source=reference.source,
        samples=[n for n, _ in samples],
        got=np.concatenate(got_parts),
        want=reference.embed(sentences, normalize=normalize),
        tolerance=reference.tolerance_fp16 if fp16 else reference.tolerance_fp32,
    )


def verify_text_server(
    url: str = DEFAULT_SERVER,
    *,
    checkpoint: Path | None = None,
    name: str = DEFAULT_MODEL,
    texts: Sequence[tuple[str, str]] | None = None,
    timeout_s: float = 120.0,
    headers: Mapping[str, str] | None = None,
    optional: bool = False,
) -> TextVerifyReport | None:
    """:func:`verify_text_model` against ``NAME_texts`` (``name`` is the image encoder's name)
    on the Triton HTTP endpoint ``url``: sentences go in as BYTES ``texts`` [N, 1].

    ``optional``: return None when the server's repository has no ``NAME_texts`` (an
    image-only export) instead of failing; a text model that is there but not ready fails.
    """
    import numpy as np
    import tritonclient.http as httpclient

    model = texts_name(name)
    with contextlib.closing(_Server(url, timeout_s=timeout_s, headers=headers)) as server:
        config = server.config(model, optional=optional)
        if config is None:
            return None

        def infer(sentences: Sequence[str]) -> npt.NDArray[Any]:
            items = np.array([[s.encode("utf-8")] for s in sentences], dtype=np.object_)
            tensor = httpclient.InferInput(TEXTS_INPUT, list(items.shape), "BYTES")
            tensor.set_data_from_numpy(items, binary_data=True)
            return server.infer(model, tensor, EMBEDDINGS_OUTPUT)

        return verify_text_model(config, infer, checkpoint=checkpoint, texts=texts)


def _in_repository(client: Any, model: str, headers: Mapping[str, str]) -> bool:
    """Whether Triton's repository index lists ``model`` (True when the index is not ours to
    read: a restricted API must not turn a broken text model into a skipped one)."""
    from tritonclient.utils import InferenceServerException

    try:
        index = client.get_model_repository_index(headers=dict(headers))
    except (InferenceServerException, OSError):
        return True
    return any(entry.get("name") == model for entry in index)
