"""Export tiny CLIP/SigLIP encoders to ONNX and check them against PyTorch and transformers."""

from __future__ import annotations

import dataclasses
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
transformers = pytest.importorskip("transformers")

from google.protobuf import json_format, text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402

from tritonvision.cli import main as cli_main  # noqa: E402
from tritonvision.cli.export import format_summary  # noqa: E402
from tritonvision.client._imaging import normalize_pixels  # noqa: E402
from tritonvision.contract import (  # noqa: E402
    BATCH_AXIS,
    EMBEDDINGS_OUTPUT,
    PARAM_FAMILY,
    PARAM_NORMALIZED,
    PARAM_SOURCE,
    PARAM_TRAINED,
    PIXELS_INPUT,
)
from tritonvision.export import (  # noqa: E402
    ENCODER_FAMILIES,
    CheckpointError,
    ExportOptions,
    ExportResult,
    ExportValidationError,
    Tolerance,
    VerificationError,
    builtin_encoder,
    export_encoder,
    export_model,
    load_encoder,
    validate_onnx,
    verify_model,
    verify_server,
)

TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
}
TINY_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "vocab_size": 64,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
PROJECTION = 16


def _clip_processor(path: Path) -> None:
    transformers.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(path)


def _siglip_processor(path: Path) -> None:
    transformers.SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)


def _save(model: Any, path: Path, processor: Callable[[Path], None]) -> Path:
    model.save_pretrained(path)
    processor(path)
    return path


def clip_vision(path: Path) -> Path:
    config = transformers.CLIPVisionConfig(**TINY, projection_dim=PROJECTION)
    return _save(transformers.CLIPVisionModelWithProjection(config), path, _clip_processor)


def clip_full(path: Path) -> Path:
    config = transformers.CLIPConfig(
        vision_config=TINY, text_config=TINY_TEXT, projection_dim=PROJECTION
    )
    return _save(transformers.CLIPModel(config), path, _clip_processor)


def siglip_vision(path: Path) -> Path:
    config = transformers.SiglipVisionConfig(**TINY)
    return _save(transformers.SiglipVisionModel(config), path, _siglip_processor)


def siglip_full(path: Path) -> Path:
    config = transformers.SiglipConfig(vision_config=TINY, text_config=TINY_TEXT)
    return _save(transformers.SiglipModel(config), path, _siglip_processor)


# family -> {checkpoint kind: (maker, embedding dim)}; every registered family must be here.
TINY_CHECKPOINTS: dict[str, dict[str, tuple[Callable[[Path], Path], int]]] = {
    "clip": {"vision": (clip_vision, PROJECTION), "full": (clip_full, PROJECTION)},
    "siglip": {"vision": (siglip_vision, TINY["hidden_size"]), "full": (siglip_full, 32)},
}
CASES = [(family, kind) for family, kinds in TINY_CHECKPOINTS.items() for kind in kinds]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        (family, kind): TINY_CHECKPOINTS[family][kind][0](root / f"{family}-{kind}")
        for family, kind in CASES
    }


@pytest.fixture(scope="module")
def exports(
    checkpoints: dict[tuple[str, str], Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, str], ExportResult]:
    return {
        case: export_model(
            ExportOptions(checkpoint=path, repository=tmp_path_factory.mktemp("repo"))
        )
        for case, path in checkpoints.items()
    }


def _run_onnx(path: Path, pixels: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run([EMBEDDINGS_OUTPUT], {PIXELS_INPUT: pixels})
    return out


def _pixels(batch: int, size: int = 32, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def test_every_registered_family_has_a_tiny_export_case() -> None:
    # CLIP and SigLIP here; DINOv2, backbones and own modules in tests/_tiny_families.py,
    # exported into the session repository and checked by tests/e2e/test_export_families.py.
    from _tiny_families import SERVED_FAMILIES

    assert set(TINY_CHECKPOINTS) | set(SERVED_FAMILIES.values()) == set(ENCODER_FAMILIES)


@pytest.mark.parametrize(("family", "kind"), CASES)
def test_export_validates_at_two_batch_sizes(
    exports: dict[tuple[str, str], ExportResult], family: str, kind: str
) -> None:
    result = exports[family, kind]
    expected_dim = TINY_CHECKPOINTS[family][kind][1]
    tolerance = ENCODER_FAMILIES[family].tolerance
    assert result.model.family == family
    assert result.model.embedding_dim == expected_dim
    assert result.model.trained is True
    assert [r.batch_size for r in result.validation] == [1, 3]
    for report in result.validation:
        assert report.passed
        assert report.output_shape == (report.batch_size, expected_dim)
        assert report.max_abs_diff <= tolerance.atol
        assert report.min_cosine >= tolerance.min_cosine
    assert result.model_bytes == result.model_path.stat().st_size > 0
    assert result.total_s >= result.export_s > 0


def _transformers_embeddings(path: Path, family: str, kind: str, pixel_values: Any) -> Any:
    """Image embeddings through transformers' own high-level API."""
    with torch.no_grad():
        if (family, kind) == ("clip", "vision"):
            clip = transformers.CLIPVisionModelWithProjection.from_pretrained(path).eval()
            return clip(pixel_values=pixel_values).image_embeds
        if (family, kind) == ("clip", "full"):
            features = (
                transformers.CLIPModel.from_pretrained(path)
                .eval()
                .get_image_features(pixel_values=pixel_values)
            )
            # transformers 5 returns a model output whose pooler_output is the projection.
            return getattr(features, "pooler_output", features)
        if (family, kind) == ("siglip", "full"):
            siglip = transformers.SiglipModel.from_pretrained(path).eval()
            return siglip.vision_model(pixel_values=pixel_values).pooler_output
        tower = transformers.SiglipVisionModel.from_pretrained(path).eval()
        return tower(pixel_values=pixel_values).pooler_output


@pytest.mark.parametrize(("family", "kind"), CASES)
def test_onnx_matches_transformers_on_normalised_pixels(
    exports: dict[tuple[str, str], ExportResult],
    checkpoints: dict[tuple[str, str], Path],
    family: str,
    kind: str,
) -> None:
    # Independent of the wrapper: the ONNX graph's in-graph rescale/normalise/NHWC handling
    # must equal transformers' own model run on processor-style pixel_values.
    result = exports[family, kind]
    pixels = _pixels(5)  # a batch size validation did not use: the batch axis is dynamic
    got = _run_onnx(result.model_path, pixels)
    pixel_values = torch.from_numpy(normalize_pixels(pixels, result.model.preprocessing))
    want = _transformers_embeddings(checkpoints[family, kind], family, kind, pixel_values)
    want = torch.nn.functional.normalize(want, dim=-1).numpy()
    assert got.shape == (5, TINY_CHECKPOINTS[family][kind][1])
    np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("family", sorted(TINY_CHECKPOINTS))
def test_published_preprocessing_plus_onnx_reproduce_the_hf_pipeline(
    exports: dict[tuple[str, str], ExportResult],
    checkpoints: dict[tuple[str, str], Path],
    family: str,
) -> None:
    # image -> the checkpoint's own image processor -> transformers model, versus
    # image -> the published spec (client preprocessing) -> the exported ONNX graph.
    from PIL import Image

    from tritonvision.client._imaging import preprocess_image

    result = exports[family, "vision"]
    path = checkpoints[family, "vision"]
    ys, xs = np.mgrid[0:45, 0:70]
    image = Image.fromarray(np.stack([xs * 3, ys * 5, (xs + ys) * 2], -1).astype(np.uint8))
    processor = transformers.AutoImageProcessor.from_pretrained(path)
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
    want = torch.nn.functional.normalize(
        _transformers_embeddings(path, family, "vision", pixel_values), dim=-1
    ).numpy()
    pixels = preprocess_image(image, result.model.preprocessing)[None]
    np.testing.assert_allclose(_run_onnx(result.model_path, pixels), want, atol=1e-4)


def test_model_file_is_one_self_contained_onnx_file(
    exports: dict[tuple[str, str], ExportResult],
) -> None:
    result = exports["clip", "vision"]
    assert sorted(p.name for p in result.model_path.parent.iterdir()) == ["model.onnx"]
    model = onnx.load(str(result.model_path))
    onnx.checker.check_model(model, full_check=True)
    assert {o.domain: o.version for o in model.opset_import}[""] == 18
    (inp,), (out,) = model.graph.input, model.graph.output
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert (inp.name, inp.type.tensor_type.elem_type, dims) == (
        PIXELS_INPUT,
        onnx.TensorProto.UINT8,
        [BATCH_AXIS, 32, 32, 3],
    )
    dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert (out.name, out.type.tensor_type.elem_type, dims) == (
        EMBEDDINGS_OUTPUT,
        onnx.TensorProto.FLOAT,
        [BATCH_AXIS, PROJECTION],
    )
    metadata = {p.key: p.value for p in model.metadata_props}
    assert metadata.items() >= result.model.parameters().items()


def test_export_writes_configs_matching_the_checkpoint(
    exports: dict[tuple[str, str], ExportResult],
) -> None:
    result = exports["siglip", "vision"]
    config = text_format.Parse(
        result.files.encoder_config.read_text(), model_config_pb2.ModelConfig()
    )
    assert list(config.input[0].dims) == [32, 32, 3]
    assert list(config.output[0].dims) == [32]
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params[PARAM_FAMILY] == "siglip"
    assert params[PARAM_SOURCE] == str(result.options.checkpoint.resolve())
    spec = result.model.preprocessing.to_dict()
    assert spec["resize"] == {"mode": "exact", "height": 32, "width": 32}
    assert spec["crop"] is None
    assert spec["mean"] == [0.5, 0.5, 0.5]
    for path in result.files.configs:
        assert path.exists()


@pytest.mark.parametrize(("family", "kind"), CASES)
def test_configs_only_writes_what_a_full_export_writes(
    exports: dict[tuple[str, str], ExportResult],
    checkpoints: dict[tuple[str, str], Path],
    tmp_path: Path,
    family: str,
    kind: str,
) -> None:
    # configs-only describes the checkpoint from its JSON files; a full export from the
    # loaded model. The two must publish the same bytes.
    full = exports[family, kind]
    checkpoint = checkpoints[family, kind]
    argv = ["export", "--configs-only", "--checkpoint", str(checkpoint)]
    assert cli_main([*argv, "--repository", str(tmp_path)]) == 0
    assert not any(tmp_path.rglob("*.onnx"))
    for path in full.files.configs:
        relative = path.relative_to(full.options.repository)
        assert (tmp_path / relative).read_bytes() == path.read_bytes(), relative


def test_fp16_export_has_fp16_weights_uint8_input_and_fp32_output(
    checkpoints: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    result = export_model(
        ExportOptions(checkpoint=checkpoints["clip", "vision"], repository=tmp_path, fp16=True)
    )
    model = onnx.load(str(result.model_path))
    types = {t.name: t.data_type for t in model.graph.initializer if len(t.dims) >= 2}
    # Only the normalisation constants stay fp32: rescale and normalise run before the cast.
    assert (types.pop("mean"), types.pop("std")) == (onnx.TensorProto.FLOAT,) * 2
    assert set(types.values()) == {onnx.TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert result.model.precision == "fp16"
    assert all(
        r.passed and r.tolerance == ENCODER_FAMILIES["clip"].fp16_tolerance
        for r in result.validation
    )
    got = _run_onnx(result.model_path, _pixels(2))
    assert got.dtype == np.float32 and got.shape == (2, PROJECTION)


def _tiny_builtin_config() -> Any:
    return transformers.CLIPVisionConfig(**TINY, projection_dim=PROJECTION)


@pytest.fixture(scope="module")
def builtin_exports(tmp_path_factory: pytest.TempPathFactory) -> tuple[ExportResult, ExportResult]:
    first, second = (
        export_encoder(
            builtin_encoder(_tiny_builtin_config()),
            ExportOptions(repository=tmp_path_factory.mktemp("builtin")),
        )
        for _ in range(2)
    )
    return first, second


def test_seeded_default_re_exports_byte_identical(
    builtin_exports: tuple[ExportResult, ExportResult],
) -> None:
    first, second = builtin_exports
    assert first.model_path.read_bytes() == second.model_path.read_bytes()
    for a, b in zip(first.files.configs, second.files.configs, strict=True):
        assert a.read_bytes() == b.read_bytes()


def test_seeded_default_does_not_disturb_the_callers_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    builtin_encoder(_tiny_builtin_config())
    assert torch.equal(torch.rand(3), expected)


def test_default_is_reported_untrained(
    builtin_exports: tuple[ExportResult, ExportResult],
) -> None:
    result = builtin_exports[0]
    assert result.model.trained is False
    config = text_format.Parse(
        result.files.encoder_config.read_text(), model_config_pb2.ModelConfig()
    )
    assert config.parameters[PARAM_TRAINED].string_value == "false"
    assert "UNTRAINED" in format_summary(result)


def _validate_against_tiny_clip(
    path: Path, checkpoints: dict[tuple[str, str], Path]
) -> tuple[object, ...]:
    """Validate an ONNX file against the tiny vision-only CLIP checkpoint's PyTorch model."""
    reference = load_encoder(checkpoints["clip", "vision"]).wrapper(normalize=True)
    return validate_onnx(
        path,
        reference,
        family=ENCODER_FAMILIES["clip"],
        height=32,
        width=32,
        embedding_dim=PROJECTION,
        normalized=True,
        tolerance=ENCODER_FAMILIES["clip"].tolerance,
    )


def test_tampered_model_fails_validation_with_figures(
    exports: dict[tuple[str, str], ExportResult],
    checkpoints: dict[tuple[str, str], Path],
    tmp_path: Path,
) -> None:
    result = exports["clip", "vision"]
    model = onnx.load(str(result.model_path))
    (weight,) = [t for t in model.graph.initializer if t.name == "embedder.projection.weight"]
    values = onnx.numpy_helper.to_array(weight)
    noise = np.random.default_rng(0).normal(0, values.std(), values.shape)
    weight.CopyFrom(onnx.numpy_helper.from_array((values + noise).astype(np.float32), weight.name))
    tampered = tmp_path / "model.onnx"
    onnx.save(model, str(tampered))

    with pytest.raises(ExportValidationError, match="max abs diff") as caught:
        _validate_against_tiny_clip(tampered, checkpoints)
    reports = caught.value.reports
    assert [r.batch_size for r in reports] == [1, 3]
    assert not any(r.passed for r in reports)
    assert all(r.max_abs_diff > ENCODER_FAMILIES["clip"].tolerance.atol for r in reports)


def test_renamed_output_fails_validation_before_any_values(
    exports: dict[tuple[str, str], ExportResult],
    checkpoints: dict[tuple[str, str], Path],
    tmp_path: Path,
) -> None:
    model = onnx.load(str(exports["clip", "vision"].model_path))
    for node in model.graph.node:
        node.output[:] = ["features" if o == EMBEDDINGS_OUTPUT else o for o in node.output]
    model.graph.output[0].name = "features"
    renamed = tmp_path / "model.onnx"
    onnx.save(model, str(renamed))
    with pytest.raises(ExportValidationError, match="outputs") as caught:
        _validate_against_tiny_clip(renamed, checkpoints)
    assert caught.value.reports == ()


def test_export_that_fails_validation_writes_nothing(tmp_path: Path) -> None:
    encoder = builtin_encoder(_tiny_builtin_config())
    impossible = Tolerance(atol=-1.0, rtol=0.0, min_cosine=2.0)
    strict_family = dataclasses.replace(encoder.family, tolerance=impossible)
    strict = dataclasses.replace(encoder, family=strict_family)
    with pytest.raises(ExportValidationError, match="batch 1"):
        export_encoder(strict, ExportOptions(repository=tmp_path))
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_clip_vision_checkpoint_without_projection_is_refused(tmp_path: Path) -> None:
    config = transformers.CLIPVisionConfig(**TINY, projection_dim=PROJECTION)
    transformers.CLIPVisionModel(config).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="visual_projection"):
        load_encoder(tmp_path)


def test_cli_export_prints_the_figures_and_honours_options(
    checkpoints: dict[tuple[str, str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli_main(
        [
            "export",
            "--checkpoint",
            str(checkpoints["clip", "vision"]),
            "--repository",
            str(tmp_path),
            "--name",
            "tiny",
            "--version",
            "3",
            "--max-batch-size",
            "8",
            "--preferred-batch-size",
            "4",
            "--preferred-batch-size",
            "2",
            "--no-normalize",
            "--no-tensorrt",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    for text in ("batch 1: max abs diff", "batch 3: max abs diff", "min cosine", "model.onnx:"):
        assert text in out
    assert "UNTRAINED" not in out
    config = text_format.Parse(
        (tmp_path / "tiny" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert config.max_batch_size == 8
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    assert not config.optimization.HasField("execution_accelerators")
    assert config.parameters[PARAM_NORMALIZED].string_value == "false"
    raw = _run_onnx(tmp_path / "tiny" / "3" / "model.onnx", _pixels(2))
    assert not np.allclose(np.linalg.norm(raw, axis=-1), 1.0)


def test_cli_export_reports_a_bad_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "resnet"}')
    argv = ["export", "--checkpoint", str(tmp_path), "--repository", str(tmp_path)]
    assert cli_main(argv) == 2
    assert "unsupported model_type 'resnet'" in capsys.readouterr().err


def _triton_json_config(result: ExportResult) -> dict[str, Any]:
    # What Triton's HTTP API returns for GET /v2/models/NAME/config.
    config = text_format.Parse(
        result.files.encoder_config.read_text(), model_config_pb2.ModelConfig()
    )
    return json_format.MessageToDict(config, preserving_proto_field_name=True)


def test_verify_model_passes_for_the_exported_model(
    exports: dict[tuple[str, str], ExportResult], checkpoints: dict[tuple[str, str], Path]
) -> None:
    result = exports["clip", "full"]
    config = _triton_json_config(result)
    report = verify_model(
        config,
        lambda pixels: _run_onnx(result.model_path, pixels),
        checkpoint=checkpoints["clip", "full"],
    )
    assert report.passed
    assert len(report.images) == len(report.cosines) >= 4
    # The config carries the TensorRT FP16 accelerator, so a GPU server may compute in fp16.
    assert report.tolerance == ENCODER_FAMILIES["clip"].fp16_tolerance
    assert report.max_abs_diff < 1e-4


def test_verify_model_fails_when_the_server_answers_differently(
    exports: dict[tuple[str, str], ExportResult], checkpoints: dict[tuple[str, str], Path]
) -> None:
    result = exports["siglip", "vision"]
    config = _triton_json_config(result)
    rng = np.random.default_rng(0)

    def noisy(pixels: np.ndarray) -> np.ndarray:
        out = _run_onnx(result.model_path, pixels)
        return out + rng.normal(0, 0.2, out.shape).astype(np.float32)

    with pytest.raises(VerificationError, match="MISMATCH") as caught:
        verify_model(config, noisy, checkpoint=checkpoints["siglip", "vision"])
    assert caught.value.report is not None
    assert caught.value.report.min_cosine < 0.999


def test_verify_model_refuses_a_different_reference(
    exports: dict[tuple[str, str], ExportResult], checkpoints: dict[tuple[str, str], Path]
) -> None:
    result = exports["clip", "vision"]
    with pytest.raises(VerificationError, match=re.escape(PARAM_FAMILY)):
        verify_model(
            _triton_json_config(result),
            lambda pixels: _run_onnx(result.model_path, pixels),
            checkpoint=checkpoints["siglip", "vision"],
        )


def test_verify_server_names_an_unreachable_server() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(VerificationError, match=f"127.0.0.1:{port}"):
        verify_server(f"http://127.0.0.1:{port}", timeout_s=5.0)
