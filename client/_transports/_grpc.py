"""Triton's gRPC endpoint through one ``tritonclient.grpc.aio`` client (one channel).

The client is created lazily on the running loop inside :meth:`GrpcTransport.open`
(grpc.aio channels bind the loop they are made on) and closed through the client's
``AsyncExitStack``. Cancelling the awaiting task cancels the RPC (grpc.aio does that).

:func:`grpc_errors` maps tritonclient's ``InferenceServerException`` and grpc's
``RpcError`` to typed errors (through ``_protocol.error_from_grpc``, the one
classification), then lets :func:`~._base.translate_errors` handle the rest.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AsyncExitStack, contextmanager
from typing import Any

import aiohttp

from tritonvision.errors import ProtocolError, RuntimeUnavailable, TritonVisionError

from .._protocol import InputTensor, ModelConfig, error_from_grpc, parse_model_config
from ._base import InferOutcome, Transport, translate_errors

__all__ = ["GrpcTransport", "grpc_errors"]


@contextmanager
def grpc_errors(*, model: str | None = None, source: object = None) -> Iterator[None]:
    """:func:`translate_errors` for a gRPC call: grpc's and tritonclient's errors too."""
    with translate_errors(model=model, source=source):
        try:
            yield
        except TritonVisionError:
            raise
        except Exception as exc:
            mapped = _from_grpc_exception(exc, model=model, source=source)
            if mapped is None:
                raise
            raise mapped from exc


def _from_grpc_exception(
    exc: Exception, *, model: str | None, source: object
) -> TritonVisionError | None:
    # Checked through sys.modules: tritonclient.grpc is imported only once a channel
    # opens, and its exceptions can only be raised after that import.
    utils = sys.modules.get("tritonclient.utils")
    if utils is not None and isinstance(exc, utils.InferenceServerException):
        return error_from_grpc(
            str(exc.status() or "UNKNOWN"), str(exc.message() or ""), model=model, source=source
        )
    grpc = sys.modules.get("grpc")
    if grpc is not None and isinstance(exc, grpc.RpcError):
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        name = getattr(code, "name", "UNKNOWN")
        return error_from_grpc(str(name), str(details or ""), model=model, source=source)
    return None


class GrpcTransport(Transport):
    """``ModelInfer`` / ``ModelConfig`` RPCs; errors translated by :func:`grpc_errors`.

    ``headers`` are sent as call metadata on every RPC (names lower-cased, as gRPC
    requires; Triton's ``--grpc-restricted-protocol`` key ``K`` is the metadata
    ``triton-grpc-protocol-K``).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.scheme = "grpcs" if ssl else "grpc"
        self.host = host
        self.session_endpoint = None  # the session only fetches image URLs in gRPC mode
        self._target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._ssl = ssl
        self._client: Any = None
        self._metadata = {name.lower(): value for name, value in (headers or {}).items()} or None

    async def open(self, stack: AsyncExitStack, session: aiohttp.ClientSession) -> None:
        # Imported here: tritonclient.grpc pulls in grpc + protobuf, needed only in gRPC mode.
        from tritonclient.grpc import aio as grpc_aio

        client = grpc_aio.InferenceServerClient(self._target, ssl=self._ssl)
        stack.push_async_callback(client.close)
        self._client = client

    def _need_client(self) -> Any:
        if self._client is None:
            raise RuntimeUnavailable("gRPC transport used before the client was opened")
        return self._client

    async def model_config(self, model: str, version: str, *, timeout_s: float) -> ModelConfig:
        client = self._need_client()
        with grpc_errors(model=model):
            doc = await client.get_model_config(
                model,
                version,
                headers=self._metadata,
                as_json=True,
                client_timeout=timeout_s,
            )
        return parse_model_config(doc)

    async def infer(
        self,
        model: str,
        version: str,
        inputs: Sequence[InputTensor],
        outputs: Sequence[str],
        *,
        timeout_s: float,
    ) -> InferOutcome:
        from tritonclient.grpc import InferInput, InferRequestedOutput

        client = self._need_client()
        grpc_inputs = []
        sent = 0
        for tensor in inputs:
            grpc_input = InferInput(tensor.name, list(tensor.shape), tensor.datatype)
            grpc_input.set_data_from_numpy(tensor.array)
            grpc_inputs.append(grpc_input)
            sent += tensor.nbytes
        with grpc_errors(model=model):
            result = await client.infer(
                model,
                grpc_inputs,
                model_version=version,
                outputs=[InferRequestedOutput(name) for name in outputs],
                headers=self._metadata,
                timeout=int(timeout_s * 1_000_000),
                client_timeout=timeout_s,
            )
        arrays = {}
        for name in outputs:
            array = result.as_numpy(name)
            if array is None:
                raise ProtocolError(
                    f"gRPC response from model {model!r} has no output {name!r}",
                    status=200,
                    model=model,
                )
            arrays[name] = array
        return InferOutcome(outputs=arrays, bytes_sent=sent)
