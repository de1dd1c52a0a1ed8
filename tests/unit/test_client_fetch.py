"""URL fetching (``client/_fetch.py``) against a real ``aiohttp.web`` server on 127.0.0.1.

The test server is on loopback, which the default policy refuses: tests that need a
fetch to succeed either set ``allow_private_addresses`` or exempt the server's
``127.0.0.1:port`` through ``allowed_hosts``. A raw asyncio server covers what
``aiohttp.web`` will not send (a lying Content-Length, no Content-Type at all).
"""

from __future__ import annotations

import asyncio
import gzip
import io
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from PIL import Image

from tritonvision.client._fetch import (
    FetchConfig,
    PolicyResolver,
    fetch_url,
    is_public_address,
    make_policy_resolver,
)
from tritonvision.errors import (
    BlockedAddress,
    FetchError,
    FetchStatusError,
    FetchTimeout,
    FetchTooLarge,
    InvalidInput,
)

pytestmark = pytest.mark.timeout(30)

OPEN = FetchConfig(allow_private_addresses=True)


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png()


@dataclass
class Server:
    port: int
    hits: list[str] = field(default_factory=list)
    first_hit: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"


def _app(server: Server) -> web.Application:
    routes = web.RouteTableDef()

    @web.middleware
    async def count(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        server.hits.append(request.path)
        server.first_hit.set()
        return await handler(request)

    @routes.get("/img.png")
    async def img(request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    @routes.get("/octet")
    async def octet(request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="application/octet-stream")

    @routes.get("/html")
    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html>not found</html>", content_type="text/html")

    @routes.get("/status/{code}")
    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="no")

    @routes.get("/chain/{n}")
    async def chain(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        raise web.HTTPFound("/img.png" if n == 0 else f"/chain/{n - 1}")

    @routes.get("/relative")
    async def relative(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("img.png")

    @routes.get("/loop-a")
    async def loop_a(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop-b")

    @routes.get("/loop-b")
    async def loop_b(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("/loop-a")

    @routes.get("/redirect")
    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    @routes.get("/no-location")
    async def no_location(request: web.Request) -> web.Response:
        return web.Response(status=302)

    @routes.get("/endless")
    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        await resp.prepare(request)
        chunk = b"\0" * 65536
        while True:
            await resp.write(chunk)

    @routes.get("/stall")
    async def stall(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        await resp.prepare(request)
        await resp.write(PNG[:10])
        await asyncio.sleep(60)
        return resp

    @routes.get("/drip")
    async def drip(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        await resp.prepare(request)
        while True:
            await resp.write(b"x")
            await asyncio.sleep(0.05)

    @routes.get("/declared-huge")
    async def declared_huge(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        resp.content_length = 10 * 1024**3
        await resp.prepare(request)
        await resp.write(b"\0" * 1024)
        await asyncio.sleep(60)
        return resp

    @routes.get("/gzip-bomb")
    async def gzip_bomb(request: web.Request) -> web.Response:
        return web.Response(
            body=BOMB,
            headers={"Content-Type": "image/png", "Content-Encoding": "gzip"},
        )

    @routes.get("/gzip-small")
    async def gzip_small(request: web.Request) -> web.Response:
        return web.Response(
            body=gzip.compress(PNG),
            headers={"Content-Type": "image/png", "Content-Encoding": "gzip"},
        )

    app = web.Application(middlewares=[count])
    app.add_routes(routes)
    return app


BOMB = gzip.compress(b"\0" * (16 * 1024 * 1024), compresslevel=9)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server(port=0)
    runner = web.AppRunner(_app(srv), handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    srv.port = runner.addresses[0][1]
    try:
        yield srv
    finally:
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[bytes, bool], Awaitable[str]]]:
    """Serve one canned HTTP response (status line, headers, body) verbatim."""
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []
    done = asyncio.Event()

    async def start(response: bytes, close_after: bool) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            await reader.readuntil(b"\r\n\r\n")
            writer.write(response)
            await writer.drain()
            if not close_after:
                await done.wait()  # hold the connection open until teardown
            writer.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(srv)
        port = srv.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/x.png"

    yield start
    done.set()
    for writer in writers:
        writer.close()
    for srv in servers:
        srv.close()
        await srv.wait_closed()
    await asyncio.sleep(0)


# --------------------------------------------------------------------------- basics


async def test_fetch_returns_the_image_bytes(
    server: Server, session: aiohttp.ClientSession
) -> None:
    assert await fetch_url(session, server.url("/img.png"), OPEN) == PNG


async def test_allowed_hosts_exempts_one_internal_server(
    server: Server, session: aiohttp.ClientSession
) -> None:
    config = FetchConfig(allowed_hosts=frozenset({server.hostport}))
    assert await fetch_url(session, server.url("/img.png"), config) == PNG
    assert await fetch_url(session, server.url("/octet"), config) == PNG


async def test_404_is_a_status_error_with_the_status(
    server: Server, session: aiohttp.ClientSession
) -> None:
    url = server.url("/status/404")
    with pytest.raises(FetchStatusError) as info:
        await fetch_url(session, url, OPEN)
    assert info.value.status == 404
    assert info.value.source == url
    assert url in str(info.value)


@pytest.mark.parametrize("code", [500, 503, 300, 304])
async def test_other_non_2xx_are_status_errors(
    code: int, server: Server, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(FetchStatusError) as info:
        await fetch_url(session, server.url(f"/status/{code}"), OPEN)
    assert info.value.status == code


async def test_redirect_chain_is_followed(server: Server, session: aiohttp.ClientSession) -> None:
    assert await fetch_url(session, server.url("/chain/4"), OPEN) == PNG
    assert server.hits == ["/chain/4", "/chain/3", "/chain/2", "/chain/1", "/chain/0", "/img.png"]


async def test_relative_redirect_is_resolved(
    server: Server, session: aiohttp.ClientSession
) -> None:
    assert await fetch_url(session, server.url("/relative"), OPEN) == PNG


async def test_redirect_loop_is_a_fetch_error(
    server: Server, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(FetchError, match="redirect loop"):
        await fetch_url(session, server.url("/loop-a"), OPEN)
    assert server.hits == ["/loop-a", "/loop-b"]


async def test_too_many_redirects_is_a_fetch_error(
    server: Server, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(FetchError, match=r"too many redirects \(more than 5\)"):
        await fetch_url(session, server.url("/chain/5"), OPEN)
    assert len(server.hits) == 6
    with pytest.raises(FetchError, match="too many redirects"):
        await fetch_url(
            session,
            server.url("/chain/0"),
            FetchConfig(allow_private_addresses=True, max_redirects=0),
        )


async def test_redirect_without_location_is_a_status_error(
    server: Server, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(FetchStatusError, match="without a Location"):
        await fetch_url(session, server.url("/no-location"), OPEN)


# --------------------------------------------------------------------------- policy


async def test_loopback_literal_is_blocked_by_default_without_connecting(
    server: Server, session: aiohttp.ClientSession
) -> None:
    url = server.url("/img.png")
    with pytest.raises(BlockedAddress, match=r"127\.0\.0\.1") as info:
        await fetch_url(session, url, FetchConfig())
    assert info.value.source == url
    assert server.hits == []


async def test_name_resolving_to_loopback_is_blocked(
    server: Server, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(BlockedAddress, match="localhost"):
        await fetch_url(session, server.url("/img.png", host="localhost"), FetchConfig())
    assert server.hits == []


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/x.png",
        "http://100.64.0.1/x.png",
        "http://[::1]/x.png",
        "http://[::ffff:127.0.0.1]/x.png",
        "http://[fe80::1]/x.png",
        "http://0.0.0.0/x.png",
        "http://224.0.0.1/x.png",
    ],
)
async def test_internal_literals_are_blocked(url: str, session: aiohttp.ClientSession) -> None:
    with pytest.raises(BlockedAddress):
        await fetch_url(session, url, FetchConfig(total_timeout_s=2))


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/x.png",
        "gopher://example.com/x",
        "javascript:alert(1)",
        "HTTPX://example.com/x.png",
    ],
)
async def test_other_schemes_are_refused(url: str, session: aiohttp.ClientSession) -> None:
    with pytest.raises(BlockedAddress, match="scheme"):
        await fetch_url(session, url, OPEN)


async def test_https_only_config_refuses_http(
    server: Server, session: aiohttp.ClientSession
) -> None:
    config = FetchConfig(allow_private_addresses=True, allowed_schemes=("https",))
    with pytest.raises(BlockedAddress, match="scheme 'http'"):
        await fetch_url(session, server.url("/img.png"), config)


@pytest.mark.parametrize(
    "target",
    [
        "http://localhost:{port}/img.png",
        "http://127.0.0.2:{port}/img.png",
        "http://[::1]:{port}/img.png",
        "file:///etc/passwd",
    ],
)
async def test_redirect_to_a_blocked_target_is_refused(
    target: str, server: Server, session: aiohttp.ClientSession
) -> None:
    # The first hop is allowed (exempt host); the redirect target is checked again.
    config = FetchConfig(allowed_hosts=frozenset({server.hostport}))
    to = target.format(port=server.port)
    with pytest.raises(BlockedAddress):
        await fetch_url(session, server.url("/redirect") + "?to=" + to, config)
    assert server.hits == ["/redirect"]


async def test_invalid_url_is_invalid_input(session: aiohttp.ClientSession) -> None:
    with pytest.raises(InvalidInput):
        await fetch_url(session, "http://", OPEN)


async def test_unresolvable_host_is_a_fetch_error(session: aiohttp.ClientSession) -> None:
    for config in (FetchConfig(total_timeout_s=5), FetchConfig(allow_private_addresses=True)):
        with pytest.raises(FetchError) as info:
            await fetch_url(session, "http://no-such-host.invalid/x.png", config)
        assert not isinstance(info.value, BlockedAddress)


# --------------------------------------------------------------------------- limits


async def test_endless_body_is_cut_off_at_the_limit(
    server: Server, session: aiohttp.ClientSession
) -> None:
    config = FetchConfig(allow_private_addresses=True, max_fetch_bytes=256 * 1024)
    with pytest.raises(FetchTooLarge, match="262144"):
        await fetch_url(session, server.url("/endless"), config)


async def test_declared_length_over_the_limit_is_refused_before_reading(
    server: Server, session: aiohttp.ClientSession
) -> None:
    started = time.monotonic()
    with pytest.raises(FetchTooLarge, match="Content-Length"):
        await fetch_url(session, server.url("/declared-huge"), OPEN)
    assert time.monotonic() - started < 5


async def test_stalled_body_hits_the_read_timeout(
    server: Server, session: aiohttp.ClientSession
) -> None:
    config = FetchConfig(allow_private_addresses=True, read_timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(FetchTimeout, match="read timed out"):
        await fetch_url(session, server.url("/stall"), config)
    assert time.monotonic() - started < 5


async def test_slow_drip_hits_the_total_deadline(
    server: Server, session: aiohttp.ClientSession
) -> None:
    # Each byte arrives well within the read timeout; only the total deadline stops it.
    config = FetchConfig(allow_private_addresses=True, read_timeout_s=1.0, total_timeout_s=0.6)
    started = time.monotonic()
    with pytest.raises(FetchTimeout) as info:
        await fetch_url(session, server.url("/drip"), config)
    assert isinstance(info.value, TimeoutError)
    assert time.monotonic() - started < 5


async def test_gzip_bomb_is_cut_off_after_decompression(
    server: Server, session: aiohttp.ClientSession
) -> None:
    assert len(BOMB) < 64 * 1024  # 16 MiB of zeros, tiny on the wire
    config = FetchConfig(allow_private_addresses=True, max_fetch_bytes=1024 * 1024)
    with pytest.raises(FetchTooLarge):
        await fetch_url(session, server.url("/gzip-bomb"), config)


async def test_gzip_body_within_the_limit_is_decompressed(
    server: Server, session: aiohttp.ClientSession
) -> None:
    assert await fetch_url(session, server.url("/gzip-small"), OPEN) == PNG


async def test_html_content_type_is_refused(server: Server, session: aiohttp.ClientSession) -> None:
    with pytest.raises(FetchError, match="text/html"):
        await fetch_url(session, server.url("/html"), OPEN)
    relaxed = FetchConfig(allow_private_addresses=True, check_content_type=False)
    assert await fetch_url(session, server.url("/html"), relaxed) == b"<html>not found</html>"


async def test_missing_content_type_is_accepted(
    raw_server: Callable[[bytes, bool], Awaitable[str]], session: aiohttp.ClientSession
) -> None:
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(PNG)}\r\nConnection: close\r\n\r\n"
    url = await raw_server(head.encode() + PNG, True)
    assert await fetch_url(session, url, OPEN) == PNG


async def test_content_length_smaller_than_the_body_never_reads_past_it(
    raw_server: Callable[[bytes, bool], Awaitable[str]], session: aiohttp.ClientSession
) -> None:
    # aiohttp stops the body at the declared length; the surplus is then garbage where the
    # next response should start. Either outcome is safe: the declared bytes, or an
    # "invalid HTTP response" error (never a read past the limit).
    head = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 10\r\n\r\n"
    url = await raw_server(head + b"A" * 10 + b"B" * 1_000_000, False)
    config = FetchConfig(allow_private_addresses=True, max_fetch_bytes=100_000)
    try:
        assert await fetch_url(session, url, config) == b"A" * 10
    except FetchError as exc:
        assert type(exc) is FetchError
        assert "invalid HTTP response" in str(exc)
        assert len(str(exc)) < 400


async def test_content_length_larger_than_the_body_is_a_fetch_error(
    raw_server: Callable[[bytes, bool], Awaitable[str]], session: aiohttp.ClientSession
) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100\r\n\r\n"
    url = await raw_server(head + b"A" * 50, True)
    with pytest.raises(FetchError, match="incomplete"):
        await fetch_url(session, url, OPEN)


async def test_cancellation_passes_through_untranslated(
    server: Server, session: aiohttp.ClientSession
) -> None:
    task = asyncio.create_task(fetch_url(session, server.url("/stall"), OPEN))
    await server.first_hit.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# --------------------------------------------------------------------------- resolver


class StubResolver(AbstractResolver):
    """Resolves every name to one address: stands in for a DNS answer that rebinds."""

    def __init__(self, address: str) -> None:
        self.address = address

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            {
                "hostname": host,
                "host": self.address,
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        return None


async def test_policy_resolver_blocks_names_at_connect_time(server: Server) -> None:
    connector = aiohttp.TCPConnector(resolver=PolicyResolver(FetchConfig()))
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(BlockedAddress, match="localhost"):
            await session.get(server.url("/img.png", host="localhost"))
    assert server.hits == []


async def test_policy_resolver_lets_the_exempt_triton_host_through(server: Server) -> None:
    resolver = make_policy_resolver(FetchConfig(), allow_hosts={f"localhost:{server.port}"})
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=resolver)) as session:
        async with session.get(server.url("/img.png", host="localhost")) as resp:
            assert await resp.read() == PNG
        # ...but fetch_url does not honour that exemption: user URLs never reach Triton.
        with pytest.raises(BlockedAddress):
            await fetch_url(session, server.url("/img.png", host="localhost"), FetchConfig())


async def test_rebinding_after_the_check_is_caught_by_the_resolver(server: Server) -> None:
    # fetch_url's own check is skipped (host exempt in this FetchConfig), as if the name
    # had resolved to a public address then; the session's resolver now answers loopback.
    resolver = PolicyResolver(FetchConfig(), resolver=StubResolver("127.0.0.1"))
    host = "images.example"
    config = FetchConfig(allowed_hosts=frozenset({f"{host}:{server.port}"}))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=resolver)) as session:
        url = server.url("/img.png", host=host)
        with pytest.raises(BlockedAddress) as info:
            await fetch_url(session, url, config)
        assert info.value.source == url
        assert url in str(info.value)
    assert server.hits == []


async def test_policy_resolver_allows_everything_when_private_is_allowed(server: Server) -> None:
    resolver = PolicyResolver(OPEN, resolver=StubResolver("127.0.0.1"))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=resolver)) as session:
        assert (
            await fetch_url(session, server.url("/img.png", host="anything.example"), OPEN) == PNG
        )


# --------------------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("100.64.0.1", False),
        ("169.254.169.254", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("239.255.255.250", False),
        ("255.255.255.255", False),
        ("240.0.0.1", False),
        ("192.0.2.1", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:8.8.8.8", True),
        ("::127.0.0.1", False),
        ("2002:7f00:1::", False),
        ("2002:808:808::", True),
        ("64:ff9b::7f00:1", False),
        ("64:ff9b::808:808", True),
        ("2001:db8::1", False),
    ],
)
def test_is_public_address(address: str, public: bool) -> None:
    assert is_public_address(address) is public


@pytest.mark.parametrize(
    "kwargs",
    [
        {"connect_timeout_s": 0},
        {"read_timeout_s": -1},
        {"total_timeout_s": 0},
        {"max_fetch_bytes": 0},
        {"max_redirects": -1},
        {"allowed_schemes": ("http", "ftp")},
        {"allowed_hosts": "example.com"},
    ],
)
def test_fetch_config_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        FetchConfig(**kwargs)  # type: ignore[arg-type]


def test_fetch_config_normalises_hosts_and_schemes() -> None:
    config = FetchConfig(
        allowed_hosts=frozenset({" Images.Internal:8080 ", "CDN.example."}),
        allowed_schemes=("HTTPS",),
    )
    assert config.allowed_hosts == frozenset({"images.internal:8080", "cdn.example"})
    assert config.allowed_schemes == ("https",)


# ------------------------------------------------------- credentials in URLs, redacted

PRESIGNED = (
    "https://bucket.s3.amazonaws.com/a.png?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAEXAMPLE%2F20240101&X-Amz-Signature=deadbeefcafe"
    "&X-Amz-Security-Token=FwoGZXIvYXdz&size=2"
)


@pytest.mark.parametrize(
    ("url", "secrets", "kept"),
    [
        (PRESIGNED, ["AKIAEXAMPLE", "deadbeefcafe", "FwoGZXIvYXdz"], ["X-Amz-Algorithm", "size=2"]),
        ("https://h/a.png?token=t0k&w=1", ["t0k"], ["w=1"]),
        ("https://h/a.png?sig=s1g;key=k3y#frag", ["s1g", "k3y"], ["#frag"]),
        ("https://h/a.png?api_key=A1&access_token=B2&apikey=C3", ["A1", "B2", "C3"], []),
        ("https://h/a.png?X-Goog-Signature=G00G&X-Goog-Credential=GC", ["G00G", "GC"], []),
        ("https://h/a.png?AWSAccessKeyId=AK&Signature=S1&Expires=9", ["AK", "S1"], ["Expires=9"]),
        ("https://u:pw@h/a.png?TOKEN=upper", ["pw", "upper"], ["***@h"]),
        ("https://h/a.png?monkey=banana&keyboard=qwerty", [], ["banana", "qwerty"]),
    ],
)
def test_credential_query_parameters_are_redacted_like_userinfo(
    url: str, secrets: list[str], kept: list[str]
) -> None:
    from tritonvision.errors import describe_source, redact_credentials

    for text in (redact_credentials(f"GET {url} failed"), describe_source(url)):
        for secret in secrets:
            assert secret not in text, text
    redacted = redact_credentials(url)
    for part in kept:
        assert part in redacted, redacted


@pytest.mark.parametrize(
    "text",
    [
        "?" + "a" * 200_000 + "=",
        "?" + "a-" * 100_000 + "=",
        "?a=&" * 50_000,
        "&key-" * 40_000 + "=",
        "x://" + "a" * 200_000 + "@",
    ],
)
def test_redaction_stays_linear_on_hostile_text(text: str) -> None:
    from tritonvision.errors import redact_credentials

    started = time.perf_counter()
    redact_credentials(text)
    small = time.perf_counter() - started
    started = time.perf_counter()
    redact_credentials(text * 4)
    large = time.perf_counter() - started
    # Quadratic would be 16x; allow noise on a busy machine.
    assert large < 8 * small + 0.05, (small, large)


async def test_fetch_errors_never_show_a_signed_urls_secrets(
    server: Server, session: aiohttp.ClientSession
) -> None:
    url = server.url("/status/403") + "?X-Amz-Signature=deadbeefcafe&token=t0k"
    with pytest.raises(FetchStatusError) as info:
        await fetch_url(session, url, OPEN)
    assert "deadbeefcafe" not in str(info.value) and "t0k" not in str(info.value)
    assert "X-Amz-Signature=***" in str(info.value)
    assert info.value.source == url  # the input as given stays on the exception
