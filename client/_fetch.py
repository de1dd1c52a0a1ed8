"""Fetch image URLs over the client's one ``aiohttp.ClientSession``, under a safety policy.

The policy (SSRF guard):

- only ``http``/``https`` (``FetchConfig.allowed_schemes``); anything else -> BlockedAddress;
- redirects are followed here, one hop at a time (``max_redirects``), and every hop is
  checked again: scheme, then the host's addresses;
- a host must resolve only to global unicast addresses: loopback, private (RFC 1918,
  ULA), link-local (cloud metadata at 169.254.169.254), CGNAT 100.64/10, multicast,
  reserved, unspecified, and IPv6 forms embedding such an IPv4 (mapped ``::ffff:``,
  6to4, Teredo, NAT64 ``64:ff9b::/96``) are refused, unless
  ``allow_private_addresses`` is set or the host is in ``allowed_hosts``;
- IP literals are checked directly (aiohttp never sends them through a resolver);
  host names are resolved with ``loop.getaddrinfo`` before each request, and, when the
  session's connector uses :class:`PolicyResolver`, checked again at connect time on
  the very addresses aiohttp connects to, which closes the DNS-rebinding window between
  the check and the connection.

One session serves both the image URLs and Triton, and Triton is usually on a private
address (often localhost), so :class:`PolicyResolver` takes ``allow_hosts``: the Triton
endpoint's ``host:port``. That exemption is only for the connector; :func:`fetch_url`
does not use it, so a user URL pointing at the Triton endpoint is still refused.

Limits: the body is streamed and counted after decompression (gzip bombs), cut off past
``max_fetch_bytes``; a ``Content-Length`` over the limit is refused before reading; there
is a per-read inactivity deadline, a connect deadline and a total deadline. A response
whose ``Content-Type`` is present and is neither ``image/*`` nor an octet-stream is a
:class:`FetchError` (a 200 HTML error page is not an image), before its body is read.

aiohttp errors are translated in one place (:func:`_translated`); cancellation passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from tritonvision.errors import (
    BlockedAddress,
    FetchError,
    FetchStatusError,
    FetchTimeout,
    FetchTooLarge,
    InvalidInput,
    TritonVisionError,
    describe_source,
    redact_credentials,
)

__all__ = [
    "DEFAULT_ALLOWED_SCHEMES",
    "DEFAULT_FETCH_CONNECT_TIMEOUT_S",
    "DEFAULT_MAX_FETCH_BYTES",
    "DEFAULT_MAX_REDIRECTS",
    "DEFAULT_READ_TIMEOUT_S",
    "DEFAULT_TOTAL_TIMEOUT_S",
    "DEFAULT_USER_AGENT",
    "FetchConfig",
    "PolicyResolver",
    "fetch_url",
    "is_public_address",
    "make_policy_resolver",
]

DEFAULT_FETCH_CONNECT_TIMEOUT_S = 5.0
DEFAULT_READ_TIMEOUT_S = 15.0
DEFAULT_TOTAL_TIMEOUT_S = 30.0
DEFAULT_MAX_FETCH_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_REDIRECTS = 5
DEFAULT_ALLOWED_SCHEMES = ("http", "https")
DEFAULT_USER_AGENT = "tritonvision-client (image fetch)"

_SUPPORTED_SCHEMES = frozenset({"http", "https"})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_OCTET_STREAM_TYPES = frozenset(
    {"application/octet-stream", "binary/octet-stream", "application/x-octet-stream"}
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, kw_only=True)
class FetchConfig:
    """URL fetching limits and policy (per client).

    Attributes:
        connect_timeout_s: deadline for the TCP (and TLS) connection of each hop.
        read_timeout_s: longest wait for the next bytes of a response (inactivity).
        total_timeout_s: deadline for the whole fetch, redirects and DNS included.
        max_fetch_bytes: largest body accepted, counted after decompression.
        max_redirects: redirects followed before giving up (0: none).
        allow_private_addresses: fetch from any address, internal ones included.
        allowed_hosts: ``host`` or ``host:port`` entries (lower case; IPv6 as
            ``[::1]:8080``) exempt from the address check, e.g. an internal image server.
        allowed_schemes: a subset of ``("http", "https")``.
        user_agent: the ``User-Agent`` header sent.
        check_content_type: refuse a declared ``Content-Type`` that is not an image.
    """

    connect_timeout_s: float = DEFAULT_FETCH_CONNECT_TIMEOUT_S
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    total_timeout_s: float = DEFAULT_TOTAL_TIMEOUT_S
    max_fetch_bytes: int = DEFAULT_MAX_FETCH_BYTES
    max_redirects: int = DEFAULT_MAX_REDIRECTS
    allow_private_addresses: bool = False
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)
    allowed_schemes: tuple[str, ...] = DEFAULT_ALLOWED_SCHEMES
    user_agent: str = DEFAULT_USER_AGENT
    check_content_type: bool = True

    def __post_init__(self) -> None:
        for name in ("connect_timeout_s", "read_timeout_s", "total_timeout_s", "max_fetch_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not value > 0:
                raise InvalidInput(f"FetchConfig.{name} must be > 0, got {value!r}")
        if isinstance(self.max_redirects, bool) or not (
            isinstance(self.max_redirects, int) and self.max_redirects >= 0
        ):
            raise InvalidInput(
                f"FetchConfig.max_redirects must be >= 0, got {self.max_redirects!r}"
            )
        schemes = tuple(s.lower() for s in self.allowed_schemes)
        if not set(schemes) <= _SUPPORTED_SCHEMES:
            raise InvalidInput(
                f"FetchConfig.allowed_schemes must be a subset of {sorted(_SUPPORTED_SCHEMES)}, "
                f"got {list(self.allowed_schemes)}"
            )
        object.__setattr__(self, "allowed_schemes", schemes)
        object.__setattr__(self, "allowed_hosts", _normalise_hosts(self.allowed_hosts))


def _normalise_hosts(hosts: Iterable[str]) -> frozenset[str]:
    if isinstance(hosts, str):
        raise InvalidInput(f"allowed hosts must be a collection of names, got the string {hosts!r}")
    return frozenset(h.strip().lower().rstrip(".") for h in hosts if h.strip())


def _host_key(host: str) -> str:
    host = host.lower().rstrip(".")
    return f"[{host}]" if ":" in host else host


def _host_allowed(host: str, port: int | None, allowed: frozenset[str]) -> bool:
    key = _host_key(host)
    return key in allowed or host.lower().rstrip(".") in allowed or f"{key}:{port}" in allowed


# --------------------------------------------------------------------------- addresses


def is_public_address(address: str | IPAddress) -> bool:
    """Whether ``address`` is a global unicast address a fetch may connect to."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
        # Forms that carry an IPv4 address which is what actually gets reached.
        if ip.ipv4_mapped is not None:
            return is_public_address(ip.ipv4_mapped)
        if ip.sixtofour is not None and not is_public_address(ip.sixtofour):
            return False
        if ip.teredo is not None and not all(is_public_address(a) for a in ip.teredo):
            return False
        if ip in _NAT64:
            return is_public_address(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip in _IPV4_COMPATIBLE:
            return False  # deprecated ::a.b.c.d, and :: / ::1
    return bool(
        ip.is_global
        and not ip.is_multicast
        and not ip.is_reserved
        and not ip.is_unspecified
        and not ip.is_loopback
        and not ip.is_link_local
        and not ip.is_private
    )


def _literal_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _refuse(host: str, port: int | None, addresses: Iterable[str]) -> BlockedAddress | None:
    bad = sorted({a for a in addresses if not is_public_address(a)})
    if not bad:
        return None
    where = host if port is None else f"{_host_key(host)}:{port}"
    return BlockedAddress(
        f"{where} resolves to a non-public address ({', '.join(bad)}); "
        "set allow_private_addresses (or allowed_hosts) to fetch from internal hosts"
    )


class PolicyResolver(AbstractResolver):
    """An aiohttp resolver that refuses non-public addresses at connect time.

    Install it on the one session's connector::

        aiohttp.TCPConnector(resolver=PolicyResolver(config.fetch, allow_hosts={"triton:8000"}))

    ``allow_hosts`` (``host`` or ``host:port``) are exempt, for the session's non-fetch
    traffic: the Triton endpoint. ``config.allowed_hosts`` are exempt too;
    ``config.allow_private_addresses`` turns the check off. IP literals never reach a
    resolver in aiohttp: :func:`fetch_url` checks those itself. A host that resolves to
    any refused address is refused entirely (a mixed answer is a rebinding pattern).
    The wrapped ``resolver`` defaults to aiohttp's ``DefaultResolver``, made lazily on
    the running loop.
    """

    def __init__(
        self,
        config: FetchConfig | None = None,
        *,
        allow_hosts: Iterable[str] = frozenset(),
        resolver: AbstractResolver | None = None,
    ) -> None:
        config = config if config is not None else FetchConfig()
        self.allow_private_addresses = config.allow_private_addresses
        self.allow_hosts = _normalise_hosts(allow_hosts) | config.allowed_hosts
        self._resolver = resolver

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self._resolver is None:
            self._resolver = aiohttp.DefaultResolver()
        results = await self._resolver.resolve(host, port, family)
        if self.allow_private_addresses or _host_allowed(host, port, self.allow_hosts):
            return results
        refusal = _refuse(host, port, (r["host"] for r in results))
        if refusal is not None:
            raise refusal
        return results

    async def close(self) -> None:
        if self._resolver is not None:
            await self._resolver.close()


def make_policy_resolver(
    config: FetchConfig, *, allow_hosts: Iterable[str] = frozenset()
) -> PolicyResolver:
    """``PolicyResolver(config, allow_hosts=...)``: the connector's half of the policy."""
    return PolicyResolver(config, allow_hosts=allow_hosts)


# --------------------------------------------------------------------------- fetch


@contextlib.contextmanager
def _translated(url: str) -> Iterator[None]:
    """Map aiohttp/OS errors to the client's tree; ours and cancellation pass through."""
    name = describe_source(url)
    try:
        yield
    except BlockedAddress as exc:
        if exc.source is not None:
            raise
        # From PolicyResolver, which knows only the host: name the URL.
        raise BlockedAddress(f"{name}: {exc.message}", source=url) from exc
    except TritonVisionError:
        raise
    except aiohttp.ConnectionTimeoutError as exc:
        raise FetchTimeout(f"{name}: connect timed out", source=url) from exc
    except aiohttp.SocketTimeoutError as exc:
        raise FetchTimeout(f"{name}: read timed out (no data)", source=url) from exc
    except (asyncio.TimeoutError, TimeoutError) as exc:
        raise FetchTimeout(
            f"{name}: fetch took longer than the total deadline", source=url
        ) from exc
    except aiohttp.InvalidURL as exc:
        raise InvalidInput(f"{name}: invalid URL ({_short(exc)})", source=url) from exc
    except aiohttp.ClientConnectorDNSError as exc:
        raise FetchError(f"{name}: cannot resolve host ({exc.os_error})", source=url) from exc
    except aiohttp.ClientResponseError as exc:
        # Requests go out with raise_for_status=False, so this is a malformed response
        # (aiohttp reports parse errors as status 400), not the server's own status.
        raise FetchError(f"{name}: invalid HTTP response ({_short(exc)})", source=url) from exc
    except aiohttp.ClientPayloadError as exc:
        raise FetchError(f"{name}: incomplete or corrupt body ({_short(exc)})", source=url) from exc
    except aiohttp.ClientError as exc:
        raise FetchError(f"{name}: {type(exc).__name__}: {_short(exc)}", source=url) from exc
    except socket.gaierror as exc:
        raise FetchError(f"{name}: cannot resolve host ({exc})", source=url) from exc
    except OSError as exc:
        raise FetchError(f"{name}: {type(exc).__name__}: {_short(exc)}", source=url) from exc


def _short(exc: BaseException, limit: int = 200) -> str:
    # aiohttp parse errors quote the offending bytes: keep messages log-sized. Some
    # (InvalidURL) quote the URL: no credentials in logs.
    text = redact_credentials(str(exc))
    return text if len(text) <= limit else text[:limit] + "..."


def _parse(url: str | URL, source: str) -> URL:
    try:
        parsed = url if isinstance(url, URL) else URL(url)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(
            f"{describe_source(source)}: invalid URL ({_short(exc)})", source=source
        ) from exc
    return parsed


async def _check_hop(url: URL, config: FetchConfig, source: str, remaining_s: float) -> None:
    """Scheme and address policy for one hop (the original URL or a redirect target)."""
    name = describe_source(source)
    scheme = (url.scheme or "").lower()
    if scheme not in config.allowed_schemes:
        hop = "" if str(url) == source else f" (redirect to {describe_source(str(url))})"
        raise BlockedAddress(
            f"{name}: scheme {scheme or '(none)'!r} is not allowed{hop}; "
            f"only {'/'.join(config.allowed_schemes)} URLs are fetched",
            source=source,
        )
    host = url.raw_host
    if not host:
        raise InvalidInput(f"{name}: URL has no host", source=source)
    if config.allow_private_addresses or _host_allowed(host, url.port, config.allowed_hosts):
        return
    literal = _literal_ip(host)
    if literal is not None:
        addresses = [str(literal)]
    else:
        loop = asyncio.get_running_loop()
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, url.port, type=socket.SOCK_STREAM),
            timeout=max(remaining_s, 0.001),
        )
        addresses = [str(info[4][0]) for info in infos]
    refusal = _refuse(host, url.port, addresses)
    if refusal is not None:
        raise BlockedAddress(f"{name}: {refusal.message}", source=source)


def _content_type_ok(resp: aiohttp.ClientResponse) -> bool:
    if "Content-Type" not in resp.headers:
        return True
    ctype = resp.content_type.lower()
    return ctype.startswith("image/") or ctype in _OCTET_STREAM_TYPES


async def fetch_url(session: aiohttp.ClientSession, url: str, config: FetchConfig) -> bytes:
    """GET ``url`` on the caller's ``session`` under ``config``'s policy; the body bytes.

    Raises :class:`BlockedAddress` (scheme or address refused, on any hop),
    :class:`FetchStatusError` (4xx/5xx, or a 3xx that is not a usable redirect),
    :class:`FetchTooLarge`, :class:`FetchTimeout`, :class:`FetchError` (redirect loop,
    too many redirects, non-image ``Content-Type``, connection/body errors) and
    :class:`InvalidInput` (malformed URL), each naming ``url``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + config.total_timeout_s
    name = describe_source(url)
    headers = {
        "User-Agent": config.user_agent,
        "Accept": "image/*, application/octet-stream;q=0.9",
        # Images are compressed already; a server that gzips anyway is still handled.
        "Accept-Encoding": "identity",
    }
    current = _parse(url, url)
    seen = {str(current)}
    with _translated(url):
        for _hop in range(config.max_redirects + 1):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise FetchTimeout(f"{name}: fetch took longer than the total deadline", source=url)
            await _check_hop(current, config, url, remaining)
            remaining = deadline - loop.time()
            timeout = aiohttp.ClientTimeout(
                total=max(remaining, 0.001),
                sock_connect=config.connect_timeout_s,
                sock_read=config.read_timeout_s,
            )
            async with session.get(
                current,
                allow_redirects=False,
                raise_for_status=False,
                timeout=timeout,
                headers=headers,
            ) as resp:
                if resp.status in _REDIRECT_STATUSES:
                    location = resp.headers.get("Location")
                    if not location:
                        raise FetchStatusError(
                            f"{name}: HTTP {resp.status} redirect without a Location",
                            source=url,
                            status=resp.status,
                        )
                    target = current.join(_parse(location, url)).with_fragment(None)
                    if str(target) in seen:
                        raise FetchError(
                            f"{name}: redirect loop (back to {describe_source(str(target))})",
                            source=url,
                        )
                    seen.add(str(target))
                    current = target
                    continue
                if not 200 <= resp.status < 300:
                    raise FetchStatusError(
                        f"{name}: HTTP {resp.status} {resp.reason or ''}".rstrip(),
                        source=url,
                        status=resp.status,
                    )
                return await _read_body(resp, config, url)
        raise FetchError(
            f"{name}: too many redirects (more than {config.max_redirects})", source=url
        )
    raise AssertionError("unreachable")  # pragma: no cover - for type checkers


async def _read_body(resp: aiohttp.ClientResponse, config: FetchConfig, url: str) -> bytes:
    name = describe_source(url)
    if config.check_content_type and not _content_type_ok(resp):
        raise FetchError(f"{name}: Content-Type {resp.content_type!r} is not an image", source=url)
    limit = config.max_fetch_bytes
    declared = resp.content_length
    if declared is not None and declared > limit:
        resp.close()
        raise FetchTooLarge(
            f"{name}: Content-Length {declared} is over the limit of {limit} bytes", source=url
        )
    chunks: list[bytes] = []
    received = 0
    # Counted after aiohttp's decompression, so a small gzip body that inflates past the
    # limit is cut off too; the declared length is never trusted.
    async for chunk in resp.content.iter_any():
        received += len(chunk)
        if received > limit:
            resp.close()
            raise FetchTooLarge(f"{name}: body is over the limit of {limit} bytes", source=url)
        chunks.append(chunk)
    return b"".join(chunks)
