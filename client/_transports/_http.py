"""Triton's HTTP/REST (KServe v2) endpoint over the client's one ``aiohttp.ClientSession``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack

import aiohttp

from tritonvision.errors import RuntimeUnavailable

from .._protocol import (
    HEADER_LENGTH_HEADER,
    InputTensor,
    ModelConfig,
    build_infer_request,
    config_path,
    error_from_http,
    infer_path,
    parse_infer_response,
    parse_model_config,
)
from ._base import InferOutcome, Transport, parse_server_url, translate_errors

__all__ = ["HttpTransport"]

# Compressing embeddings and pixels costs CPU on both ends for little gain.
_NO_COMPRESSION = {"Accept-Encoding": "identity"}


class HttpTransport(Transport):
    """POSTs binary-extension bodies built by :mod:`.._protocol`; parses the answers there.

    ``headers`` (authentication for a proxy or a restricted Triton) go with each request
    to Triton, never on the session: the session also fetches image URLs.
    """

    def __init__(
        self, url: str, *, connect_timeout_s: float, headers: Mapping[str, str] | None = None
    ) -> None:
        scheme, host, port = parse_server_url(url)
        self.scheme = scheme
        self.host = host
        self.session_endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._base = url.rstrip("/")
        self._connect_timeout_s = connect_timeout_s
        self._session: aiohttp.ClientSession | None = None
        # Merged once; the protocol's own headers win over the caller's.
        self._headers = {**(headers or {}), **_NO_COMPRESSION}

    async def open(self, stack: AsyncExitStack, session: aiohttp.ClientSession) -> None:
        # The session belongs to the client (it also fetches image URLs); we only borrow it.
        self._session = session

    def _need_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeUnavailable("HTTP transport used before the client was opened")
        return self._session

    def _timeout(self, timeout_s: float) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=timeout_s, sock_connect=self._connect_timeout_s)

    async def model_config(self, model: str, version: str, *, timeout_s: float) -> ModelConfig:
        session = self._need_session()
        with translate_errors(model=model):
            async with session.get(
                self._base + config_path(model, version),
                timeout=self._timeout(timeout_s),
                headers=self._headers,
            ) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise error_from_http(resp.status, body, model=model)
        return parse_model_config(body)

    async def infer(
        self,
        model: str,
        version: str,
        inputs: Sequence[InputTensor],
        outputs: Sequence[str],
        *,
        timeout_s: float,
    ) -> InferOutcome:
        session = self._need_session()
        request = build_infer_request(inputs, outputs, timeout_us=int(timeout_s * 1_000_000))
        with translate_errors(model=model):
            async with session.post(
                self._base + infer_path(model, version),
                data=request.body,
                headers={**self._headers, **request.headers},
                timeout=self._timeout(timeout_s),
            ) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise error_from_http(resp.status, body, model=model)
                raw_length = resp.headers.get(HEADER_LENGTH_HEADER)
        header_length = int(raw_length) if raw_length and raw_length.isdigit() else None
        parsed = parse_infer_response(body, header_length=header_length, status=resp.status)
        return InferOutcome(outputs=parsed.outputs, bytes_sent=len(request.body))
