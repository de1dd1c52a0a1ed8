"""The one ``tritonvision`` command: the ``--server`` rule, every command's parser, exit codes.

Parsers are driven through ``tritonvision.cli.main`` and ``build_parser`` as a user would;
the unreachable-server cases talk to a closed port on 127.0.0.1 (no Triton needed).
"""

from __future__ import annotations

import argparse
import importlib
import re
import socket
from pathlib import Path

import pytest

from tritonvision.cli import COMMANDS, build_parser, main
from tritonvision.cli._common import (
    EXIT_FAILED,
    EXIT_USAGE,
    add_server_argument,
    normalize_server_url,
)
from tritonvision.cli._progress import progress_text
from tritonvision.embed import JobAborted, UsageError
from tritonvision.errors import TritonVisionError


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------- the --server rule


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("https://triton.example:8443/", "https://triton.example:8443"),
        ("grpc://127.0.0.1:8001", "grpc://127.0.0.1:8001"),
        ("grpcs://triton.example:8001", "grpcs://triton.example:8001"),
        ("HTTP://127.0.0.1:8000", "HTTP://127.0.0.1:8000"),
        ("  http://127.0.0.1:8000  ", "http://127.0.0.1:8000"),
    ],
)
def test_normalize_server_url_keeps_http_and_grpc_urls(given: str, expected: str) -> None:
    assert normalize_server_url(given) == expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("localhost:9000", "http://localhost:9000"),
        ("triton-host", "http://triton-host"),
        ("[::1]:8000", "http://[::1]:8000"),
    ],
)
def test_normalize_server_url_reads_a_bare_host_port_as_http(given: str, expected: str) -> None:
    assert normalize_server_url(given) == expected


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ("ftp://127.0.0.1:21", "scheme"),
        ("unix:///tmp/triton.sock", "scheme"),
        ("http://127.0.0.1:99999", "port"),
        ("127.0.0.1:http", "port"),
        ("http://:8000", "no host"),
    ],
)
def test_normalize_server_url_refuses_bad_urls_naming_them(given: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as info:
        normalize_server_url(given)
    assert repr(given) in str(info.value)


@pytest.mark.parametrize("given", ["", "   "])
def test_normalize_server_url_refuses_an_empty_url(given: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        normalize_server_url(given)


@pytest.mark.parametrize("command", ["embed", "verify"])
def test_server_host_port_is_accepted_by_embed_and_verify(command: str) -> None:
    rest = ["photos", "-o", "out.npy"] if command == "embed" else []
    args = build_parser().parse_args([command, *rest, "--server", "127.0.0.1:8000"])
    assert args.server == "http://127.0.0.1:8000"
    args = build_parser().parse_args([command, *rest, "--server", "http://127.0.0.1:8000/"])
    assert args.server == "http://127.0.0.1:8000"


def test_embed_takes_grpc_but_verify_refuses_it_at_parse_time(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = build_parser().parse_args(["embed", "x", "-o", "o.npy", "--server", "grpc://h:8001"])
    assert args.server == "grpc://h:8001"
    with pytest.raises(SystemExit) as info:
        main(["verify", "--server", "grpc://127.0.0.1:8001"])
    assert info.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "'grpc://127.0.0.1:8001'" in err and "http://" in err


@pytest.mark.parametrize("command", ["embed", "verify"])
def test_a_bad_server_is_a_usage_error_naming_it(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rest = ["photos", "-o", "out.npy"] if command == "embed" else []
    with pytest.raises(SystemExit) as info:
        main([command, *rest, "--server", "ftp://127.0.0.1:21"])
    assert info.value.code == EXIT_USAGE
    assert "'ftp://127.0.0.1:21'" in capsys.readouterr().err


def test_add_server_argument_refuses_an_unknown_scheme_set() -> None:
    with pytest.raises(ValueError, match="ftp"):
        add_server_argument(argparse.ArgumentParser(), schemes=("ftp",))


# --------------------------------------------------------------------------- commands


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_registers_its_parser_and_handler(command: str) -> None:
    module = importlib.import_module(f"tritonvision.cli.{command}")
    subparsers = argparse.ArgumentParser(prog="tritonvision").add_subparsers()
    module.register(subparsers)
    assert list(subparsers.choices) == [command]
    assert _leaf_handlers(subparsers.choices[command])


def _leaf_handlers(parser: argparse.ArgumentParser) -> list[object]:
    """The ``func`` of ``parser``, or of each of its sub-commands (``deploy kubernetes``)."""
    if parser.get_default("func") is not None:
        handler = parser.get_default("func")
        return [handler] if callable(handler) else []
    nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    handlers: list[object] = []
    for action in nested:
        for child in action.choices.values():
            found = _leaf_handlers(child)
            if not found:
                return []  # a sub-command without a handler
            handlers += found
    return handlers


@pytest.mark.parametrize("command", COMMANDS)
def test_help_works_for_every_command(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert f"usage: tritonvision {command}" in capsys.readouterr().out


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s", out, re.MULTILINE), command


# ------------------------------------------------------------------------ exit codes


def test_verify_against_an_unreachable_host_port_fails_naming_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = closed_port()
    assert main(["verify", "--server", f"127.0.0.1:{port}"]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "verify FAILED" in err and f"127.0.0.1:{port}" in err


def test_embed_against_an_unreachable_host_port_exits_2_naming_it(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRITONVISION_MAX_RETRIES", "0")
    image = tmp_path / "a.png"
    image.write_bytes(b"not read: the server is checked first")
    out = tmp_path / "out.npy"
    port = closed_port()
    assert main(["embed", str(image), "-o", str(out), "--server", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert "tritonvision embed: error: cannot use model" in err
    assert f"http://127.0.0.1:{port}" in err
    assert not out.exists()


def test_embed_with_no_inputs_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["embed", "-o", str(tmp_path / "out.npy")]) == EXIT_USAGE
    assert "no inputs" in capsys.readouterr().err


def test_embed_texts_with_image_inputs_or_text_model_without_texts_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = tmp_path / "captions.txt"
    texts.write_text("a dog\n", encoding="utf-8")
    out = str(tmp_path / "out.npy")
    # A closed port: a usage error must come before any request.
    server = ["--server", f"127.0.0.1:{closed_port()}"]
    for images in (["photos"], ["--from-file", "list.txt"]):
        assert main(["embed", *images, "--texts", str(texts), "-o", out, *server]) == EXIT_USAGE
        assert "not both" in capsys.readouterr().err
    assert main(["embed", "photos", "--text-model", "t", "-o", out, *server]) == EXIT_USAGE
    assert "--text-model is for --texts" in capsys.readouterr().err
    assert main(["embed", "--texts", str(tmp_path / "none.txt"), "-o", out]) == EXIT_USAGE
    assert "cannot read texts from" in capsys.readouterr().err
    assert not (tmp_path / "out.parts").exists()


def test_embed_errors_belong_to_the_one_tree() -> None:
    assert issubclass(UsageError, TritonVisionError) and issubclass(UsageError, ValueError)
    assert issubclass(JobAborted, TritonVisionError)


def test_progress_line_shows_count_rate_eta_and_failures() -> None:
    assert progress_text(50, 100, 2, 10.0) == "50/100 (50%) 5.0 items/s, ETA 00:10, 2 failed"
    assert progress_text(0, 0, 0, 0.0) == "0/0 (100%) 0.0 items/s, ETA ?, 0 failed"
