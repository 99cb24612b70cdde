"""The warm path's one home: what a prepared route remembers from one route to the next.

A route repeated with the same plain-valued arguments reuses its validated request and plan
(``Router._prepare``), and, while the cache hands back the very same record tuples, everything
that follows from them alone. :class:`WarmState` is that memory, one per prepared route, typed:

- ``hot``: the outcomes of the last warm route and the cache generation they were read at
  (while the in-process cache has changed nothing and they are fresh, not even a read);
- ``hits``: a hit on the same records is the same :class:`LookupOutcome`;
- ``hit_events`` and ``route_events``: the events of those outcomes, copied for each route
  with its own time and correlation id;
- ``core`` and ``adapter``: what :class:`~sds_plugins.Resolution` derived from the records,
  the router's own (choices, provenance) and the adapter's (``Resolution.derive``), apart, so
  an adapter's names can never collide with the router's; ``request``, the request the
  adapter's derivations see (no correlation id).

Each technique's worth is measured by ``bench/warm_path.py --ablate``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ._adapter import LookupOutcome, replaced
from ._adapter_options import options_key
from ._route_events import lookup_event

if TYPE_CHECKING:
    from ._adapter import Adapter, Lookup, RouteRequest
    from ._cache import LookupCache
    from ._events import LookupEvent, RouteEvent
    from ._plugins import PluginHost
    from ._sources import DirectorySource

__all__ = [
    "Derived",
    "PlannedLookup",
    "PreparedRoute",
    "PreparedRoutes",
    "WarmState",
    "fresh_from_cache",
]

_CACHE_KEY_VERSION = "v1"

#: A derivation: the objects it was computed from (compared by identity) and its value.
Derived = tuple[tuple[Any, ...], Any]


@dataclass(slots=True)
class WarmState:
    """What one prepared route remembers between routes (see the module docstring)."""

    hot: tuple[int, float, dict[str, LookupOutcome]] | None = None
    hits: dict[str, LookupOutcome] = field(default_factory=dict)
    hit_events: dict[str, tuple[LookupOutcome, LookupEvent]] = field(default_factory=dict)
    route_events: dict[str, RouteEvent] = field(default_factory=dict)
    core: dict[str, Derived] = field(default_factory=dict)
    adapter: dict[str, Derived] = field(default_factory=dict)
    #: The prepared route's request without a correlation id: what ``Resolution.derive``
    #: hands the adapter's computations, which must not depend on it.
    request: RouteRequest | None = None


@dataclass(frozen=True, slots=True)
class PlannedLookup:
    """One lookup of a plan with everything the cache needs, worked out once."""

    name: str
    lookup: Lookup
    source: DirectorySource
    query_key: str
    cache_key: str

    @classmethod
    def for_lookup(
        cls, name: str, lookup: Lookup, source: DirectorySource, scope: str | None
    ) -> PlannedLookup:
        query_key = lookup.query.key()
        parts = ("sds-plugins", _CACHE_KEY_VERSION, source.name, source.namespace, scope or "")
        return cls(name, lookup, source, query_key, ":".join((*parts, query_key)))


@dataclass(frozen=True, slots=True)
class PreparedRoute:
    """A route's validated request, plan and cache keys: everything but its correlation id.

    Plans and cache scopes are pure functions of the request (the adapter contract), so a
    route repeated with the same plain-valued arguments reuses them; ``warm`` is what it
    remembers from one route to the next (:class:`WarmState`).
    """

    adapter: Adapter
    request: RouteRequest
    lookups: tuple[PlannedLookup, ...]
    scope: str | None
    warm: WarmState = field(default_factory=WarmState)

    def request_for(self, correlation_id: str, given: bool) -> RouteRequest:
        return replaced(
            self.request, {"correlation_id": correlation_id, "correlation_id_given": given}
        )


class PreparedRoutes:
    """Prepared routes by their arguments, at most ``size``, the oldest first out.

    A plain dict: an LRU's bookkeeping would cost more per warm route than it saves for a
    caller with more distinct routes than this holds. Only plain-valued arguments make a key
    (``key`` gives ``None`` otherwise): anything else is prepared afresh.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._routes: dict[tuple[Any, ...], PreparedRoute] = {}

    @staticmethod
    def key(
        adapter: str,
        org: str,
        interaction: str,
        encounter: str | None,
        bypass_cache: bool,
        options: Mapping[str, Any],
    ) -> tuple[Any, ...] | None:
        plain = options_key(options) if isinstance(encounter, str | None) else None
        if plain is None:
            return None
        return (adapter, org, interaction, encounter, bypass_cache, plain)

    def get(self, key: tuple[Any, ...] | None) -> PreparedRoute | None:
        return None if key is None else self._routes.get(key)

    def put(self, key: tuple[Any, ...] | None, prepared: PreparedRoute) -> None:
        if key is None or self.size <= 0:
            return
        if len(self._routes) >= self.size:
            del self._routes[next(iter(self._routes))]
        self._routes[key] = prepared

    def clear(self) -> None:
        self._routes.clear()

    def __len__(self) -> int:
        return len(self._routes)


def fresh_from_cache(
    prepared: PreparedRoute,
    cache: LookupCache,
    now: float,
    host: PluginHost,
    correlation_id: str,
) -> dict[str, LookupOutcome] | None:
    """Every lookup of the plan as a fresh in-process cache hit, or ``None``.

    The warm path: no task, no await, no decoding (the cache keeps decoded records), and
    while the in-process backend has stored, deleted and evicted nothing since this route
    last read its entries (its ``generation``), not even a read: the outcomes of last time
    stand until the first of their entries stops being fresh. Anything else (a miss, a
    stale entry, a shared backend) takes the full path. ``now`` is the cache's clock (the
    router hands it over).
    """
    warm = prepared.warm
    generation = cache.generation()
    hot = warm.hot
    if hot is not None and generation is not None and hot[0] == generation and now < hot[1]:
        outcomes: dict[str, LookupOutcome] = dict(hot[2])
    else:
        outcomes = {}
        fresh_until = float("inf")
        for planned in prepared.lookups:
            found = cache.fresh_entry_nowait(planned.cache_key, planned.source.decode)
            if found is None:
                return None
            records, until = found
            fresh_until = min(fresh_until, until)
            # A hit on the same records is the same outcome (no attempts, no wait).
            remembered = warm.hits.get(planned.cache_key)
            if remembered is None or remembered.records is not records:
                remembered = warm.hits[planned.cache_key] = LookupOutcome.model_construct(
                    lookup=planned.lookup,
                    records=records,
                    cache="hit",
                    attempts=0,
                    duration_s=0.0,
                )
            outcomes[planned.name] = remembered
        if generation is not None:
            warm.hot = (generation, fresh_until, outcomes)
            outcomes = dict(outcomes)
    if not host.has_listeners("sds_lookup_completed"):
        return outcomes
    # Events only once every lookup was a hit: a plan that falls back to the full path
    # half-way reports its lookups there, and must not report the first ones twice. A hit
    # on the same outcome says the same but for its time and correlation id.
    changes = {"time": datetime.now(UTC), "duration_s": 0.0, "correlation_id": correlation_id}
    for planned in prepared.lookups:
        outcome = outcomes[planned.name]
        seen = warm.hit_events.get(planned.cache_key)
        if seen is None or seen[0] is not outcome:
            event = lookup_event(
                planned.source,
                planned.query_key,
                "hit",
                0,
                0.0,
                correlation_id,
                records=len(outcome.records),
            )
            seen = warm.hit_events[planned.cache_key] = (outcome, event)
        host.lookup_completed(replaced(seen[1], changes))
    return outcomes
