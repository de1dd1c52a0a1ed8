"""What the client knows about its model: :class:`ModelInfo`, read from a model config, cached.

:func:`model_info_from_config` checks a Triton model config against what the client will
send (UINT8 NHWC pixels of the spec's size to the encoder, not to the ``_images``
ensemble) and picks the embeddings output. :class:`ModelInfoCache` shares one lookup per
``(model, version)`` between concurrent callers and forgets failures, so the next call asks
again. :func:`embedding_rows` checks an inference output against the model's declaration.

:class:`TextModelInfo` (:func:`text_model_info_from_config`) is the same for the text model:
BYTES ``texts`` in (the ``_texts`` ensemble), ``embeddings`` out, and the context length the
server's tokenizer truncates to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from tritonvision.contract import (
    EMBEDDINGS_OUTPUT,
    PARAM_CONTEXT_LENGTH,
    PARAM_PREPROCESSING,
    TEXTS_INPUT,
    PreprocessSpec,
)
from tritonvision.errors import ModelConfigError, ProtocolError

from ._protocol import ModelConfig

__all__ = [
    "ModelInfo",
    "ModelInfoCache",
    "TextModelInfo",
    "embedding_rows",
    "model_info_from_config",
    "text_model_info_from_config",
]

InfoT = TypeVar("InfoT")


class EmbeddingModel(Protocol):
    """What :func:`embedding_rows` needs of a model's info (image or text)."""

    @property
    def name(self) -> str: ...
    @property
    def output_name(self) -> str: ...
    @property
    def embedding_dim(self) -> int | None: ...


@dataclass(frozen=True)
class ModelInfo:
    """What the client learned about its model (cached per model).

    ``max_batch_size`` 0 means the model takes unbatched requests, one image each.
    ``embedding_dim`` is None only if the config leaves it variable.
    """

    name: str
    version: str
    config: ModelConfig
    preprocessing: PreprocessSpec
    input_name: str
    output_name: str
    embedding_dim: int | None
    max_batch_size: int

    @property
    def item_bytes(self) -> int:
        """Bytes of one image's pixels on the wire."""
        h, w, c = self.preprocessing.output_shape
        return h * w * c


def model_info_from_config(
    model: str, version: str, cfg: ModelConfig, override: PreprocessSpec | None = None
) -> ModelInfo:
    """The :class:`ModelInfo` of ``cfg``; ``override`` replaces the published spec.

    Raises :class:`ModelConfigError` if the model publishes no spec and none is given, or
    if its inputs and outputs do not fit what the client sends and reads.
    """
    spec = override
    if spec is None:
        published = cfg.parameters.get(PARAM_PREPROCESSING)
        if not published:
            raise ModelConfigError(
                f"model {model!r} does not publish its preprocessing (config parameter "
                f"{PARAM_PREPROCESSING!r}); export it with tritonvision, or pass "
                "preprocessing=PreprocessSpec(...) to the client"
            )
        spec = PreprocessSpec.from_json(published)
    _check_input(model, cfg, spec)
    output_name, dim = _pick_output(model, cfg)
    return ModelInfo(
        name=model,
        version=version,
        config=cfg,
        preprocessing=spec,
        input_name=spec.input_name,
        output_name=output_name,
        embedding_dim=dim,
        max_batch_size=max(0, cfg.max_batch_size),
    )


def _check_input(model: str, cfg: ModelConfig, spec: PreprocessSpec) -> None:
    if not cfg.inputs:
        return
    matching = [t for t in cfg.inputs if t.name == spec.input_name]
    if not matching:
        raise ModelConfigError(
            f"model {model!r} has no input {spec.input_name!r} (its inputs: "
            f"{[t.name for t in cfg.inputs]}); the client sends preprocessed pixels to "
            "the encoder, not to the '_images' ensemble"
        )
    declared = matching[0]
    if declared.datatype != "UINT8":
        raise ModelConfigError(
            f"model {model!r} input {declared.name!r} is {declared.datatype}, "
            "the client sends UINT8 pixels"
        )
    expected = spec.output_shape
    dims = declared.dims[-3:]
    if len(dims) != 3 or any(d not in (-1, e) for d, e in zip(dims, expected, strict=True)):
        raise ModelConfigError(
            f"model {model!r} input {declared.name!r} has dims {list(declared.dims)}, "
            f"but its preprocessing produces {list(expected)}"
        )


def _pick_output(model: str, cfg: ModelConfig) -> tuple[str, int | None]:
    if not cfg.outputs:
        return EMBEDDINGS_OUTPUT, None
    named = [t for t in cfg.outputs if t.name == EMBEDDINGS_OUTPUT]
    if named:
        chosen = named[0]
    elif len(cfg.outputs) == 1:
        chosen = cfg.outputs[0]
    else:
        raise ModelConfigError(
            f"model {model!r} has several outputs {[t.name for t in cfg.outputs]} "
            f"and none named {EMBEDDINGS_OUTPUT!r}"
        )
    dim = chosen.dims[-1] if chosen.dims and chosen.dims[-1] > 0 else None
    return chosen.name, dim


@dataclass(frozen=True)
class TextModelInfo:
    """What the client learned about its text model (the ``_texts`` ensemble), cached.

    ``max_batch_size`` 0 means unbatched requests, one text each. ``context_length`` is
    the token count the server's tokenizer pads and truncates every text to (published as
    ``tritonvision.context_length``; None if the model does not say).
    """

    name: str
    version: str
    config: ModelConfig
    input_name: str
    output_name: str
    embedding_dim: int | None
    max_batch_size: int
    context_length: int | None


def text_model_info_from_config(model: str, version: str, cfg: ModelConfig) -> TextModelInfo:
    """The :class:`TextModelInfo` of ``cfg``.

    Raises :class:`ModelConfigError` naming ``model`` if it does not take BYTES ``texts``
    (an image encoder, the token-level ``_text`` tower) or has no usable output.
    """
    if cfg.inputs:
        matching = [t for t in cfg.inputs if t.name == TEXTS_INPUT]
        if not matching:
            raise ModelConfigError(
                f"model {model!r} has no input {TEXTS_INPUT!r} (its inputs: "
                f"{[t.name for t in cfg.inputs]}); embed_text() sends strings to the text "
                "ensemble, NAME_texts (export with --text), not to an image encoder or the "
                "token-level NAME_text tower"
            )
        declared = matching[0]
        if declared.datatype != "BYTES":
            raise ModelConfigError(
                f"model {model!r} input {declared.name!r} is {declared.datatype}, "
                "the client sends BYTES (UTF-8 strings)"
            )
        if len(declared.dims) != 1 or declared.dims[0] not in (-1, 1):
            raise ModelConfigError(
                f"model {model!r} input {declared.name!r} has dims {list(declared.dims)}, "
                "the client sends one string per item (dims [1])"
            )
    output_name, dim = _pick_output(model, cfg)
    raw_length = cfg.parameters.get(PARAM_CONTEXT_LENGTH, "")
    context_length = int(raw_length) if raw_length.strip().isdigit() else None
    return TextModelInfo(
        name=model,
        version=version,
        config=cfg,
        input_name=TEXTS_INPUT,
        output_name=output_name,
        embedding_dim=dim,
        max_batch_size=max(0, cfg.max_batch_size),
        context_length=context_length,
    )


def embedding_rows(
    output: npt.NDArray[Any], count: int, info: EmbeddingModel
) -> npt.NDArray[np.float32]:
    """``output`` as ``(count, D)`` float32; :class:`ProtocolError` if it cannot be."""
    array = np.asarray(output)
    if array.size == 0 or array.size % count:
        raise ProtocolError(
            f"model {info.name!r} returned output {info.output_name!r} of shape "
            f"{array.shape} for {count} item(s)",
            status=200,
            model=info.name,
        )
    rows = array.reshape(count, -1)
    if info.embedding_dim is not None and rows.shape[1] != info.embedding_dim:
        raise ProtocolError(
            f"model {info.name!r} returned {rows.shape[1]}-dim embeddings, its config "
            f"declares {info.embedding_dim}",
            status=200,
            model=info.name,
        )
    return rows.astype(np.float32, copy=False)


class ModelInfoCache(Generic[InfoT]):
    """One shared lookup per ``(model, version)``; successes are kept, failures are not.

    Lives on one event loop (the client's); ``load`` does the actual lookup (a
    :class:`ModelInfo` for the image model, a :class:`TextModelInfo` for the text model).
    """

    def __init__(self, load: Callable[[str, str], Awaitable[InfoT]]) -> None:
        self._load = load
        self._entries: dict[tuple[str, str], asyncio.Future[InfoT]] = {}

    async def get(self, model: str, version: str) -> InfoT:
        key = (model, version)
        fut = self._entries.get(key)
        if fut is None:
            fut = asyncio.ensure_future(self._load(model, version))
            fut.add_done_callback(lambda done: self._forget_failure(key, done))
            self._entries[key] = fut
        # Shielded: one caller's cancellation must not cancel the shared lookup.
        return await asyncio.shield(fut)

    def _forget_failure(self, key: tuple[str, str], fut: asyncio.Future[InfoT]) -> None:
        # A failure is not cached: the next call asks again (the server may be back).
        failed = fut.cancelled() or fut.exception() is not None
        if failed and self._entries.get(key) is fut:
            del self._entries[key]

    def cancel_all(self) -> None:
        """Cancel lookups still running (the client is closing)."""
        for fut in self._entries.values():
            fut.cancel()
