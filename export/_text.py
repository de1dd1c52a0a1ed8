"""The text tower of a two-tower checkpoint (CLIP, SigLIP): description, loading, tokenizer.

``export_model(ExportOptions(checkpoint=DIR, text=True))`` exports, beside the image encoder,
the checkpoint's text tower as ``token tensors INT64 [N, L] -> embeddings fp32 [N, D]`` in the
image embeddings' space, and copies its tokenizer into the repository for the tokenize model.

A :class:`TextTower` describes one family's text side declaratively (which ``model_type`` is a
full two-tower checkpoint, the transformers class, the embedding size, the embedder); only
``clip`` and ``siglip`` have one (:data:`TEXT_TOWERS`). The context length ``L`` is read from
the checkpoint (:func:`context_length_of`), never guessed.

Describing a checkpoint (:func:`describe_text_checkpoint`) reads its JSON and tokenizer files
only (transformers, no torch); :func:`load_text_encoder` loads the weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from tritonvision.contract import (
    INPUT_IDS,
    PARAM_CONTEXT_LENGTH,
    PARAM_EMBEDDING_DIM,
    PARAM_FAMILY,
    PARAM_NORMALIZED,
    PARAM_PRECISION,
    PARAM_SOURCE,
    PARAM_TRAINED,
    TOKEN_INPUTS,
)

from ._encoders import (
    CLIP,
    SIGLIP,
    EncoderFamily,
    _checkpoint_model_type,
    _load_pretrained,
    family_for_model_type,
)
from ._errors import CheckpointError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from torch import nn

    from ._text_wrapper import TextEmbeddingWrapper

__all__ = [
    "MAX_SANE_CONTEXT_LENGTH",
    "TEXT_TOWERS",
    "TOKENIZER_FILES",
    "VALIDATION_TEXTS",
    "LoadedTextEncoder",
    "TextInfo",
    "TextTower",
    "context_length_of",
    "describe_text_checkpoint",
    "load_text_encoder",
    "load_tokenizer",
    "text_tower_for",
    "tokenize",
]

logger = logging.getLogger(__name__)

# transformers' "no limit" model_max_length is int(1e30); anything above this is not a real
# context length.
MAX_SANE_CONTEXT_LENGTH = 100_000
# What AutoTokenizer can load a CLIP or SigLIP tokenizer from (said when none is there).
TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json",
    "vocab.json + merges.txt",
    "spiece.model",
    "tokenizer_config.json",
)
# Texts the export validates with: short, empty, medium, over-long (truncated at L), non-ASCII.
VALIDATION_TEXTS: tuple[str, ...] = (
    "a photo of a dog",
    "",
    "a small red house by a lake under a grey winter sky, seen from a passing boat",
    " ".join(["the quick brown fox jumps over the lazy dog"] * 40),
    "héllo wörld ✓ 日本語のテキスト 🐶🏖️",
    "A CAT, sitting on a mat; in the sun!",
)


@dataclass(frozen=True, kw_only=True)
class TextInfo:
    """What a repository publishes about a text tower; needs no weights to build.

    ``token_inputs``: the token tensors the tower takes, in :data:`TOKEN_INPUTS` order (those
    the checkpoint tokenizer's ``model_input_names`` name; ``input_ids`` always).
    """

    family: str
    source: str
    trained: bool
    embedding_dim: int
    context_length: int
    token_inputs: tuple[str, ...]
    normalized: bool
    fp16: bool

    @property
    def precision(self) -> str:
        return "fp16" if self.fp16 else "fp32"

    def parameters(self) -> dict[str, str]:
        """The text models' published parameters (all but the preprocessing, plus ``L``)."""
        return {
            PARAM_FAMILY: self.family,
            PARAM_SOURCE: self.source,
            PARAM_TRAINED: "true" if self.trained else "false",
            PARAM_EMBEDDING_DIM: str(self.embedding_dim),
            PARAM_NORMALIZED: "true" if self.normalized else "false",
            PARAM_PRECISION: self.precision,
            PARAM_CONTEXT_LENGTH: str(self.context_length),
        }


# (loaded two-tower model) -> the embedder: token tensors -> [N, D] before the L2 norm.
BuildTextEmbedder = Callable[[Any], "nn.Module"]


@dataclass(frozen=True, kw_only=True, eq=False)
class TextTower:
    """The declarative description of one family's text side."""

    family: EncoderFamily
    # config.json model_type of a full two-tower checkpoint (the only kind with a text tower).
    model_type: str
    # transformers class (name) that loads the two-tower checkpoint.
    model_class: str
    # Weight-name prefixes of the text side: missing ones mean no usable text tower.
    weight_prefixes: tuple[str, ...]
    # (full config) -> D of the text embedding, the same space as the image one.
    embedding_dim: Callable[[Any], int]
    build_embedder: BuildTextEmbedder
    # Said when a checkpoint is vision-only.
    save_hint: str


def _clip_embedder(model: Any) -> nn.Module:
    from ._text_wrapper import ProjectedTextPooling

    return ProjectedTextPooling(model.text_model, model.text_projection).eval()


def _siglip_embedder(model: Any) -> nn.Module:
    from ._text_wrapper import TextPooledOutput

    return TextPooledOutput(model.text_model).eval()


CLIP_TEXT = TextTower(
    family=CLIP,
    model_type="clip",
    model_class="CLIPModel",
    weight_prefixes=("text_model.", "text_projection."),
    # CLIPConfig carries the shared projection size at top level.
    embedding_dim=lambda config: int(config.projection_dim),
    build_embedder=_clip_embedder,
    save_hint="save the full model (CLIPModel.save_pretrained) with its tokenizer",
)
SIGLIP_TEXT = TextTower(
    family=SIGLIP,
    model_type="siglip",
    model_class="SiglipModel",
    weight_prefixes=("text_model.",),
    # The text head's output: projection_size, which defaults to the text hidden size (equal
    # to the vision one, the image embedding's D, in every SigLIP).
    embedding_dim=lambda config: int(
        getattr(config.text_config, "projection_size", None) or config.text_config.hidden_size
    ),
    build_embedder=_siglip_embedder,
    save_hint="save the full model (SiglipModel.save_pretrained) with its tokenizer",
)
TEXT_TOWERS: Mapping[str, TextTower] = MappingProxyType(
    {tower.family.name: tower for tower in (CLIP_TEXT, SIGLIP_TEXT)}
)


def text_tower_for(checkpoint: Path) -> TextTower:
    """The text side of ``checkpoint``'s family; refuses families and checkpoints without one."""
    model_type = _checkpoint_model_type(checkpoint)
    try:
        family = family_for_model_type(model_type)
    except CheckpointError as exc:
        raise CheckpointError(f"{checkpoint}: {exc}", checkpoint=checkpoint) from exc
    tower = TEXT_TOWERS.get(family.name)
    full = ", ".join(f"{t.model_type!r}" for t in TEXT_TOWERS.values())
    if tower is None:
        raise CheckpointError(
            f"{checkpoint}: a {family.name} checkpoint (model_type {model_type!r}) has no text "
            f"tower; --text needs a full two-tower CLIP or SigLIP checkpoint (model_type {full})",
            checkpoint=checkpoint,
        )
    if model_type != tower.model_type:
        raise CheckpointError(
            f"{checkpoint}: model_type {model_type!r} is a vision-only {family.name} checkpoint: "
            f"it has no text tower ({', '.join(p.rstrip('.') for p in tower.weight_prefixes)}); "
            f"--text needs model_type {tower.model_type!r}: {tower.save_hint}",
            checkpoint=checkpoint,
        )
    return tower


def _has_tokenizer_files(checkpoint: Path) -> bool:
    single = ("tokenizer.json", "spiece.model", "tokenizer_config.json")
    if any((checkpoint / name).is_file() for name in single):
        return True
    return (checkpoint / "vocab.json").is_file() and (checkpoint / "merges.txt").is_file()


def load_tokenizer(checkpoint: Path) -> Any:
    """The checkpoint's own tokenizer, offline (``AutoTokenizer``, ``local_files_only``).

    Raises :class:`CheckpointError` naming the files looked for when there are none, or the
    reason when they do not load.
    """
    from transformers import AutoTokenizer

    looked_for = ", ".join(TOKENIZER_FILES)
    if not _has_tokenizer_files(checkpoint):
        raise CheckpointError(
            f"{checkpoint}: no tokenizer files (looked for {looked_for}); the text tower needs "
            "the checkpoint's own tokenizer: save it beside the model "
            "(tokenizer.save_pretrained(DIR))",
            checkpoint=checkpoint,
        )
    try:
        return AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)
    except Exception as exc:  # transformers raises OSError, ValueError, TypeError, ... here
        raise CheckpointError(
            f"{checkpoint}: its tokenizer does not load ({type(exc).__name__}: {exc})",
            checkpoint=checkpoint,
        ) from exc


def context_length_of(tokenizer: Any, max_position_embeddings: int | None) -> int:
    """``L``: the tokenizer's ``model_max_length`` when it is a sane int, else the text
    config's ``max_position_embeddings``; never more than the position embeddings allow."""
    declared = getattr(tokenizer, "model_max_length", None)
    if (
        isinstance(declared, int)
        and not isinstance(declared, bool)
        and 1 <= declared <= MAX_SANE_CONTEXT_LENGTH
    ):
        return (
            declared if max_position_embeddings is None else min(declared, max_position_embeddings)
        )
    if max_position_embeddings is None:
        raise ValueError(
            f"the tokenizer's model_max_length ({declared!r}) is not a context length and the "
            "text config has no max_position_embeddings"
        )
    return max_position_embeddings


def token_inputs_of(tokenizer: Any) -> tuple[str, ...]:
    """The token tensors the tower takes: :data:`TOKEN_INPUTS` the tokenizer gives."""
    names = set(getattr(tokenizer, "model_input_names", ()) or ()) | {INPUT_IDS}
    return tuple(name for name in TOKEN_INPUTS if name in names)


def tokenize(
    tokenizer: Any, texts: Sequence[str], *, context_length: int, token_inputs: Sequence[str]
) -> dict[str, npt.NDArray[np.int64]]:
    """``texts`` as the served tokenize model makes them: padded/truncated to ``L``, INT64."""
    import numpy as np

    encoded = tokenizer(
        list(texts), padding="max_length", truncation=True, max_length=context_length
    )
    return {name: np.asarray(encoded[name], dtype=np.int64) for name in token_inputs}


@dataclass(frozen=True)
class _TextDescription:
    tower: TextTower
    embedding_dim: int
    context_length: int
    token_inputs: tuple[str, ...]
    tokenizer: Any


def _describe(checkpoint: Path) -> _TextDescription:
    from transformers import AutoConfig

    tower = text_tower_for(checkpoint)
    tokenizer = load_tokenizer(checkpoint)
    config = AutoConfig.from_pretrained(checkpoint, local_files_only=True)
    text_config = getattr(config, "text_config", None)
    if text_config is None:
        raise CheckpointError(
            f"{checkpoint}: config.json has no text_config", checkpoint=checkpoint
        )
    positions = getattr(text_config, "max_position_embeddings", None)
    try:
        context_length = context_length_of(
            tokenizer, positions if isinstance(positions, int) else None
        )
    except ValueError as exc:
        raise CheckpointError(f"{checkpoint}: {exc}", checkpoint=checkpoint) from exc
    token_inputs = token_inputs_of(tokenizer)
    try:  # what the tokenize model will do to every request, once here
        tokenize(
            tokenizer, VALIDATION_TEXTS, context_length=context_length, token_inputs=token_inputs
        )
    except Exception as exc:  # e.g. a tokenizer without a pad token cannot pad to L
        raise CheckpointError(
            f"{checkpoint}: its tokenizer cannot pad/truncate texts to {context_length} tokens "
            f"({type(exc).__name__}: {exc})",
            checkpoint=checkpoint,
        ) from exc
    return _TextDescription(
        tower=tower,
        embedding_dim=tower.embedding_dim(config),
        context_length=context_length,
        token_inputs=token_inputs,
        tokenizer=tokenizer,
    )


def describe_text_checkpoint(
    checkpoint: Path, *, normalize: bool = True, fp16: bool = False
) -> TextInfo:
    """What an export of ``checkpoint``'s text tower publishes, from its JSON and tokenizer
    files (no weights loaded, no torch). Raises :class:`CheckpointError` when it has none."""
    return _described_with_tokenizer(checkpoint, normalize=normalize, fp16=fp16)[0]


def _described_with_tokenizer(
    checkpoint: Path, *, normalize: bool, fp16: bool
) -> tuple[TextInfo, Any]:
    """:func:`describe_text_checkpoint` and the tokenizer it loaded to find ``L`` (for the
    repository's copy, without loading it again)."""
    described = _describe(checkpoint)
    info = _text_info(described, source=str(checkpoint.resolve()), normalize=normalize, fp16=fp16)
    return info, described.tokenizer


class _DescribedText(Protocol):
    """What a text description and a loaded text tower both know about the tower."""

    @property
    def tower(self) -> TextTower: ...
    @property
    def embedding_dim(self) -> int: ...
    @property
    def context_length(self) -> int: ...
    @property
    def token_inputs(self) -> tuple[str, ...]: ...


def _text_info(text: _DescribedText, *, source: str, normalize: bool, fp16: bool) -> TextInfo:
    """The one place a :class:`TextInfo` is made: before loading (:func:`describe_text_checkpoint`)
    and after (:meth:`LoadedTextEncoder.info`) publish the same."""
    return TextInfo(
        family=text.tower.family.name,
        source=source,
        trained=True,
        embedding_dim=text.embedding_dim,
        context_length=text.context_length,
        token_inputs=text.token_inputs,
        normalized=normalize,
        fp16=fp16,
    )


@dataclass(frozen=True, kw_only=True, eq=False)
class LoadedTextEncoder:
    """A text tower's PyTorch embedder (token tensors -> [N, D] before the L2 norm), its
    tokenizer, and what gets published about it."""

    tower: TextTower
    source: str
    embedding_dim: int
    context_length: int
    token_inputs: tuple[str, ...]
    tokenizer: Any
    embedder: nn.Module

    @property
    def family(self) -> EncoderFamily:
        return self.tower.family

    def info(self, *, normalize: bool, fp16: bool) -> TextInfo:
        return _text_info(self, source=self.source, normalize=normalize, fp16=fp16)

    def wrapper(self, *, normalize: bool) -> TextEmbeddingWrapper:
        """The fp32 module to export (and the reference it is validated against)."""
        from ._text_wrapper import TextEmbeddingWrapper

        return TextEmbeddingWrapper(self.embedder, normalize=normalize).eval()

    def tokenize(self, texts: Sequence[str]) -> dict[str, npt.NDArray[np.int64]]:
        """``texts`` as the served tokenize model makes them (INT64 [N, L] per token input)."""
        return tokenize(
            self.tokenizer,
            texts,
            context_length=self.context_length,
            token_inputs=self.token_inputs,
        )


def load_text_encoder(checkpoint: Path) -> LoadedTextEncoder:
    """Load the text tower of a full two-tower CLIP or SigLIP checkpoint, offline, in fp32.

    Raises :class:`CheckpointError` for another family, a vision-only checkpoint, missing
    text weights or missing tokenizer files, naming the checkpoint and what is missing.
    """
    import transformers

    described = _describe(checkpoint)
    tower = described.tower
    model = _load_pretrained(
        getattr(transformers, tower.model_class),
        checkpoint,
        tower.save_hint,
        # transformers fills missing weights with random ones: a text export of that would
        # validate (ONNX matches PyTorch) and embed garbage.
        needed=lambda key: key.startswith(tower.weight_prefixes),
        what="the text tower's weights",
    )
    return LoadedTextEncoder(
        tower=tower,
        source=str(checkpoint.resolve()),
        embedding_dim=described.embedding_dim,
        context_length=described.context_length,
        token_inputs=described.token_inputs,
        tokenizer=described.tokenizer,
        embedder=tower.build_embedder(model),
    )
