"""``tritonvision embed --texts``: a text index built by the same job as an image one.

The real command (``tritonvision.cli.main``) against the session's real tritonserver
(``triton`` fixture), whose repository holds ``tiny_clip_text`` exported with its text
tower; the reference vectors are the client's own ``batch_embed_texts`` rows. Reading
the texts file has a plain unit test.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _tiny_text import TINY_CLIP_TEXT

from tritonvision.cli import main
from tritonvision.cli._common import EXIT_FAILED, EXIT_OK
from tritonvision.client import VisionClient
from tritonvision.embed import read_texts

MIN_COSINE = 0.9999
SUMMARY = re.compile(r"embedded (\d+) of (\d+) inputs \((\d+) now, (\d+) skipped")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().decode("utf-8").split("\n") if line]


def summary_counts(stdout: str) -> tuple[int, ...]:
    """(rows in outputs, inputs, embedded this run, skipped) from the summary line."""
    match = SUMMARY.search(stdout)
    assert match, stdout
    return tuple(int(g) for g in match.groups())


def test_read_texts_keeps_lines_exactly_skips_blanks_and_repeats_and_flags_bad_lines(
    tmp_path: Path,
) -> None:
    data = (
        b"\xef\xbb\xbf  leading and trailing spaces kept  \r\n"
        b"\n"
        b"   \t\n"
        b"caf\xc3\xa9 \xe2\x98\x95\n"
        b"  leading and trailing spaces kept  \n"
        b"bad \xff byte\n"
        b"nul \x00 inside\n"
        b"last line, no newline"
    )
    listing = tmp_path / "texts.txt"
    listing.write_bytes(data)
    items = read_texts(str(listing))
    assert [i.key for i in items if i.problem is None] == [
        "  leading and trailing spaces kept  ",
        "café ☕",
        "last line, no newline",
    ]
    assert all(i.is_text and not i.is_url and i.source == i.key for i in items)
    problems = [i.problem for i in items if i.problem is not None]
    assert len(problems) == 2
    assert "line 6 of" in problems[0] and "not valid UTF-8" in problems[0]
    assert "line 7 of" in problems[1] and "NUL" in problems[1]

    from_stdin = read_texts("-", stdin=io.BytesIO(data))
    assert [i.key for i in from_stdin] == [i.key for i in items]


def test_embed_texts_writes_one_row_per_unique_text_fails_the_bad_line_and_resumes(
    tmp_path: Path, triton: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    good = [
        "a dog on a beach",
        "a red car parked in the snow",
        "Ein Hund läuft über den Strand — 海辺の犬",
        "two cats asleep on a sofa",
        "a bowl of ramen with an egg",
    ]
    texts_file = tmp_path / "captions.txt"
    texts_file.write_bytes(
        b"\n".join(
            [
                good[0].encode(),
                good[1].encode(),
                b"",  # blank: skipped
                good[2].encode(),
                b"not \xc3\x28 utf-8",  # line 5: a failed input
                good[0].encode(),  # a repeat: embedded once
                good[3].encode(),
                good[4].encode(),
            ]
        )
        + b"\n"
    )
    base = tmp_path / "out" / "captions"
    args = [
        "embed",
        "--texts",
        str(texts_file),
        "-o",
        str(base),
        "--server",
        triton.http_url,
        "--model",
        TINY_CLIP_TEXT,
        "--batch-size",
        "3",
        "--no-parquet",
        "-qq",
    ]
    assert main(args) == EXIT_FAILED  # some inputs failed
    captured = capsys.readouterr()
    assert summary_counts(captured.out) == (5, 6, 5, 0)

    vectors = np.load(base.with_name("captions.npy"))
    sources = read_jsonl(base.with_name("captions.sources.jsonl"))
    assert [r["source"] for r in sources] == good
    assert [r["row"] for r in sources] == list(range(len(good)))
    with VisionClient(triton.http_url, TINY_CLIP_TEXT) as client:
        reference = client.batch_embed_texts(good).result()
    assert reference.ok, reference.errors
    assert vectors.shape == reference.embeddings.shape and vectors.dtype == np.float32
    cosine = np.sum(vectors * reference.embeddings, axis=1) / (
        np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference.embeddings, axis=1)
    )
    assert cosine.min() > MIN_COSINE, cosine

    errors = read_jsonl(base.with_name("captions.errors.jsonl"))
    assert len(errors) == 1
    assert errors[0]["error_type"] == "InvalidInput"
    assert "line 5 of" in errors[0]["message"] and "UTF-8" in errors[0]["message"]
    parts = base.with_name("captions.parts")
    assert json.loads((parts / "job.json").read_text())["model"] == TINY_CLIP_TEXT + "_texts"

    # The index is searchable by text: a caption's own text finds it first.
    search = ["search", str(base), "--text", good[3], "--model", TINY_CLIP_TEXT]
    assert main([*search, "--server", triton.http_url, "--json"]) == EXIT_OK
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["source"] == good[3] and hits[0]["row"] == 3

    # Resume: the same job again embeds nothing new (only the bad line fails again).
    assert main(args) == EXIT_FAILED
    captured = capsys.readouterr()
    assert summary_counts(captured.out) == (5, 6, 0, 5)
    np.testing.assert_array_equal(np.load(base.with_name("captions.npy")), vectors)
    assert len(read_jsonl(base.with_name("captions.errors.jsonl"))) == 1
