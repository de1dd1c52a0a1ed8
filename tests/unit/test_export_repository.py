"""The repository writer: configs built through model_config_pb2, parsed back, byte-stable."""

from __future__ import annotations

import ast
import graphlib
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

import tritonvision.export
from tritonvision.cli import main as cli_main
from tritonvision.contract import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MODEL,
    EMBEDDINGS_OUTPUT,
    PARAM_CONTEXT_LENGTH,
    PARAM_EMBEDDING_DIM,
    PARAM_FAMILY,
    PARAM_MAX_IMAGE_PIXELS,
    PARAM_NORMALIZED,
    PARAM_PRECISION,
    PARAM_PREPROCESSING,
    PARAM_SOURCE,
    PARAM_TRAINED,
    PIXELS_INPUT,
    PUBLISHED_PARAMETERS,
    PreprocessSpec,
    ensemble_name,
    preprocess_name,
)
from tritonvision.errors import TritonVisionError
from tritonvision.export import (
    BUILTIN_SOURCE,
    PREPROCESS_MODEL_PY,
    CheckpointError,
    ExportError,
    ExportOptions,
    ExportValidationError,
    Tolerance,
    ValidationReport,
    VerificationError,
    builtin_encoder,
    builtin_encoder_info,
    describe_model,
    write_repository_configs,
)

COMMITTED = Path(__file__).resolve().parents[2] / "model_repository"

DESIGN_CLIP_SPEC = {
    "resize": {"mode": "shortest_edge", "shortest_edge": 224},
    "crop": {"height": 224, "width": 224},
    "resample": "bicubic",
    "rescale_factor": 0.00392156862745098,
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "input": {"name": "pixels", "datatype": "UINT8", "layout": "NHWC", "height": 224, "width": 224},
}
SHIM = (
    '"""Triton python-backend model: encoded image bytes -> pixels.\n\n'
    'The logic lives in tritonvision.serve.backends.preprocess.\n"""\n'
    "\n"
    "from tritonvision.serve.backends.preprocess import TritonPythonModel  # noqa: F401\n"
)


def _parse(path: Path) -> pb.ModelConfig:
    return text_format.Parse(path.read_text(encoding="utf-8"), pb.ModelConfig())


def _params(config: pb.ModelConfig) -> dict[str, str]:
    return {k: v.string_value for k, v in config.parameters.items()}


@pytest.fixture
def default_repo(tmp_path: Path) -> Path:
    write_repository_configs(
        ExportOptions(repository=tmp_path, preferred_batch_sizes=(16, 8)), builtin_encoder_info()
    )
    return tmp_path


def test_encoder_config_parses_back_with_every_setting(default_repo: Path) -> None:
    config = _parse(default_repo / "vision_encoder" / "config.pbtxt")
    assert (config.name, config.platform, config.backend) == (
        "vision_encoder",
        "onnxruntime_onnx",
        "onnxruntime",
    )
    assert config.max_batch_size == 32
    (inp,), (out,) = config.input, config.output
    assert (inp.name, inp.data_type, list(inp.dims)) == ("pixels", pb.TYPE_UINT8, [224, 224, 3])
    assert (out.name, out.data_type, list(out.dims)) == ("embeddings", pb.TYPE_FP32, [512])

    batching = config.dynamic_batching
    assert list(batching.preferred_batch_size) == [8, 16]
    assert batching.max_queue_delay_microseconds == 2000
    policy = batching.default_queue_policy
    assert policy.max_queue_size == 256
    assert policy.timeout_action == pb.ModelQueuePolicy.REJECT
    assert policy.allow_timeout_override is True

    (group,) = config.instance_group
    assert (group.count, group.kind) == (1, pb.ModelInstanceGroup.KIND_AUTO)

    (warmup,) = config.model_warmup
    assert warmup.batch_size == 1
    sample = warmup.inputs["pixels"]
    assert (sample.data_type, list(sample.dims), sample.zero_data) == (
        pb.TYPE_UINT8,
        [224, 224, 3],
        True,
    )

    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert accelerator.parameters["precision_mode"] == "FP16"


def test_published_parameters_follow_design(default_repo: Path) -> None:
    params = _params(_parse(default_repo / "vision_encoder" / "config.pbtxt"))
    # The image models carry every published key but the text models' context length.
    assert sorted(params) == sorted(set(PUBLISHED_PARAMETERS) - {PARAM_CONTEXT_LENGTH})
    spec_json = params.pop(PARAM_PREPROCESSING)
    assert json.loads(spec_json) == DESIGN_CLIP_SPEC
    assert spec_json == json.dumps(DESIGN_CLIP_SPEC, sort_keys=True)
    assert params == {
        PARAM_FAMILY: "clip",
        PARAM_SOURCE: BUILTIN_SOURCE,
        PARAM_TRAINED: "false",
        PARAM_EMBEDDING_DIM: "512",
        PARAM_NORMALIZED: "true",
        PARAM_PRECISION: "fp32",
    }


def test_preprocess_model_config_and_shim(default_repo: Path) -> None:
    config = _parse(default_repo / "vision_encoder_preprocess" / "config.pbtxt")
    assert (config.name, config.backend, config.platform) == (
        "vision_encoder_preprocess",
        "python",
        "",
    )
    assert config.max_batch_size == 32
    (inp,), (out,) = config.input, config.output
    assert (inp.name, inp.data_type, list(inp.dims)) == ("images", pb.TYPE_STRING, [1])
    assert (out.name, out.data_type, list(out.dims)) == ("pixels", pb.TYPE_UINT8, [224, 224, 3])
    (group,) = config.instance_group
    assert group.kind == pb.ModelInstanceGroup.KIND_CPU
    encoder = _parse(default_repo / "vision_encoder" / "config.pbtxt")
    assert _params(config) == {
        **_params(encoder),
        PARAM_MAX_IMAGE_PIXELS: str(DEFAULT_MAX_IMAGE_PIXELS),
    }

    shim = default_repo / "vision_encoder_preprocess" / "1" / "model.py"
    assert shim.read_text(encoding="utf-8") == SHIM == PREPROCESS_MODEL_PY


def test_ensemble_chains_preprocess_then_encoder(default_repo: Path) -> None:
    config = _parse(default_repo / "vision_encoder_images" / "config.pbtxt")
    assert (config.name, config.platform) == ("vision_encoder_images", "ensemble")
    (inp,), (out,) = config.input, config.output
    assert (inp.name, inp.data_type, list(inp.dims)) == ("images", pb.TYPE_STRING, [1])
    assert (out.name, out.data_type, list(out.dims)) == ("embeddings", pb.TYPE_FP32, [512])
    first, second = config.ensemble_scheduling.step
    assert first.model_name == "vision_encoder_preprocess"
    assert dict(first.input_map) == {"images": "images"}
    assert dict(first.output_map) == {"pixels": "pixels"}
    assert second.model_name == "vision_encoder"
    assert dict(second.input_map) == {"pixels": "pixels"}
    assert dict(second.output_map) == {"embeddings": "embeddings"}
    assert (first.model_version, second.model_version) == (-1, -1)
    assert (default_repo / "vision_encoder_images" / "1" / ".gitkeep").is_file()


def test_rewriting_gives_byte_identical_files(tmp_path: Path) -> None:
    options = ExportOptions(repository=tmp_path)
    first = write_repository_configs(options)
    before = {p: p.read_bytes() for p in first.configs}
    second = write_repository_configs(options)
    assert {p: p.read_bytes() for p in second.configs} == before


def test_no_tensorrt_and_custom_names(tmp_path: Path) -> None:
    options = ExportOptions(
        repository=tmp_path,
        name="enc",
        version=4,
        tensorrt=False,
        instances=3,
        max_queue_size=9,
        max_queue_delay_us=0,
        fp16=True,
        normalize=False,
    )
    files = write_repository_configs(options)
    config = _parse(files.encoder_config)
    assert not config.HasField("optimization")
    assert config.instance_group[0].count == 3
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 9
    assert _params(config)[PARAM_PRECISION] == "fp16"
    assert _params(config)[PARAM_NORMALIZED] == "false"
    assert PARAM_MAX_IMAGE_PIXELS not in _params(config)
    assert files.model == tmp_path / "enc" / "4" / "model.onnx"
    assert files.preprocess_model == tmp_path / "enc_preprocess" / "4" / "model.py"
    steps = _parse(files.ensemble_config).ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["enc_preprocess", "enc"]


def _tiny_checkpoint_config(
    path: Path, family: str, *, processor: dict[str, object] | None
) -> Path:
    transformers = pytest.importorskip("transformers")
    tiny = {"hidden_size": 32, "num_attention_heads": 2, "image_size": 32, "patch_size": 8}
    if family == "clip":
        transformers.CLIPVisionConfig(**tiny, projection_dim=16).save_pretrained(path)
    else:
        transformers.SiglipVisionConfig(**tiny).save_pretrained(path)
    if processor is not None:
        (path / "preprocessor_config.json").write_text(json.dumps(processor))
    return path


def test_checkpoint_processor_config_is_published(tmp_path: Path) -> None:
    checkpoint = _tiny_checkpoint_config(
        tmp_path / "ckpt",
        "clip",
        processor={
            "image_processor_type": "CLIPImageProcessor",
            "size": {"shortest_edge": 36},
            "crop_size": {"height": 32, "width": 32},
            "do_center_crop": True,
            "resample": 2,
            "image_mean": [0.5, 0.25, 0.125],
            "image_std": [0.2, 0.3, 0.4],
        },
    )
    info = describe_model(ExportOptions(checkpoint=checkpoint, repository=tmp_path / "repo"))
    assert (info.family, info.embedding_dim, info.trained) == ("clip", 16, True)
    assert info.source == str(checkpoint.resolve())
    assert info.preprocessing.to_dict() == {
        "resize": {"mode": "shortest_edge", "shortest_edge": 36},
        "crop": {"height": 32, "width": 32},
        "resample": "bilinear",
        "rescale_factor": 0.00392156862745098,
        "mean": [0.5, 0.25, 0.125],
        "std": [0.2, 0.3, 0.4],
        "input": {
            "name": "pixels",
            "datatype": "UINT8",
            "layout": "NHWC",
            "height": 32,
            "width": 32,
        },
    }


def test_siglip_without_processor_config_gets_family_defaults(tmp_path: Path) -> None:
    checkpoint = _tiny_checkpoint_config(tmp_path / "ckpt", "siglip", processor=None)
    files = write_repository_configs(ExportOptions(checkpoint=checkpoint, repository=tmp_path))
    params = _params(_parse(files.encoder_config))
    spec = json.loads(params[PARAM_PREPROCESSING])
    assert spec["resize"] == {"mode": "exact", "height": 32, "width": 32}
    assert spec["crop"] is None
    assert (spec["mean"], spec["std"]) == ([0.5] * 3, [0.5] * 3)
    assert params[PARAM_EMBEDDING_DIM] == "32"
    assert params[PARAM_FAMILY] == "siglip"


def test_processor_output_size_must_match_the_model(tmp_path: Path) -> None:
    checkpoint = _tiny_checkpoint_config(
        tmp_path / "ckpt",
        "siglip",
        processor={
            "image_processor_type": "SiglipImageProcessor",
            "size": {"height": 64, "width": 64},
        },
    )
    with pytest.raises(CheckpointError, match="32x32"):
        describe_model(ExportOptions(checkpoint=checkpoint))


def test_unknown_model_type_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(CheckpointError, match="unsupported model_type 'bert'"):
        describe_model(ExportOptions(checkpoint=tmp_path))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "bad/name"},
        {"max_batch_size": 0},
        {"preferred_batch_sizes": (64,)},
        {"max_queue_size": 0},
        {"validation_batch_sizes": (1, 1)},
        {"max_image_pixels": 0},
    ],
)
def test_bad_options_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ExportOptions(**kwargs)  # type: ignore[arg-type]


def test_max_image_pixels_is_written_on_the_preprocess_model_only(tmp_path: Path) -> None:
    files = write_repository_configs(ExportOptions(repository=tmp_path, max_image_pixels=4096))
    assert _params(_parse(files.preprocess_config))[PARAM_MAX_IMAGE_PIXELS] == "4096"
    for path in (files.encoder_config, files.ensemble_config):
        assert PARAM_MAX_IMAGE_PIXELS not in _params(_parse(path))


def _tree(root: Path) -> dict[str, bytes]:
    # model.onnx is written by a full export only; .pyc by Python when Triton ran the repository.
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix not in (".onnx", ".pyc")
    }


def test_cli_configs_only_writes_the_committed_repository_and_warns_untrained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The committed repository is checked against the built-in encoder itself (below), so
    # this fails if configs-only writes anything but what describes that encoder.
    assert cli_main(["export", "--configs-only", "--repository", str(tmp_path)]) == 0
    assert "UNTRAINED" in capsys.readouterr().out
    assert not (tmp_path / DEFAULT_MODEL / "1").exists()
    assert _tree(tmp_path) == _tree(COMMITTED)


def test_committed_repository_describes_the_builtin_encoder() -> None:
    import torch

    encoder = builtin_encoder()
    with torch.no_grad():
        height, width, _ = encoder.preprocessing.output_shape
        pixels = torch.zeros((2, height, width, 3), dtype=torch.uint8)
        embeddings = encoder.wrapper(normalize=True)(pixels)
    assert tuple(embeddings.shape) == (2, encoder.embedding_dim)

    names = (DEFAULT_MODEL, preprocess_name(DEFAULT_MODEL), ensemble_name(DEFAULT_MODEL))
    encoder_cfg, preprocess_cfg, ensemble_cfg = (
        _parse(COMMITTED / name / "config.pbtxt") for name in names
    )
    pixel_dims = [height, width, 3]
    assert (encoder_cfg.input[0].name, list(encoder_cfg.input[0].dims)) == (
        PIXELS_INPUT,
        pixel_dims,
    )
    assert (preprocess_cfg.output[0].name, list(preprocess_cfg.output[0].dims)) == (
        PIXELS_INPUT,
        pixel_dims,
    )
    for config in (encoder_cfg, ensemble_cfg):
        assert (config.output[0].name, list(config.output[0].dims)) == (
            EMBEDDINGS_OUTPUT,
            [encoder.embedding_dim],
        )
    published = encoder.info(normalize=True, fp16=False).parameters()
    for config in (encoder_cfg, preprocess_cfg, ensemble_cfg):
        params = _params(config)
        assert {k: params[k] for k in PUBLISHED_PARAMETERS if k in published} == published
        assert PARAM_CONTEXT_LENGTH not in params
        assert PreprocessSpec.from_json(params[PARAM_PREPROCESSING]) == encoder.preprocessing
    assert _params(preprocess_cfg)[PARAM_MAX_IMAGE_PIXELS] == str(DEFAULT_MAX_IMAGE_PIXELS)
    assert encoder.source == BUILTIN_SOURCE and not encoder.trained


def test_export_errors_are_tritonvision_errors_and_pickle_with_their_fields() -> None:
    tolerance = Tolerance(atol=1e-4, rtol=1e-3, min_cosine=0.99)
    report = ValidationReport(
        batch_size=3,
        output_shape=(3, 8),
        max_abs_diff=0.5,
        min_cosine=0.9,
        tolerance=tolerance,
        passed=False,
    )
    errors: list[ExportError] = [
        CheckpointError("no config.json", checkpoint=Path("/ckpt")),
        ExportValidationError("mismatch", problems=["batch 3"], reports=[report]),
        VerificationError("differs"),
    ]
    for err in errors:
        assert isinstance(err, TritonVisionError)
        again = pickle.loads(pickle.dumps(err))
        assert type(again) is type(err)
        assert (str(again), again.__dict__) == (str(err), err.__dict__)
    checkpoint_error = errors[0]
    assert isinstance(checkpoint_error, ValueError)
    assert checkpoint_error.source == Path("/ckpt")


def test_export_modules_depend_on_each_other_one_way() -> None:
    # Every relative import counts, inside functions and under TYPE_CHECKING too: a cycle
    # there still means a type lives in the wrong module.
    graph: dict[str, set[str]] = {}
    for path in Path(tritonvision.export.__file__).parent.glob("_*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[path.stem] = {
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
        }
    assert graph["_reports"] == set()
    assert graph["_errors"] == {"_reports"}
    list(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError on a cycle


def test_importing_export_does_not_import_torch() -> None:
    code = (
        "import sys, tritonvision.export\n"
        "heavy = {'torch', 'onnx', 'onnxruntime', 'transformers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
