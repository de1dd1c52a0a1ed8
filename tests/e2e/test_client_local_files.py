"""Strings from untrusted users read as local files: ``allow_local_files`` / ``local_files_root``.

- ``allow_local_files=False``: every path source (a string that is not a URL, data URI or
  base64 image; an ``os.PathLike``) is an :class:`InvalidInput`, and the file system is not
  touched: a FIFO, a directory, a missing file and a real image all give the same answer
  (each would otherwise give a different error), and no ``open`` of them is audited;
- ``local_files_root``: paths must resolve inside it once symlinks and ``..`` are
  resolved; relative paths are taken relative to it; a refusal does not tell whether the
  file exists and does not name the root;
- other kinds of input keep working in the same batch, one result or error per item.

End to end against the session's real Triton (the policy sits in the client's loader).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _local_servers import encode, make_image

from tritonvision.client import ClientConfig, InvalidInput, VisionClient
from tritonvision.client._local_files import LocalFilePolicy

OFF_MESSAGE = "reading local files is turned off"
OUTSIDE_MESSAGE = "outside the directory local files may be read from"

# Audit events naming a path under a watched folder (a hook cannot be removed: it is
# added once per process and only records what is under the folders tests watch).
_WATCHED: list[str] = []
_AUDITED: list[tuple[str, str]] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _WATCHED or not args:
        return
    first = args[0]
    if isinstance(first, bytes | str | os.PathLike):
        text = os.fsdecode(first)
        if any(text.startswith(folder) for folder in _WATCHED):
            _AUDITED.append((event, text))


sys.addaudithook(_audit)


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[list[tuple[str, str]]]:
    """File system events (open, listdir, ...) on paths under ``tmp_path`` during the test."""
    _WATCHED.append(str(tmp_path))
    _AUDITED.clear()
    try:
        yield _AUDITED
    finally:
        _WATCHED.remove(str(tmp_path))


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "cat.png"
    path.write_bytes(encode(make_image(1)))
    return path


# ------------------------------------------------------------------------ settings


def test_local_files_are_allowed_by_default_and_switchable_from_the_environment() -> None:
    assert ClientConfig().allow_local_files is True
    assert ClientConfig().local_files_root is None
    env = {"TRITONVISION_ALLOW_LOCAL_FILES": "0", "TRITONVISION_LOCAL_FILES_ROOT": "/srv/img"}
    config = ClientConfig.from_env(env)
    assert config.allow_local_files is False
    assert config.local_files_root == "/srv/img"
    assert ClientConfig(local_files_root=Path("/srv/img")).local_files_root == "/srv/img"


def test_policy_off_refuses_without_any_file_system_call(
    tmp_path: Path, image_file: Path, watched: list[tuple[str, str]]
) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    policy = LocalFilePolicy(allow=False, root=None)
    messages = []
    for path in (image_file, str(fifo), str(tmp_path / "missing.png"), str(tmp_path)):
        with pytest.raises(InvalidInput) as info:
            policy.resolve(path)
        messages.append(str(info.value).split(": ", 1)[1])
        assert info.value.source == path
    assert len(set(messages)) == 1, messages
    assert OFF_MESSAGE in messages[0]
    assert watched == []


def test_policy_root_resolves_symlinks_and_dotdot_before_checking(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(b"x")
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"y")
    (root / "escape.png").symlink_to(outside)
    (root / "inner.png").symlink_to(root / "sub" / "a.png")
    (root / "linkdir").symlink_to(tmp_path)
    policy = LocalFilePolicy(allow=True, root=root)
    real_root = os.path.realpath(root)
    assert policy.resolve("sub/a.png") == os.path.join(real_root, "sub", "a.png")
    assert policy.resolve(root / "sub" / ".." / "sub" / "a.png").endswith("a.png")
    assert policy.resolve("inner.png") == os.path.join(real_root, "sub", "a.png")
    refused = [
        "../secret.png",
        "sub/../../secret.png",
        str(outside),
        "escape.png",
        "linkdir/secret.png",
        "/etc/passwd",
        str(tmp_path / "missing.png"),  # outside and missing: the same answer as existing
        str(tmp_path / "rootless"),  # a sibling whose name starts like the root's
    ]
    for path in refused:
        with pytest.raises(InvalidInput, match=OUTSIDE_MESSAGE) as info:
            policy.resolve(path)
        assert str(root) not in str(info.value).split(": ", 1)[1]  # the root is not named


# ------------------------------------------------------------------ through the client


@pytest.mark.e2e
def test_client_with_local_files_off_refuses_every_path_the_same_and_never_opens_it(
    triton: Any, tmp_path: Path, image_file: Path, watched: list[tuple[str, str]]
) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    paths: list[Any] = [str(image_file), image_file, str(fifo), str(tmp_path / "no.png")]
    paths.append(str(tmp_path))
    data = image_file.read_bytes()
    watched.clear()
    with VisionClient(triton.http_url, triton.model, allow_local_files=False) as client:
        batch = client.batch_embed_images([*paths, data]).result(60)
        singles = []
        for path in (str(fifo), str(tmp_path / "no.png")):
            with pytest.raises(InvalidInput) as info:
                client.embed(path).result(60)
            singles.append(info.value)
        with pytest.raises(InvalidInput, match=OFF_MESSAGE):
            client.embed_image(image_file).result(60)
        vector = client.embed_image_bytes(data).result(60)
    assert sorted(batch.errors) == list(range(len(paths)))
    reasons = {str(e).split(": ", 1)[1] for e in [*batch.errors.values(), *singles]}
    assert len(reasons) == 1 and OFF_MESSAGE in reasons.pop()
    assert all(isinstance(e, InvalidInput) for e in batch.errors.values())
    np.testing.assert_allclose(batch.embeddings[len(paths)], vector, rtol=1e-5, atol=1e-6)
    assert watched == []  # no open, listdir or scandir of any of them


@pytest.mark.e2e
def test_client_with_a_root_reads_inside_and_refuses_outside_and_escaping_links(
    triton: Any, tmp_path: Path
) -> None:
    root = tmp_path / "uploads"
    root.mkdir()
    inside = root / "in.png"
    inside.write_bytes(encode(make_image(2)))
    outside = tmp_path / "private.png"
    outside.write_bytes(encode(make_image(3)))
    (root / "link.png").symlink_to(outside)
    config = ClientConfig(local_files_root=root)
    with VisionClient(triton.http_url, triton.model, config=config) as client:
        batch = client.batch_embed_images(
            ["in.png", str(inside), "../private.png", str(outside), "link.png", "gone.png"]
        ).result(60)
        expected = client.embed_image_bytes(inside.read_bytes()).result(60)
    assert sorted(batch.errors) == [2, 3, 4, 5]
    for index in (2, 3, 4):
        assert OUTSIDE_MESSAGE in str(batch.errors[index])
    assert "file not found" in str(batch.errors[5])  # inside the root, missing: said so
    np.testing.assert_allclose(batch.embeddings[0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batch.embeddings[1], expected, rtol=1e-5, atol=1e-6)
