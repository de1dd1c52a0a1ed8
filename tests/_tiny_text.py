"""Tiny random two-tower CLIP and SigLIP checkpoints, with tokenizer files made here (no hub).

Each is saved as a real checkpoint ships: ``save_pretrained`` of the full model (vision and
text towers, projections, logit scale), its image processor and its tokenizer:

- CLIP: a byte-level BPE over the 256 byte symbols (plus their end-of-word forms and a few
  merges), built with transformers' own ``CLIPTokenizer`` (``vocab.json`` + ``merges.txt`` +
  ``tokenizer.json``), context length 77 as in every released CLIP;
- SigLIP: a SentencePiece unigram model trained here on a few sentences, loaded by
  transformers' ``SiglipTokenizer`` (``spiece.model``), ``model_max_length`` 64 as released.

The weights come from fixed seeds: the same checkpoints in every session.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import transformers
from _tiny_families import seeded

from tritonvision.contract import TOKEN_INPUTS

TINY_CLIP_TEXT = "tiny_clip_text"
TINY_SIGLIP_TEXT = "tiny_siglip_text"
CLIP_CONTEXT_LENGTH = 77
SIGLIP_CONTEXT_LENGTH = 64
PROJECTION_DIM = 16
_SEED = 10

# Sentences the tests query with: short, long (truncated at the context length), non-ASCII.
SHORT_TEXTS = ("a dog on the beach", "a photo of a cat")
LONG_TEXT = " ".join(["the quick brown fox jumps over the lazy dog"] * 30)
NON_ASCII_TEXTS = ("héllo wörld ✓", "日本語のテキスト", "emoji 🐶🏖️")
TEXTS = (*SHORT_TEXTS, LONG_TEXT, *NON_ASCII_TEXTS)

_SPM_CORPUS = (
    "a photo of a dog on the beach",
    "a cat sitting on a mat in the sun",
    "the quick brown fox jumps over the lazy dog",
    "héllo wörld, a small town by the sea",
    "two birds on a wire at dusk",
)


def _tower(**extra: object) -> dict[str, object]:
    return dict(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, **extra
    )


def clip_tokenizer() -> transformers.CLIPTokenizer:
    """A byte-level BPE CLIP tokenizer: every string encodes (unknown words byte by byte)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    merges = [("t", "h"), ("th", "e</w>"), ("d", "o"), ("do", "g</w>"), ("c", "a")]
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    return transformers.CLIPTokenizer(
        vocab=vocab, merges=merges, model_max_length=CLIP_CONTEXT_LENGTH
    )


def make_clip_text(path: Path) -> Path:
    """A full ``CLIPModel`` (image 32 px, projection 16) + CLIP image processor + tokenizer."""
    tokenizer = clip_tokenizer()
    config = transformers.CLIPConfig(
        text_config=_tower(
            vocab_size=len(tokenizer),
            max_position_embeddings=CLIP_CONTEXT_LENGTH,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=_tower(image_size=32, patch_size=8),
        projection_dim=PROJECTION_DIM,
    )
    seeded(lambda: transformers.CLIPModel(config), _SEED).save_pretrained(path)
    transformers.CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_clip_vision_only(path: Path) -> Path:
    """A vision-only CLIP checkpoint (``CLIPVisionModelWithProjection``: no text tower) with
    the CLIP tokenizer beside it."""
    config = transformers.CLIPVisionConfig(
        **_tower(image_size=32, patch_size=8, projection_dim=PROJECTION_DIM)
    )
    seeded(lambda: transformers.CLIPVisionModelWithProjection(config), _SEED).save_pretrained(path)
    clip_tokenizer().save_pretrained(path)
    return path


def siglip_tokenizer(work: Path) -> transformers.SiglipTokenizer:
    """A SentencePiece SigLIP tokenizer trained on a few sentences (its model under ``work``)."""
    import sentencepiece as spm

    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.txt"
    corpus.write_text("\n".join(_SPM_CORPUS * 20), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(work / "spiece"),
        vocab_size=48,
        hard_vocab_limit=False,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        minloglevel=2,
        num_threads=1,
    )
    return transformers.SiglipTokenizer(
        vocab_file=str(work / "spiece.model"), model_max_length=SIGLIP_CONTEXT_LENGTH
    )


def make_siglip_text(path: Path) -> Path:
    """A full ``SiglipModel`` (image 32 px, width 32) + SigLIP image processor + tokenizer."""
    tokenizer = siglip_tokenizer(path.parent / f"{path.name}-spm")
    config = transformers.SiglipConfig(
        text_config=_tower(
            vocab_size=len(tokenizer),
            max_position_embeddings=SIGLIP_CONTEXT_LENGTH,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=None,
        ),
        vision_config=_tower(image_size=32, patch_size=8),
    )
    seeded(lambda: transformers.SiglipModel(config), _SEED).save_pretrained(path)
    transformers.SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# name -> (family, maker, context length)
TEXT_CHECKPOINTS: dict[str, tuple[str, Callable[[Path], Path], int]] = {
    TINY_CLIP_TEXT: ("clip", make_clip_text, CLIP_CONTEXT_LENGTH),
    TINY_SIGLIP_TEXT: ("siglip", make_siglip_text, SIGLIP_CONTEXT_LENGTH),
}


def reference_text_embeddings(checkpoint: Path, texts: list[str]) -> torch.Tensor:
    """transformers' own text embeddings of ``texts``, L2-normalised: the checkpoint's
    tokenizer padded to its context length (as SigLIP requires), then ``get_text_features``."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)
    model_type = json.loads((checkpoint / "config.json").read_text())["model_type"]
    cls = transformers.CLIPModel if model_type == "clip" else transformers.SiglipModel
    model = cls.from_pretrained(checkpoint, local_files_only=True).eval()
    batch = tokenizer(
        texts,
        padding="max_length",
        truncation=True,
        max_length=tokenizer.model_max_length,
        return_tensors="pt",
    )
    with torch.no_grad():
        out = model.get_text_features(**batch)
    features = out if isinstance(out, torch.Tensor) else out.pooler_output
    return torch.nn.functional.normalize(features.float(), dim=-1)


def tokenized_as_served(
    tokenizer: Any, texts: Sequence[str], context_length: int
) -> dict[str, npt.NDArray[np.int64]]:
    """``texts`` as the tokenize model must make them: the tokenizer's own ids, padded and
    truncated to ``context_length``, INT64, for each token tensor it gives."""
    encoded = tokenizer(
        list(texts), padding="max_length", truncation=True, max_length=context_length
    )
    return {
        name: np.asarray(encoded[name], dtype=np.int64) for name in TOKEN_INPUTS if name in encoded
    }


def assert_tokenized_as(
    got: Mapping[str, npt.NDArray[Any]], tokenizer: Any, texts: Sequence[str], context_length: int
) -> None:
    """``got`` (token tensor name -> [N, L]) is exactly ``tokenizer``'s own tokenisation."""
    want = tokenized_as_served(tokenizer, texts, context_length)
    assert set(got) == set(want)
    for name, ids in want.items():
        assert got[name].dtype == np.int64, name
        assert got[name].shape == (len(texts), context_length), name
        np.testing.assert_array_equal(got[name], ids)


def cosines_of(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """The cosine of each row pair of two [N, D] arrays, in float64."""
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    cosines: npt.NDArray[np.float64] = np.sum(a64 * b64, -1) / (
        np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1)
    )
    return cosines
