"""Export the text tower of tiny two-tower CLIP and SigLIP checkpoints and check it against
transformers' own ``get_text_features``; the written repository parses back; bad checkpoints
are refused by name."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
transformers = pytest.importorskip("transformers")

from _tiny_families import make_vit  # noqa: E402
from _tiny_text import (  # noqa: E402
    CLIP_CONTEXT_LENGTH,
    SIGLIP_CONTEXT_LENGTH,
    TEXT_CHECKPOINTS,
    TEXTS,
    TINY_CLIP_TEXT,
    TINY_SIGLIP_TEXT,
    assert_tokenized_as,
    cosines_of,
    make_clip_vision_only,
    reference_text_embeddings,
    tokenized_as_served,
)
from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402

from tritonvision.cli import main as cli_main  # noqa: E402
from tritonvision.contract import (  # noqa: E402
    ATTENTION_MASK,
    BATCH_AXIS,
    EMBEDDINGS_OUTPUT,
    INPUT_IDS,
    PARAM_CONTEXT_LENGTH,
    PARAM_EMBEDDING_DIM,
    PARAM_FAMILY,
    PARAM_NORMALIZED,
    PARAM_PRECISION,
    PARAM_PREPROCESSING,
    PARAM_SOURCE,
    PARAM_TRAINED,
    TEXTS_INPUT,
    TOKENIZER_DIR,
)
from tritonvision.export import (  # noqa: E402
    TEXT_TOWERS,
    CheckpointError,
    ExportOptions,
    ExportResult,
    ExportValidationError,
    TextExportResult,
    export_model,
    export_text_encoder,
    load_text_encoder,
    validate_text_onnx,
    write_repository_configs,
)
from tritonvision.export._repository import TOKENIZE_MODEL_PY  # noqa: E402
from tritonvision.export._text import context_length_of  # noqa: E402

FAMILIES = {TINY_CLIP_TEXT: "clip", TINY_SIGLIP_TEXT: "siglip"}
CONTEXT = {TINY_CLIP_TEXT: CLIP_CONTEXT_LENGTH, TINY_SIGLIP_TEXT: SIGLIP_CONTEXT_LENGTH}
DIMS = {TINY_CLIP_TEXT: 16, TINY_SIGLIP_TEXT: 32}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("text_checkpoints")
    return {name: maker(root / name) for name, (_, maker, _) in TEXT_CHECKPOINTS.items()}


@pytest.fixture(scope="module")
def exported(
    checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, ExportResult]:
    # Each tiny checkpoint is exported once (image + text side) for the whole module.
    repository = tmp_path_factory.mktemp("text_repository")
    return {
        name: export_model(
            ExportOptions(checkpoint=checkpoint, repository=repository, name=name, text=True)
        )
        for name, checkpoint in checkpoints.items()
    }


def _parse(path: Path) -> Any:
    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def _run(model: Path, tokens: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (out,) = session.run([EMBEDDINGS_OUTPUT], tokens)
    return np.asarray(out)


def _text(result: ExportResult) -> TextExportResult:
    assert result.text is not None  # exported with text=True
    return result.text


def _load_tokenizer(directory: Path) -> Any:
    return transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)


def _edited_copy(checkpoint: Path, copy: Path, **tokenizer_config: Any) -> Path:
    """A copy of ``checkpoint`` with ``tokenizer_config`` set in its tokenizer_config.json."""
    shutil.copytree(checkpoint, copy)
    path = copy / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config.update(tokenizer_config)
    path.write_text(json.dumps(config), encoding="utf-8")
    return copy


def _refused(checkpoint: Path, repository: Path, match: str) -> CheckpointError:
    """A text export of ``checkpoint`` is refused, naming it, before anything is written."""
    with pytest.raises(CheckpointError, match=match) as caught:
        export_model(ExportOptions(checkpoint=checkpoint, repository=repository, text=True))
    assert str(checkpoint) in str(caught.value)
    assert not repository.exists()
    return caught.value


def test_every_text_tower_has_a_tiny_export_case() -> None:
    assert sorted(TEXT_TOWERS) == sorted(FAMILIES.values())
    assert {name: family for name, (family, _, _) in TEXT_CHECKPOINTS.items()} == FAMILIES


@pytest.mark.parametrize("name", [TINY_CLIP_TEXT, TINY_SIGLIP_TEXT])
def test_text_onnx_equals_transformers_get_text_features_for_short_long_and_non_ascii_texts(
    name: str, exported: dict[str, ExportResult], checkpoints: dict[str, Path]
) -> None:
    text = _text(exported[name])
    # Tokenised with the tokenizer the repository serves, as NAME_tokenize does.
    tokenizer = _load_tokenizer(text.files.tokenizer_dir)
    got = _run(text.files.model, tokenized_as_served(tokenizer, TEXTS, CONTEXT[name]))
    want = reference_text_embeddings(checkpoints[name], list(TEXTS)).numpy()
    assert got.shape == (len(TEXTS), DIMS[name])
    assert got.dtype == np.float32
    assert cosines_of(got, want).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("name", [TINY_CLIP_TEXT, TINY_SIGLIP_TEXT])
def test_text_export_reports_validation_at_two_batch_sizes(
    name: str, exported: dict[str, ExportResult]
) -> None:
    text = _text(exported[name])
    assert [r.batch_size for r in text.validation] == [1, 3]
    for report in text.validation:
        assert report.passed
        assert report.output_shape == (report.batch_size, DIMS[name])
        assert report.min_cosine >= 0.99999
        assert report.max_abs_diff <= 1e-4
    assert text.model_bytes == text.files.model.stat().st_size > 0
    assert text.info.token_inputs == (INPUT_IDS, ATTENTION_MASK)
    assert text.info.context_length == CONTEXT[name]
    assert text.info.embedding_dim == exported[name].model.embedding_dim == DIMS[name]


@pytest.mark.parametrize("name", [TINY_CLIP_TEXT, TINY_SIGLIP_TEXT])
def test_text_graph_takes_int64_tokens_with_only_the_batch_axis_dynamic(
    name: str, exported: dict[str, ExportResult]
) -> None:
    text = _text(exported[name])
    model = onnx.load(str(text.files.model))
    context = CONTEXT[name]

    def dims(value: Any) -> list[int | str]:
        return [
            d.dim_param if d.HasField("dim_param") else d.dim_value
            for d in value.type.tensor_type.shape.dim
        ]

    assert [(i.name, i.type.tensor_type.elem_type, dims(i)) for i in model.graph.input] == [
        (INPUT_IDS, onnx.TensorProto.INT64, [BATCH_AXIS, context]),
        (ATTENTION_MASK, onnx.TensorProto.INT64, [BATCH_AXIS, context]),
    ]
    (output,) = model.graph.output
    assert (output.name, output.type.tensor_type.elem_type, dims(output)) == (
        EMBEDDINGS_OUTPUT,
        onnx.TensorProto.FLOAT,
        [BATCH_AXIS, DIMS[name]],
    )
    metadata = {p.key: p.value for p in model.metadata_props}
    assert metadata[PARAM_CONTEXT_LENGTH] == str(context)
    assert metadata[PARAM_FAMILY] == FAMILIES[name]


@pytest.mark.parametrize("name", [TINY_CLIP_TEXT, TINY_SIGLIP_TEXT])
def test_text_configs_parse_back_with_token_inputs_context_length_and_params(
    name: str, exported: dict[str, ExportResult], checkpoints: dict[str, Path]
) -> None:
    result = exported[name]
    text = _text(result)
    files = text.files
    assert result.files.text == files
    context, dim = CONTEXT[name], DIMS[name]
    tokens = [INPUT_IDS, ATTENTION_MASK]

    onnx_config = _parse(files.text_config)
    assert onnx_config.name == f"{name}_text"
    assert onnx_config.platform == "onnxruntime_onnx"
    assert onnx_config.backend == "onnxruntime"
    assert onnx_config.max_batch_size == result.options.max_batch_size
    assert [(i.name, i.data_type, list(i.dims)) for i in onnx_config.input] == [
        (t, model_config_pb2.TYPE_INT64, [context]) for t in tokens
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in onnx_config.output] == [
        (EMBEDDINGS_OUTPUT, model_config_pb2.TYPE_FP32, [dim])
    ]
    encoder_config = _parse(result.files.encoder_config)
    # Batching exactly like the encoder's.
    assert onnx_config.dynamic_batching == encoder_config.dynamic_batching
    assert onnx_config.optimization == encoder_config.optimization
    assert [g.count for g in onnx_config.instance_group] == [result.options.instances]
    (warmup,) = onnx_config.model_warmup
    assert sorted(warmup.inputs) == sorted(tokens)
    assert all(w.zero_data and list(w.dims) == [context] for w in warmup.inputs.values())

    tokenize = _parse(files.tokenize_config)
    assert tokenize.name == f"{name}_tokenize"
    assert tokenize.backend == "python"
    assert [(i.name, i.data_type, list(i.dims)) for i in tokenize.input] == [
        (TEXTS_INPUT, model_config_pb2.TYPE_STRING, [1])
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in tokenize.output] == [
        (t, model_config_pb2.TYPE_INT64, [context]) for t in tokens
    ]
    (group,) = tokenize.instance_group
    assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert group.count == result.options.preprocess_instances
    assert tokenize.dynamic_batching.default_queue_policy.max_queue_size > 0
    assert files.tokenize_model.read_text() == TOKENIZE_MODEL_PY

    texts = _parse(files.texts_config)
    assert texts.platform == "ensemble"
    assert [(i.name, i.data_type, list(i.dims)) for i in texts.input] == [
        (TEXTS_INPUT, model_config_pb2.TYPE_STRING, [1])
    ]
    assert [(o.name, list(o.dims)) for o in texts.output] == [(EMBEDDINGS_OUTPUT, [dim])]
    first, second = texts.ensemble_scheduling.step
    assert first.model_name == f"{name}_tokenize"
    assert dict(first.input_map) == {TEXTS_INPUT: TEXTS_INPUT}
    assert dict(first.output_map) == {t: t for t in tokens}
    assert second.model_name == f"{name}_text"
    assert dict(second.input_map) == {t: t for t in tokens}
    assert dict(second.output_map) == {EMBEDDINGS_OUTPUT: EMBEDDINGS_OUTPUT}
    assert files.texts_placeholder.is_file()

    want = {
        PARAM_FAMILY: FAMILIES[name],
        PARAM_SOURCE: str(checkpoints[name].resolve()),
        PARAM_TRAINED: "true",
        PARAM_EMBEDDING_DIM: str(dim),
        PARAM_NORMALIZED: "true",
        PARAM_PRECISION: "fp32",
        PARAM_CONTEXT_LENGTH: str(context),
    }
    for config in (onnx_config, tokenize, texts):
        assert {k: v.string_value for k, v in config.parameters.items()} == want
    assert PARAM_PREPROCESSING in encoder_config.parameters
    assert PARAM_CONTEXT_LENGTH not in encoder_config.parameters


@pytest.mark.parametrize("name", [TINY_CLIP_TEXT, TINY_SIGLIP_TEXT])
def test_repository_tokenizer_gives_the_checkpoints_ids(
    name: str, exported: dict[str, ExportResult], checkpoints: dict[str, Path]
) -> None:
    text = _text(exported[name])
    assert text.files.tokenizer_dir == (
        exported[name].options.repository / f"{name}_tokenize" / "1" / TOKENIZER_DIR
    )
    assert text.files.tokenizer_files  # the checkpoint's tokenizer files were copied
    served = _load_tokenizer(text.files.tokenizer_dir)
    original = _load_tokenizer(checkpoints[name])
    context = CONTEXT[name]
    assert served.model_max_length == context
    got = tokenized_as_served(served, TEXTS, context)
    assert_tokenized_as(got, original, TEXTS, context)
    # The long text is truncated at L, the short ones padded to it.
    assert got[ATTENTION_MASK].sum(axis=1).max() == context
    assert got[ATTENTION_MASK].sum(axis=1).min() < context


def test_configs_only_text_writes_what_the_full_export_writes(
    exported: dict[str, ExportResult], checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    full = exported[TINY_SIGLIP_TEXT]
    assert full.text is not None
    options = dataclasses.replace(full.options, repository=tmp_path)
    files = write_repository_configs(options)
    assert files.text is not None
    assert not files.text.model.exists()
    for written, exported_path in zip(files.configs, full.files.configs, strict=True):
        assert written.read_bytes() == exported_path.read_bytes(), written
    assert [p.name for p in files.text.tokenizer_files] == [
        p.name for p in full.text.files.tokenizer_files
    ]


def test_text_needs_a_checkpoint() -> None:
    with pytest.raises(ValueError, match="text=True needs a checkpoint"):
        ExportOptions(text=True)
    options = ExportOptions(checkpoint=Path("/ckpt"), name="m", text=True)
    assert (options.text_name, options.tokenize_name, options.texts_name) == (
        "m_text",
        "m_tokenize",
        "m_texts",
    )


def test_vision_only_clip_checkpoint_is_refused_naming_the_missing_text_tower(
    tmp_path: Path,
) -> None:
    checkpoint = make_clip_vision_only(tmp_path / "vision_only")
    error = _refused(checkpoint, tmp_path / "repo", "vision-only clip checkpoint")
    assert "text_model" in str(error)
    assert error.checkpoint == checkpoint


def test_checkpoint_without_tokenizer_files_is_refused_naming_the_files(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    checkpoint = tmp_path / "no_tokenizer"
    checkpoint.mkdir()
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        shutil.copy(checkpoints[TINY_CLIP_TEXT] / name, checkpoint / name)
    message = str(_refused(checkpoint, tmp_path / "repo", "no tokenizer files"))
    for looked_for in ("tokenizer.json", "vocab.json", "merges.txt", "spiece.model"):
        assert looked_for in message


def test_tokenizer_that_cannot_pad_to_the_context_length_is_refused(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    checkpoint = _edited_copy(
        checkpoints[TINY_CLIP_TEXT], tmp_path / "no_pad_token", pad_token=None
    )
    _refused(checkpoint, tmp_path / "repo", "cannot pad/truncate texts to 77 tokens")


def test_checkpoint_missing_text_weights_is_refused(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    checkpoint = tmp_path / "no_text_weights"
    shutil.copytree(checkpoints[TINY_CLIP_TEXT], checkpoint)
    weights = load_file(checkpoint / "model.safetensors")
    vision = {k: v for k, v in weights.items() if not k.startswith("text_")}
    save_file(vision, checkpoint / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="lacks the text tower's weights") as caught:
        load_text_encoder(checkpoint)
    assert "text_model." in str(caught.value)
    assert str(checkpoint) in str(caught.value)


def test_backbone_checkpoint_with_text_is_refused(tmp_path: Path) -> None:
    checkpoint = make_vit(tmp_path / "vit")
    _refused(checkpoint, tmp_path / "r", r"backbone checkpoint .* has no text tower")


@pytest.mark.parametrize(
    ("model_max_length", "positions", "want"),
    [(77, 77, 77), (int(1e30), 64, 64), (512, 64, 64), (16, 64, 16), (None, 32, 32)],
)
def test_context_length_is_read_from_the_checkpoint(
    model_max_length: int | None, positions: int, want: int
) -> None:
    tokenizer = type("Tok", (), {"model_max_length": model_max_length})()
    assert context_length_of(tokenizer, positions) == want


def test_text_export_that_fails_validation_writes_no_text_model(
    exported: dict[str, ExportResult], checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    loaded = load_text_encoder(checkpoints[TINY_CLIP_TEXT])
    # Described as one size wider than the tower gives: the graph's output then fails the
    # structure check before any value is compared.
    wrong = dataclasses.replace(loaded, embedding_dim=loaded.embedding_dim + 1)
    options = ExportOptions(checkpoint=checkpoints[TINY_CLIP_TEXT], repository=tmp_path, text=True)
    with pytest.raises(ExportValidationError, match="embeddings: dims") as caught:
        export_text_encoder(wrong, options)
    assert any(str(loaded.embedding_dim + 1) in p for p in caught.value.problems)
    assert list(tmp_path.iterdir()) == []  # not even an empty model directory


def test_text_validation_reports_a_value_mismatch_with_figures(
    exported: dict[str, ExportResult], checkpoints: dict[str, Path]
) -> None:
    text = _text(exported[TINY_CLIP_TEXT])
    loaded = load_text_encoder(checkpoints[TINY_CLIP_TEXT])
    # The exported graph is L2-normalised; a raw reference must not pass.
    with pytest.raises(ExportValidationError, match="does not match PyTorch") as caught:
        validate_text_onnx(
            text.files.model,
            loaded.wrapper(normalize=False),
            family=loaded.family,
            tokens=loaded.tokenize(list(TEXTS)),
            context_length=loaded.context_length,
            embedding_dim=loaded.embedding_dim,
            normalized=True,
            tolerance=loaded.family.tolerance,
            batch_sizes=(1, 2),
        )
    assert [r.batch_size for r in caught.value.reports] == [1, 2]
    assert not any(r.passed for r in caught.value.reports)
    assert all(r.max_abs_diff > 1e-3 for r in caught.value.reports)
    assert "max abs diff" in caught.value.problems[0]


def test_cli_exports_the_text_tower_in_fp16_raw_and_prints_its_figures(
    checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = checkpoints[TINY_SIGLIP_TEXT]
    argv = ["export", "--checkpoint", str(checkpoint), "--repository", str(tmp_path)]
    code = cli_main([*argv, "--name", "t", "--text", "--fp16", "--no-normalize"])
    assert code == 0
    out = capsys.readouterr().out
    for expected in (
        "text tower: siglip, embeddings [32] fp32 (raw, not normalised), weights fp16",
        "input_ids + attention_mask int64 [64]",
        "text tower validation",
        "text model.onnx:",
        str(tmp_path / "t_texts" / "config.pbtxt"),
        str(tmp_path / "t_tokenize" / "1" / TOKENIZER_DIR / "spiece.model"),
    ):
        assert expected in out
    assert out.count("batch 3: max abs diff") == 2  # the encoder's and the text tower's
    listed = [line.strip() for line in out.splitlines() if line.startswith(f"  {tmp_path}")]
    assert len(listed) == len(set(listed))  # each file once
    assert str(tmp_path / "t_text" / "config.pbtxt") in listed
    model = tmp_path / "t_text" / "1" / "model.onnx"
    weights = [t for t in onnx.load(str(model)).graph.initializer if t.dims and len(t.dims) == 2]
    assert weights
    assert all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    tokenizer = _load_tokenizer(checkpoint)
    got = _run(model, tokenized_as_served(tokenizer, TEXTS, SIGLIP_CONTEXT_LENGTH))
    assert got.dtype == np.float32
    assert not np.allclose(np.linalg.norm(got, axis=-1), 1.0)
    want = reference_text_embeddings(checkpoint, list(TEXTS)).numpy()
    assert cosines_of(got, want).min() >= 0.999
    config = _parse(tmp_path / "t_text" / "config.pbtxt")
    assert config.parameters[PARAM_PRECISION].string_value == "fp16"
    assert config.parameters[PARAM_NORMALIZED].string_value == "false"


def test_cli_text_errors_exit_2_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["export", "--text", "--repository", str(tmp_path)]) == 2
    assert "text=True needs a checkpoint" in capsys.readouterr().err
    vit = make_vit(tmp_path / "vit")
    argv = ["export", "--checkpoint", str(vit), "--text", "--repository", str(tmp_path / "r")]
    assert cli_main(argv) == 2
    assert "has no text tower" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_cli_configs_only_text_writes_tokenizer_and_configs(
    checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["export", "--checkpoint", str(checkpoints[TINY_CLIP_TEXT]), "--text"]
    code = cli_main([*argv, "--configs-only", "--repository", str(tmp_path), "--name", "c"])
    assert code == 0
    out = capsys.readouterr().out
    assert "text tower: clip, embeddings [16]" in out
    assert str(tmp_path / "c_tokenize" / "1" / TOKENIZER_DIR / "tokenizer.json") in out
    assert _parse(tmp_path / "c_text" / "config.pbtxt").input[0].dims == [CLIP_CONTEXT_LENGTH]
    assert not (tmp_path / "c_text" / "1" / "model.onnx").exists()


def test_tokenizer_without_attention_mask_gives_an_input_ids_only_text_model(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    checkpoint = _edited_copy(
        checkpoints[TINY_SIGLIP_TEXT], tmp_path / "ids_only", model_input_names=[INPUT_IDS]
    )
    loaded = load_text_encoder(checkpoint)
    assert loaded.token_inputs == (INPUT_IDS,)

    options = ExportOptions(checkpoint=checkpoint, repository=tmp_path / "repo", text=True)
    result = export_text_encoder(loaded, options)
    config = _parse(result.files.text_config)
    assert [i.name for i in config.input] == [INPUT_IDS]
    assert [o.name for o in _parse(result.files.tokenize_config).output] == [INPUT_IDS]
    assert dict(_parse(result.files.texts_config).ensemble_scheduling.step[1].input_map) == {
        INPUT_IDS: INPUT_IDS
    }
    tokens = tokenized_as_served(loaded.tokenizer, TEXTS, SIGLIP_CONTEXT_LENGTH)
    got = _run(result.files.model, {INPUT_IDS: tokens[INPUT_IDS]})
    # transformers' own features for the ids alone (this tokenizer gives no mask).
    want = reference_text_embeddings(checkpoint, list(TEXTS)).numpy()
    assert cosines_of(got, want).min() >= 0.9999
