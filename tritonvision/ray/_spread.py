"""Which Triton replica an actor talks to: round-robin over the actors of a pool.

Ray Data gives every actor of a pool the same constructor arguments and no index, and
hashing the actor id leaves replicas idle by chance (two actors, two URLs: half the
time both pick one). So the actors take consecutive slots from one tiny named counter
actor (no CPU), keyed by the URL list: actor ``k`` uses ``urls[k % len(urls)]``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import ray

__all__ = ["pick_url"]

logger = logging.getLogger(__name__)

_TAKE_TIMEOUT_S = 60.0


class _Slots:
    """The counter behind the round-robin; lives as a named Ray actor."""

    def __init__(self) -> None:
        self._next = 0

    def take(self) -> int:
        slot = self._next
        self._next += 1
        return slot


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _next_slot(urls: Sequence[str]) -> int:
    if not ray.is_initialized():  # called outside Ray (a plain process): the first URL
        return 0
    name = f"tritonvision-url-slots-{_digest(chr(10).join(urls))}"
    try:
        # get_if_exists makes creation race-free between actors starting together; the
        # counter dies with the actor that made it, and the next pool starts a new one.
        # Any: Ray's typed actor handles do not know the methods of a remote class.
        counter: Any = ray.remote(_Slots)
        slots = counter.options(name=name, get_if_exists=True, num_cpus=0, max_restarts=0).remote()
        slot: int = ray.get(slots.take.remote(), timeout=_TAKE_TIMEOUT_S)
        return slot
    except Exception as exc:  # spreading is best effort: the job goes on without it
        actor_id = ray.get_runtime_context().get_actor_id() or ""
        logger.warning("URL slot counter unavailable (%s); hashing the actor id instead", exc)
        return int(_digest(actor_id), 16)


def pick_url(urls: Sequence[str]) -> str:
    """The URL of this actor: one of ``urls``, spread evenly over a pool's actors."""
    if len(urls) == 1:
        return urls[0]
    return urls[_next_slot(urls) % len(urls)]
