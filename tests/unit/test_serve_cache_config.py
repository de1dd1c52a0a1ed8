"""The response-cache settings, without a server: export configs, runtime derivation, flags.

The server's behaviour with them (hits, the same vector, the warning) is in
``tests/e2e/test_serve_cache.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest


def _parse(path: Path) -> Any:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.mark.parametrize("enabled", [True, False])
def test_export_writes_the_response_cache_on_encoder_and_ensemble_not_on_preprocess(
    tmp_path: Path, enabled: bool
) -> None:
    from tritonvision.export import ExportOptions, write_repository_configs

    files = write_repository_configs(ExportOptions(repository=tmp_path, response_cache=enabled))
    encoder = _parse(files.encoder_config)
    ensemble = _parse(files.ensemble_config)
    preprocess = _parse(files.preprocess_config)
    assert encoder.response_cache.enable is enabled
    assert ensemble.response_cache.enable is enabled
    assert preprocess.HasField("response_cache") is False
    assert ("response_cache" in files.encoder_config.read_text()) is enabled


def test_export_cli_flag_sets_the_option() -> None:
    from tritonvision.cli import build_parser
    from tritonvision.cli.export import _options_from

    parser = build_parser()
    assert _options_from(parser.parse_args(["export", "--response-cache"])).response_cache
    assert not _options_from(parser.parse_args(["export"])).response_cache


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_runtime_repository_keeps_the_response_cache_of_encoder_and_ensemble(
    tmp_path: Path, device: str
) -> None:
    from tritonvision.export import ExportOptions, write_repository_configs
    from tritonvision.serve import derive_runtime_repository

    options = ExportOptions(repository=tmp_path / "repo", response_cache=True)
    files = write_repository_configs(options)
    files.model.parent.mkdir(parents=True, exist_ok=True)
    files.model.write_bytes(b"not read by the derivation")
    runtime = derive_runtime_repository(options.repository, tmp_path / "rt", device=device)
    assert runtime.cached == (options.name, options.ensemble_name)
    encoder = _parse(runtime.path / options.name / "config.pbtxt")
    assert encoder.backend == "python"
    assert encoder.response_cache.enable
    assert _parse(runtime.path / options.ensemble_name / "config.pbtxt").response_cache.enable
    preprocess = _parse(runtime.path / options.preprocess_name / "config.pbtxt")
    assert not preprocess.response_cache.enable


def test_runtime_repository_of_an_uncached_export_names_no_cached_model(tmp_path: Path) -> None:
    from tritonvision.export import ExportOptions, write_repository_configs
    from tritonvision.serve import derive_runtime_repository

    options = ExportOptions(repository=tmp_path / "repo")
    files = write_repository_configs(options)
    files.model.parent.mkdir(parents=True, exist_ok=True)
    files.model.write_bytes(b"x")
    assert derive_runtime_repository(options.repository, tmp_path / "rt").cached == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1048576", 1048576), ("64M", 64 << 20), ("64MiB", 64 << 20), ("1g", 1 << 30), ("2K", 2048)],
)
def test_cache_size_accepts_bytes_and_binary_suffixes(text: str, expected: int) -> None:
    from tritonvision.cli.serve import byte_size

    assert byte_size(text) == expected


@pytest.mark.parametrize("text", ["1.5G", "64MB", "-1", "", "M", "1000"])
def test_cache_size_refuses_what_is_not_a_size_or_too_small_for_triton(text: str) -> None:
    from tritonvision.cli.serve import byte_size

    with pytest.raises(argparse.ArgumentTypeError):
        byte_size(text)


def test_serve_cli_passes_the_cache_size_to_local_triton() -> None:
    from tritonvision.cli import build_parser

    args = build_parser().parse_args(["serve", "--cache-size", "64M"])
    assert args.cache_size == 64 << 20
    assert build_parser().parse_args(["serve"]).cache_size is None


def test_local_triton_refuses_a_cache_too_small_for_triton() -> None:
    from tritonvision.serve import LocalTriton

    with pytest.raises(ValueError, match="at least 1024 bytes"):
        LocalTriton("model_repository", cache_size_bytes=100)
    assert LocalTriton("model_repository", cache_size_bytes=1024).cache_size_bytes == 1024
