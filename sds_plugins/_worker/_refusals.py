"""How many times the broker refused to take one request's outcome (both transports).

A broker that refuses an outcome (too large, a full stream, a deleted destination) would make
the request come back for ever; each transport counts the refusals per request and, at
:data:`MAX_PUBLISH_REFUSALS`, gives the request up its own way (AMQP dead-letters it, NATS
terminates it). The counts are this worker's, in memory and bounded: a worker that restarts
starts counting again, which only delays giving up.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["MAX_PUBLISH_REFUSALS", "Refusals"]

#: Refusals of one request's outcome after which the worker gives the request up.
MAX_PUBLISH_REFUSALS = 5
#: Requests whose refusals are remembered at once; the oldest are forgotten first.
_KEPT = 10_000

K = TypeVar("K", bound=Hashable)


class Refusals(Generic[K]):
    """Refusal counts by request key, at most :data:`_KEPT` of them."""

    def __init__(self) -> None:
        self._counts: dict[K, int] = {}

    def refused(self, key: K) -> int:
        """Count one more refusal of ``key``'s outcome and return the count; at
        :data:`MAX_PUBLISH_REFUSALS` the key is forgotten (the caller gives the request up)."""
        count = self._counts.pop(key, 0) + 1
        if count < MAX_PUBLISH_REFUSALS:
            self._counts[key] = count  # re-inserted: the most recent is kept longest
            while len(self._counts) > _KEPT:
                del self._counts[next(iter(self._counts))]
        return count

    def published(self, key: K) -> None:
        """``key``'s outcome went out: forget its refusals."""
        if self._counts:
            self._counts.pop(key, None)
