"""DINOv2, transformers vision backbones and your own module: export, serve, parity.

The session repository (``tests/conftest.py``) serves one tiny encoder per family
(``tests/_tiny_families.py``). On the real photos that installed packages ship
(``tritonvision._samples``), what Triton returns (through ``VisionClient`` and through the
``NAME_images`` ensemble) must equal the family's own pipeline: transformers'
``AutoImageProcessor`` + model, or the module behind a transformers image processor doing the
published preprocessing, in PyTorch. The client's exact mode must give the processor's pixels
bit for bit. Export-only checks (DINOv2's ``cls+mean``, Swin) and every refusal follow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ort = pytest.importorskip("onnxruntime")

from _tiny_families import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    SERVED_CHECKPOINTS,
    SERVED_FAMILIES,
    TINY_CONVNEXT,
    TINY_DINOV2,
    TINY_MODULE,
    TINY_MODULE_SPEC,
    TINY_VIT,
    family_options,
    make_convnext,
    make_dinov2,
    make_swin,
    make_vit,
    tiny_module,
)
from google.protobuf import json_format, text_format  # noqa: E402
from PIL import Image  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402

from tritonvision._samples import sample_photo_paths  # noqa: E402
from tritonvision.client._imaging import load_image_pixels, normalize_pixels  # noqa: E402
from tritonvision.contract import (  # noqa: E402
    EMBEDDINGS_OUTPUT,
    IMAGES_INPUT,
    PARAM_EMBEDDING_DIM,
    PARAM_FAMILY,
    PARAM_PREPROCESSING,
    PARAM_SOURCE,
    PIXELS_INPUT,
    PreprocessSpec,
    ensemble_name,
)
from tritonvision.export import (  # noqa: E402
    ENCODER_FAMILIES,
    CheckpointError,
    ExportOptions,
    ExportResult,
    ExportValidationError,
    OnnxExportError,
    describe_model,
    export_model,
    export_module,
    load_encoder,
    verify_model,
    write_repository_configs,
)

MIN_COSINE = 0.9999
Array = npt.NDArray[Any]
# Served parity figures per model, printed at the end of the session (pytest -s).
FIGURES: dict[str, dict[str, float]] = {}


# ---------------------------------------------------------------------------- helpers


def read_model_config(path: Path) -> Any:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _photos() -> list[Path]:
    photos = sample_photo_paths()
    # The photos ship with matplotlib and scikit-image, both test dependencies: none found
    # means a broken environment, not a reason to skip.
    assert len(photos) >= 3, f"shipped sample photos not found (got {photos})"
    return photos


def _published(repository: Path, name: str) -> dict[str, str]:
    config = read_model_config(repository / name / "config.pbtxt")
    return {key: value.string_value for key, value in config.parameters.items()}


def _checkpoint(repository: Path, name: str) -> Path:
    # The export publishes the checkpoint it read as tritonvision.source.
    return Path(_published(repository, name)[PARAM_SOURCE])


def _module_processor() -> Any:
    # An independent implementation of TINY_MODULE_SPEC: transformers' CLIP processor with
    # the same rule (short side 40 bilinear, crop 32, ImageNet mean/std).
    return transformers.CLIPImageProcessorPil(
        size={"shortest_edge": 40},
        crop_size={"height": 32, "width": 32},
        resample=2,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
    )


def _own_pipeline(repository: Path, name: str) -> tuple[Any, Any]:
    """(image processor, pixel_values -> embedding) of the model's own framework."""
    if name == TINY_MODULE:
        module = tiny_module()
        return _module_processor(), module
    checkpoint = _checkpoint(repository, name)
    processor = transformers.AutoImageProcessor.from_pretrained(checkpoint)
    model = transformers.AutoModel.from_pretrained(checkpoint).eval()
    # DINOv2's pooler_output is the final-layer-normed CLS token; the backbones' their pooled
    # output: the embeddings the families export by default.
    return processor, lambda pixel_values: model(pixel_values=pixel_values).pooler_output


def _reference_embeddings(repository: Path, name: str, photos: list[Path]) -> Array:
    processor, embed = _own_pipeline(repository, name)
    rows = []
    for path in photos:
        with Image.open(path) as img:
            pixel_values = processor(images=img.convert("RGB"), return_tensors="pt")
        with torch.no_grad():
            rows.append(embed(pixel_values["pixel_values"])[0].numpy())
    return np.stack(rows)


def _cosines(a: Array, b: Array) -> Array:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1)
    return np.asarray(np.sum(a64 * b64, axis=-1) / norms)


def _ensemble_embeddings(url: str, name: str, photos: list[Path]) -> Array:
    import tritonclient.http as httpclient

    host = url.removeprefix("http://").rstrip("/")
    client = httpclient.InferenceServerClient(host)
    try:
        images = np.array([[p.read_bytes()] for p in photos], dtype=np.object_)
        tensor = httpclient.InferInput(IMAGES_INPUT, list(images.shape), "BYTES")
        tensor.set_data_from_numpy(images, binary_data=True)
        result = client.infer(ensemble_name(name), [tensor])
        out = result.as_numpy(EMBEDDINGS_OUTPUT)
    finally:
        client.close()
    assert out is not None
    return np.asarray(out)


def _run_onnx(path: Path, pixels: Array) -> Array:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run([EMBEDDINGS_OUTPUT], {PIXELS_INPUT: pixels})
    return np.asarray(out)


@pytest.fixture(scope="module", autouse=True)
def _print_figures() -> Any:
    yield
    for name, figures in FIGURES.items():
        shown = ", ".join(f"{k} {v:.7f}" for k, v in figures.items())
        print(f"\nparity {name} ({SERVED_FAMILIES[name]}): min cosine {shown}")


# ---------------------------------------------------------------- served families


def test_session_repository_serves_one_model_of_each_new_family(tiny_repository: Path) -> None:
    published = {name: _published(tiny_repository, name) for name in SERVED_FAMILIES}
    assert {name: p[PARAM_FAMILY] for name, p in published.items()} == SERVED_FAMILIES
    assert set(SERVED_FAMILIES.values()) <= set(ENCODER_FAMILIES)
    assert published[TINY_MODULE][PARAM_SOURCE] == "module:_tiny_families.TinyEmbedder"
    assert published[TINY_DINOV2][PARAM_EMBEDDING_DIM] == "32"  # CLS of hidden 32
    assert published[TINY_CONVNEXT][PARAM_EMBEDDING_DIM] == "16"  # last stage's width
    assert PreprocessSpec.from_json(published[TINY_MODULE][PARAM_PREPROCESSING]) == (
        TINY_MODULE_SPEC
    )


def test_published_preprocessing_is_the_processors_rule(tiny_repository: Path) -> None:
    specs = {
        name: PreprocessSpec.from_json(_published(tiny_repository, name)[PARAM_PREPROCESSING])
        for name in SERVED_CHECKPOINTS
    }
    # BiT (DINOv2): short side 40, crop 32, bicubic, ImageNet statistics.
    dino = specs[TINY_DINOV2]
    assert (dino.resize_mode, dino.shortest_edge, dino.output_shape) == (
        "shortest_edge",
        40,
        (32, 32, 3),
    )
    assert (dino.resample, dino.mean, dino.std) == ("bicubic", IMAGENET_MEAN, IMAGENET_STD)
    # ViT: an exact 32x32 bilinear resize, no crop.
    vit = specs[TINY_VIT]
    assert (vit.resize_mode, vit.resize_height, vit.crop_height, vit.resample) == (
        "exact",
        32,
        None,
        "bilinear",
    )
    # ConvNeXt, crop_pct 0.875: short side to int(32 / 0.875) = 36, then crop 32.
    convnext = specs[TINY_CONVNEXT]
    assert (convnext.shortest_edge, convnext.output_shape) == (36, (32, 32, 3))


@pytest.mark.parametrize("name", sorted(SERVED_CHECKPOINTS))
def test_configs_only_writes_what_the_full_export_wrote(
    tiny_repository: Path, tmp_path: Path, name: str
) -> None:
    # From the checkpoint's JSON files alone (no weights), the same published configs.
    options = family_options(tmp_path, name, _checkpoint(tiny_repository, name))
    for path in write_repository_configs(options).configs:
        relative = path.relative_to(tmp_path)
        assert path.read_bytes() == (tiny_repository / relative).read_bytes(), relative


@pytest.mark.parametrize("name", sorted(SERVED_FAMILIES))
def test_served_embeddings_equal_the_familys_own_pipeline(
    triton: Any, tiny_repository: Path, name: str
) -> None:
    from tritonvision.client import VisionClient

    photos = _photos()
    want = _reference_embeddings(tiny_repository, name, photos)
    with VisionClient(triton.http_url, name) as client:
        batch = client.batch_embed_images([p.read_bytes() for p in photos]).result()
    assert batch.ok, batch.errors
    through_ensemble = _ensemble_embeddings(triton.http_url, name, photos)

    for how, got in (("client", batch.embeddings), ("ensemble", through_ensemble)):
        assert got.shape == want.shape, how
        np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)
        cosines = _cosines(got, want)
        FIGURES.setdefault(name, {})[how] = float(cosines.min())
        assert cosines.min() >= MIN_COSINE, f"{name} via {how}: cosines {cosines}"


@pytest.mark.parametrize("name", sorted(SERVED_FAMILIES))
def test_exact_mode_pixels_are_the_processors_pixels(tiny_repository: Path, name: str) -> None:
    spec = PreprocessSpec.from_json(_published(tiny_repository, name)[PARAM_PREPROCESSING])
    processor, _ = _own_pipeline(tiny_repository, name)
    for path in _photos():
        with Image.open(path) as img:
            raw = processor(
                images=img.convert("RGB"),
                do_rescale=False,
                do_normalize=False,
                return_tensors="np",
            )["pixel_values"][0]
        ours = load_image_pixels(path.read_bytes(), spec, exact=True)
        assert ours.shape == spec.output_shape
        np.testing.assert_array_equal(ours, raw.transpose(1, 2, 0).astype(np.uint8), path.name)
        assert float(raw.max()) <= 255 and np.array_equal(raw, np.round(raw))


# ------------------------------------------------------------------ export-only checks


@pytest.fixture(scope="module")
def dinov2_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dinov2(tmp_path_factory.mktemp("dinov2"))


@pytest.fixture(scope="module")
def dinov2_cls_mean(
    dinov2_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> ExportResult:
    return export_model(
        ExportOptions(
            checkpoint=dinov2_checkpoint,
            pooling="cls+mean",
            repository=tmp_path_factory.mktemp("repo-dinov2"),
        )
    )


def _photo_pixels(spec: PreprocessSpec) -> Array:
    return np.stack([load_image_pixels(p.read_bytes(), spec, exact=True) for p in _photos()])


def test_dinov2_cls_mean_is_the_normed_cls_token_beside_the_mean_patch_token(
    dinov2_cls_mean: ExportResult, dinov2_checkpoint: Path
) -> None:
    assert dinov2_cls_mean.model.embedding_dim == 64  # [CLS (32), mean of patches (32)]
    spec = dinov2_cls_mean.model.preprocessing
    pixels = _photo_pixels(spec)
    got = _run_onnx(dinov2_cls_mean.model_path, pixels)
    model = transformers.Dinov2Model.from_pretrained(dinov2_checkpoint).eval()
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(normalize_pixels(pixels, spec)))
    tokens = out.last_hidden_state
    # Dinov2ForImageClassification's linear input, the "cls+avgpool" of DINOv2's probes.
    want = torch.cat([out.pooler_output, tokens[:, 1:].mean(dim=1)], dim=1)
    want = torch.nn.functional.normalize(want, dim=-1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert _cosines(got, want).min() >= 0.99999


def test_verify_picks_the_dinov2_pooling_the_server_publishes(
    dinov2_cls_mean: ExportResult, dinov2_checkpoint: Path
) -> None:
    config = json_format.MessageToDict(
        read_model_config(dinov2_cls_mean.files.encoder_config),
        preserving_proto_field_name=True,
    )
    images = []
    for path in _photos()[:3]:
        with Image.open(path) as img:
            images.append((path.name, img.convert("RGB")))
    report = verify_model(
        config,
        lambda pixels: _run_onnx(dinov2_cls_mean.model_path, pixels),
        checkpoint=dinov2_checkpoint,
        images=images,
    )
    assert report.passed and report.min_cosine >= 0.99999


def test_swin_backbone_exports_and_matches_transformers(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    checkpoint = make_swin(tmp_path_factory.mktemp("swin"))
    result = export_model(
        ExportOptions(checkpoint=checkpoint, repository=tmp_path_factory.mktemp("repo-swin"))
    )
    assert (result.model.family, result.model.embedding_dim) == ("backbone", 32)
    pixels = _photo_pixels(result.model.preprocessing)
    model = transformers.AutoModel.from_pretrained(checkpoint).eval()  # its default attention
    with torch.no_grad():
        pixel_values = torch.from_numpy(normalize_pixels(pixels, result.model.preprocessing))
        want = torch.nn.functional.normalize(model(pixel_values=pixel_values).pooler_output, dim=-1)
    got = _run_onnx(result.model_path, pixels)
    assert _cosines(got, want.numpy()).min() >= 0.99999


@pytest.mark.parametrize(("crop_pct", "shortest_edge"), [(0.875, 32), (0.95, 30), (1.0, 32)])
def test_convnext_crop_pct_rule_gives_the_processors_pixels(
    crop_pct: float, shortest_edge: int
) -> None:
    processor = transformers.ConvNextImageProcessorPil(
        size={"shortest_edge": shortest_edge}, crop_pct=crop_pct
    )
    spec = PreprocessSpec.from_hf_processor_config(processor.to_dict())
    assert spec.output_shape == (shortest_edge, shortest_edge, 3)
    assert spec.shortest_edge == int(shortest_edge / crop_pct)
    for path in _photos()[:3]:
        with Image.open(path) as img:
            raw = processor(images=img.convert("RGB"), do_rescale=False, do_normalize=False)[
                "pixel_values"
            ][0]
        ours = load_image_pixels(path.read_bytes(), spec, exact=True)
        np.testing.assert_array_equal(ours, np.asarray(raw).transpose(1, 2, 0).astype(np.uint8))


def test_convnext_at_384_or_more_warps_to_a_square() -> None:
    processor = transformers.ConvNextImageProcessorPil(size={"shortest_edge": 384})
    spec = PreprocessSpec.from_hf_processor_config(processor.to_dict())
    assert (spec.resize_mode, spec.resize_height, spec.resize_width, spec.crop_height) == (
        "exact",
        384,
        384,
        None,
    )
    path = _photos()[0]
    with Image.open(path) as img:
        raw = processor(images=img.convert("RGB"), do_rescale=False, do_normalize=False)
    ours = load_image_pixels(path.read_bytes(), spec, exact=True)
    want = np.asarray(raw["pixel_values"][0]).transpose(1, 2, 0).astype(np.uint8)
    np.testing.assert_array_equal(ours, want)


# ------------------------------------------------------------------------ own module


def test_export_module_refuses_an_output_that_is_not_n_by_d(tmp_path: Path) -> None:
    class PerPatch(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            return x.mean(dim=1)  # [N, H, W]: not one vector per image

    with pytest.raises(
        ExportValidationError, match=r"tensor \[N, D\].*returned tensor \[2, 32, 32\]"
    ):
        export_module(PerPatch(), preprocess=TINY_MODULE_SPEC, repository=tmp_path)
    assert not any(tmp_path.iterdir())


def test_export_module_refuses_a_module_returning_a_tuple(tmp_path: Path) -> None:
    class Pair(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            return x.mean(dim=(2, 3)), x.amax(dim=(2, 3))

    with pytest.raises(ExportValidationError, match="returned tuple"):
        export_module(Pair(), preprocess=TINY_MODULE_SPEC, repository=tmp_path)


def test_export_module_reports_a_module_onnx_cannot_export(tmp_path: Path) -> None:
    class DataDependent(torch.nn.Module):
        # Branching on a value is fine in eager PyTorch and impossible to trace to one graph.
        def forward(self, x: Any) -> Any:
            pooled = x.mean(dim=(2, 3))
            return pooled * 2 if float(pooled.sum()) > 0 else pooled

    with pytest.raises(OnnxExportError, match="ONNX export of the module encoder failed"):
        export_module(DataDependent(), preprocess=TINY_MODULE_SPEC, repository=tmp_path)
    assert not list(tmp_path.rglob("model.onnx"))


def test_export_module_refuses_what_is_not_a_module(tmp_path: Path) -> None:
    not_a_module: Any = lambda x: x  # noqa: E731
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        export_module(not_a_module, preprocess=TINY_MODULE_SPEC, repository=tmp_path)


# -------------------------------------------------------------------------- refusals


def _config_only(path: Path, config: Any, processor: dict[str, Any] | None) -> Path:
    # describe_model reads only the JSON files: no weights needed to test refusals.
    config.save_pretrained(path)
    if processor is not None:
        (path / "preprocessor_config.json").write_text(json.dumps(processor))
    return path


def test_unsupported_vision_model_type_is_refused_naming_it(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "resnet"}')
    with pytest.raises(CheckpointError, match=r"unsupported model_type 'resnet'.*dinov2"):
        describe_model(ExportOptions(checkpoint=tmp_path))


_VIT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32}


@pytest.mark.parametrize(
    ("processor", "needle"),
    [
        (
            {"image_processor_type": "DetrImageProcessor", "size": {"height": 32, "width": 32}},
            "image processor 'DetrImageProcessor' is not supported",
        ),
        (
            {"image_processor_type": "ViTImageProcessor", "crop_pct": 0.9},
            "only ConvNeXt's crop_pct rule",
        ),
        (
            {"image_processor_type": "ViTImageProcessor", "do_pad": True},
            "do_pad",
        ),
        (
            {
                "image_processor_type": "ViTImageProcessor",
                "size": {"shortest_edge": 32, "longest_edge": 64},
            },
            "size=",
        ),
        (
            {
                "image_processor_type": "ConvNextImageProcessor",
                "size": {"shortest_edge": 36},
                "crop_pct": 0.875,
                "do_center_crop": True,
                "crop_size": {"height": 32, "width": 32},
            },
            "crop_pct resize .* followed by do_center_crop",
        ),
        ({"size": {"height": 32, "width": 32}}, "names no image_processor_type"),
        (None, "no preprocessor_config.json"),
    ],
)
def test_processor_rule_the_client_cannot_reproduce_is_refused(
    tmp_path: Path, processor: dict[str, Any] | None, needle: str
) -> None:
    checkpoint = _config_only(tmp_path, transformers.ViTConfig(**_VIT), processor)
    with pytest.raises(CheckpointError, match=needle) as caught:
        describe_model(ExportOptions(checkpoint=checkpoint))
    if processor is not None:
        assert "preprocessor_config.json" in str(caught.value)  # names the file at fault


def test_pooling_is_refused_where_the_family_offers_none(tmp_path: Path) -> None:
    checkpoint = make_vit(tmp_path / "vit")
    with pytest.raises(CheckpointError, match="pooling 'cls\\+mean' does not apply to backbone"):
        describe_model(ExportOptions(checkpoint=checkpoint, pooling="cls+mean"))
    with pytest.raises(ValueError, match="needs a checkpoint"):
        ExportOptions(pooling="cls+mean")


def test_unknown_dinov2_pooling_is_refused(dinov2_checkpoint: Path) -> None:
    with pytest.raises(CheckpointError, match="'mean' is not one of dinov2's: cls, cls\\+mean"):
        describe_model(ExportOptions(checkpoint=dinov2_checkpoint, pooling="mean"))


def test_backbone_checkpoint_without_a_trained_pooler_is_refused(tmp_path: Path) -> None:
    config = transformers.ViTConfig(**_VIT, intermediate_size=64, patch_size=8)
    # A classifier checkpoint: ViTForImageClassification's ViT has no pooler.
    transformers.ViTForImageClassification(config).save_pretrained(tmp_path)
    transformers.ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="pooler"):
        load_encoder(tmp_path)


def test_convnext_checkpoint_describes_without_weights(tmp_path: Path) -> None:
    # configs-only works for backbones too: the JSON files say D and the preprocessing.
    checkpoint = make_convnext(tmp_path / "convnext")
    info = describe_model(ExportOptions(checkpoint=checkpoint))
    assert (info.family, info.embedding_dim, info.height, info.width) == ("backbone", 16, 32, 32)


# ------------------------------------------------------------------------------ CLI


def test_cli_exports_the_dinov2_pooling_it_is_given(
    dinov2_checkpoint: Path, tmp_path: Path
) -> None:
    from tritonvision.cli import main as cli_main

    argv = ["export", "--configs-only", "--checkpoint", str(dinov2_checkpoint)]
    assert cli_main([*argv, "--pooling", "cls+mean", "--repository", str(tmp_path)]) == 0
    published = _published(tmp_path, "vision_encoder")
    assert (published[PARAM_FAMILY], published[PARAM_EMBEDDING_DIM]) == ("dinov2", "64")
    config = read_model_config(tmp_path / "vision_encoder" / "config.pbtxt")
    assert list(config.output[0].dims) == [64]


def test_cli_refuses_a_pooling_the_family_lacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tritonvision.cli import main as cli_main

    checkpoint = make_vit(tmp_path / "vit")
    argv = ["export", "--configs-only", "--checkpoint", str(checkpoint), "--pooling", "cls"]
    assert cli_main([*argv, "--repository", str(tmp_path / "repo")]) == 2
    assert "pooling 'cls' does not apply to backbone" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()
