"""Identical inputs of one batch are sent once and fill every row (``client/_dedup.py``).

- the pipeline alone (fakes through its ``prepare`` / ``infer`` callables): a repeated
  source is neither prepared nor sent, a repeat by pixels is prepared but not sent, a
  repeat of a failing item gets the same error, and ``deduplicate=False`` sends everything;
- end to end against the session's Triton: ``client.stats()`` counts one request per
  distinct model input, and the repeats' rows equal the first occurrence's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from _local_servers import encode, make_image

from tritonvision.client import ClientConfig, DecodeError, VisionClient
from tritonvision.client._dedup import MAX_HASHED_BYTES, BatchDedup, source_key
from tritonvision.client._pipeline import BatchPipeline
from tritonvision.client._stats import StatsRecorder

Pixels = npt.NDArray[np.uint8]


def pixels_of(value: int) -> Pixels:
    return np.full((2, 2, 3), value, dtype=np.uint8)


class Fakes:
    """``prepare``: a source "pN" (or bytes) -> pixels of value N ("bad" fails)."""

    def __init__(self) -> None:
        self.prepared: list[object] = []
        self.sent: list[int] = []

    async def prepare(self, source: Any) -> Pixels:
        self.prepared.append(source)
        await asyncio.sleep(0)
        text = source.decode() if isinstance(source, bytes) else str(source)
        if text == "bad":
            raise DecodeError("not an image", source=source)
        return pixels_of(int(text.lstrip("p").split("#")[0]))

    async def infer(self, images: Sequence[Pixels]) -> npt.NDArray[np.float32]:
        self.sent.extend(int(image[0, 0, 0]) for image in images)
        return np.stack([np.full(4, float(image[0, 0, 0]), np.float32) for image in images])


def pipeline(fakes: Fakes, stats: StatsRecorder, *, deduplicate: bool) -> BatchPipeline:
    return BatchPipeline(
        prepare=fakes.prepare,
        infer=fakes.infer,
        slots=asyncio.Semaphore(4),
        pack_size=1,
        lookahead=8,
        embedding_dim=4,
        stats=stats,
        deduplicate=deduplicate,
    )


async def test_repeats_are_prepared_and_sent_once_and_fill_every_row() -> None:
    fakes, stats = Fakes(), StatsRecorder()
    # p1 twice (same string), b"p1" and b"p1" (same bytes), p1#x (same pixels, other text).
    sources: list[Any] = ["p1", "p2", "p1", b"p1", b"p1", "p1#x", "bad", "p2", "bad"]
    result = await pipeline(fakes, stats, deduplicate=True).run(sources)
    assert sorted(fakes.sent) == [1, 2]  # one request per distinct model input
    # Same strings / bytes are not even prepared: "p1", "p2", b"p1", "p1#x", "bad".
    assert fakes.prepared == ["p1", "p2", b"p1", "p1#x", "bad"]
    for index in (0, 2, 3, 4, 5):
        assert result.embeddings[index].tolist() == [1.0] * 4
    assert result.embeddings[7].tolist() == [2.0] * 4
    assert sorted(result.errors) == [6, 8]
    assert result.errors[8] is result.errors[6]
    assert list(result.errors) == [6, 8]  # in input order
    snap = stats.snapshot()
    assert snap.deduplicated == 6  # indices 2, 3 (by pixels), 4, 5 (by pixels), 7, 8
    assert snap.items == 7
    assert snap.failures == {"DecodeError": 2}


async def test_without_deduplication_every_item_is_prepared_and_sent() -> None:
    fakes, stats = Fakes(), StatsRecorder()
    result = await pipeline(fakes, stats, deduplicate=False).run(["p1", "p1", b"p1"])
    assert fakes.sent == [1, 1, 1]
    assert result.ok
    assert stats.snapshot().deduplicated == 0


def test_source_keys_name_content_and_skip_what_is_too_big_to_hash_on_the_loop() -> None:
    assert source_key("a.png") == source_key(Path("a.png"))
    assert source_key(b"abc") == source_key(bytearray(b"abc")) == source_key(memoryview(b"abc"))
    assert source_key(b"abc") != source_key("abc")  # bytes are content, a str is a name
    assert source_key(b"x" * (MAX_HASHED_BYTES + 1)) is None
    assert source_key(np.zeros(3, np.uint8)) is None  # arrays and images: by pixels
    dedup = BatchDedup()
    assert not dedup.repeats_source(0, "a")
    assert dedup.repeats_source(1, "a")
    assert not dedup.repeats_pixels(2, pixels_of(1))
    assert dedup.repeats_pixels(3, pixels_of(1))
    assert not dedup.repeats_pixels(4, np.full((3, 2, 2), 1, np.uint8))  # same bytes, other shape
    assert len(dedup) == 2


@pytest.mark.e2e
def test_client_sends_identical_inputs_of_a_batch_once_and_rows_are_identical(
    triton: Any, tmp_path: Path
) -> None:
    image = make_image(7)
    data = encode(image)
    path = tmp_path / "same.png"
    path.write_bytes(data)
    copy = tmp_path / "copy.png"
    copy.write_bytes(data)
    other = encode(make_image(8))
    # 8 items, 2 distinct model inputs: the same bytes, file, path text, a copied file
    # and the decoded PIL image all give image 7's pixels.
    sources: list[Any] = [data, other, data, str(path), path, str(copy), image, other]
    for dedupe, expected_requests in ((True, 2), (False, len(sources))):
        config = ClientConfig(deduplicate_inputs=dedupe, pack_batch_size=1)
        with VisionClient(triton.http_url, triton.model, config=config) as client:
            client.model_info().result(60)
            before = client.stats()
            batch = client.batch_embed_images(sources).result(60)
            after = client.stats()
        assert batch.ok, batch.errors
        assert after.requests - before.requests == expected_requests
        assert after.items - before.items == len(sources)
        assert after.deduplicated == (len(sources) - 2 if dedupe else 0)
        rows = batch.embeddings
        for index in (2, 3, 4, 5, 6):
            np.testing.assert_array_equal(rows[index], rows[0])
        np.testing.assert_array_equal(rows[7], rows[1])
        assert not np.array_equal(rows[0], rows[1])
