"""Client settings: one frozen dataclass, units in the names, ``DEFAULT_*`` constants.

The environment is read only by the explicit :meth:`ClientConfig.from_env`.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tritonvision.contract import DEFAULT_MAX_IMAGE_PIXELS

# Re-exported for callers that still import it from here; its home is the contract.
from tritonvision.contract import DEFAULT_MODEL
from tritonvision.errors import InvalidInput

from ._fetch import FetchConfig
from ._sources import DEFAULT_MAX_INLINE_BYTES

__all__ = [
    "DEFAULT_BACKOFF_BASE_S",
    "DEFAULT_BACKOFF_MAX_S",
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

ENV_PREFIX = "TRITONVISION_"


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
        pack_batch_size: images per inference request in ``batch_embed_images``
            (capped by the model's ``max_batch_size`` and ``max_request_bytes``).
        max_request_bytes: largest request body the client builds.
        max_lookahead_items: most batch items loaded/decoded ahead of completion
            (``None``: ``2 * max_in_flight * pack_batch_size``, at least ``2 * decode_workers``).
        fetch: URL fetching policy and limits (SSRF guard, sizes, timeouts).
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

    def __post_init__(self) -> None:
        positive = (
            "request_timeout_s",
            "connect_timeout_s",
            "max_in_flight",
            "decode_workers",
            "max_inline_bytes",
            "max_image_pixels",
            "pack_batch_size",
            "max_request_bytes",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise InvalidInput(f"ClientConfig.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("max_retries", "retry_budget_s", "backoff_base_s", "backoff_max_s"):
            if getattr(self, name) < 0:
                raise InvalidInput(f"ClientConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.max_lookahead_items is not None and self.max_lookahead_items < 1:
            raise InvalidInput("ClientConfig.max_lookahead_items must be >= 1 or None")

    @property
    def lookahead_items(self) -> int:
        """The effective bound on batch items in progress at once."""
        if self.max_lookahead_items is not None:
            return self.max_lookahead_items
        return max(2 * self.max_in_flight * self.pack_batch_size, 2 * self.decode_workers)

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

        ``TRITONVISION_ALLOW_PRIVATE_ADDRESSES`` sets ``fetch.allow_private_addresses``.
        Unset variables keep their defaults; unparsable ones raise :class:`InvalidInput`.
        """
        env = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        changes: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name == "fetch":
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
    except ValueError:
        raise InvalidInput(f"environment variable {name}={raw!r} is not a valid {hint}") from None
    raise InvalidInput(f"environment variable {name} cannot be parsed")
