"""``tritonvision.search``: exact cosine top-k over an embed output, and the command's errors.

Indexes are small arrays made here and written in embed's layout (``BASE.npy`` +
``BASE.sources.jsonl``); the expected order comes from a plain full sort. The command's
error paths run through ``tritonvision.cli.main``; the unreachable server is a closed port
on 127.0.0.1 (searches against the real Triton are in ``tests/e2e/test_search_served.py``).
"""

from __future__ import annotations

import json
import pickle
import socket
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from tritonvision.cli import main
from tritonvision.cli._common import EXIT_USAGE
from tritonvision.embed import OutputPaths
from tritonvision.errors import InvalidInput, TritonVisionError
from tritonvision.search import (
    DimensionMismatch,
    EmbeddingIndex,
    IndexFileError,
    IndexPaths,
    SearchHit,
    top_k,
)


def write_index(
    base: Path, vectors: npt.ArrayLike, sources: list[str] | None = None
) -> EmbeddingIndex:
    """``vectors`` and their sources in embed's layout at ``base``; returns it opened."""
    array = np.asarray(vectors)
    np.save(base.with_name(base.name + ".npy"), array)
    names = sources if sources is not None else [f"img/{i}.jpg" for i in range(len(array))]
    lines = "".join(json.dumps({"row": i, "source": s}) + "\n" for i, s in enumerate(names))
    base.with_name(base.name + ".sources.jsonl").write_text(lines, encoding="utf-8")
    return EmbeddingIndex.open(base)


def brute_force(vectors: npt.NDArray[np.float32], query: npt.NDArray[np.float32]) -> list[int]:
    """Every usable row by cosine, best first, lower row first on ties: the reference."""
    v = vectors.astype(np.float64)
    q = query.astype(np.float64) / np.linalg.norm(query)
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = (v @ q) / np.linalg.norm(v, axis=1)
    rows = [i for i in range(len(v)) if np.isfinite(scores[i])]
    return sorted(rows, key=lambda i: (-scores[i], i))


def unit(v: npt.ArrayLike) -> npt.NDArray[np.float32]:
    a = np.asarray(v, dtype=np.float32)
    return a / np.linalg.norm(a)


# ---------------------------------------------------------------------------- ranking


def test_the_known_nearest_source_comes_first_with_its_score(tmp_path: Path) -> None:
    vectors = np.eye(4, dtype=np.float32)
    vectors[2] = unit([0.0, 0.6, 0.8, 0.0])  # halfway between rows 1 and 2
    index = write_index(tmp_path / "out", vectors, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    hits = index.search([0.0, 0.0, 1.0, 0.0], k=2)
    assert hits == [
        SearchHit(rank=1, row=2, score=pytest.approx(0.8), source="c.jpg"),  # type: ignore[arg-type]
        SearchHit(rank=2, row=0, score=0.0, source="a.jpg"),
    ]


def test_k_larger_than_the_index_returns_every_row_once(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(5, 8)).astype(np.float32)
    index = write_index(tmp_path / "out", vectors)
    hits = index.search(vectors[4], k=50)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert sorted(h.row for h in hits) == [0, 1, 2, 3, 4]
    assert [h.row for h in hits] == brute_force(vectors, vectors[4])
    assert hits[0].row == 4 and hits[0].score == pytest.approx(1.0, abs=1e-6)


def test_unnormalised_rows_rank_by_cosine_not_by_dot_product(tmp_path: Path) -> None:
    # An export with --no-normalize: row 0 has the larger dot product, row 1 the direction.
    vectors = np.array([[10.0, 10.0, 0.0], [0.5, 0.0, 0.0], [0.0, 3.0, 0.0]], dtype=np.float32)
    index = write_index(tmp_path / "out", vectors)
    hits = index.search(np.array([2.0, 0.0, 0.0], dtype=np.float32), k=3)
    assert [h.row for h in hits] == [1, 0, 2]
    assert [h.score for h in hits] == pytest.approx([1.0, np.sqrt(0.5), 0.0], abs=1e-6)


@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 4, 7, 10, 11, None])
def test_results_do_not_depend_on_the_chunk_size(chunk_rows: int | None) -> None:
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(10, 6)).astype(np.float32)
    # The nearest rows sit on chunk edges for chunk_rows=3 (rows 2, 3, 9).
    query = vectors[3] + 0.01 * vectors[2] + 0.01 * vectors[9]
    expected = brute_force(vectors, query)[:4]
    rows, scores = top_k(vectors, query, 4, chunk_rows=chunk_rows)
    assert rows.tolist() == expected
    assert rows[0] == 3
    assert np.all(np.diff(scores) <= 0)


def test_top_k_equals_a_full_sort_on_random_data() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(500, 16)).astype(np.float32)
    vectors[::7] *= 40.0  # some long rows
    query = rng.normal(size=16).astype(np.float32)
    for k in (1, 5, 64):
        rows, scores = top_k(vectors, query, k, chunk_rows=33)
        assert rows.tolist() == brute_force(vectors, query)[:k]
        exact = (vectors[rows] @ unit(query)) / np.linalg.norm(vectors[rows], axis=1)
        np.testing.assert_allclose(scores, exact, atol=1e-5)


def test_equal_scores_rank_the_lower_row_first_across_chunks() -> None:
    # Rows 1, 4, 6 and 8 are the same vector; the tie must keep row order for any chunking.
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(9, 4)).astype(np.float32)
    for row in (4, 6, 8):
        vectors[row] = vectors[1]
    for chunk_rows in (1, 2, 3, 5, 9):
        rows, _ = top_k(vectors, vectors[1], 3, chunk_rows=chunk_rows)
        assert rows.tolist() == [1, 4, 6], chunk_rows


def test_nan_infinite_and_zero_rows_are_skipped(tmp_path: Path) -> None:
    vectors = np.array(
        [[np.nan, 1.0], [1.0, 0.0], [0.0, 0.0], [np.inf, 0.0], [0.0, 1.0]], dtype=np.float32
    )
    index = write_index(tmp_path / "out", vectors)
    hits = index.search([1.0, 0.0], k=10, chunk_rows=2)
    assert [h.row for h in hits] == [1, 4]
    assert all(np.isfinite(h.score) for h in hits)


def test_an_empty_index_has_no_hits(tmp_path: Path) -> None:
    index = write_index(tmp_path / "out", np.zeros((0, 4), dtype=np.float32), [])
    assert (index.rows, index.dim) == (0, 4)
    assert index.search([1.0, 0.0, 0.0, 0.0], k=3) == []


def test_a_float64_index_is_searched_like_float32(tmp_path: Path) -> None:
    vectors = np.array([[0.0, 1.0], [1.0, 0.1]], dtype=np.float64)
    index = write_index(tmp_path / "out", vectors)
    assert [h.row for h in index.search([1.0, 0.0], k=1)] == [1]


@pytest.mark.parametrize("query", [[0.0, 0.0], [np.nan, 1.0], [[1.0, 0.0], [0.0, 1.0]]])
def test_a_query_without_a_direction_or_not_one_vector_is_refused(
    tmp_path: Path, query: list[float]
) -> None:
    index = write_index(tmp_path / "out", np.eye(2, dtype=np.float32))
    with pytest.raises(InvalidInput):
        index.search(query, k=1)


@pytest.mark.parametrize("k", [0, -1, True, 1.5])
def test_k_must_be_a_positive_integer(k: object) -> None:
    with pytest.raises(InvalidInput, match="k must be a positive integer"):
        top_k(np.eye(2, dtype=np.float32), [1.0, 0.0], k)  # type: ignore[arg-type]


# ----------------------------------------------------------------------- index files


def test_the_index_is_memory_mapped_not_loaded(tmp_path: Path) -> None:
    index = write_index(tmp_path / "out", np.eye(3, dtype=np.float32))
    assert isinstance(index.vectors, np.memmap)
    assert not index.vectors.flags.writeable


@pytest.mark.parametrize("given", ["out", "out.npy", "out.sources.jsonl", "out.parquet"])
def test_index_may_be_named_by_base_or_any_embed_output(tmp_path: Path, given: str) -> None:
    write_index(tmp_path / "out", np.eye(2, dtype=np.float32), ["x.png", "y.png"])
    index = EmbeddingIndex.open(tmp_path / given)
    assert index.paths.npy == tmp_path / "out.npy"
    assert index.search([0.0, 1.0], k=1)[0].source == "y.png"


def test_index_paths_are_embeds_output_paths(tmp_path: Path) -> None:
    for given in ("run", "run.npy", "run.parquet"):
        embed = OutputPaths.from_option(str(tmp_path / given))
        search = IndexPaths.from_option(tmp_path / given)
        assert (search.npy, search.sources) == (embed.npy, embed.sources)


def test_a_dimension_mismatch_names_the_file_and_both_dimensions(tmp_path: Path) -> None:
    index = write_index(tmp_path / "out", np.eye(4, dtype=np.float32))
    with pytest.raises(DimensionMismatch) as info:
        index.search(np.ones(16, dtype=np.float32), k=1)
    err = info.value
    assert (err.expected, err.got, err.path) == (4, 16, tmp_path / "out.npy")
    assert str(tmp_path / "out.npy") in str(err) and "(16,)" in str(err) and "4-dim" in str(err)


def test_a_row_count_mismatch_names_both_files_and_counts(tmp_path: Path) -> None:
    base = tmp_path / "out"
    write_index(base, np.eye(3, dtype=np.float32))
    np.save(tmp_path / "out.npy", np.eye(4, dtype=np.float32))  # a later run's rows
    with pytest.raises(IndexFileError) as info:
        EmbeddingIndex.open(base)
    message = str(info.value)
    assert "out.npy has 4 rows" in message and "out.sources.jsonl has 3 lines" in message
    assert info.value.path == tmp_path / "out.sources.jsonl"


def test_a_missing_sources_file_is_named(tmp_path: Path) -> None:
    np.save(tmp_path / "out.npy", np.eye(2, dtype=np.float32))
    with pytest.raises(IndexFileError, match=r"out\.sources\.jsonl does not exist") as info:
        EmbeddingIndex.open(tmp_path / "out.npy")
    assert info.value.path == tmp_path / "out.sources.jsonl"


def test_a_missing_npy_is_named(tmp_path: Path) -> None:
    with pytest.raises(IndexFileError, match=r"out\.npy does not exist") as info:
        EmbeddingIndex.open(tmp_path / "out")
    assert "tritonvision embed" in str(info.value)


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"not an array", r"not a readable \.npy"), (None, r"shape \(3,\)")],
)
def test_an_npy_that_is_not_an_n_by_d_array_is_refused(
    tmp_path: Path, content: bytes | None, problem: str
) -> None:
    if content is None:
        np.save(tmp_path / "out.npy", np.ones(3, dtype=np.float32))
    else:
        (tmp_path / "out.npy").write_bytes(content)
    (tmp_path / "out.sources.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(IndexFileError, match=problem):
        EmbeddingIndex.open(tmp_path / "out")


def test_a_sources_line_for_another_row_is_an_error_naming_the_line(tmp_path: Path) -> None:
    np.save(tmp_path / "out.npy", np.eye(2, dtype=np.float32))
    (tmp_path / "out.sources.jsonl").write_text(
        '{"row": 0, "source": "a"}\n{"row": 5, "source": "b"}\n', encoding="utf-8"
    )
    index = EmbeddingIndex.open(tmp_path / "out")
    assert index.search([1.0, 0.0], k=1)[0].source == "a"
    with pytest.raises(IndexFileError, match=r"out\.sources\.jsonl line 2"):
        index.search([0.0, 1.0], k=1)


def test_sources_keep_non_ascii_and_an_unterminated_last_line(tmp_path: Path) -> None:
    np.save(tmp_path / "out.npy", np.eye(2, dtype=np.float32))
    lines = [json.dumps({"row": 0, "source": "fotos/Straße.jpg"}, ensure_ascii=False)]
    lines.append(json.dumps({"row": 1, "source": "写真/猫.png"}, ensure_ascii=False))
    (tmp_path / "out.sources.jsonl").write_text("\n".join(lines), encoding="utf-8")
    index = EmbeddingIndex.open(tmp_path / "out")
    assert [index.source(0), index.source(1)] == ["fotos/Straße.jpg", "写真/猫.png"]


def test_search_errors_belong_to_the_one_tree_and_pickle(tmp_path: Path) -> None:
    for cls in (IndexFileError, DimensionMismatch):
        assert issubclass(cls, InvalidInput) and issubclass(cls, TritonVisionError)
        assert issubclass(cls, ValueError)
    err = DimensionMismatch("m", path=tmp_path / "x.npy", expected=4, got=16)
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.expected, copy.got, copy.path, str(copy)) == (4, 16, tmp_path / "x.npy", "m")


# ---------------------------------------------------------------------------- command


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_search_of_a_missing_index_exits_2_before_any_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = closed_port()
    code = main(
        ["search", str(tmp_path / "nope"), "--text", "a dog", "--server", f"127.0.0.1:{port}"]
    )
    assert code == EXIT_USAGE
    captured = capsys.readouterr()
    assert "tritonvision search: error:" in captured.err and "nope.npy does not exist" in (
        captured.err
    )
    assert captured.out == ""


def test_search_needs_exactly_one_query(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["search", "out"], ["search", "out", "--text", "a", "--image", "b.png"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == EXIT_USAGE
    assert "--text" in capsys.readouterr().err


def test_search_help_names_the_memory_and_the_index_to_use_beyond(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "N x D x 4 bytes" in out and "few million rows" in out
    assert "FAISS" in out and "HNSW" in out and "vector database" in out


def test_search_against_an_unreachable_server_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRITONVISION_MAX_RETRIES", "0")
    write_index(tmp_path / "out", np.eye(4, dtype=np.float32))
    image = tmp_path / "query.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(image)
    port = closed_port()
    argv = ["search", str(tmp_path / "out"), "--server", f"127.0.0.1:{port}", "--json"]
    for query in (["--image", str(image)], ["--text", "a dog on a beach"]):
        assert main([*argv, *query]) == EXIT_USAGE
        captured = capsys.readouterr()
        assert "tritonvision search: error: cannot embed the query" in captured.err
        assert f"http://127.0.0.1:{port}" in captured.err
        assert captured.out == ""
