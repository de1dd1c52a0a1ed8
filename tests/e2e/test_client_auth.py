"""Authenticated Triton: ``headers`` on the client, ``--header`` / ``TRITONVISION_HEADERS``.

- settings: header names and values are checked (no CR/LF injection), secrets stay out of
  ``repr()`` and out of error messages, the environment and the CLI feed the same field;
- HTTP through a real authenticating reverse proxy (aiohttp on 127.0.0.1) in front of the
  session's Triton: with the token the rows equal Triton's own, without it (or with a
  wrong one) an :class:`AuthenticationError` at once, never retried;
- the headers go to Triton only: an image URL's server never sees them;
- Triton's own ``--http-restricted-api`` / ``--grpc-restricted-protocol`` with a key, on
  ONE extra ``tritonserver`` (the tiny encoder alone): both transports pass with the key
  and fail typed without it.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from _local_servers import ImageSite, LocalServer, encode, make_image
from aiohttp import web

from tritonvision.client import (
    AuthenticationError,
    ClientConfig,
    InvalidInput,
    ServerError,
    VisionClient,
    parse_header,
)
from tritonvision.errors import TritonVisionError

TOKEN = "Bearer s3cr3t-t0ken"

# ------------------------------------------------------------------------- settings


def test_headers_are_checked_and_kept_out_of_repr() -> None:
    config = ClientConfig(headers={"Authorization": TOKEN, "x-tenant": "a"})
    assert dict(config.headers) == {"Authorization": TOKEN, "x-tenant": "a"}
    assert "s3cr3t" not in repr(config)
    with pytest.raises(TypeError):
        config.headers["x"] = "y"  # type: ignore[index]
    with pytest.raises(InvalidInput, match="'Authorization'") as info:
        ClientConfig(headers={"Authorization": "Bearer x\r\nHost: evil"})
    assert "evil" not in str(info.value)
    with pytest.raises(InvalidInput, match="invalid header name"):
        ClientConfig(headers={"Bad Name": "v"})
    with pytest.raises(InvalidInput, match="same header"):
        ClientConfig(headers={"Authorization": "a", "authorization": "b"})


def test_header_lines_parse_and_a_malformed_one_never_echoes_its_text() -> None:
    assert parse_header("Authorization:  Bearer a:b ") == ("Authorization", "Bearer a:b")
    with pytest.raises(InvalidInput) as info:
        parse_header("Authorization Bearer s3cr3t")
    assert "s3cr3t" not in str(info.value)


def test_headers_come_from_the_environment_one_per_line() -> None:
    env = {"TRITONVISION_HEADERS": f"Authorization: {TOKEN}\n\nx-admin-key: K\n"}
    config = ClientConfig.from_env(env)
    assert dict(config.headers) == {"Authorization": TOKEN, "x-admin-key": "K"}
    assert dict(ClientConfig.from_env({}).headers) == {}


def test_cli_header_option_overrides_the_environment_by_name_in_any_case() -> None:
    from tritonvision.cli._common import merge_headers

    merged = merge_headers(
        {"Authorization": "old", "x-keep": "1"}, [parse_header("authorization: new")]
    )
    assert merged == {"x-keep": "1", "authorization": "new"}


# ---------------------------------------------------------------- the reverse proxy


class AuthProxy(LocalServer):
    """A reverse proxy that wants ``Authorization: <token>`` and forwards to Triton's HTTP."""

    name = "test-auth-proxy"

    def __init__(self, upstream: str, token: str) -> None:
        super().__init__()
        self.upstream = upstream.rstrip("/")
        self.token = token
        self.seen: list[tuple[str, str | None]] = []  # (path, Authorization)
        self._session: aiohttp.ClientSession | None = None

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self._forward)

    async def start_extra(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)

    async def stop_extra(self) -> None:
        assert self._session is not None
        await self._session.close()

    async def _forward(self, request: web.Request) -> web.Response:
        given = request.headers.get("Authorization")
        self.seen.append((request.path, given))
        if given != self.token:
            return web.json_response({"error": "unauthorized"}, status=401)
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in ("host", "authorization", "content-length", "transfer-encoding")
        }
        assert self._session is not None
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            data=await request.read(),
            headers=headers,
        ) as upstream:
            body = await upstream.read()
            keep = {
                k: v
                for k, v in upstream.headers.items()
                if k.lower()
                in ("content-type", "content-encoding", "inference-header-content-length")
            }
            return web.Response(status=upstream.status, body=body, headers=keep)

    def __enter__(self) -> AuthProxy:
        super().__enter__()
        return self


class RecordingImageSite(ImageSite):
    """An image host that remembers the headers of every request."""

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__(files)
        self.request_headers: list[dict[str, str]] = []

    async def _image(self, request: web.Request) -> web.Response:
        self.request_headers.append(dict(request.headers))
        return await super()._image(request)

    def __enter__(self) -> RecordingImageSite:
        super().__enter__()
        return self


@pytest.fixture
def proxy(triton: Any) -> Iterator[AuthProxy]:
    with AuthProxy(triton.http_url, TOKEN) as server:
        yield server


def images() -> list[bytes]:
    return [encode(make_image(seed)) for seed in range(3)]


@pytest.mark.e2e
def test_http_through_an_authenticating_proxy_with_the_token_matches_triton_itself(
    triton: Any, proxy: AuthProxy
) -> None:
    sources = images()
    with VisionClient(triton.http_url, triton.model) as direct:
        expected = direct.batch_embed_images(sources).result(60).embeddings
    with VisionClient(proxy.base_url, triton.model, headers={"Authorization": TOKEN}) as client:
        batch = client.batch_embed_images(sources).result(60)
        single = client.embed_image_bytes(sources[0]).result(60)
    assert batch.ok, batch.errors
    np.testing.assert_allclose(batch.embeddings, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(single, expected[0], rtol=1e-5, atol=1e-6)
    paths = {path for path, _ in proxy.seen}
    assert any(p.endswith("/config") for p in paths) and any(p.endswith("/infer") for p in paths)
    assert {auth for _, auth in proxy.seen} == {TOKEN}


@pytest.mark.e2e
@pytest.mark.parametrize("headers", [None, {"Authorization": "Bearer wrong"}])
def test_http_without_the_right_token_is_an_authentication_error_never_retried(
    triton: Any, proxy: AuthProxy, headers: dict[str, str] | None
) -> None:
    config = ClientConfig(max_retries=50, retry_budget_s=30.0, backoff_base_s=0.2)
    with VisionClient(proxy.base_url, triton.model, config=config, headers=headers) as client:
        started = time.monotonic()
        with pytest.raises(AuthenticationError) as info:
            client.embed_image_bytes(images()[0]).result(60)
        assert time.monotonic() - started < 5
        assert client.stats().retries == 0
    error = info.value
    assert isinstance(error, ServerError) and error.status == 401
    assert "authentication failed" in str(error)
    assert "wrong" not in str(error)
    assert len(proxy.seen) == 1  # the model config request, once


@pytest.mark.e2e
@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_headers_for_triton_are_never_sent_to_image_urls(
    triton: Any, proxy: AuthProxy, transport: str
) -> None:
    url = proxy.base_url if transport == "http" else triton.grpc_url
    headers = {"Authorization": TOKEN, "x-tenant-secret": "t-123"}
    with (
        RecordingImageSite({"a.png": images()[0]}) as site,
        VisionClient(url, triton.model, headers=headers, allow_private_addresses=True) as c,
    ):
        vector = c.embed(site.url("a.png")).result(60)
        batch = c.batch_embed_images([site.url("a.png")]).result(60)
    assert vector.shape == (triton.embedding_dim,)
    assert batch.ok, batch.errors
    assert len(site.request_headers) == 2
    for seen in site.request_headers:
        lowered = {k.lower(): v for k, v in seen.items()}
        assert "authorization" not in lowered
        assert "x-tenant-secret" not in lowered
        assert TOKEN not in lowered.values()


@pytest.mark.e2e
def test_embed_cli_header_option_reaches_triton_through_the_proxy(
    triton: Any, proxy: AuthProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from tritonvision.cli import main

    folder = tmp_path / "imgs"
    folder.mkdir()
    for index, data in enumerate(images()):
        (folder / f"{index}.png").write_bytes(data)
    monkeypatch.delenv("TRITONVISION_HEADERS", raising=False)
    common = [str(folder), "--server", proxy.base_url, "--model", triton.model, "-qq"]
    code = main(["embed", *common, "-o", str(tmp_path / "no-token"), "--no-parquet"])
    assert code == 2
    assert "authentication failed" in capsys.readouterr().err
    header = ["--header", f"Authorization: {TOKEN}"]
    code = main(["embed", *common, "-o", str(tmp_path / "out"), "--no-parquet", *header])
    assert code == 0
    assert np.load(tmp_path / "out.npy").shape == (3, triton.embedding_dim)
    # The environment variable does the same without showing the secret in `ps`.
    monkeypatch.setenv("TRITONVISION_HEADERS", f"Authorization: {TOKEN}")
    code = main(["embed", *common, "-o", str(tmp_path / "env"), "--no-parquet"])
    assert code == 0


def test_verify_sends_headers_to_triton_through_the_proxy(
    triton: Any, proxy: AuthProxy, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from conftest import tiny_clip_config

    from tritonvision.cli import main
    from tritonvision.export import VerificationError, builtin_encoder, verify_server

    encoder = builtin_encoder(tiny_clip_config())
    with pytest.raises(VerificationError):
        verify_server(proxy.base_url, name=triton.model, encoder=encoder)
    report = verify_server(
        proxy.base_url, name=triton.model, encoder=encoder, headers={"Authorization": TOKEN}
    )
    assert report.passed
    # The CLI sends --header with every request to Triton (and nothing without it).
    monkeypatch.delenv("TRITONVISION_HEADERS", raising=False)
    proxy.seen.clear()
    assert main(["verify", "--server", proxy.base_url, "--name", "no_such_model"]) == 1
    assert proxy.seen and all(auth is None for _, auth in proxy.seen)
    capsys.readouterr()
    proxy.seen.clear()
    header = ["--header", f"Authorization: {TOKEN}"]
    assert main(["verify", "--server", proxy.base_url, "--name", "no_such_model", *header]) == 1
    assert proxy.seen and all(auth == TOKEN for _, auth in proxy.seen)
    assert "'no_such_model' is not ready" in capsys.readouterr().err


# ---------------------------------------------------- Triton's own restricted APIs

KEY = "x-admin-key"
SECRET = "k3y-SECRET"


@pytest.fixture(scope="module")
def restricted_triton(
    tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """ONE extra tritonserver (the tiny encoder alone) whose client APIs need a key."""
    from tritonvision.serve import LocalTriton, ServerPorts, free_port

    repo = tmp_path_factory.mktemp("restricted-repo")
    shutil.copytree(tiny_repository / "tiny_clip", repo / "tiny_clip")
    restrict = f"model-config,inference:{KEY}={SECRET}"
    ports = ServerPorts(http=free_port(), grpc=free_port(), metrics=free_port())
    server = LocalTriton(
        repo,
        ports=ports,
        workdir=tmp_path_factory.mktemp("restricted-work"),
        extra_args=(f"--http-restricted-api={restrict}", f"--grpc-restricted-protocol={restrict}"),
    )
    server.start(ready_timeout_s=120)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("transport", "header"),
    # gRPC clients send Triton's restricted-protocol key as "triton-grpc-protocol-<key>".
    [("http", KEY), ("grpc", f"triton-grpc-protocol-{KEY}")],
)
def test_restricted_triton_answers_with_the_key_and_refuses_typed_without_it(
    restricted_triton: Any, triton: Any, transport: str, header: str
) -> None:
    url = restricted_triton.http_url if transport == "http" else restricted_triton.grpc_url
    source = images()[1]
    with VisionClient(triton.http_url, triton.model) as direct:
        expected = direct.embed_image_bytes(source).result(60)
    with VisionClient(url, "tiny_clip", headers={header: SECRET}) as client:
        vector = client.embed_image_bytes(source).result(60)
    np.testing.assert_allclose(vector, expected, rtol=1e-5, atol=1e-6)
    config = ClientConfig(max_retries=50, retry_budget_s=30.0, backoff_base_s=0.2)
    for headers in (None, {header: "wrong"}):
        with VisionClient(url, "tiny_clip", config=config, headers=headers) as client:
            with pytest.raises(AuthenticationError) as info:
                client.embed_image_bytes(source).result(60)
            assert client.stats().retries == 0
        assert isinstance(info.value, TritonVisionError)
        assert info.value.status == 403, repr(info.value)
        assert "authentication failed" in str(info.value)
