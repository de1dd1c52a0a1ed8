"""Triton's gRPC endpoint through one ``tritonclient.grpc.aio`` client (one channel).

The client is created lazily on the running loop inside :meth:`GrpcTransport.open`
(grpc.aio channels bind the loop they are made on) and closed through the client's
``AsyncExitStack``. Cancelling the awaiting task cancels the RPC (grpc.aio does that).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any

import aiohttp

from tritonvision.errors import ProtocolError, RuntimeUnavailable

from .._protocol import InputTensor, ModelConfig, parse_model_config
from . import InferOutcome, Transport, translate_errors

__all__ = ["GrpcTransport"]


class GrpcTransport(Transport):
    """``ModelInfer`` / ``ModelConfig`` RPCs; errors translated by ``translate_errors``."""

    def __init__(self, host: str, port: int, *, ssl: bool = False) -> None:
        self.scheme = "grpcs" if ssl else "grpc"
        self.host = host
        self.session_endpoint = None  # the session only fetches image URLs in gRPC mode
        self._target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._ssl = ssl
        self._client: Any = None

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
        with translate_errors(model=model):
            doc = await client.get_model_config(
                model, version, as_json=True, client_timeout=timeout_s
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
            sent += int(tensor.array.nbytes)
        with translate_errors(model=model):
            result = await client.infer(
                model,
                grpc_inputs,
                model_version=version,
                outputs=[InferRequestedOutput(name) for name in outputs],
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
