"""The text model scenario 10 measures: a two-tower CLIP checkpoint built here, and captions.

Nothing downloads. :func:`make_text_checkpoint` saves a full ``CLIPModel`` (what
``tritonvision export --checkpoint DIR --text`` takes) with seeded, untrained weights:

- the text tower of a released CLIP ViT-B/32 (width 512, 8 heads, 12 layers, context 77,
  projection 512, vocabulary 49408): its compute per text is what the benchmark measures,
  and weights do not change it; quick mode uses a tiny tower (width 32, 2 layers);
- a tiny vision tower (32 px, 2 layers): only the text side is measured;
- a byte-level BPE tokenizer built with transformers' own ``CLIPTokenizer``: the 256 byte
  symbols and their end-of-word forms (every string encodes, unknown words byte by byte)
  plus merges that make every word of the caption word lists one token, as most English
  words are in CLIP's 49408-token vocabulary, so captions tokenise to realistic lengths.

:func:`captions` makes caption-like sentences of varied lengths from word lists with a
fixed seed, a few of them longer than the context (truncated) and a few non-ASCII.
"""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

__all__ = [
    "CONTEXT_LENGTH",
    "TEXT_TOWERS",
    "TextTower",
    "captions",
    "clip_tokenizer",
    "make_text_checkpoint",
    "no_progress_bars",
]

CONTEXT_LENGTH = 77
_SEED = 10


@dataclass(frozen=True)
class TextTower:
    """The text tower's shape (``CLIPTextConfig`` keywords) and how the report names it."""

    key: str
    label: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    projection_dim: int
    vocab_size: int | None  # None: the tokenizer's own size

    def config(self) -> dict[str, Any]:
        return {
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
        }


B32_TEXT = TextTower(
    key="b32text",
    label=(
        "CLIP ViT-B/32 text tower shape (width 512, 8 heads, 12 layers, context 77, "
        "vocab 49408, d=512), seeded untrained weights"
    ),
    hidden_size=512,
    intermediate_size=2048,
    num_hidden_layers=12,
    num_attention_heads=8,
    projection_dim=512,
    vocab_size=49408,
)

TINY_TEXT = TextTower(
    key="tinytext",
    label="tiny CLIP text tower (width 32, 2 layers, context 77, d=16)",
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    projection_dim=16,
    vocab_size=None,
)

TEXT_TOWERS = {t.key: t for t in (B32_TEXT, TINY_TEXT)}

# ----------------------------------------------------------------------------- captions

_OPENERS = (
    "a photo of",
    "a close-up photo of",
    "a blurry picture of",
    "an old photograph of",
    "a painting of",
    "a black and white photo of",
    "a drawing of",
    "a picture of",
    "",
)
_COUNTS = ("a", "one", "two", "three", "a few", "several", "many", "a group of", "a pair of")
_ADJECTIVES = (
    "small", "large", "brown", "white", "black", "red", "yellow", "green", "blue", "old",
    "young", "happy", "sleepy", "wet", "fluffy", "striped", "spotted", "tall", "tiny",
    "shiny", "rusty", "wooden", "colourful", "dusty", "muddy", "bright", "dark", "quiet",
)  # fmt: skip
_NOUNS = (
    "dog", "cat", "horse", "bird", "child", "woman", "man", "bicycle", "car", "bus", "train",
    "boat", "kite", "umbrella", "pizza", "cake", "apple", "banana", "chair", "table", "laptop",
    "phone", "clock", "vase", "teddy bear", "giraffe", "elephant", "zebra", "sheep", "cow",
    "surfer", "skier", "skateboard", "tennis player", "fire hydrant", "stop sign", "bench",
    "motorcycle", "airplane", "truck", "sandwich", "bowl of soup", "cup of coffee",
)  # fmt: skip
_VERBS = (
    "sitting on", "standing next to", "running along", "lying under", "jumping over",
    "walking past", "parked near", "resting on", "looking at", "playing with", "flying over",
    "waiting by", "leaning against", "hiding behind", "riding",
)  # fmt: skip
_PLACES = (
    "the beach", "a busy street", "a kitchen counter", "a snowy mountain", "a green field",
    "the river", "an old wooden fence", "a city park", "the train station", "a dining table",
    "a small garden", "the sidewalk", "a living room sofa", "a market stall", "the harbour",
)  # fmt: skip
_TIMES = (
    "at sunset", "in the rain", "at night", "on a sunny day", "in the morning fog",
    "during winter", "under a cloudy sky", "in autumn", "at noon", "",
)  # fmt: skip
_EXTRAS = (
    "while people watch from a distance",
    "with mountains in the background",
    "next to a red brick building",
    "as the light fades behind the trees",
    "with a few cars passing by on the road",
    "surrounded by flowers and tall grass",
    "in front of a crowded cafe with tables outside",
    "and the photographer is standing very close",
)
# A few captions in other scripts or with accents: byte-level BPE encodes every string.
_NON_ASCII = (
    "un café au lait sur une table en bois",
    "ein großer Hund im Schnee",
    "一只猫坐在窗台上",
    "собака бежит по пляжу",
    "a naïve drawing of a piñata 🎉",
)


def _words() -> list[str]:
    """Every word the captions use: each becomes one token of the tokenizer."""
    parts = (_OPENERS, _COUNTS, _ADJECTIVES, _NOUNS, _VERBS, _PLACES, _TIMES, _EXTRAS)
    words = {w for group in parts for phrase in group for w in phrase.split()}
    words |= {"and", "with", "the", "of", "a", "is"}
    return sorted(w for w in words if w.isascii())


def _phrase(rng: random.Random) -> str:
    noun = rng.choice(_NOUNS)
    adjectives = " ".join(rng.sample(_ADJECTIVES, rng.choice((0, 1, 1, 2))))
    return " ".join(x for x in (rng.choice(_COUNTS), adjectives, noun) if x)


def _caption(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.02:  # another script or accents, then an English scene
        return f"{rng.choice(_NON_ASCII)}, {_phrase(rng)}"
    if roll < 0.12:  # short queries, as typed into a search box
        return _phrase(rng)
    parts = [rng.choice(_OPENERS), _phrase(rng), rng.choice(_VERBS), rng.choice(_PLACES)]
    parts.append(rng.choice(_TIMES))
    extras = 0 if roll < 0.6 else (1 if roll < 0.85 else 2)
    if roll >= 0.97:  # longer than the context: the tokenizer truncates
        extras = 6
    for _ in range(extras):
        parts += [rng.choice(("and", "with")), _phrase(rng), rng.choice(_EXTRAS)]
    return " ".join(p for p in parts if p)


def captions(count: int, seed: int = _SEED) -> list[str]:
    """``count`` distinct caption-like sentences of varied lengths (fixed ``seed``).

    Mostly one scene (2 to ~25 words), some with extra clauses, about 3% longer than the
    context (truncated at 77 tokens), about 2% starting in another script or with accents.
    Distinct, so a client that sends a repeated input once gains nothing here.
    """
    rng = random.Random(seed)
    out: dict[str, None] = {}
    while len(out) < count:
        out[_caption(rng)] = None
    return list(out)


# ---------------------------------------------------------------------------- tokenizer


def _learn_merges(words: Sequence[str]) -> list[tuple[str, str]]:
    """BPE merges learned on ``words`` until each is one token: the most frequent pair of
    symbols first (ties alphabetical), as BPE is trained, so applying the merges in rank
    order (what the tokenizer does) rebuilds every word whole."""
    pieces = [[*word[:-1], word[-1] + "</w>"] for word in words]
    merges: list[tuple[str, str]] = []
    while True:
        counts = Counter(pair for symbols in pieces for pair in pairwise(symbols))
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        for symbols in pieces:
            i = 0
            while i < len(symbols) - 1:
                if (symbols[i], symbols[i + 1]) == best:
                    symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
                i += 1


def clip_tokenizer() -> Any:
    """A byte-level BPE ``CLIPTokenizer`` whose merges make each caption word one token."""
    import transformers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())  # type: ignore[no-untyped-call]
    merges = _learn_merges(_words())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    # The fast BPE takes merges as pairs (its annotation says strings; strings fail).
    pairs: Any = merges
    return transformers.CLIPTokenizer(vocab=vocab, merges=pairs, model_max_length=CONTEXT_LENGTH)


# ---------------------------------------------------------------------------- checkpoint


def _seeded(build: Callable[[], Any]) -> Any:
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        return build().eval()


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """transformers' progress bars (writing and loading weights) off: bench output is a log."""
    import transformers

    hf_logging: Any = transformers.utils.logging  # its switches are unannotated
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def make_text_checkpoint(tower: TextTower, path: Path) -> Path:
    """Save a full two-tower ``CLIPModel`` with ``tower``'s text side, a tiny vision side,
    a CLIP image processor and :func:`clip_tokenizer` at ``path``."""
    import transformers

    tokenizer = clip_tokenizer()
    vocab_size = tower.vocab_size or len(tokenizer)
    if vocab_size < len(tokenizer):
        raise ValueError(f"{tower.key}: vocab {vocab_size} < the tokenizer's {len(tokenizer)}")
    config = transformers.CLIPConfig(
        text_config={
            **tower.config(),
            "vocab_size": vocab_size,
            "max_position_embeddings": CONTEXT_LENGTH,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=tower.projection_dim,
    )
    with no_progress_bars():
        _seeded(lambda: transformers.CLIPModel(config)).save_pretrained(path)
    transformers.CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
