"""``tritonvision embed``: inputs, outputs, manifest, resume, progress, exit codes.

End-to-end tests run the real command (in process through ``tritonvision.cli.main``,
or as ``python -m tritonvision`` where a signal or a terminal is needed) against the
session's real tritonserver (``triton`` fixture) and a real ``aiohttp.web`` image
server on 127.0.0.1. Input expansion has plain unit tests.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _local_servers import ImageSite, encode, make_image

from tritonvision.cli import main
from tritonvision.client import VisionClient
from tritonvision.embed import (
    Failure,
    InputItem,
    OutputPaths,
    UsageError,
    WorkDir,
    assemble_outputs,
    expand_inputs,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------- test data


_SIZE = (40, 30)


def write_image(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    make_image(seed, _SIZE).save(path, format=fmt)
    return path


def encode_png(seed: int) -> bytes:
    return encode(make_image(seed, _SIZE))


@pytest.fixture(scope="module")
def site() -> Iterator[ImageSite]:
    files = {f"web{i}.png": encode_png(100 + i) for i in range(30)}
    with ImageSite(files) as s:
        yield s


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def run_cli(*args: str) -> int:
    return main(["embed", *args])


def client_vectors(triton: Any, sources: list[Any]) -> np.ndarray:
    """The reference: the same inputs through the client directly."""
    with VisionClient(triton.http_url, triton.model, allow_private_addresses=True) as client:
        batch = client.batch_embed_images(sources).result()
    assert batch.ok, batch.errors
    return batch.embeddings


SUMMARY = re.compile(r"embedded (\d+) of (\d+) inputs \((\d+) now, (\d+) skipped")


def summary_counts(stdout: str) -> tuple[int, int, int, int]:
    """(rows in outputs, inputs, embedded this run, skipped) from the summary line."""
    match = SUMMARY.search(stdout)
    assert match, stdout
    rows, inputs, now, skipped = (int(g) for g in match.groups())
    return rows, inputs, now, skipped


# -------------------------------------------------------------- input expansion (unit)


def test_expand_inputs_walks_folders_sorted_skips_hidden_and_non_images(tmp_path: Path) -> None:
    for rel in ["b/2.png", "a/z.JPG", "a/sub/1.webp", "c.png", ".hidden/x.png", "a/.y.png"]:
        write_image(tmp_path / rel, 1)
    (tmp_path / "notes.txt").write_text("not an image")
    items = expand_inputs([str(tmp_path)])
    assert [Path(i.key).relative_to(tmp_path).as_posix() for i in items] == [
        "a/sub/1.webp",
        "a/z.JPG",
        "b/2.png",
        "c.png",
    ]
    assert all(not i.is_url and os.path.isabs(i.key) for i in items)


def test_expand_inputs_globs_lists_urls_and_drops_repeats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ["g/b.png", "g/a.png", "g/c.txt", "one.png"]:
        write_image(tmp_path / name, 2)
    (tmp_path / "list.txt").write_text(
        "# a comment\n\n  one.png  \nhttp://example.com/x.png\nmissing.png\ng\n"
    )
    items = expand_inputs(
        ["g/*", "@list.txt", "one.png", "https://example.com/y.jpg"],
        ["-"],
        stdin=io.StringIO("http://example.com/x.png\nfrom-stdin.png\n"),
    )
    keys = [i.key for i in items]
    here = str(tmp_path)
    assert keys == [
        f"{here}/g/a.png",
        f"{here}/g/b.png",  # c.txt: globs take image files only
        f"{here}/one.png",
        "http://example.com/x.png",
        f"{here}/missing.png",  # listed but missing: the item fails later, no usage error
        "https://example.com/y.jpg",
        f"{here}/from-stdin.png",
    ]
    assert [i.is_url for i in items] == [False, False, False, True, False, True, False]


@pytest.mark.parametrize("output", ["out/emb.npy", "out/emb.parquet", "out/emb", "out/emb.NPY"])
def test_output_option_names_every_output_from_one_base(output: str) -> None:
    paths = OutputPaths.from_option(output)
    assert (paths.npy, paths.sources, paths.parquet, paths.errors, paths.parts) == (
        Path("out/emb.npy"),
        Path("out/emb.sources.jsonl"),
        Path("out/emb.parquet"),
        Path("out/emb.errors.jsonl"),
        Path("out/emb.parts"),
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope.png"], "no such file or folder"),
        (["*.nothing"], "no file matches"),
        (["@absent.txt"], "cannot read input list"),
        (["empty"], "no images found"),
    ],
)
def test_expand_inputs_rejects_inputs_that_match_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=message):
        expand_inputs(args)


# ------------------------------------------------------- work dir and assembly (unit)


def test_work_dir_is_one_writer_at_a_time_and_keeps_its_model(tmp_path: Path) -> None:
    parts = tmp_path / "emb.parts"
    work = WorkDir.open(parts, model="enc", embedding_dim=4, server="http://127.0.0.1:1")
    try:
        with pytest.raises(UsageError, match="another 'tritonvision embed'") as info:
            WorkDir.open(parts, model="enc", embedding_dim=4, server="http://127.0.0.1:1")
        assert str(parts) in str(info.value)
    finally:
        work.close()
    with pytest.raises(UsageError, match="with model 'enc', not 'other'"):
        WorkDir.open(parts, model="other", embedding_dim=4, server="http://127.0.0.1:1")
    with pytest.raises(UsageError, match="4-dim embeddings"):
        WorkDir.open(parts, model="enc", embedding_dim=8, server="http://127.0.0.1:1")
    # --restart discards the saved progress instead.
    WorkDir.open(parts, model="other", embedding_dim=8, server="x", restart=True).close()


def test_committed_chunks_survive_a_reopen_and_assemble_in_input_order(tmp_path: Path) -> None:
    items = [InputItem(f"/in/{name}.png", is_url=False) for name in "abcd"]
    paths = OutputPaths.from_option(str(tmp_path / "emb.npy"))
    rows = {item.key: np.full(3, float(i), dtype=np.float32) for i, item in enumerate(items)}
    work = WorkDir.open(paths.parts, model="enc", embedding_dim=3, server="s")
    work.write_chunk(
        [items[2].key, items[0].key], np.stack([rows[items[2].key], rows[items[0].key]])
    )
    work.close()

    work = WorkDir.open(paths.parts, model="enc", embedding_dim=3, server="s")
    assert work.done_keys == {items[0].key, items[2].key}
    # A repeat of a key in a later chunk never overrides the first copy.
    work.write_chunk(
        [items[3].key, items[0].key], np.stack([rows[items[3].key], np.full(3, 99.0, np.float32)])
    )
    failure = Failure(items[1].key, "DecodeError", "not an image")
    assembled = assemble_outputs(
        items,
        work,
        paths,
        failures={items[1].key: failure},
        embedding_dim=3,
        parquet=False,
        model="enc",
    )
    work.close()
    assert (assembled.rows, assembled.dim) == (3, 3)
    np.testing.assert_array_equal(
        np.load(paths.npy), np.stack([rows[items[i].key] for i in (0, 2, 3)])
    )
    assert [r["source"] for r in read_jsonl(paths.sources)] == [items[i].key for i in (0, 2, 3)]
    assert read_jsonl(paths.errors) == [
        {"source": items[1].key, "error_type": "DecodeError", "message": "not an image"}
    ]


# ------------------------------------------------------------------------ end to end


@pytest.mark.e2e
def test_embed_folder_glob_and_list_writes_vectors_parquet_and_manifest(
    tmp_path: Path, triton: Any, site: ImageSite, capsys: pytest.CaptureFixture[str]
) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")

    folder = tmp_path / "photos"
    write_image(folder / "b" / "2.jpg", 2)
    write_image(folder / "a" / "1.png", 1)
    write_image(folder / "3.png", 3)
    (folder / "readme.txt").write_text("ignored")
    write_image(tmp_path / "loose" / "x1.png", 11)
    write_image(tmp_path / "loose" / "x2.png", 12)
    (tmp_path / "loose" / "x.txt").write_text("ignored by the glob")
    write_image(tmp_path / "extra.png", 21)
    (tmp_path / "broken.png").write_bytes(b"this is not an image")
    listing = tmp_path / "list.txt"
    listing.write_text(
        "\n".join(
            [
                "# paths and URLs",
                str(tmp_path / "extra.png"),
                site.url("web0.png"),
                site.url("missing.png"),  # 404
                str(tmp_path / "nowhere.png"),  # no such file
                str(tmp_path / "broken.png"),  # not an image
                str(folder / "3.png"),  # a repeat: embedded once
                "",
            ]
        )
    )
    out = tmp_path / "out" / "vectors.npy"
    args = [
        str(folder),
        str(tmp_path / "loose" / "*.png"),
        f"@{listing}",
        "--server",
        triton.http_url,
        "--model",
        triton.model,
        "--output",
        str(out),
        "--allow-private-addresses",
        "--batch-size",
        "3",
    ]
    assert run_cli(*args) == 1
    captured = capsys.readouterr()

    good = [
        str(folder / "3.png"),
        str(folder / "a" / "1.png"),
        str(folder / "b" / "2.jpg"),
        str(tmp_path / "loose" / "x1.png"),
        str(tmp_path / "loose" / "x2.png"),
        str(tmp_path / "extra.png"),
        site.url("web0.png"),
    ]
    vectors = np.load(out)
    assert vectors.dtype == np.float32 and vectors.shape == (len(good), triton.embedding_dim)
    sources = [r["source"] for r in read_jsonl(out.with_suffix(".sources.jsonl"))]
    assert sources == good
    expected = client_vectors(triton, [Path(s) if s.startswith("/") else s for s in good])
    np.testing.assert_allclose(vectors, expected, rtol=1e-5, atol=1e-6)

    table = pq.read_table(out.with_suffix(".parquet"))
    assert table.column("source").to_pylist() == good
    vector_type = table.schema.field("embedding").type
    assert pa.types.is_fixed_size_list(vector_type)
    assert vector_type.list_size == triton.embedding_dim
    assert vector_type.value_type == pa.float32()
    np.testing.assert_array_equal(np.array(table.column("embedding").to_pylist()), vectors)

    errors = read_jsonl(tmp_path / "out" / "vectors.errors.jsonl")
    assert [(e["source"], e["error_type"]) for e in errors] == [
        (site.url("missing.png"), "FetchStatusError"),
        (str(tmp_path / "nowhere.png"), "InvalidInput"),
        (str(tmp_path / "broken.png"), "DecodeError"),
    ]
    assert "404" in errors[0]["message"] and "not found" in errors[1]["message"]
    assert all(e["message"] for e in errors)
    assert summary_counts(captured.out) == (7, 10, 7, 0)
    assert "3 failed" in captured.out

    # Failures are not finished: a re-run retries just them, the rest is skipped.
    parts = tmp_path / "out" / "vectors.parts"
    assert parts.is_dir()
    assert run_cli(*args) == 1
    captured = capsys.readouterr()
    assert summary_counts(captured.out) == (7, 10, 0, 7)
    np.testing.assert_array_equal(np.load(out), vectors)
    assert len(read_jsonl(tmp_path / "out" / "vectors.errors.jsonl")) == 3

    # Saved progress from another model is refused, not mixed in.
    job = json.loads((parts / "job.json").read_text())
    (parts / "job.json").write_text(json.dumps({**job, "model": "another_model"}))
    assert run_cli(*args) == 2
    assert "another_model" in capsys.readouterr().err


@pytest.fixture(scope="module")
def url_list(site: ImageSite, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 image URLs that each take 0.25 s to fetch, so a run can be caught mid-way."""
    path = tmp_path_factory.mktemp("lists") / "urls.txt"
    path.write_text("".join(site.url(f"web{i}.png", "slow") + "?s=0.25\n" for i in range(30)))
    return path


def url_args(triton: Any, url_list: Path, out: Path) -> list[str]:
    return [
        f"@{url_list}",
        "--server",
        triton.http_url,
        "--model",
        triton.model,
        "-o",
        str(out),
        "--allow-private-addresses",
        "--batch-size",
        "2",
        "--max-in-flight",
        "2",
        "-q",
    ]


@pytest.fixture(scope="module")
def clean_run(triton: Any, url_list: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "clean.npy"
    assert run_cli(*url_args(triton, url_list, out), "-qq") == 0
    return out


@pytest.mark.e2e
@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name
)
def test_interrupted_run_resumes_and_matches_a_clean_run(
    sig: signal.Signals,
    tmp_path: Path,
    triton: Any,
    url_list: Path,
    clean_run: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "resumed.npy"
    parts = tmp_path / "resumed.parts"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tritonvision", "embed", *url_args(triton, url_list, out)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(parts.glob("chunk-*.npz")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no chunk was written"
            time.sleep(0.01)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    expected_rc = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -9}[sig]
    assert proc.returncode == expected_rc, (stdout, stderr)
    if sig != signal.SIGKILL:
        assert "run the same command again to resume" in stderr
    assert not out.exists()

    saved: list[str] = []
    for chunk in parts.glob("chunk-*.npz"):
        with np.load(chunk) as data:
            saved += data["sources"].tolist()
    assert 0 < len(saved) < 30, "the run was not caught mid-way"
    assert len(set(saved)) == len(saved)

    assert run_cli(*url_args(triton, url_list, out)) == 0
    rows, inputs, now, skipped = summary_counts(capsys.readouterr().out)
    assert (rows, inputs) == (30, 30)
    assert skipped == len(saved) and now == 30 - len(saved)  # each input embedded once

    sources = [r["source"] for r in read_jsonl(tmp_path / "resumed.sources.jsonl")]
    clean_sources = [r["source"] for r in read_jsonl(clean_run.with_suffix(".sources.jsonl"))]
    assert sources == clean_sources and len(set(sources)) == 30
    np.testing.assert_allclose(np.load(out), np.load(clean_run), rtol=1e-5, atol=1e-6)
    assert read_jsonl(tmp_path / "resumed.errors.jsonl") == []
    assert not parts.exists()


@pytest.mark.e2e
def test_quiet_and_non_tty_progress_print_plain_lines_and_no_bar(
    tmp_path: Path, triton: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(5):
        write_image(tmp_path / "in" / f"{i}.png", i)
    base = ["--server", triton.grpc_url, "--model", triton.model, "--batch-size", "2"]

    # Not a terminal (pytest captures stderr): no bar, only complete "embed:" lines.
    assert run_cli(str(tmp_path / "in"), *base, "-o", str(tmp_path / "a.npy")) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "it/s" not in err and "█" not in err
    assert all(line.startswith("embed: ") for line in err.splitlines())

    args = [str(tmp_path / "in"), *base, "-q", "--progress-interval", "0.001"]
    assert run_cli(*args, "-o", str(tmp_path / "b.npy")) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and err.splitlines()
    assert err.splitlines()[-1].startswith("embed: 5/5 (100%)")
    assert "0 failed" in err

    assert run_cli(str(tmp_path / "in"), *base, "-qq", "-o", str(tmp_path / "c.npy")) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert summary_counts(captured.out) == (5, 5, 5, 0)
    assert np.load(tmp_path / "c.npy").shape == (5, triton.embedding_dim)


def run_on_a_terminal(args: list[str], *, hide_tqdm: bool) -> tuple[int, str]:
    """Run the CLI with stderr on a pseudo-terminal; returns (exit code, terminal text)."""
    import pty

    prelude = "import sys; sys.modules['tqdm'] = None; " if hide_tqdm else "import sys; "
    code = prelude + "from tritonvision.cli import main; sys.exit(main(sys.argv[1:]))"
    master, slave = pty.openpty()  # 0 x 0 like script(1): a bar must still show
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=slave,
    )
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.e2e
@pytest.mark.parametrize("hide_tqdm", [False, True], ids=["tqdm", "without-tqdm"])
def test_terminal_gets_a_live_progress_bar(tmp_path: Path, triton: Any, hide_tqdm: bool) -> None:
    for i in range(4):
        write_image(tmp_path / "in" / f"{i}.png", i)
    (tmp_path / "in" / "bad.png").write_bytes(b"not an image")
    args = ["embed", str(tmp_path / "in"), "--server", triton.http_url, "--model", triton.model]
    rc, text = run_on_a_terminal([*args, "-o", str(tmp_path / "o.npy")], hide_tqdm=hide_tqdm)
    assert rc == 1
    if hide_tqdm:
        assert "\rembed: 5/5 (100%)" in text and "1 failed" in text
    else:
        assert "img/s" in text and "errors=1" in text and "5/5" in text


@pytest.mark.e2e
def test_without_pyarrow_npy_and_sources_are_written_and_parquet_request_is_refused(
    tmp_path: Path, triton: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("pyarrow.parquet")
    for i in range(3):
        write_image(tmp_path / "in" / f"{i}.png", i)
    base = [str(tmp_path / "in"), "--server", triton.http_url, "--model", triton.model, "-qq"]
    out = tmp_path / "emb.npy"
    assert run_cli(*base, "-o", str(out)) == 0  # pyarrow installed: Parquet too
    assert (tmp_path / "emb.parquet").exists()
    capsys.readouterr()

    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    assert run_cli(*base, "-o", str(tmp_path / "p.parquet")) == 2
    err = capsys.readouterr().err
    assert "pyarrow" in err and "tritonvision[embed]" in err
    assert not list(tmp_path.glob("p.*"))

    # A finished output is not overwritten by accident...
    assert run_cli(*base, "-o", str(out)) == 2
    assert "--restart" in capsys.readouterr().err
    # ...but --restart does, and drops the now stale Parquet file.
    assert run_cli(*base, "-o", str(out), "--restart") == 0
    captured = capsys.readouterr()
    assert "removed" in captured.out
    assert np.load(out).shape == (3, triton.embedding_dim)
    assert len(read_jsonl(tmp_path / "emb.sources.jsonl")) == 3
    assert not (tmp_path / "emb.parquet").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.e2e
def test_unreachable_server_or_unknown_model_exits_2_before_writing(
    tmp_path: Path, triton: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    write_image(tmp_path / "in" / "0.png", 0)
    out = tmp_path / "x.npy"
    dead = f"http://127.0.0.1:{free_port()}"
    assert run_cli(str(tmp_path / "in"), "--server", dead, "-o", str(out)) == 2
    assert "cannot use model" in capsys.readouterr().err
    args = [str(tmp_path / "in"), "--server", triton.http_url, "--model", "no_such_model"]
    assert run_cli(*args, "-o", str(out)) == 2
    assert "no_such_model" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [tmp_path / "in"]


@pytest.mark.e2e
@pytest.mark.parametrize("form", ["host:port", "grpc"])
def test_server_as_bare_host_port_or_grpc_url_embeds_the_same_vectors(
    tmp_path: Path, triton: Any, form: str
) -> None:
    for i in range(3):
        write_image(tmp_path / "in" / f"{i}.png", 40 + i)
    # One --server rule for every command: a bare HOST:PORT means http://HOST:PORT.
    server = triton.http_url.removeprefix("http://") if form == "host:port" else triton.grpc_url
    assert "://" not in server or form == "grpc"
    out = tmp_path / "out.npy"
    args = [str(tmp_path / "in"), "--server", server, "--model", triton.model, "-qq"]
    assert run_cli(*args, "--no-parquet", "-o", str(out)) == 0
    expected = client_vectors(triton, sorted((tmp_path / "in").iterdir()))
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-5, atol=1e-6)
