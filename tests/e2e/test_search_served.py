"""``tritonvision search`` against the session's real tritonserver (``triton`` fixture).

Indexes are built here: texts embedded with the client into embed's layout, or images made
here run through the real ``tritonvision embed``. Queries go through the real command
(``tritonvision.cli.main``); the expected ranking comes from a plain full sort of the
cosines of vectors the client returns, so the known nearest source is known in advance.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from _local_servers import make_image
from _tiny_text import TEXTS, TINY_CLIP_TEXT, TINY_SIGLIP_TEXT

from tritonvision.cli import main
from tritonvision.cli._common import EXIT_OK, EXIT_USAGE
from tritonvision.client import VisionClient

CAPTIONS = (
    "a dog on a beach",
    "a red car parked in the snow",
    "two cats asleep on a sofa",
    "a bowl of ramen with an egg",
    *TEXTS,
)


def write_index(base: Path, vectors: npt.NDArray[np.float32], sources: list[str]) -> None:
    """``BASE.npy`` + ``BASE.sources.jsonl``, as ``tritonvision embed`` writes them."""
    np.save(base.with_name(base.name + ".npy"), vectors.astype(np.float32))
    # Escaped like embed's file, which keeps a name's undecodable bytes as \udcXX escapes.
    lines = (json.dumps({"row": i, "source": s}) for i, s in enumerate(sources))
    base.with_name(base.name + ".sources.jsonl").write_text(
        "".join(line + "\n" for line in lines), encoding="utf-8"
    )


def expected_rows(vectors: npt.NDArray[np.float32], query: npt.NDArray[np.float32]) -> list[int]:
    v = vectors.astype(np.float64)
    q = query.astype(np.float64)
    scores = (v @ q) / (np.linalg.norm(v, axis=1) * np.linalg.norm(q))
    return sorted(range(len(v)), key=lambda i: (-scores[i], i))


def run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == EXIT_OK, captured.err
    hits: list[dict[str, Any]] = json.loads(captured.out)  # nothing but the JSON on stdout
    return hits


def embed_images(folder: Path, count: int) -> list[Path]:
    folder.mkdir()
    paths = []
    for seed in range(count):
        path = folder / f"img{seed}.png"
        make_image(seed * 11 + 1).save(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("model", [TINY_CLIP_TEXT, TINY_SIGLIP_TEXT])
def test_search_by_text_returns_the_indexed_text_first(
    triton: Any,
    text_checkpoints: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    model: str,
) -> None:
    captions = list(CAPTIONS)
    with VisionClient(triton.http_url, model) as client:
        batch = client.batch_embed_texts(captions).result()
        assert not batch.errors
        target = 2
        query = client.embed_text(captions[target]).result()
    base = tmp_path / "captions"
    # Sources as embed keeps a file name with an undecodable byte (b"caf\xe9"): a surrogate.
    sources = [f"fotos/caf\udce9/caption-{i}" for i in range(len(captions))]
    write_index(base, batch.embeddings, sources)

    argv = ["search", str(base), "--text", captions[target], "--server", triton.http_url]
    hits = run_json([*argv, "--model", model, "--json", "-k", "4"], capsys)

    assert hits[0]["source"] == sources[target] and hits[0]["row"] == target
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4]
    assert [h["row"] for h in hits] == expected_rows(batch.embeddings, query)[:4]
    assert all(a["score"] >= b["score"] for a, b in itertools.pairwise(hits))
    assert [h["source"] for h in hits] == [sources[h["row"]] for h in hits]

    assert main([*argv, "--model", model, "-k", "1"]) == EXIT_OK  # the table prints it too
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["1", f"{hits[0]['score']:.4f}", "fotos/caf\\udce9/caption-2"]


def test_search_by_image_over_an_embed_output_returns_that_image_first(
    triton: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = embed_images(tmp_path / "photos", 6)
    base = tmp_path / "photos-index"
    server = ["--server", triton.http_url, "--model", triton.model]
    assert main(["embed", str(tmp_path / "photos"), "-o", str(base), "--no-parquet", *server]) == 0
    capsys.readouterr()

    query = images[4]
    hits = run_json(["search", f"{base}.npy", "--image", str(query), *server, "--json"], capsys)
    assert len(hits) == 6  # k = 10 > N
    assert hits[0]["source"] == os.path.abspath(query)
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)

    # The table: a header, then rank, score with 4 decimals, source.
    assert main(["search", str(base), "--image", str(query), *server, "-k", "2"]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "score", "source"]
    rank, score, source = lines[1].split(maxsplit=2)
    assert (rank, source) == ("1", os.path.abspath(query))
    assert score == f"{hits[0]['score']:.4f}" and len(lines) == 3


def test_search_images_by_text_ranks_by_the_shared_space(
    triton: Any,
    text_checkpoints: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    images = embed_images(tmp_path / "photos", 5)
    with VisionClient(triton.http_url, TINY_CLIP_TEXT) as client:
        batch = client.batch_embed_images(images).result()
        assert not batch.errors
        query = client.embed_text("a dog on a beach").result()
    base = tmp_path / "photos-index"
    write_index(base, batch.embeddings, [str(p) for p in images])

    argv = ["search", str(base), "--text", "a dog on a beach", "--server", triton.http_url]
    hits = run_json([*argv, "--model", TINY_CLIP_TEXT, "--json"], capsys)
    assert [h["row"] for h in hits] == expected_rows(batch.embeddings, query)
    scores = batch.embeddings @ query / np.linalg.norm(batch.embeddings, axis=1)
    np.testing.assert_allclose([h["score"] for h in hits], np.sort(scores)[::-1], atol=1e-5)


def test_a_query_from_a_model_of_another_dimension_exits_2_naming_both(
    triton: Any,
    text_checkpoints: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # An index of the 16-dimensional tiny CLIP queried with the 32-dimensional SigLIP text.
    base = tmp_path / "clip16"
    write_index(base, np.eye(3, triton.embedding_dim, dtype=np.float32), ["a", "b", "c"])
    argv = ["search", str(base), "--text", "a dog", "--server", triton.http_url, "--json"]
    assert main([*argv, "--model", TINY_SIGLIP_TEXT]) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "clip16.npy" in captured.err and "(32,)" in captured.err
    assert f"{triton.embedding_dim}-dimensional" in captured.err


def test_the_readme_curl_for_the_texts_model_gets_the_clients_vectors(
    triton: Any, text_checkpoints: dict[str, Path]
) -> None:
    # The README's curl body, sent as it is written there, to the tiny model's NAME_texts.
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    found = re.search(r"/v2/models/(\w+)_texts/infer -d '(.*?)'", readme, re.DOTALL)
    assert found, "README shows no curl for NAME_texts"
    body = json.loads(found.group(2))
    texts = body["inputs"][0]["data"]
    request = urllib.request.Request(
        f"{triton.http_url}/v2/models/{TINY_CLIP_TEXT}_texts/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},  # what curl -d sends
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.load(response)
    (output,) = answer["outputs"]
    assert output["name"] == "embeddings" and output["datatype"] == "FP32"
    served = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
    with VisionClient(triton.http_url, TINY_CLIP_TEXT) as client:
        expected = client.batch_embed_texts(texts).result().embeddings
    assert served.shape == (len(texts), expected.shape[1])
    np.testing.assert_allclose(served, expected, atol=1e-5)
