"""Running lookups: a planned lookup through the cache and its source, and a whole plan.

The cold path of a route (the warm one is :func:`~sds_plugins._warm.fresh_from_cache`):
every lookup of a plan at once, each through the cache's single flight, each reported to
``sds_lookup_completed`` observers.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from ._adapter import LookupOutcome
from ._exceptions import DirectoryError
from ._route_events import emit_lookup

if TYPE_CHECKING:
    from ._adapter import RouteRequest
    from ._cache import LookupCache
    from ._plugins import PluginHost
    from ._warm import PlannedLookup, PreparedRoute

__all__ = ["run_lookup", "run_plan"]


async def run_lookup(
    planned: PlannedLookup,
    cache: LookupCache,
    host: PluginHost,
    correlation_id: str,
    scope: str | None,
    bypass_cache: bool,
) -> LookupOutcome:
    """One planned lookup through the cache (fresh hit, single flight, stale-if-error) and its
    source; tells ``sds_lookup_completed`` observers. ``scope`` as for ``Router.lookup``."""
    source, lookup = planned.source, planned.lookup
    # An answer scoped to one encounter (or kept nowhere) must be fresh: not even the API
    # gateway's 30-minute response cache may give another caller's (GP Connect: SDS
    # answers are not reused across encounters). Repeats within the scope hit our cache.
    no_cache = bypass_cache or scope != ""

    async def fetch() -> tuple[tuple[Any, ...], int]:
        result = await source.fetch(lookup.query, correlation_id=correlation_id, no_cache=no_cache)
        return result.records, result.attempts

    started = time.perf_counter()
    try:
        cached = await cache.get_or_fetch(
            planned.cache_key,
            namespace=f"{source.name}:{source.namespace}",
            fetch=fetch,
            encode=source.encode,
            decode=source.decode,
            bypass=bypass_cache,
            store=scope is not None,
            ttl_s=source.cache_ttl_s,
            stale=source.stale_if_error,
        )
    except DirectoryError as exc:
        if exc.correlation_id is None:
            exc.correlation_id = correlation_id
        emit_lookup(
            host,
            source,
            planned.query_key,
            "miss",
            exc.attempts,
            started,
            correlation_id,
            error=exc,
        )
        raise
    emit_lookup(
        host,
        source,
        planned.query_key,
        cached.cache,
        cached.attempts,
        started,
        correlation_id,
        records=len(cached.records),
    )
    # Constructed, not validated: validating would copy the records tuple, and the warm
    # path recognises the cache's records by identity.
    return LookupOutcome.model_construct(
        lookup=lookup,
        records=cached.records,
        cache="miss" if cached.cache == "coalesced" else cached.cache,
        attempts=cached.attempts,
        duration_s=time.perf_counter() - started,
    )


async def run_plan(
    prepared: PreparedRoute, cache: LookupCache, host: PluginHost, request: RouteRequest
) -> dict[str, LookupOutcome]:
    """Every lookup of a prepared route, concurrently: the outcomes by name, or the first
    lookup's error in plan order."""
    lookups = prepared.lookups
    results = await asyncio.gather(
        *(
            run_lookup(
                planned, cache, host, request.correlation_id, prepared.scope, request.bypass_cache
            )
            for planned in lookups
        ),
        return_exceptions=True,
    )
    for result in results:  # in plan order, so the error reported is deterministic
        if isinstance(result, BaseException):
            raise result
    return {
        planned.name: result  # type: ignore[misc]
        for planned, result in zip(lookups, results, strict=True)
    }
