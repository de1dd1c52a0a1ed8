"""``verify_server`` and ``tritonvision verify`` against the session's real tritonserver.

The server is the one of tests/conftest.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from tritonvision.cli import main
from tritonvision.export import VerificationError, builtin_encoder, verify_server

pytestmark = pytest.mark.e2e


def _served_encoder() -> Any:
    # The same seeded tiny CLIP that conftest's `tiny_repository` exports.
    from conftest import tiny_clip_config

    return builtin_encoder(tiny_clip_config())


def test_verify_server_agrees_with_pytorch(triton: Any) -> None:
    report = verify_server(triton.http_url, name=triton.model, encoder=_served_encoder())
    assert report.passed
    assert report.max_abs_diff <= report.tolerance.atol
    assert report.min_cosine >= report.tolerance.min_cosine
    assert len(report.images) >= 4


def test_verify_server_names_a_missing_model(triton: Any) -> None:
    with pytest.raises(VerificationError, match="'no_such_model' is not ready"):
        verify_server(triton.http_url, name="no_such_model", encoder=_served_encoder())


def test_verify_server_refuses_a_different_reference(triton: Any) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=8,
    )
    with pytest.raises(VerificationError, match=r"tritonvision\.embedding_dim"):
        verify_server(triton.http_url, name=triton.model, encoder=builtin_encoder(config))


@pytest.mark.parametrize("form", ["url", "host:port"])
def test_verify_command_takes_a_url_or_bare_host_port_and_names_a_missing_model(
    triton: Any, form: str, capsys: pytest.CaptureFixture[str]
) -> None:
    server = triton.http_url if form == "url" else triton.http_url.removeprefix("http://")
    assert main(["verify", "--server", server, "--name", "no_such_model"]) == 1
    err = capsys.readouterr().err
    assert "verify FAILED" in err and "'no_such_model' is not ready" in err
