"""The client's keyword options, split between ``VisionClient`` and ``ClientConfig``.

``TritonEmbedder(**options)`` takes any keyword ``VisionClient`` takes (``config``,
``request_timeout_s``, ``allow_private_addresses``, ...) and any ``ClientConfig`` field
(``max_retries``, ``connect_timeout_s``, ...). Read from the public signatures, so a
keyword the client gains later (headers) passes through without a change here.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from tritonvision.client import ClientConfig, ConfigOverrides, VisionClient
from tritonvision.errors import InvalidInput

__all__ = ["ClientOptions", "normalise_urls", "split_client_options"]

# Chosen by the embedder itself, never by the caller's options.
_RESERVED = frozenset({"url", "model"})


@dataclasses.dataclass(frozen=True)
class ClientOptions:
    """What one actor's ``VisionClient`` is built with (besides url and model)."""

    config: ClientConfig
    client_kwargs: Mapping[str, Any]


def split_client_options(options: Mapping[str, Any]) -> ClientOptions:
    """Route each option to ``VisionClient`` or ``ClientConfig``; unknown names raise.

    Builds the ``ClientConfig`` at once, so a bad value fails where it is given (the
    driver) rather than in every actor.
    """
    client_params = {
        name
        for name, p in inspect.signature(VisionClient).parameters.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    } | set(ConfigOverrides.__annotations__)
    client_params -= _RESERVED
    config_fields = {f.name for f in dataclasses.fields(ClientConfig)}
    client_kwargs: dict[str, Any] = {}
    config_changes: dict[str, Any] = {}
    for name, value in options.items():
        if name in _RESERVED:
            raise InvalidInput(f"{name!r} is an argument of its own, not a client option")
        if name == "config":
            continue
        if name in client_params:
            client_kwargs[name] = value
        elif name in config_fields:
            config_changes[name] = value
        else:
            known = ", ".join(sorted((client_params | config_fields) - {"config"}))
            raise InvalidInput(f"unknown client option {name!r}; known: {known}")
    base = options.get("config")
    if base is not None and not isinstance(base, ClientConfig):
        raise InvalidInput(f"config must be a ClientConfig, got {type(base).__name__}")
    config = (base or ClientConfig()).replace(**config_changes)
    return ClientOptions(config=config, client_kwargs=client_kwargs)


def normalise_urls(url: str | Sequence[str]) -> tuple[str, ...]:
    """One URL or a non-empty list of them, as a tuple."""
    urls = (url,) if isinstance(url, str) else tuple(url)
    if not urls or not all(isinstance(u, str) and u for u in urls):
        raise InvalidInput(f"url must be a URL or a non-empty list of URLs, got {url!r}")
    return urls
