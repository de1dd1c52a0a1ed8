"""Client settings: one frozen dataclass, units in the names, ``DEFAULT_*`` constants.

The environment is read only by the explicit :meth:`ClientConfig.from_env`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

from tritonvision.contract import DEFAULT_MAX_IMAGE_PIXELS
from tritonvision.errors import InvalidInput

from ._fetch import FetchConfig
from ._sources import DEFAULT_MAX_INLINE_BYTES

__all__ = [
    "DEFAULT_BACKOFF_BASE_S",
    "DEFAULT_BACKOFF_MAX_S",
    "DEFAULT_COALESCE_OPEN_REQUESTS",
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_DECODE_WORKERS",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_MAX_REQUEST_BYTES",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_PACK_BATCH_SIZE",
    "DEFAULT_REQUEST_TIMEOUT_S",
    "DEFAULT_RETRY_BUDGET_S",
    "ENV_PREFIX",
    "ClientConfig",
    "ConfigOverrides",
    "parse_header",
]

DEFAULT_REQUEST_TIMEOUT_S = 30.0
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_MAX_IN_FLIGHT = 32
DEFAULT_MAX_RETRIES = 3
DEFAULT_RETRY_BUDGET_S = 30.0
DEFAULT_BACKOFF_BASE_S = 0.05
DEFAULT_BACKOFF_MAX_S = 2.0
DEFAULT_DECODE_WORKERS = max(1, min(32, os.cpu_count() or 1))
# Newer Tritons refuse HTTP bodies over 64 MB by default (--http-max-input-size); 2.51
# (the nvidia-pytriton wheel, the 24.10 container) takes more, but the proxies in front of
# it rarely do. Stay well under it; the same cap is used over gRPC.
DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024
# One image per request: Triton's dynamic batcher batches across callers, which keeps
# latency low and never waits for a pack to fill. Raise it to compare in ``bench/``.
DEFAULT_PACK_BATCH_SIZE = 1
# Single calls' requests out at once before more calls queue to be coalesced: one being
# computed, one on the wire, so Triton does not wait for the client between two requests.
DEFAULT_COALESCE_OPEN_REQUESTS = 2

ENV_PREFIX = "TRITONVISION_"
HEADERS_ENV = ENV_PREFIX + "HEADERS"
"""``Name: value`` lines (one header per line) sent to Triton: how secrets reach the CLI."""

# RFC 9110 field names (tokens); values may not hold CR, LF or NUL (header injection).
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z\-]+$")
_HEADER_VALUE_FORBIDDEN = re.compile(r"[\r\n\x00]")


def parse_header(line: str) -> tuple[str, str]:
    """``(name, value)`` from one ``Name: value`` line (``--header``, ``TRITONVISION_HEADERS``).

    Raises :class:`InvalidInput` naming the header (never its value: it may be a secret).
    """
    name, colon, value = line.partition(":")
    name = name.strip()
    if not colon or not name:
        # The text is not quoted: without a ':' it may be all secret.
        raise InvalidInput("a header must look like 'Name: value' (no 'Name:' found)")
    if not _HEADER_NAME.match(name):
        raise InvalidInput(f"invalid header name {name!r}", source=name)
    return name, value.strip()


def _checked_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    seen: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            raise InvalidInput(f"ClientConfig.headers: invalid header name {name!r}", source=name)
        if not isinstance(value, str) or _HEADER_VALUE_FORBIDDEN.search(value):
            raise InvalidInput(
                f"ClientConfig.headers: the value of {name!r} must be a str without CR, LF or NUL",
                source=name,
            )
        if name.lower() in seen:
            raise InvalidInput(
                f"ClientConfig.headers: {seen[name.lower()]!r} and {name!r} are the same header",
                source=name,
            )
        seen[name.lower()] = name
    return types.MappingProxyType(dict(headers))


class ConfigOverrides(TypedDict, total=False):
    """``ClientConfig`` fields the clients also take as keywords (``None`` keeps the config's).

    ``AsyncVisionClient(url, model, max_in_flight=8)`` is
    ``AsyncVisionClient(url, model, config=ClientConfig().replace(max_in_flight=8))``;
    ``allow_private_addresses`` reaches ``ClientConfig.fetch``.
    """

    request_timeout_s: float | None
    max_in_flight: int | None
    pack_batch_size: int | None
    decode_workers: int | None
    allow_private_addresses: bool | None
    headers: Mapping[str, str] | None
    allow_local_files: bool | None


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    """Settings of :class:`~tritonvision.client.AsyncVisionClient` and ``VisionClient``.

    Attributes:
        request_timeout_s: deadline of one inference request; also sent to Triton as
            the request's ``timeout`` parameter (in microseconds) over both transports.
        connect_timeout_s: deadline to open a connection to Triton.
        max_in_flight: most inference requests outstanding at once, per client.
        max_retries: retries (after the first attempt) of a transiently failed request.
        retry_budget_s: most total time one request may spend retrying.
        backoff_base_s / backoff_max_s: exponential backoff with full jitter:
            sleep ``uniform(0, min(backoff_max_s, backoff_base_s * 2**attempt))``.
        decode_workers: threads of the one decode/resize pool.
        max_inline_bytes: largest bytes/base64 image accepted (decoded size).
        max_image_pixels: decompression-bomb limit.
        pack_batch_size: images (texts) per inference request in ``batch_embed_images``
            (``batch_embed_texts``), capped by the model's ``max_batch_size`` and
            ``max_request_bytes``.
        max_request_bytes: largest request body the client builds (a text whose UTF-8
            bytes alone exceed it is an :class:`InvalidInput`).
        max_lookahead_items: most batch items loaded/decoded ahead of completion
            (``None``: ``2 * max_in_flight * pack_batch_size``, at least ``2 * decode_workers``).
        fetch: URL fetching policy and limits (SSRF guard, sizes, timeouts).
        headers: HTTP headers (gRPC metadata, names lower-cased) sent with every request
            to Triton, e.g. ``{"Authorization": "Bearer ..."}`` for an authenticating
            proxy; never sent to image URLs. Left out of ``repr()``.
        allow_local_files: whether a path source (a plain string that is not a URL, data
            URI or base64 image, or an ``os.PathLike``) may be read. ``False``: every path
            is an :class:`InvalidInput` and the file system is not touched.
        local_files_root: if set, paths must resolve (symlinks and ``..`` first) inside
            this directory; others are :class:`InvalidInput`.
        overload_gate: treat "Triton is full" (:class:`ServerOverloaded`) as a client-wide
            signal: new sends wait (jittered backoff) and fewer are let in while in-flight
            work drains (``_gate.OverloadGate``). ``False``: each request backs off alone.
        deduplicate_inputs: in ``batch_embed_images``, identical inputs (the same string
            or bytes, or the same pixels once decoded) are sent once and fill every row;
            in ``batch_embed_texts``, identical texts.
        coalesce: single calls (``embed*()``, ``embed_text()``) made while the client is
            busy are sent together as one request, each caller still getting its own row or
            error (``_coalesce.Coalescer``). A call made while the client is idle goes out
            at once. Models without a batch dimension (``max_batch_size`` 0) never coalesce.
        coalesce_max_batch: most images (texts) in one coalesced request (``None``: the
            model's ``max_batch_size``; always capped by it and by ``max_request_bytes``).
        coalesce_open_requests: most requests of single calls out at once while calls
            wait to be merged; a full batch goes out anyway (within ``max_in_flight``).
    """

    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    max_retries: int = DEFAULT_MAX_RETRIES
    retry_budget_s: float = DEFAULT_RETRY_BUDGET_S
    backoff_base_s: float = DEFAULT_BACKOFF_BASE_S
    backoff_max_s: float = DEFAULT_BACKOFF_MAX_S
    decode_workers: int = DEFAULT_DECODE_WORKERS
    max_inline_bytes: int = DEFAULT_MAX_INLINE_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    pack_batch_size: int = DEFAULT_PACK_BATCH_SIZE
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_lookahead_items: int | None = None
    fetch: FetchConfig = field(default_factory=FetchConfig)
    headers: Mapping[str, str] = field(
        default_factory=lambda: types.MappingProxyType({}), repr=False, hash=False
    )
    allow_local_files: bool = True
    local_files_root: str | os.PathLike[str] | None = None
    overload_gate: bool = True
    deduplicate_inputs: bool = True
    coalesce: bool = True
    coalesce_max_batch: int | None = None
    coalesce_open_requests: int = DEFAULT_COALESCE_OPEN_REQUESTS

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", _checked_headers(self.headers))
        if self.local_files_root is not None:
            root = os.fspath(self.local_files_root)
            if not root:
                raise InvalidInput("ClientConfig.local_files_root must be a directory or None")
            object.__setattr__(self, "local_files_root", root)
        positive = (
            "request_timeout_s",
            "connect_timeout_s",
            "max_in_flight",
            "decode_workers",
            "max_inline_bytes",
            "max_image_pixels",
            "pack_batch_size",
            "max_request_bytes",
            "coalesce_open_requests",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise InvalidInput(f"ClientConfig.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("max_retries", "retry_budget_s", "backoff_base_s", "backoff_max_s"):
            if getattr(self, name) < 0:
                raise InvalidInput(f"ClientConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.max_lookahead_items is not None and self.max_lookahead_items < 1:
            raise InvalidInput("ClientConfig.max_lookahead_items must be >= 1 or None")
        if self.coalesce_max_batch is not None and self.coalesce_max_batch < 1:
            raise InvalidInput("ClientConfig.coalesce_max_batch must be >= 1 or None")

    @property
    def lookahead_items(self) -> int:
        """The effective bound on batch items in progress at once."""
        if self.max_lookahead_items is not None:
            return self.max_lookahead_items
        return max(2 * self.max_in_flight * self.pack_batch_size, 2 * self.decode_workers)

    def with_overrides(self, overrides: Mapping[str, Any]) -> ClientConfig:
        """A copy with the :class:`ConfigOverrides` given (``None`` values ignored).

        Raises ``TypeError`` for a keyword that is not an override, as a call would.
        """
        unknown = set(overrides) - set(ConfigOverrides.__annotations__)
        if unknown:
            raise TypeError(f"unexpected client keyword argument(s): {', '.join(sorted(unknown))}")
        return self.replace(**{k: v for k, v in overrides.items() if v is not None})

    def replace(self, **changes: Any) -> ClientConfig:
        """A copy with some fields changed; ``allow_private_addresses`` reaches ``fetch``."""
        if "allow_private_addresses" in changes:
            allow = changes.pop("allow_private_addresses")
            fetch = changes.get("fetch", self.fetch)
            changes["fetch"] = dataclasses.replace(fetch, allow_private_addresses=bool(allow))
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, prefix: str = ENV_PREFIX
    ) -> ClientConfig:
        """Settings from ``TRITONVISION_<FIELD>`` variables (e.g. ``TRITONVISION_MAX_IN_FLIGHT``).

        ``TRITONVISION_ALLOW_PRIVATE_ADDRESSES`` sets ``fetch.allow_private_addresses``;
        ``TRITONVISION_HEADERS`` holds ``Name: value`` lines, one header per line (secrets
        for Triton, e.g. ``Authorization: Bearer ...``).
        Unset variables keep their defaults; unparsable ones raise :class:`InvalidInput`.
        """
        env = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        changes: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name in ("fetch", "headers"):
                continue
            raw = env.get(prefix + f.name.upper())
            if raw is None:
                continue
            changes[f.name] = _parse_env(prefix + f.name.upper(), raw, hints[f.name])
        raw_allow = env.get(prefix + "ALLOW_PRIVATE_ADDRESSES")
        if raw_allow is not None:
            changes["allow_private_addresses"] = _parse_env(
                prefix + "ALLOW_PRIVATE_ADDRESSES", raw_allow, bool
            )
        raw_headers = env.get(HEADERS_ENV)
        if raw_headers is not None and raw_headers.strip():
            lines = [line for line in raw_headers.splitlines() if line.strip()]
            changes["headers"] = dict(parse_header(line) for line in lines)
        return cls().replace(**changes)


def _parse_env(name: str, raw: str, hint: object) -> object:
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) and type(None) in args:
        if raw.strip().lower() in ("", "none"):
            return None
        hint = next(a for a in args if a is not type(None))
    try:
        if hint is bool:
            value = raw.strip().lower()
            if value in ("1", "true", "yes", "on"):
                return True
            if value in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
        if hint is str:
            return raw
    except ValueError:
        raise InvalidInput(f"environment variable {name}={raw!r} is not a valid {hint}") from None
    raise InvalidInput(f"environment variable {name} cannot be parsed")
