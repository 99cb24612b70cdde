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
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from ._adapter import (
    Adapter,
    Candidate,
    Lookup,
    LookupOutcome,
    Resolution,
    RouteRequest,
    replaced,
)
from ._adapter_options import OptionsByAdapter, check_adapter_options
from ._cache import LookupCache
from ._envelope import RoutingEnvelope
from ._exceptions import (
    ConfigurationError,
    EnvelopeVetoedError,
    InvalidInputError,
    NotFoundError,
    PluginError,
    SdsPluginsError,
)
from ._lookups import run_lookup, run_plan
from ._pacing import RateLimiter
from ._patient_routes import (
    early_request,
    patient_registration,
    registration_for_route,
    with_patient,
)
from ._patients import (
    PatientRefs,
    PatientRegistration,
    check_nhs_number,
)
from ._plugins import PluginHost
from ._route_events import emit_route
from ._settings import Settings
from ._sources import DirectorySource, SourceContext, prepare_http_stack
from ._validation import check_correlation_id, normalise_ods_code
from ._warm import PlannedLookup, PreparedRoute, PreparedRoutes, WarmState, fresh_from_cache

__all__ = ["Router"]

logger = logging.getLogger("sds_plugins.engine")

#: How many distinct (adapter, org, interaction, options...) routes keep their prepared form.
_PREPARED_ROUTES = 4096


class Router:
    """Turns (organisation, interaction, options) into ready-to-send routing envelopes.

    Use as ``async with Router.from_settings(settings) as router:``. One router owns one HTTP
    connection pool per source, one cache and one rate limiter; share it across tasks.

    ``adapter_options`` (``{adapter name: {option: value}}``, e.g. from
    :func:`load_adapter_options`) are defaults for every route to that adapter; the options a
    ``route()`` call passes win over them. ``clock`` (``time.time`` by default) is what cache
    freshness and the breaker go by: tests advance their own instead of sleeping.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        host: PluginHost | None = None,
        plugins: Iterable[object] = (),
        adapter_options: OptionsByAdapter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings if settings is not None else Settings()
        #: Seconds since the epoch, for cache freshness and the breaker (tests pass their own).
        self.clock = clock
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
        self._starting = asyncio.Lock()
        self._prepared = PreparedRoutes(_PREPARED_ROUTES)
        #: Names patients in logs, events, errors and cache keys (never the NHS number).
        self.patient_refs = PatientRefs.for_settings(self.settings)

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
        """Ask the plugins for sources, adapters, cache and rate limiter, and start the rate
        limiter and the sources (no network I/O beyond this machine). Callers that race to
        start a router start it once; one that fails, or is cancelled, leaves it closed."""
        if self._started:
            return
        async with self._starting:
            if self.started:  # another caller started it meanwhile
                return
            try:
                await self._start()
            except BaseException:
                await self.aclose()  # whatever was set up so far (a limiter, sources)
                raise

    async def _start(self) -> None:
        host = self.host
        settings = self.settings
        self.rate_limiter = host.provide_rate_limiter(settings)
        if self.rate_limiter is not None:
            await self.rate_limiter.start()
        context = SourceContext(
            settings,
            self.rate_limiter,
            lambda name: host.provide_auth(name, settings),
        )
        host.register_sources(self._add_source, context)
        host.register_adapters(self._add_adapter)
        backend = host.provide_cache(settings)
        if backend is None:
            raise ConfigurationError("no plugin provided a cache backend")
        self._cache = LookupCache(
            backend,
            ttl_s=settings.cache_ttl_s,
            negative_ttl_s=settings.negative_ttl_s,
            stale_if_error_s=settings.stale_if_error_s,
            breaker_cooldown_s=settings.breaker_cooldown_s,
            clock=self.clock,
        )
        await asyncio.gather(*(source.start() for source in self.sources.values()))
        prepare_http_stack()
        self._started = True
        host.router_started()

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
        self._prepared.clear()  # they hold the adapters and sources just forgotten
        if self._started:
            self.host.router_closed()
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
        planned = self._plan_lookup("lookup", lookup, scope)
        cid = check_correlation_id(correlation_id)
        return await run_lookup(planned, self.cache, self.host, cid, scope, bypass_cache)

    def _plan_lookup(self, name: str, lookup: Lookup, scope: str | None) -> PlannedLookup:
        source = self.sources.get(lookup.source)
        if source is None:
            raise ConfigurationError(
                f"no directory source named {lookup.source!r} "
                f"(registered: {', '.join(sorted(self.sources)) or 'none'})"
            )
        return PlannedLookup.for_lookup(name, lookup, source, scope)

    # -- routing ------------------------------------------------------------------------------

    async def route(
        self,
        adapter: str,
        *,
        org: str | None = None,
        patient: str | None = None,
        interaction: str,
        correlation_id: str | None = None,
        encounter: str | None = None,
        bypass_cache: bool = False,
        requesting_org: str | None = None,
        request_id: str | None = None,
        **options: Any,
    ) -> RoutingEnvelope:
        """Resolve a ready-to-send envelope for ``interaction`` to organisation ``org``, or to
        ``patient``'s registered GP practice (an NHS number, looked up in PDS first).

        For a route to a patient: ``requesting_org`` is the ODS code of the organisation the
        route is made for (PDS's ``NHSD-End-User-Organisation-ODS``; else the adapter's own,
        such as GP Connect's ``organization_ods``, else ``SDS_PDS_END_USER_ORG``), and
        ``request_id`` the caller's id for this request (a broker message's), from which PDS's
        ``X-Request-ID`` is derived, so a request delivered twice sends the same one.
        """
        started = time.perf_counter()
        defaults = self.adapter_options.get(adapter)
        if defaults:
            options = {**defaults, **options}
        request: RouteRequest | None = None
        resolution: Resolution | None = None
        registration: tuple[PatientRegistration, str, str] | None = None
        error: SdsPluginsError | None = None
        warm: WarmState | None = None
        try:
            await self.start()
            cid = check_correlation_id(correlation_id)
            if patient is not None:
                if org is not None:
                    raise InvalidInputError(
                        "pass org (an ODS code) or patient (an NHS number), not both",
                        field="patient",
                    )
                registration = await registration_for_route(
                    self,
                    adapter,
                    patient,
                    interaction,
                    encounter,
                    bypass_cache,
                    options,
                    cid,
                    requesting_org,
                    request_id,
                )
                org = registration[0].practice
            if org is None:
                raise InvalidInputError(
                    "org (an ODS code) or patient (an NHS number) is required", field="org"
                )
            prepared = self._prepare(adapter, org, interaction, encounter, bypass_cache, options)
            request = prepared.request_for(cid, correlation_id is not None)
            if registration is not None:
                prepared.adapter.check_patient(request, registration[0])
            outcomes = None
            if prepared.scope is not None and not bypass_cache:
                outcomes = fresh_from_cache(
                    prepared, self.cache, self.clock(), self.host, request.correlation_id
                )
            if outcomes is None:
                outcomes = await run_plan(prepared, self.cache, self.host, request)
            resolution = Resolution(
                request,
                outcomes,
                self._select,
                datetime.fromtimestamp(self.clock(), UTC),
                warm=prepared.warm,
                patient=registration[0] if registration is not None else None,
            )
            envelope = prepared.adapter.build(request, resolution)
            if registration is not None:
                envelope = with_patient(envelope, *registration)
            final = self.host.finalize_envelope(envelope, request)
            if final is None:
                raise EnvelopeVetoedError(
                    "a plugin returned no envelope from sds_finalize_envelope"
                )
            warm = prepared.warm  # the route went well
        except SdsPluginsError as exc:
            error = exc
            raise
        finally:
            if error is not None or warm is not None:  # not a bug's exception: a route's end
                emit_route(
                    self.host,
                    self.settings.audit_nhs_numbers,
                    adapter,
                    request,
                    resolution,
                    started,
                    error,
                    org,
                    interaction,
                    registration,
                    warm,
                )
        return final

    def _adapter(self, name: str) -> Adapter:
        chosen = self.adapters.get(name)
        if chosen is None:
            raise InvalidInputError(
                f"no adapter named {name!r} "
                f"(installed: {', '.join(sorted(self.adapters)) or 'none'})",
                field="adapter",
            )
        return chosen

    # -- patients -----------------------------------------------------------------------------

    async def patient(
        self,
        nhs_number: str,
        *,
        correlation_id: str | None = None,
        scope: str | None = "",
        bypass_cache: bool = False,
    ) -> PatientRegistration:
        """The current registration of patient ``nhs_number`` from PDS, checked for routing.

        Raises :class:`InvalidNhsNumberError` (nothing sent), :class:`PatientNotFoundError`
        (unknown; no registered practice; registration ended), :class:`PatientInvalidatedError`
        and :class:`PatientRestrictedError`, or the usual directory errors. ``scope`` partitions
        the cache as for :meth:`lookup`.
        """
        number = check_nhs_number(nhs_number)
        await self.start()
        registration, _ = await patient_registration(
            self, number, check_correlation_id(correlation_id), scope, bypass_cache, None, None
        )
        return registration

    def cache_scope(
        self,
        adapter: str,
        interaction: str,
        *,
        org: str | None = None,
        encounter: str | None = None,
        bypass_cache: bool = False,
        options: Mapping[str, Any] | None = None,
    ) -> str | None:
        """The cache scope of routes to ``adapter`` with these arguments: ``""`` shared,
        ``None`` not stored. ``org`` may be unknown yet (a route to a patient asks before PDS
        names the practice). Checks adapter, interaction and options first
        (:class:`InvalidInputError`)."""
        chosen = self._adapter(adapter)
        request = early_request(chosen, interaction, encounter, bypass_cache, options or {})
        if org is not None:
            request = replaced(request, {"org": normalise_ods_code(org)})
        return chosen.cache_scope(request)

    def _prepare(
        self,
        adapter: str,
        org: str,
        interaction: str,
        encounter: str | None,
        bypass_cache: bool,
        options: Mapping[str, Any],
    ) -> PreparedRoute:
        """The validated request and plan of a route (remembered for plain-valued arguments)."""
        key = PreparedRoutes.key(adapter, org, interaction, encounter, bypass_cache, options)
        prepared = self._prepared.get(key)
        if prepared is None:
            chosen = self._adapter(adapter)
            request = RouteRequest(
                adapter=adapter,
                org=normalise_ods_code(org),
                interaction=chosen.normalise_interaction(interaction),
                options=chosen.parse_options(options),  # validated once, for plan and build
                correlation_id=check_correlation_id(None),
                encounter=encounter,
                bypass_cache=bypass_cache,
            )
            scope = chosen.cache_scope(request)
            lookups = chosen.plan(request).items()
            planned = tuple(self._plan_lookup(name, lookup, scope) for name, lookup in lookups)
            prepared = PreparedRoute(chosen, request, planned, scope)
            prepared.warm.request = replaced(
                request, {"correlation_id": "", "correlation_id_given": False}
            )
            self._prepared.put(key, prepared)
        return prepared

    def _select(
        self,
        candidates: Sequence[Candidate],
        request: RouteRequest,
        role: str,
        option: str | None,
    ) -> Candidate:
        chosen = self.host.select_candidate(list(candidates), request, role, option)
        if chosen is None:
            raise NotFoundError(
                f"no selection policy chose a {role} for {request.org}",
                correlation_id=request.correlation_id,
            )
        return chosen
