"""The text tower served by the real tritonserver: ``<name>_texts``, ``<name>_tokenize``.

Both tiny two-tower checkpoints (tests/_tiny_text.py: CLIP, context 77; SigLIP, context 64)
are exported with ``text=True`` into the session repository (tests/conftest.py). Plain
strings go through NVIDIA's own clients (HTTP and gRPC, BYTES ``[N, 1]``) and through
KServe v2 JSON over plain HTTP; the embeddings must equal transformers' own
``get_text_features`` of the checkpoint (cosine >= 0.9999 per row), the token tensors the
checkpoint tokenizer's own ids. Hostile strings (not UTF-8, empty, 200 KB) fail only their
own request, or embed, and the model keeps serving.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from _tiny_text import (
    LONG_TEXT,
    NON_ASCII_TEXTS,
    SHORT_TEXTS,
    TEXT_CHECKPOINTS,
    TEXTS,
    assert_tokenized_as,
    cosines_of,
    reference_text_embeddings,
)
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from tritonvision.contract import (
    ATTENTION_MASK,
    EMBEDDINGS_OUTPUT,
    INPUT_IDS,
    PARAM_CONTEXT_LENGTH,
    TEXTS_INPUT,
    TOKEN_INPUTS,
    TOKENIZER_DIR,
    text_name,
    texts_name,
    tokenize_name,
)

pytestmark = pytest.mark.e2e

MIN_COSINE = 0.9999
# The text models' max_batch_size in the session repository (tests/conftest.py).
MAX_BATCH = 8
NAMES = sorted(TEXT_CHECKPOINTS)
# More sentences than the tiny ones: longer, mixed scripts, punctuation, whitespace runs.
EXTRA_TEXTS = (
    "A CAT, sitting on a mat; in the sun!",
    "  leading and trailing   spaces  ",
    "ελληνικά και русский текст",
    "a" * 500,
)
# Figures the tests measured, printed at the end of the session's run of this module.
_PARITY: dict[str, tuple[float, float]] = {}


@pytest.fixture(scope="module", autouse=True)
def _report_parity() -> Iterator[None]:
    yield
    if _PARITY:
        lines = [
            f"  {key}: min cosine {cos:.9f}, max abs diff {diff:.2e}"
            for key, (cos, diff) in sorted(_PARITY.items())
        ]
        print("\ntext tower parity (served vs transformers):\n" + "\n".join(lines))


@pytest.fixture(scope="module")
def references(text_checkpoints: dict[str, Path]) -> dict[str, Any]:
    """Per checkpoint: a function texts -> transformers' normalised embeddings (cached)."""
    cache: dict[tuple[str, tuple[str, ...]], npt.NDArray[np.float32]] = {}

    def for_name(name: str) -> Any:
        def embed(texts: list[str]) -> npt.NDArray[np.float32]:
            key = (name, tuple(texts))
            if key not in cache:
                out = reference_text_embeddings(text_checkpoints[name], texts)
                cache[key] = out.numpy().astype(np.float32)
            return cache[key]

        return embed

    return {name: for_name(name) for name in NAMES}


def _items(texts: list[str] | list[bytes]) -> npt.NDArray[np.object_]:
    return np.array(
        [[t.encode("utf-8") if isinstance(t, str) else t] for t in texts], dtype=np.object_
    )


def _http(triton: Any, concurrency: int = 8) -> Any:
    """A ``tritonclient.http`` client of the session's Triton (a context manager: it closes)."""
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(
        triton.http_url.removeprefix("http://"), network_timeout=120, concurrency=concurrency
    )


def _grpc(triton: Any) -> Any:
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(triton.grpc_url.removeprefix("grpc://"))


def _infer_http(
    client: Any, model: str, texts: list[str] | list[bytes], outputs: tuple[str, ...]
) -> dict[str, npt.NDArray[Any]]:
    """One request of ``texts`` (at most MAX_BATCH items) over binary HTTP."""
    import tritonclient.http as httpclient

    items = _items(texts)
    tensor = httpclient.InferInput(TEXTS_INPUT, list(items.shape), "BYTES")
    tensor.set_data_from_numpy(items, binary_data=True)
    wanted = [httpclient.InferRequestedOutput(name, binary_data=True) for name in outputs]
    result = client.infer(model, [tensor], outputs=wanted)
    return {name: result.as_numpy(name) for name in outputs}


def _chunks(texts: list[str]) -> list[list[str]]:
    return [texts[i : i + MAX_BATCH] for i in range(0, len(texts), MAX_BATCH)]


def _embed_http(client: Any, name: str, texts: list[str]) -> npt.NDArray[np.float32]:
    parts = [
        _infer_http(client, texts_name(name), chunk, (EMBEDDINGS_OUTPUT,))[EMBEDDINGS_OUTPUT]
        for chunk in _chunks(texts)
    ]
    return np.concatenate(parts)


def _embed_grpc(client: Any, name: str, texts: list[str]) -> npt.NDArray[np.float32]:
    import tritonclient.grpc as grpcclient

    parts = []
    for chunk in _chunks(texts):
        items = _items(chunk)
        tensor = grpcclient.InferInput(TEXTS_INPUT, list(items.shape), "BYTES")
        tensor.set_data_from_numpy(items)
        wanted = [grpcclient.InferRequestedOutput(EMBEDDINGS_OUTPUT)]
        parts.append(
            client.infer(texts_name(name), [tensor], outputs=wanted).as_numpy(EMBEDDINGS_OUTPUT)
        )
    return np.concatenate(parts)


def _assert_parity(
    key: str, got: npt.NDArray[Any], want: npt.NDArray[Any], texts: list[str]
) -> None:
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    cosines = cosines_of(got, want)
    worst = int(np.argmin(cosines))
    diff = float(np.abs(np.asarray(got, np.float64) - want).max())
    cos_before, diff_before = _PARITY.get(key, (1.0, 0.0))
    _PARITY[key] = (min(cos_before, float(cosines[worst])), max(diff_before, diff))
    assert cosines.min() >= MIN_COSINE, (
        f"{key}: cosine {cosines[worst]:.7f} for {texts[worst][:60]!r}"
    )
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-4)


def _context_length(name: str) -> int:
    return TEXT_CHECKPOINTS[name][2]


# ------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(list(SHORT_TEXTS), id="short"),
        pytest.param([LONG_TEXT, LONG_TEXT[::-1]], id="long-truncated"),
        pytest.param(list(NON_ASCII_TEXTS), id="non-ascii"),
        pytest.param([*TEXTS, *EXTRA_TEXTS], id="all"),
    ],
)
def test_texts_ensemble_over_http_equals_transformers_text_embeddings(
    triton: Any, references: dict[str, Any], name: str, kind: list[str]
) -> None:
    with _http(triton) as client:
        got = _embed_http(client, name, kind)
    _assert_parity(f"{name} http", got, references[name](kind), kind)


@pytest.mark.parametrize("name", NAMES)
def test_texts_ensemble_over_grpc_equals_transformers_text_embeddings(
    triton: Any, references: dict[str, Any], name: str
) -> None:
    texts = [*TEXTS, *EXTRA_TEXTS]
    with _grpc(triton) as client:
        got = _embed_grpc(client, name, texts)
    _assert_parity(f"{name} grpc", got, references[name](texts), texts)


@pytest.mark.parametrize("name", NAMES)
def test_long_texts_are_truncated_at_the_context_length_as_the_tokenizer_does(
    triton: Any, name: str
) -> None:
    # Past the context length nothing counts: two texts sharing their first L tokens embed
    # the same, as they do in transformers with truncation.
    tail_a, tail_b = " and then a cat", " but never a bird on a wire"
    with _http(triton) as client:
        got = _embed_http(client, name, [LONG_TEXT + tail_a, LONG_TEXT + tail_b, LONG_TEXT])
    np.testing.assert_allclose(got[0], got[2], atol=1e-6)
    np.testing.assert_allclose(got[1], got[2], atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_curl_style_json_request_to_the_texts_ensemble_gives_the_embeddings(
    triton: Any, references: dict[str, Any], name: str
) -> None:
    texts = ["a dog on the beach", "héllo wörld ✓", "日本語のテキスト"]
    body = {
        "inputs": [
            {"name": TEXTS_INPUT, "shape": [len(texts), 1], "datatype": "BYTES", "data": texts}
        ]
    }
    request = urllib.request.Request(
        f"{triton.http_url}/v2/models/{texts_name(name)}/infer",
        data=json.dumps(body).encode("utf-8"),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        answer = json.loads(response.read())
    (output,) = answer["outputs"]
    assert output["name"] == EMBEDDINGS_OUTPUT and output["datatype"] == "FP32"
    dim = references[name](texts).shape[1]
    assert output["shape"] == [len(texts), dim]
    got = np.asarray(output["data"], dtype=np.float32).reshape(len(texts), dim)
    _assert_parity(f"{name} json", got, references[name](texts), texts)


# ------------------------------------------------------------------------ tokenize model


@pytest.mark.parametrize("name", NAMES)
def test_tokenize_model_gives_the_checkpoint_tokenizers_own_ids(
    triton: Any, text_checkpoints: dict[str, Path], name: str
) -> None:
    import transformers

    length = _context_length(name)
    texts = [*TEXTS, *EXTRA_TEXTS, ""]
    with _http(triton) as client:
        parts = [_infer_http(client, tokenize_name(name), c, TOKEN_INPUTS) for c in _chunks(texts)]
    got = {tensor: np.concatenate([p[tensor] for p in parts]) for tensor in TOKEN_INPUTS}
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        text_checkpoints[name], local_files_only=True
    )
    assert set(got) == set(TOKEN_INPUTS)
    assert_tokenized_as(got, tokenizer, texts, length)
    # The long text fills the whole context; the empty one only its special tokens.
    assert got[ATTENTION_MASK][texts.index(LONG_TEXT)].all()
    assert 0 < got[ATTENTION_MASK][-1].sum() <= 2
    assert got[INPUT_IDS].shape[1] == length


@pytest.mark.parametrize("name", NAMES)
def test_text_models_publish_the_context_length_they_were_exported_with(
    triton: Any, name: str
) -> None:
    with _http(triton) as client:
        for model in (text_name(name), tokenize_name(name), texts_name(name)):
            config = client.get_model_config(model)
            assert config["parameters"][PARAM_CONTEXT_LENGTH]["string_value"] == str(
                _context_length(name)
            ), model


# ---------------------------------------------------------------------- hostile strings


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("model_of", [tokenize_name, texts_name], ids=["tokenize", "texts"])
def test_an_item_that_is_not_utf8_fails_its_request_naming_it_and_the_model_keeps_serving(
    triton: Any, references: dict[str, Any], name: str, model_of: Any
) -> None:
    from tritonclient.utils import InferenceServerException

    model = model_of(name)
    with _http(triton) as client:
        with pytest.raises(InferenceServerException) as info:
            _infer_http(client, model, [b"a dog", b"fine", b"\xff\xfe not utf-8"], ())
        message = str(info.value)
        assert "texts[2]" in message and "UTF-8" in message, message
        assert tokenize_name(name) in message
        assert info.value.status() == "400"
        # The same model answers the next request, and its embeddings are still right.
        got = _embed_http(client, name, list(SHORT_TEXTS))
    _assert_parity(f"{name} after-bad-item", got, references[name](list(SHORT_TEXTS)), [])


@pytest.mark.parametrize("name", NAMES)
def test_empty_and_200kb_strings_embed_like_transformers_and_do_not_crash_it(
    triton: Any, references: dict[str, Any], name: str
) -> None:
    texts = ["", "x" * 200_000, "dog " * 50_000, " " * 100_000 + "a cat"]
    with _http(triton) as client:
        got = _embed_http(client, name, texts)
        again = _embed_http(client, name, list(SHORT_TEXTS))
    _assert_parity(f"{name} empty+200KB", got, references[name](texts), texts)
    _assert_parity(f"{name} http", again, references[name](list(SHORT_TEXTS)), [])


# ------------------------------------------------------------------------------ batching


@pytest.mark.parametrize("name", NAMES)
def test_a_request_of_n_strings_equals_n_single_requests(triton: Any, name: str) -> None:
    texts = [*TEXTS, *EXTRA_TEXTS]
    with _http(triton) as client:
        together = _embed_http(client, name, texts)
        alone = np.concatenate([_embed_http(client, name, [t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def _metric(metrics_url: str, metric: str, model: str) -> float:
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    pattern = rf'^{metric}{{[^}}]*model="{re.escape(model)}"[^}}]*}} (\S+)$'
    return sum(float(m) for m in re.findall(pattern, text, flags=re.MULTILINE))


@pytest.mark.parametrize("name", NAMES)
def test_concurrent_requests_batched_into_one_tokenizer_call_get_their_own_rows(
    triton: Any, references: dict[str, Any], name: str
) -> None:
    # Triton's batcher hands the tokenize model several queued requests per execute(); their
    # strings go through one tokenizer call and are split back per request. The metrics
    # prove requests were merged (fewer executions than requests); each answer must still be
    # its own text's embedding, in its own request.
    import tritonclient.http as httpclient

    texts = [*TEXTS, *EXTRA_TEXTS] * 3
    want = references[name](texts)
    model = tokenize_name(name)
    merged = False
    # tritonclient.http's async_infer: every request in flight at once, on its own connection.
    with _http(triton, concurrency=len(texts)) as client:
        for _ in range(5):
            requests_before = _metric(triton.metrics_url, "nv_inference_request_success", model)
            execs_before = _metric(triton.metrics_url, "nv_inference_exec_count", model)
            # A slow request first (8 x 200 KB to tokenize, about a second) keeps the one
            # tokenize instance busy while the burst queues behind it.
            slow = httpclient.InferInput(TEXTS_INPUT, [MAX_BATCH, 1], "BYTES")
            slow.set_data_from_numpy(_items(["x" * 200_000] * MAX_BATCH), binary_data=True)
            pending = [client.async_infer(model, [slow])]
            for text in texts:
                tensor = httpclient.InferInput(TEXTS_INPUT, [1, 1], "BYTES")
                tensor.set_data_from_numpy(_items([text]), binary_data=True)
                pending.append(client.async_infer(texts_name(name), [tensor]))
            assert pending[0].get_result().as_numpy(INPUT_IDS).shape[0] == MAX_BATCH
            got = np.concatenate([p.get_result().as_numpy(EMBEDDINGS_OUTPUT) for p in pending[1:]])
            _assert_parity(f"{name} concurrent", got, want, texts)
            requests = _metric(triton.metrics_url, "nv_inference_request_success", model)
            execs = _metric(triton.metrics_url, "nv_inference_exec_count", model)
            assert requests - requests_before == len(texts) + 1
            if execs - execs_before < len(texts) + 1:
                merged = True
                break
    assert merged, "Triton never merged concurrent requests for the tokenize model"


# ----------------------------------------------------------------- runtime repository


@pytest.mark.parametrize("name", NAMES)
def test_serve_runs_the_exported_text_tower_in_the_python_backend_with_its_tokenizer(
    tiny_repository: Path, tmp_path: Path, name: str
) -> None:
    from tritonvision.serve import derive_runtime_repository

    runtime = derive_runtime_repository(tiny_repository, tmp_path / "runtime")
    assert text_name(name) in runtime.converted
    assert tokenize_name(name) not in runtime.converted
    assert texts_name(name) in runtime.models

    config = text_format.Parse(
        (runtime.path / text_name(name) / "config.pbtxt").read_text(), mc.ModelConfig()
    )
    assert config.backend == "python"
    assert [(i.name, i.data_type) for i in config.input] == [
        (t, mc.TYPE_INT64) for t in TOKEN_INPUTS
    ]
    onnx = next((runtime.path / text_name(name)).glob("*/model.onnx"))
    assert onnx.resolve() == next((tiny_repository / text_name(name)).glob("*/model.onnx"))
    # The tokenize model comes with the tokenizer files export copied beside it.
    tokenizer_dir = next((runtime.path / tokenize_name(name)).glob(f"*/{TOKENIZER_DIR}"))
    exported = next((tiny_repository / tokenize_name(name)).glob(f"*/{TOKENIZER_DIR}"))
    assert sorted(p.name for p in tokenizer_dir.iterdir()) == sorted(
        p.name for p in exported.iterdir()
    )
    assert any(tokenizer_dir.iterdir())
