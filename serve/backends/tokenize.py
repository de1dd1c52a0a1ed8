"""Triton python-backend model: UTF-8 strings in, the checkpoint tokenizer's token tensors out.

This is the first step of the ``<name>_texts`` ensemble, so that a curl or tritonclient user
sends plain strings. It runs the checkpoint's own tokenizer, saved by ``tritonvision export
--text`` into ``<version>/tokenizer/`` beside this model (loaded with ``local_files_only``:
nothing is fetched at serve time), exactly as transformers' users call it:
``tokenizer(texts, padding="max_length", truncation=True, max_length=L)``. Over-long texts
are therefore truncated to the context length ``L`` (CLIP 77, SigLIP 64) as the checkpoint's
tokenizer does, and every row is padded to ``L``.

Triton's dynamic batcher hands ``execute`` several requests at once; all their strings go
through ONE tokenizer call (a fast tokenizer encodes a batch in parallel) and the rows are
split back per request. The strings are untrusted: an item that is not UTF-8 fails only its
own request with a message naming ``texts[i]``; a tokenizer exception fails the requests it
concerns (the batch is retried request by request to find them), never the stub.

The pure steps (:func:`decode_texts`, :func:`tokenize`, :func:`split_rows`) take no
``pb_utils`` object, so they are tested without a server.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import triton_python_backend_utils as pb_utils

from tritonvision.contract import PARAM_CONTEXT_LENGTH, TEXTS_INPUT, TOKENIZER_DIR
from tritonvision.errors import InvalidInput
from tritonvision.serve.backends._stub import config_parameter, error_response, log_info

__all__ = ["TritonPythonModel", "decode_texts", "split_rows", "tokenize"]

_NP_FROM_TRITON: Mapping[str, type[np.integer[Any]]] = {
    "TYPE_INT64": np.int64,
    "TYPE_INT32": np.int32,
}


class Tokenizer(Protocol):
    """What we call of a transformers tokenizer."""

    def __call__(self, text: list[str], **kwargs: Any) -> Mapping[str, Any]: ...


def decode_texts(items: npt.NDArray[Any]) -> list[str]:
    """The strings of one request's ``texts`` tensor ([N, 1] BYTES), decoded strictly.

    Raises :class:`InvalidInput` naming the first item (``texts[i]``) that is not UTF-8.
    """
    rows = items.reshape(len(items), -1) if items.ndim else items.reshape(1, 1)
    texts: list[str] = []
    for index, row in enumerate(rows):
        if row.size != 1:
            raise InvalidInput(
                f"{TEXTS_INPUT}[{index}] holds {row.size} elements, expected one string",
                source=f"{TEXTS_INPUT}[{index}]",
            )
        value = row[0]
        if isinstance(value, str):
            texts.append(value)
            continue
        try:
            texts.append(bytes(value).decode("utf-8"))
        except (UnicodeDecodeError, TypeError) as exc:
            raise InvalidInput(
                f"{TEXTS_INPUT}[{index}] is not valid UTF-8 text: {exc}",
                source=f"{TEXTS_INPUT}[{index}]",
            ) from exc
    return texts


def tokenize(
    tokenizer: Tokenizer,
    texts: list[str],
    *,
    context_length: int,
    outputs: Sequence[tuple[str, type[np.integer[Any]]]],
) -> dict[str, npt.NDArray[Any]]:
    """The token tensors ``[len(texts), context_length]`` of ``texts``, by output name.

    The tokenizer call is the one transformers documents for CLIP and SigLIP (SigLIP was
    trained on ``max_length`` padding): pad and truncate every row to ``context_length``.
    """
    if not texts:  # a request of zero items: Triton allows it, a tokenizer may not
        return {name: np.zeros((0, context_length), dtype=dtype) for name, dtype in outputs}
    encoded = tokenizer(
        texts,
        padding="max_length",
        truncation=True,
        max_length=context_length,
        return_tensors="np",
    )
    arrays: dict[str, npt.NDArray[Any]] = {}
    for name, dtype in outputs:
        if name not in encoded:
            raise KeyError(f"the tokenizer gives no {name!r} (it gives {', '.join(encoded)})")
        array = np.ascontiguousarray(np.asarray(encoded[name]), dtype=dtype)
        if array.shape != (len(texts), context_length):
            raise ValueError(
                f"the tokenizer gave {name!r} of shape {array.shape}, "
                f"expected {(len(texts), context_length)}"
            )
        arrays[name] = array
    return arrays


def split_rows(
    arrays: Mapping[str, npt.NDArray[Any]], counts: Sequence[int]
) -> list[dict[str, npt.NDArray[Any]]]:
    """Cut the rows of one batched call back into one dict per request (``counts`` rows each)."""
    parts: list[dict[str, npt.NDArray[Any]]] = []
    start = 0
    for count in counts:
        parts.append(
            {
                name: np.ascontiguousarray(array[start : start + count])
                for name, array in arrays.items()
            }
        )
        start += count
    return parts


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.model_name: str = config["name"]
        try:
            self.outputs = [(o["name"], _NP_FROM_TRITON[o["data_type"]]) for o in config["output"]]
            lengths = {int(o["dims"][-1]) for o in config["output"]}
        except (KeyError, IndexError, ValueError) as exc:
            raise pb_utils.TritonModelException(
                f"{self.model_name}: outputs must be INT64/INT32 token tensors [L]: {exc!r}"
            ) from exc
        published = config_parameter(config, PARAM_CONTEXT_LENGTH)
        if len(lengths) != 1 or (published and {published} != {str(n) for n in lengths}):
            raise pb_utils.TritonModelException(
                f"{self.model_name}: output dims {sorted(lengths)} disagree with "
                f"{PARAM_CONTEXT_LENGTH}={published!r}"
            )
        self.context_length = lengths.pop()
        path = Path(args["model_repository"]) / args["model_version"] / TOKENIZER_DIR
        # No hub at serve time: the tokenizer files are in the repository.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from transformers import AutoTokenizer

            self.tokenizer: Tokenizer = AutoTokenizer.from_pretrained(
                str(path), local_files_only=True
            )
            # A probe proves the tokenizer gives what the config declares before Triton
            # reports the model ready.
            tokenize(
                self.tokenizer,
                ["probe"],
                context_length=self.context_length,
                outputs=self.outputs,
            )
        except Exception as exc:
            raise pb_utils.TritonModelException(
                f"{self.model_name}: cannot load the tokenizer in {path}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        log_info(
            f"{self.model_name}: tokenizer {type(self.tokenizer).__name__} from {path}, "
            f"context length {self.context_length}, outputs "
            f"{', '.join(name for name, _ in self.outputs)} "
            f"(instance {args.get('model_instance_name', '?')})"
        )

    def _error(self, message: str, *, invalid_input: bool = False) -> Any:
        # A tokenizer failure stays an internal error; bad bytes are the caller's.
        return error_response(f"{self.model_name}: {message}", invalid_input=invalid_input)

    def _tokenize(self, texts: list[str]) -> dict[str, npt.NDArray[Any]]:
        return tokenize(
            self.tokenizer, texts, context_length=self.context_length, outputs=self.outputs
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        decoded: list[tuple[int, list[str]]] = []
        for position, request in enumerate(requests):
            try:
                tensor = pb_utils.get_input_tensor_by_name(request, TEXTS_INPUT)
                if tensor is None:
                    raise InvalidInput(f"no input {TEXTS_INPUT!r}")
                decoded.append((position, decode_texts(tensor.as_numpy())))
            except InvalidInput as exc:
                responses[position] = self._error(exc.message, invalid_input=True)
            except Exception as exc:
                responses[position] = self._error(
                    f"cannot read {TEXTS_INPUT!r}: {type(exc).__name__}: {exc}"
                )

        parts: list[tuple[int, dict[str, npt.NDArray[Any]] | str]] = []
        if decoded:
            texts = [text for _, request_texts in decoded for text in request_texts]
            try:
                rows = split_rows(self._tokenize(texts), [len(t) for _, t in decoded])
                parts = [(p, r) for (p, _), r in zip(decoded, rows, strict=True)]
            except Exception as exc:
                if len(decoded) == 1:
                    parts = [(decoded[0][0], f"{type(exc).__name__}: {exc}")]
                else:
                    # Find the request(s) the tokenizer refuses; the others still get answers.
                    parts = [(p, self._tokenize_one(t)) for p, t in decoded]
        for position, part in parts:
            if isinstance(part, str):
                responses[position] = self._error(f"tokenizer failed: {part}")
            else:
                tensors = [pb_utils.Tensor(name, array) for name, array in part.items()]
                responses[position] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses

    def _tokenize_one(self, texts: list[str]) -> dict[str, npt.NDArray[Any]] | str:
        try:
            return self._tokenize(texts)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
