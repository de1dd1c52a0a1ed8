"""Texts: what ``embed_text`` / ``batch_embed_texts`` accept, and texts on the wire.

The client sends each text as its UTF-8 bytes, one BYTES item per text (``[N, 1]``), to
the text model (``NAME_texts``, the ensemble of the server's tokenizer and the text
tower); it never tokenises. The server's tokenizer is the checkpoint's own, so a text
longer than the model's context length (``tritonvision.context_length``: 77 tokens for
CLIP, 64 for SigLIP) is truncated exactly as the checkpoint's tokenizer truncates it.

Checks made here, before anything is sent (each an :class:`InvalidInput` naming the
item, in a batch ``texts[i]``):

- an item that is not a ``str`` (``bytes``, ``None``, a number): the client does not
  guess an encoding or stringify;
- a ``str`` that cannot be UTF-8 encoded (a lone surrogate, e.g. from
  ``os.fsdecode`` of undecodable bytes);
- a text whose UTF-8 bytes would not fit one request (``max_request_bytes``).

The empty string is a text like any other. A ``str`` or ``bytes`` passed where the
iterable of texts belongs is refused at once (:func:`check_batch_texts`): iterating it
would embed its characters one by one.

:class:`TextCalls` is the text side of one client: the text model's info (cached), the
coalescer of single ``embed_text`` calls and the pipeline of a batch, over the client's
one request function, request slots and counters (so the same retries, overload gate,
stats, session and channel as images).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence

import numpy as np
import numpy.typing as npt

from tritonvision.errors import InvalidInput, describe_source

from ._coalesce import Coalescer, embed_single, make_coalescer
from ._config import ClientConfig
from ._inputs import attach_source
from ._model_info import ModelInfoCache, TextModelInfo, text_model_info_from_config
from ._pipeline import BatchPipeline, make_pipeline
from ._protocol import InputTensor, ModelConfig
from ._results import BatchEmbedding
from ._stats import StatsRecorder

__all__ = [
    "TextCalls",
    "check_batch_texts",
    "encode_text",
    "texts_tensor",
    "wire_bytes",
]

InferTexts = Callable[[Sequence[bytes]], Awaitable[npt.NDArray[np.float32]]]
Request = Callable[[TextModelInfo, InputTensor, int], Awaitable[npt.NDArray[np.float32]]]
LoadConfig = Callable[[str, str], Awaitable[ModelConfig]]

# Bytes a BYTES item takes on the wire besides its own: its 4-byte length prefix.
_LENGTH_PREFIX = 4


def wire_bytes(data: bytes) -> int:
    """Bytes one encoded text takes in a request body."""
    return _LENGTH_PREFIX + len(data)


def check_batch_texts(texts: object) -> None:
    """Refuse a single text (or bytes) passed where an iterable of texts belongs."""
    if isinstance(texts, str | bytes | bytearray | memoryview):
        raise InvalidInput(
            f"{describe_source(texts)}: batch_embed_texts() takes an iterable of texts "
            "(e.g. a list of str), not a single text; use embed_text() for one text",
            source=texts,
        )


def encode_text(text: object, *, max_request_bytes: int, index: int | None = None) -> bytes:
    """``text``'s UTF-8 bytes; :class:`InvalidInput` if it is not a sendable ``str``.

    ``index`` (the item's position in a batch) names the item in the message.
    """
    where = "text" if index is None else f"texts[{index}]"
    if not isinstance(text, str):
        raise InvalidInput(
            f"{where} is a {type(text).__name__} ({describe_source(text)}), not a str; "
            "decode bytes to str yourself (the client does not guess encodings)",
            # The item as given; a None item is named by its place (a None source would be
            # filled in later with the pipeline's stand-in for it).
            source=where if text is None else text,
        )
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"{where} ({describe_source(text)}) cannot be encoded as UTF-8: "
            f"{exc.reason} {text[exc.start : exc.end]!r} at position {exc.start} "
            "(a lone surrogate: not valid Unicode text)",
            source=text,
        ) from None
    if wire_bytes(data) > max_request_bytes:
        raise InvalidInput(
            f"{where} ({describe_source(text)}) is {len(data)} UTF-8 bytes, over "
            f"ClientConfig.max_request_bytes ({max_request_bytes}); the server's tokenizer "
            "keeps only the first context-length tokens anyway",
            source=text,
        )
    return data


class TextItem:
    """An item of a batch of texts refused by its check: ``error`` names its index.

    It stands in for the item in the pipeline, which then records ``error`` as the item's.
    """

    __slots__ = ("error", "text")

    def __init__(self, text: object, error: InvalidInput) -> None:
        self.text = text
        self.error = error


def checked_texts(texts: Iterable[object], *, max_request_bytes: int) -> Iterator[object]:
    """``texts`` lazily, each ``str`` as it is, each refused item as a :class:`TextItem`
    carrying its error (made here, where the index is known)."""
    for index, text in enumerate(texts):
        try:
            encode_text(text, max_request_bytes=max_request_bytes, index=index)
        except InvalidInput as exc:
            yield TextItem(text, exc)
        else:
            yield text


async def _prepare(item: object, max_request_bytes: int) -> bytes:
    if isinstance(item, TextItem):
        raise item.error
    return encode_text(item, max_request_bytes=max_request_bytes)


def texts_tensor(info: TextModelInfo, texts: Sequence[bytes]) -> InputTensor:
    """The BYTES input of one request: ``[N, 1]`` (``[1]`` for an unbatched model)."""
    array = np.empty(len(texts), dtype=np.object_)
    array[:] = list(texts)
    shaped = array if info.max_batch_size <= 0 else array.reshape(-1, 1)
    return InputTensor(info.input_name, shaped, "BYTES")


class TextCalls:
    """The text side of one client, for its one text model (its latest version).

    ``load_config`` fetches a model config (retried); ``request`` sends one inference
    request of ``count`` items (retried, through the overload gate, counted);
    ``slots`` is the client's semaphore of requests in flight. All run on the client's loop.
    """

    def __init__(
        self,
        *,
        model: str,
        config: ClientConfig,
        stats: StatsRecorder,
        load_config: LoadConfig,
        request: Request,
    ) -> None:
        self.model = model
        self._config = config
        self._stats = stats
        self._load_config = load_config
        self._request = request
        self._infos: ModelInfoCache[TextModelInfo] = ModelInfoCache(self._load)
        self._coalescer: Coalescer[bytes] | None = None

    async def _load(self, model: str, version: str) -> TextModelInfo:
        return text_model_info_from_config(model, version, await self._load_config(model, version))

    async def info(self) -> TextModelInfo:
        """The text model's :class:`TextModelInfo` (fetched once; a failure is not kept)."""
        return await self._infos.get(self.model, "")

    def _infer(self, info: TextModelInfo) -> InferTexts:
        def infer(texts: Sequence[bytes]) -> Awaitable[npt.NDArray[np.float32]]:
            return self._request(info, texts_tensor(info, texts), len(texts))

        return infer

    async def embed(self, text: str, slots: asyncio.Semaphore) -> npt.NDArray[np.float32]:
        """One text's row; its error counted and naming it."""
        try:
            data = encode_text(text, max_request_bytes=self._config.max_request_bytes)
            info = await self.info()
            infer = self._infer(info)
            if self._coalescer is None:
                self._coalescer = make_coalescer(
                    self._config,
                    model_max_batch_size=info.max_batch_size,
                    infer=infer,
                    slots=slots,
                    weigh=wire_bytes,
                )
            row = await embed_single(self._coalescer, infer, slots, data)
        except Exception as exc:
            self._stats.failed(exc)
            attach_source(exc, text)
            raise
        self._stats.succeeded(1)
        return row

    async def batch(self, texts: Iterable[object], slots: asyncio.Semaphore) -> BatchEmbedding:
        """Every text's row or error, in input order (see ``batch_embed_texts``)."""
        info = await self.info()
        limit = self._config.max_request_bytes
        pipeline: BatchPipeline[object, bytes] = make_pipeline(
            self._config,
            prepare=lambda item: _prepare(item, limit),
            infer=self._infer(info),
            slots=slots,
            stats=self._stats,
            max_batch_size=info.max_batch_size,
            embedding_dim=info.embedding_dim,
            weigh=wire_bytes,
        )
        return await pipeline.run(checked_texts(texts, max_request_bytes=limit))

    async def aclose(self) -> None:
        """Stop the coalescer (its callers drained) and cancel a lookup still running."""
        if self._coalescer is not None:
            await self._coalescer.aclose()
        self._infos.cancel_all()
