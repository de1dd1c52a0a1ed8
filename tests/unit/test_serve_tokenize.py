"""The ``NAME_tokenize`` model's pure steps, and how ``tritonvision serve`` derives the text models.

The backend module is imported as Triton's stub imports it: with the wheel's real
``triton_python_backend_utils`` on the path. Its steps run the tiny checkpoints' real
tokenizers (tests/_tiny_text.py); the served model itself is tested in
tests/e2e/test_text_tower.py.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from _tiny_text import (
    CLIP_CONTEXT_LENGTH,
    SIGLIP_CONTEXT_LENGTH,
    TEXTS,
    assert_tokenized_as,
    clip_tokenizer,
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
from tritonvision.errors import InvalidInput
from tritonvision.serve import derive_runtime_repository, find_triton
from tritonvision.serve._runtime_repo import ONNX_BACKEND_SHIM

OUTPUTS = [(INPUT_IDS, np.int64), (ATTENTION_MASK, np.int64)]


@pytest.fixture(scope="module")
def backend() -> ModuleType:
    stub_dir = str(find_triton().backend_dir / "python")
    sys.path.insert(0, stub_dir)
    try:
        return importlib.import_module("tritonvision.serve.backends.tokenize")
    finally:
        sys.path.remove(stub_dir)


@pytest.fixture(scope="module")
def siglip(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from _tiny_text import siglip_tokenizer

    return siglip_tokenizer(tmp_path_factory.mktemp("spm"))


def _items(*values: bytes) -> np.ndarray:
    return np.array([[v] for v in values], dtype=np.object_)


def test_decode_texts_reads_utf8_items_of_an_n_by_1_tensor(backend: ModuleType) -> None:
    texts = ["a dog", "", "héllo ✓ 日本語 🐶"]
    assert backend.decode_texts(_items(*(t.encode() for t in texts))) == texts


def test_decode_texts_names_the_item_that_is_not_utf8(backend: ModuleType) -> None:
    with pytest.raises(InvalidInput, match=r"texts\[2\] is not valid UTF-8") as info:
        backend.decode_texts(_items(b"ok", b"fine", b"\xff\xfe", b"\xc3"))
    assert info.value.source == f"{TEXTS_INPUT}[2]"


def test_decode_texts_refuses_a_lone_surrogate_encoding(backend: ModuleType) -> None:
    # CESU-style surrogate bytes are not UTF-8 under strict decoding.
    with pytest.raises(InvalidInput, match=r"texts\[0\]"):
        backend.decode_texts(_items(b"\xed\xa0\x80"))


@pytest.mark.parametrize("which", ["clip", "siglip"])
def test_tokenize_equals_the_tokenizer_padded_and_truncated_to_the_context_length(
    backend: ModuleType, siglip: Any, which: str
) -> None:
    tokenizer, length = (
        (clip_tokenizer(), CLIP_CONTEXT_LENGTH)
        if which == "clip"
        else (siglip, SIGLIP_CONTEXT_LENGTH)
    )
    texts = [*TEXTS, "", "x" * 200_000]
    got = backend.tokenize(tokenizer, texts, context_length=length, outputs=OUTPUTS)
    assert set(got) == set(TOKEN_INPUTS)
    assert_tokenized_as(got, tokenizer, texts, length)
    # The long texts are cut at the context length: every position is a real token.
    assert got[ATTENTION_MASK][texts.index(TEXTS[2])].all()
    assert got[ATTENTION_MASK][-1].all()


def test_tokenize_of_no_texts_is_an_empty_batch(backend: ModuleType) -> None:
    got = backend.tokenize(clip_tokenizer(), [], context_length=77, outputs=OUTPUTS)
    assert {name: a.shape for name, a in got.items()} == {
        INPUT_IDS: (0, 77),
        ATTENTION_MASK: (0, 77),
    }


def test_tokenize_names_a_tensor_the_tokenizer_does_not_give(backend: ModuleType) -> None:
    with pytest.raises(KeyError, match="token_type_ids"):
        backend.tokenize(
            clip_tokenizer(), ["a"], context_length=77, outputs=[("token_type_ids", np.int64)]
        )


def test_split_rows_gives_each_request_its_own_rows_in_order(backend: ModuleType) -> None:
    ids = np.arange(12, dtype=np.int64).reshape(6, 2)
    parts = backend.split_rows({INPUT_IDS: ids, ATTENTION_MASK: ids * 10}, [1, 3, 0, 2])
    assert [p[INPUT_IDS].shape[0] for p in parts] == [1, 3, 0, 2]
    np.testing.assert_array_equal(np.concatenate([p[INPUT_IDS] for p in parts]), ids)
    np.testing.assert_array_equal(parts[3][ATTENTION_MASK], ids[4:] * 10)


def test_one_batched_call_equals_one_call_per_request(backend: ModuleType) -> None:
    tokenizer = clip_tokenizer()
    requests = [["a dog"], list(TEXTS), ["", "日本語"]]
    batched = backend.split_rows(
        backend.tokenize(
            tokenizer, [t for r in requests for t in r], context_length=77, outputs=OUTPUTS
        ),
        [len(r) for r in requests],
    )
    for request, part in zip(requests, batched, strict=True):
        alone = backend.tokenize(tokenizer, request, context_length=77, outputs=OUTPUTS)
        for name in TOKEN_INPUTS:
            np.testing.assert_array_equal(part[name], alone[name])


# ------------------------------------------------------------- the runtime repository


def _write(model_dir: Path, config: mc.ModelConfig) -> None:
    model_dir.mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(config))


def _text_repository(root: Path, name: str = "m", length: int = 77) -> Path:
    text = mc.ModelConfig(name=text_name(name), platform="onnxruntime_onnx", max_batch_size=8)
    for tensor in TOKEN_INPUTS:
        text.input.add(name=tensor, data_type=mc.TYPE_INT64, dims=[length])
    text.output.add(name=EMBEDDINGS_OUTPUT, data_type=mc.TYPE_FP32, dims=[16])
    text.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_GPU)
    _write(root / text_name(name), text)
    (root / text_name(name) / "1").mkdir()
    (root / text_name(name) / "1" / "model.onnx").write_bytes(b"onnx")

    tok = mc.ModelConfig(name=tokenize_name(name), backend="python", max_batch_size=8)
    tok.input.add(name=TEXTS_INPUT, data_type=mc.TYPE_STRING, dims=[1])
    for tensor in TOKEN_INPUTS:
        tok.output.add(name=tensor, data_type=mc.TYPE_INT64, dims=[length])
    tok.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)
    tok.parameters[PARAM_CONTEXT_LENGTH].string_value = str(length)
    _write(root / tokenize_name(name), tok)
    version = root / tokenize_name(name) / "1"
    (version / TOKENIZER_DIR).mkdir(parents=True)
    (version / TOKENIZER_DIR / "tokenizer.json").write_text("{}")
    (version / "model.py").write_text("from x import TritonPythonModel\n")

    ensemble = mc.ModelConfig(name=texts_name(name), platform="ensemble", max_batch_size=8)
    _write(root / texts_name(name), ensemble)
    return root


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_runtime_repository_converts_the_text_tower_and_links_the_tokenizer(
    tmp_path: Path, device: str
) -> None:
    repo = _text_repository(tmp_path / "repo")
    runtime = derive_runtime_repository(repo, tmp_path / "runtime", device=device)
    assert runtime.converted == (text_name("m"),)
    assert set(runtime.models) == {text_name("m"), tokenize_name("m"), texts_name("m")}

    converted = text_format.Parse(
        (runtime.path / text_name("m") / "config.pbtxt").read_text(), mc.ModelConfig()
    )
    assert converted.backend == "python" and not converted.platform
    # The INT64 token inputs go through unchanged: onnx_encoder feeds them as int64.
    assert [(i.name, i.data_type, list(i.dims)) for i in converted.input] == [
        (INPUT_IDS, mc.TYPE_INT64, [77]),
        (ATTENTION_MASK, mc.TYPE_INT64, [77]),
    ]
    version = runtime.path / text_name("m") / "1"
    assert (version / "model.onnx").resolve() == (repo / text_name("m") / "1" / "model.onnx")
    assert (version / "model.py").read_text() == ONNX_BACKEND_SHIM

    # The tokenizer model is served as written: its tokenizer/ folder comes with it, and it
    # stays on the CPU on a GPU server too.
    tokenizer_json = runtime.path / tokenize_name("m") / "1" / TOKENIZER_DIR / "tokenizer.json"
    assert tokenizer_json.read_text() == "{}"
    tok = text_format.Parse(
        (runtime.path / tokenize_name("m") / "config.pbtxt").read_text(), mc.ModelConfig()
    )
    assert [g.kind for g in tok.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
