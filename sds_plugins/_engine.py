"""The routing engine: adapters plan, the engine looks up (concurrently, cached), adapters build.

The path of one ``route()`` call::

    validate org / interaction / correlation id          (nothing sent on bad input)
    adapter.plan(request)          -> {name: Lookup}     (pure)
    for every lookup, concurrently:                      (one directory round trip)
        cache (fresh hit | single-flight fetch | stale-if-error) -> source.fetch -> client
        sds_lookup_completed(event)
    adapter.build(request, resolution) -> envelope       (pure; selection via sds_select_candidate)
    sds_finalize_envelope(envelope)                      (plugins decorate or veto)
    sds_route_completed(event)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from ._adapter import Adapter, Candidate, Lookup, LookupOutcome, Resolution, RouteRequest
from ._adapter_options import AdapterOptions, check_adapter_options
from ._cache import LookupCache
from ._envelope import RoutingEnvelope
from ._events import LookupEvent, RouteEvent, RouteOutcome
from ._exceptions import (
    AmbiguousError,
    ConfigurationError,
    DirectoryError,
    EnvelopeVetoedError,
    InvalidInputError,
    NotFoundError,
    PluginError,
    SdsPluginsError,
)
from ._plugins import PluginHost
from ._ratelimit import RateLimiter
from ._settings import Settings
from ._sources import DirectorySource, SourceContext
from ._validation import normalise_correlation_id, normalise_ods_code

__all__ = ["Router"]

logger = logging.getLogger("sds_plugins.engine")

_CACHE_KEY_VERSION = "v1"


class Router:
    """Turns (organisation, interaction, options) into ready-to-send routing envelopes.

    Use as ``async with Router.from_settings(settings) as router:``. One router owns one HTTP
    connection pool per source, one cache and one rate limiter; share it across tasks.

    ``adapter_options`` (``{adapter name: {option: value}}``, e.g. from
    :func:`load_adapter_options`) are defaults for every route to that adapter; the options a
    ``route()`` call passes win over them.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        host: PluginHost | None = None,
        plugins: Iterable[object] = (),
        adapter_options: AdapterOptions | None = None,
    ) -> None:
        self.settings = settings if settings is not None else Settings()
        self.adapter_options = check_adapter_options(adapter_options or {})
        self.host = host if host is not None else PluginHost()
        for plugin in plugins:
            self.host.register(plugin)
        if self.settings.audit_log is not None and not self.host.pm.has_plugin("sds_plugins.audit"):
            from ._audit import AuditLog

            self.host.register(AuditLog(self.settings.audit_log), name="sds_plugins.audit")
        self.adapters: dict[str, Adapter] = {}
        self.sources: dict[str, DirectorySource] = {}
        self.rate_limiter: RateLimiter | None = None
        self._cache: LookupCache | None = None
        self._started = False

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **kwargs: Any) -> Router:
        return cls(settings, **kwargs)

    # -- life cycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Router:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Ask the plugins for sources, adapters, cache and rate limiter (no network I/O)."""
        if self._started:
            return
        hook = self.host.hook
        settings = self.settings
        self.rate_limiter = hook.sds_provide_rate_limiter(settings=settings)
        context = SourceContext(
            settings,
            self.rate_limiter,
            lambda name: hook.sds_provide_auth(source=name, settings=settings),
        )
        hook.sds_register_sources(register=self._add_source, context=context)
        hook.sds_register_adapters(register=self._add_adapter)
        backend = hook.sds_provide_cache(settings=settings)
        if backend is None:
            raise ConfigurationError("no plugin provided a cache backend")
        self._cache = LookupCache(
            backend,
            ttl_s=settings.cache_ttl_s,
            negative_ttl_s=settings.negative_ttl_s,
            stale_if_error_s=settings.stale_if_error_s,
            breaker_cooldown_s=settings.breaker_cooldown_s,
        )
        self._started = True

    async def aclose(self) -> None:
        closers = [source.aclose() for source in self.sources.values()]
        if self._cache is not None:
            closers.append(self._cache.backend.aclose())
        if self.rate_limiter is not None:
            closers.append(self.rate_limiter.aclose())
        results = await asyncio.gather(*closers, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                logger.warning("error while closing: %s", result)
        # Forget everything start() asked the plugins for, so the router can start again.
        self.sources.clear()
        self.adapters.clear()
        self._cache = None
        self.rate_limiter = None
        self._started = False

    @property
    def started(self) -> bool:
        return self._started

    def _add_source(self, source: DirectorySource) -> None:
        if source.name in self.sources:
            raise PluginError(f"two plugins register a directory source named {source.name!r}")
        self.sources[source.name] = source

    def _add_adapter(self, adapter: Adapter) -> None:
        name = getattr(adapter, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"adapter {adapter!r} has no name")
        if name in self.adapters:
            raise PluginError(f"two plugins register an adapter named {name!r}")
        self.adapters[name] = adapter

    @property
    def cache(self) -> LookupCache:
        if self._cache is None:
            raise ConfigurationError("the router is not started: use 'async with Router(...)'")
        return self._cache

    # -- lookups ------------------------------------------------------------------------------

    async def lookup(
        self,
        lookup: Lookup,
        *,
        correlation_id: str | None = None,
        scope: str | None = "",
        bypass_cache: bool = False,
    ) -> LookupOutcome:
        """Run one lookup through cache, single-flight and the source; emits a lookup event.

        ``scope`` partitions the cache (``""`` shared; ``None`` = do not read or store).
        """
        await self.start()
        return await self._lookup(
            lookup, normalise_correlation_id(correlation_id), scope, bypass_cache
        )

    async def _lookup(
        self, lookup: Lookup, correlation_id: str, scope: str | None, bypass_cache: bool
    ) -> LookupOutcome:
        source = self.sources.get(lookup.source)
        if source is None:
            raise ConfigurationError(
                f"no directory source named {lookup.source!r} "
                f"(registered: {', '.join(sorted(self.sources)) or 'none'})"
            )
        query_key = lookup.query.key()
        key = ":".join(
            (
                "sds-plugins",
                _CACHE_KEY_VERSION,
                source.name,
                source.namespace,
                scope or "",
                query_key,
            )
        )

        async def fetch() -> tuple[tuple[Any, ...], int]:
            result = await source.fetch(
                lookup.query, correlation_id=correlation_id, no_cache=bypass_cache
            )
            return result.records, result.attempts

        started = time.perf_counter()
        try:
            cached = await self.cache.get_or_fetch(
                key,
                namespace=f"{source.name}:{source.namespace}",
                fetch=fetch,
                encode=source.encode,
                decode=source.decode,
                bypass=bypass_cache,
                store=scope is not None,
            )
        except DirectoryError as exc:
            if exc.correlation_id is None:
                exc.correlation_id = correlation_id
            self._emit_lookup(
                source, query_key, "miss", exc.attempts, started, correlation_id, error=exc
            )
            raise
        self._emit_lookup(
            source,
            query_key,
            cached.cache,
            cached.attempts,
            started,
            correlation_id,
            records=len(cached.records),
        )
        return LookupOutcome(
            lookup=lookup,
            records=cached.records,
            cache="miss" if cached.cache == "coalesced" else cached.cache,
            attempts=cached.attempts,
            duration_s=time.perf_counter() - started,
        )

    def _emit_lookup(
        self,
        source: DirectorySource,
        query: str,
        cache: str,
        attempts: int,
        started: float,
        correlation_id: str,
        *,
        records: int = 0,
        error: DirectoryError | None = None,
    ) -> None:
        if not self.host.hook.sds_lookup_completed.get_hookimpls():
            return  # nobody listens: skip building the event on the hot path
        event = LookupEvent(
            time=datetime.now(UTC),
            source=source.name,
            query=query,
            namespace=source.namespace,
            cache=cache,
            attempts=attempts,
            duration_s=time.perf_counter() - started,
            outcome="error" if error is not None else ("found" if records else "not_found"),
            records=records,
            error=f"{type(error).__name__}: {error.message}" if error is not None else None,
            correlation_id=correlation_id,
        )
        self._notify("sds_lookup_completed", event)

    def _notify(self, hook_name: str, event: Any) -> None:
        try:
            getattr(self.host.hook, hook_name)(event=event)
        except Exception:  # an observer must never break routing
            logger.exception("a plugin's %s failed", hook_name)

    # -- routing ------------------------------------------------------------------------------

    async def route(
        self,
        adapter: str,
        *,
        org: str,
        interaction: str,
        correlation_id: str | None = None,
        encounter: str | None = None,
        bypass_cache: bool = False,
        **options: Any,
    ) -> RoutingEnvelope:
        """Resolve a ready-to-send envelope for ``interaction`` to organisation ``org``."""
        started = time.perf_counter()
        defaults = self.adapter_options.get(adapter)
        if defaults:
            options = {**defaults, **options}
        request: RouteRequest | None = None
        resolution: Resolution | None = None
        try:
            await self.start()
            chosen = self.adapters.get(adapter)
            if chosen is None:
                raise InvalidInputError(
                    f"no adapter named {adapter!r} "
                    f"(installed: {', '.join(sorted(self.adapters)) or 'none'})",
                    field="adapter",
                )
            request = RouteRequest(
                adapter=adapter,
                org=normalise_ods_code(org),
                interaction=chosen.normalise_interaction(interaction),
                options=chosen.parse_options(options),  # validated once, for plan and build
                correlation_id=normalise_correlation_id(correlation_id),
                correlation_id_given=correlation_id is not None,
                encounter=encounter,
                bypass_cache=bypass_cache,
            )
            plan = chosen.plan(request)
            scope = chosen.cache_scope(request)
            outcomes = await self._resolve(plan, request, scope)
            resolution = Resolution(request, outcomes, self._select)
            envelope = chosen.build(request, resolution)
            final = self.host.hook.sds_finalize_envelope(envelope=envelope, request=request)
            if final is None:
                raise EnvelopeVetoedError(
                    "a plugin returned no envelope from sds_finalize_envelope"
                )
        except SdsPluginsError as exc:
            self._emit_route(adapter, request, resolution, started, exc, org, interaction)
            raise
        self._emit_route(adapter, request, resolution, started, None, org, interaction)
        return final  # type: ignore[no-any-return]

    async def _resolve(
        self, plan: Mapping[str, Lookup], request: RouteRequest, scope: str | None
    ) -> dict[str, LookupOutcome]:
        names = list(plan)
        results = await asyncio.gather(
            *(
                self._lookup(plan[name], request.correlation_id, scope, request.bypass_cache)
                for name in names
            ),
            return_exceptions=True,
        )
        for result in results:  # in plan order, so the error reported is deterministic
            if isinstance(result, BaseException):
                raise result
        return dict(zip(names, results, strict=True))  # type: ignore[arg-type]

    def _select(
        self, candidates: Sequence[Candidate], request: RouteRequest, role: str
    ) -> Candidate:
        chosen = self.host.hook.sds_select_candidate(
            candidates=list(candidates), request=request, role=role
        )
        if chosen is None:
            raise NotFoundError(
                f"no selection policy chose a {role} for {request.org}",
                correlation_id=request.correlation_id,
            )
        return chosen  # type: ignore[no-any-return]

    def _emit_route(
        self,
        adapter: str,
        request: RouteRequest | None,
        resolution: Resolution | None,
        started: float,
        error: SdsPluginsError | None,
        org: str,
        interaction: str,
    ) -> None:
        if not self.host.hook.sds_route_completed.get_hookimpls():
            return
        outcome: RouteOutcome = "ok"
        details: dict[str, Any] = {}
        if isinstance(error, AmbiguousError):
            outcome = "ambiguous"
            details["candidates"] = error.candidates
        elif isinstance(error, NotFoundError):
            outcome = "not_found"
        elif isinstance(error, InvalidInputError):
            outcome = "invalid"
        elif isinstance(error, EnvelopeVetoedError):
            outcome = "vetoed"
        elif error is not None:
            outcome = "error"
        correlation_id = (
            request.correlation_id if request else getattr(error, "correlation_id", None)
        )
        event = RouteEvent(
            time=datetime.now(UTC),
            adapter=adapter,
            org=request.org if request else org,
            interaction=request.interaction if request else interaction,
            correlation_id=correlation_id,
            outcome=outcome,
            cache=resolution.cache if resolution else None,
            lookups=tuple(o.lookup.key() for o in resolution.outcomes.values())
            if resolution
            else (),
            duration_s=time.perf_counter() - started,
            error=f"{type(error).__name__}: {error}" if error is not None else None,
            details=details,
        )
        self._notify("sds_route_completed", event)
