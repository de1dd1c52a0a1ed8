"""End to end: texts through the client to the real tritonserver's text ensemble.

The session repository holds ``tiny_clip_text`` and ``tiny_siglip_text`` exported with the
text tower (``ExportOptions(text=True)``; checkpoints from ``tests/_tiny_text.py``, their
directories in the session fixture ``text_checkpoints``). Each test compares what the
client returns with transformers' own computation on the same checkpoint:

- text embeddings vs ``CLIPModel`` / ``SiglipModel`` ``get_text_features`` (cosine
  >= 0.9999) for short, long (truncated) and non-ASCII texts, over HTTP and gRPC, through
  the async and the blocking client;
- the client's image-text score matrix vs transformers' ``logits_per_image`` up to the
  logit scale (and SigLIP's bias): the two towers share one space.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
import transformers
from _local_servers import make_image
from _tiny_text import (
    LONG_TEXT,
    NON_ASCII_TEXTS,
    SHORT_TEXTS,
    TEXT_CHECKPOINTS,
    TEXTS,
    TINY_CLIP_TEXT,
    TINY_SIGLIP_TEXT,
    reference_text_embeddings,
)
from PIL import Image

from tritonvision.client import (
    AsyncVisionClient,
    InvalidInput,
    ModelConfigError,
    PendingBatchEmbedding,
    PendingEmbedding,
    VisionClient,
)
from tritonvision.contract import text_name, texts_name

pytestmark = pytest.mark.e2e

MIN_COSINE = 0.9999
SCORE_TOLERANCE = 1e-4
NAMES = sorted(TEXT_CHECKPOINTS)


def url_of(triton: Any, transport: str) -> str:
    return str(triton.http_url if transport == "http" else triton.grpc_url)


def cosines(a: npt.NDArray[np.float32], b: torch.Tensor) -> npt.NDArray[np.float64]:
    """Row-wise cosine of the client's rows and transformers' rows."""
    ref = b.numpy().astype(np.float64)
    got = a.astype(np.float64)
    dots = (got * ref).sum(axis=1)
    return np.asarray(dots / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1)))


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("transport", ["http", "grpc"])
@pytest.mark.parametrize("name", NAMES)
async def test_text_embeddings_equal_transformers_for_short_long_and_non_ascii_texts(
    name: str, transport: str, triton: Any, text_checkpoints: dict[str, Path]
) -> None:
    texts = list(TEXTS)
    reference = reference_text_embeddings(text_checkpoints[name], texts)
    async with AsyncVisionClient(url_of(triton, transport), name) as client:
        assert client.text_model == texts_name(name)
        batch = await client.batch_embed_texts(texts)
        singles = np.stack([await client.embed_text(t) for t in texts])
        info = await client.text_model_info()
    assert batch.ok, batch.errors
    assert batch.embeddings.shape == (len(texts), reference.shape[1])
    assert batch.embeddings.dtype == np.float32
    assert cosines(batch.embeddings, reference).min() >= MIN_COSINE
    assert cosines(singles, reference).min() >= MIN_COSINE
    assert info.context_length == TEXT_CHECKPOINTS[name][2]
    assert info.embedding_dim == reference.shape[1]


@pytest.mark.parametrize("name", NAMES)
async def test_a_text_past_the_context_length_is_truncated_like_the_tokenizer_does(
    name: str, triton: Any, text_checkpoints: dict[str, Path]
) -> None:
    longer = LONG_TEXT + " and then a different ending that the tokenizer cuts off"
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        text_checkpoints[name], local_files_only=True
    )
    length = TEXT_CHECKPOINTS[name][2]
    assert len(tokenizer(LONG_TEXT)["input_ids"]) > length  # really over the context
    async with AsyncVisionClient(triton.grpc_url, name) as client:
        rows = await client.batch_embed_texts([LONG_TEXT, longer, SHORT_TEXTS[0]])
    assert rows.ok
    # Both keep the same first ``length`` tokens: the same embedding; a short text differs.
    np.testing.assert_allclose(rows.embeddings[0], rows.embeddings[1], atol=1e-6)
    assert cosines(rows.embeddings[:1], torch.from_numpy(rows.embeddings[2:])).item() < 0.9999


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_the_blocking_client_returns_futures_of_the_same_embeddings(
    transport: str, triton: Any, text_checkpoints: dict[str, Path]
) -> None:
    texts = [*SHORT_TEXTS, *NON_ASCII_TEXTS]
    reference = reference_text_embeddings(text_checkpoints[TINY_CLIP_TEXT], texts)
    with VisionClient(url_of(triton, transport), TINY_CLIP_TEXT) as client:
        single = client.embed_text(texts[0])
        batch = client.batch_embed_texts(iter(texts))
        assert isinstance(single, PendingEmbedding)
        assert isinstance(batch, PendingBatchEmbedding)
        row = single.result(60)
        result = batch.result(60)
        assert client.text_model_info().result(60).context_length == 77
    assert result.ok
    assert cosines(row[np.newaxis], reference[:1]).item() >= MIN_COSINE
    assert cosines(result.embeddings, reference).min() >= MIN_COSINE


@pytest.mark.parametrize("transport", ["http", "grpc"])
async def test_bad_items_in_a_batch_get_their_own_errors_in_order(
    transport: str, triton: Any, text_checkpoints: dict[str, Path]
) -> None:
    texts: list[Any] = ["a dog", b"a dog", None, "broken \ud83d text", "", LONG_TEXT, 42, "日本語"]
    good = [0, 4, 5, 7]
    reference = reference_text_embeddings(
        text_checkpoints[TINY_SIGLIP_TEXT], [texts[i] for i in good]
    )
    async with AsyncVisionClient(
        url_of(triton, transport), TINY_SIGLIP_TEXT, pack_batch_size=8
    ) as client:
        result = await client.batch_embed_texts(texts)
        stats = client.stats()
    assert list(result.errors) == [1, 2, 3, 6]
    for index, kind in ((1, "bytes"), (2, "NoneType"), (3, "UTF-8"), (6, "int")):
        error = result.errors[index]
        assert isinstance(error, InvalidInput)
        assert f"texts[{index}]" in str(error) and kind in str(error)
        assert np.isnan(result.embeddings[index]).all()
    assert cosines(result.embeddings[good], reference).min() >= MIN_COSINE
    assert stats.items == len(good) and stats.failures == {"InvalidInput": 4}


async def test_a_model_that_does_not_take_texts_is_a_config_error_naming_it(
    triton: Any,
) -> None:
    for wrong in (TINY_CLIP_TEXT, text_name(TINY_CLIP_TEXT)):  # an image encoder, token ids
        async with AsyncVisionClient(triton.http_url, text_model=wrong) as client:
            with pytest.raises(ModelConfigError, match=f"{wrong!r} has no input 'texts'"):
                await client.embed_text("a dog")


# ----------------------------------------------------------------------- same space


def same_space_images() -> list[Image.Image]:
    # 32 x 32: the tiny models' input size, so no resampling differs between the two sides.
    return [make_image(seed, size=(32, 32)) for seed in range(4)]


def transformers_scores(
    checkpoint: Path, images: list[Image.Image], texts: list[str]
) -> npt.NDArray[np.float64]:
    """``logits_per_image`` of the checkpoint, with the logit scale (and bias) taken off."""
    model_type = json.loads((checkpoint / "config.json").read_text())["model_type"]
    cls = transformers.CLIPModel if model_type == "clip" else transformers.SiglipModel
    model = cls.from_pretrained(checkpoint, local_files_only=True).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(checkpoint, local_files_only=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)
    tokens = tokenizer(
        texts,
        padding="max_length",
        truncation=True,
        max_length=tokenizer.model_max_length,
        return_tensors="pt",
    )
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(pixel_values=pixels, **tokens)
        logits = out.logits_per_image.double()
        if model_type == "siglip":
            logits = logits - model.logit_bias.double()
        scores = logits / model.logit_scale.double().exp()
    return np.asarray(scores.numpy())


@pytest.mark.parametrize("transport", ["http", "grpc"])
@pytest.mark.parametrize("name", NAMES)
async def test_image_and_text_embeddings_share_transformers_space(
    name: str, transport: str, triton: Any, text_checkpoints: dict[str, Path]
) -> None:
    images = same_space_images()
    texts = list(TEXTS)
    async with AsyncVisionClient(url_of(triton, transport), name) as client:
        image_rows = await client.batch_embed_images(images)
        text_rows = await client.batch_embed_texts(texts)
    assert image_rows.ok and text_rows.ok
    scores = image_rows.embeddings.astype(np.float64) @ text_rows.embeddings.astype(np.float64).T
    expected = transformers_scores(text_checkpoints[name], images, texts)
    assert scores.shape == expected.shape == (len(images), len(texts))
    np.testing.assert_allclose(scores, expected, atol=SCORE_TOLERANCE, rtol=0)
