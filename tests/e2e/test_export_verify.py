"""``verify_server``, ``verify_text_server`` and ``tritonvision verify`` against the session's
real tritonserver.

The server is the one of tests/conftest.py; its text towers are the tiny CLIP and SigLIP
two-tower checkpoints of tests/_tiny_text.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _tiny_text import TINY_CLIP_TEXT, TINY_SIGLIP_TEXT

from tritonvision.cli import main
from tritonvision.contract import texts_name
from tritonvision.export import (
    VerificationError,
    builtin_encoder,
    verify_server,
    verify_text_model,
    verify_text_server,
)

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


# ---------------------------------------------------------------------------- text tower


@pytest.mark.parametrize("name", [TINY_CLIP_TEXT, TINY_SIGLIP_TEXT])
def test_verify_text_server_agrees_with_transformers_on_short_long_and_non_ascii_sentences(
    triton: Any, text_checkpoints: dict[str, Path], name: str
) -> None:
    report = verify_text_server(triton.http_url, name=name, checkpoint=text_checkpoints[name])
    assert report is not None and report.passed
    assert report.model_name == texts_name(name)
    assert {"short", "long-truncated", "non-ascii-cjk", "empty"} <= set(report.images)
    assert report.min_cosine >= 0.9999
    assert report.max_abs_diff <= report.tolerance.atol
    assert report.served_source == report.reference_source == str(text_checkpoints[name])
    assert "sentences" in report.describe()
    print(f"\nverify {report.describe()}")


def test_verify_text_server_takes_the_published_checkpoint_when_none_is_given(
    triton: Any, text_checkpoints: dict[str, Path]
) -> None:
    # The session checkpoints are on this machine: the published source is usable as is.
    report = verify_text_server(triton.http_url, name=TINY_SIGLIP_TEXT)
    assert report is not None and report.passed
    assert report.reference_source == str(text_checkpoints[TINY_SIGLIP_TEXT])


def test_verify_text_server_refuses_another_checkpoints_text_tower(
    triton: Any, text_checkpoints: dict[str, Path]
) -> None:
    with pytest.raises(VerificationError, match=r"tritonvision\.family is 'clip'"):
        verify_text_server(
            triton.http_url, name=TINY_CLIP_TEXT, checkpoint=text_checkpoints[TINY_SIGLIP_TEXT]
        )


def test_verify_text_server_skips_an_image_only_model_only_when_asked(triton: Any) -> None:
    assert verify_text_server(triton.http_url, name=triton.model, optional=True) is None
    with pytest.raises(VerificationError, match=f"'{texts_name(triton.model)}' is not ready"):
        verify_text_server(triton.http_url, name=triton.model)


def test_verify_text_model_fails_with_figures_when_the_served_vectors_differ(
    triton: Any, text_checkpoints: dict[str, Path]
) -> None:
    import tritonclient.http as httpclient

    model = texts_name(TINY_CLIP_TEXT)
    client = httpclient.InferenceServerClient(triton.http_url.removeprefix("http://"))
    try:
        config = client.get_model_config(model)
    finally:
        client.close()
    dim = int(config["output"][0]["dims"][0])

    def wrong(sentences: Sequence[str]) -> np.ndarray:
        # A server that answers unit vectors unrelated to the texts.
        rows = np.random.default_rng(len(sentences)).normal(size=(len(sentences), dim))
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)

    with pytest.raises(VerificationError, match="MISMATCH") as info:
        verify_text_model(config, wrong, checkpoint=text_checkpoints[TINY_CLIP_TEXT])
    report = info.value.report
    assert report is not None and not report.passed
    assert len(report.cosines) == len(report.images) and report.min_cosine < 0.9


def test_verify_command_checks_the_image_and_text_towers_of_a_text_export(
    triton: Any, text_checkpoints: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["verify", "--server", triton.http_url, "--name", TINY_CLIP_TEXT]
    assert main([*args, "--checkpoint", str(text_checkpoints[TINY_CLIP_TEXT])]) == 0
    out = capsys.readouterr().out
    assert f"{TINY_CLIP_TEXT}: " in out and "images" in out
    assert f"{texts_name(TINY_CLIP_TEXT)}: 7 sentences" in out and "MISMATCH" not in out
    # Without --checkpoint both sides compare with the published source, here on this machine.
    assert main(args) == 0
    assert f"{texts_name(TINY_CLIP_TEXT)}: 7 sentences" in capsys.readouterr().out
    # --no-text checks the image side alone.
    assert main([*args, "--no-text"]) == 0
    assert texts_name(TINY_CLIP_TEXT) not in capsys.readouterr().out


def test_verify_command_fails_when_the_text_tower_is_not_the_checkpoints(
    triton: Any, text_checkpoints: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = str(text_checkpoints[TINY_SIGLIP_TEXT])
    args = ["verify", "--server", triton.http_url, "--name", TINY_CLIP_TEXT, "--checkpoint", wrong]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"{texts_name(TINY_CLIP_TEXT)} does not serve the text tower" in err


def test_verify_command_checks_an_image_only_export_from_its_published_checkpoint(
    triton: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from _tiny_families import TINY_DINOV2

    # No --checkpoint: the DINOv2 export's published source is a checkpoint on this machine;
    # it has no text tower, which verify says instead of failing.
    assert main(["verify", "--server", triton.http_url, "--name", TINY_DINOV2]) == 0
    out = capsys.readouterr().out
    assert f"{TINY_DINOV2}: " in out
    assert f"no {texts_name(TINY_DINOV2)} on the server: text tower not checked" in out
