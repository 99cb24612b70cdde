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
from dataclasses import dataclass, field
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
    options_key,
    replaced,
)
from ._adapter_options import OptionsByAdapter, check_adapter_options
from ._cache import LookupCache
from ._envelope import ForeignRecord, RoutingEnvelope
from ._events import LookupEvent, RouteEvent, RouteOutcome
from ._exceptions import (
    AmbiguousError,
    ConfigurationError,
    DirectoryError,
    EnvelopeVetoedError,
    InvalidInputError,
    NotFoundError,
    PatientNotFoundError,
    PluginError,
    SdsPluginsError,
)
from ._pacing import RateLimiter
from ._patients import (
    PDS_SOURCE,
    REMOVAL_REASONS,
    PatientQuery,
    PatientRefs,
    PatientRegistration,
    check_nhs_number,
    london_today,
)
from ._plugins import PluginHost
from ._settings import Settings
from ._sources import DirectorySource, SourceContext
from ._validation import check_correlation_id, normalise_ods_code
from ._warm import WarmState

__all__ = ["Router"]

logger = logging.getLogger("sds_plugins.engine")

_CACHE_KEY_VERSION = "v1"
#: How many distinct (adapter, org, interaction, options...) routes keep their prepared form.
_PREPARED_ROUTES = 4096


@dataclass(frozen=True, slots=True)
class _PlannedLookup:
    """One lookup of a plan with everything the cache needs, worked out once."""

    name: str
    lookup: Lookup
    source: DirectorySource
    query_key: str
    cache_key: str


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A route's validated request, plan and cache keys: everything but its correlation id.

    Plans and cache scopes are pure functions of the request (the adapter contract), so a
    route repeated with the same plain-valued arguments reuses them; ``warm`` is what it
    remembers from one route to the next (:class:`~sds_plugins._warm.WarmState`).
    """

    adapter: Adapter
    request: RouteRequest
    lookups: tuple[_PlannedLookup, ...]
    scope: str | None
    warm: WarmState = field(default_factory=WarmState)

    def request_for(self, correlation_id: str, given: bool) -> RouteRequest:
        return replaced(
            self.request, {"correlation_id": correlation_id, "correlation_id_given": given}
        )


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
        # A plain dict, oldest first out: an LRU's bookkeeping would cost more per warm route
        # than it saves for a caller with more distinct routes than this holds.
        self._prepared: dict[tuple[Any, ...], _Prepared] = {}
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
        """Ask the plugins for sources, adapters, cache and rate limiter (no network I/O)."""
        if self._started:
            return
        host = self.host
        settings = self.settings
        self.rate_limiter = host.provide_rate_limiter(settings)
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
        _prepare_http_stack()
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
        return await self._lookup(
            planned, check_correlation_id(correlation_id), scope, bypass_cache
        )

    def _plan_lookup(self, name: str, lookup: Lookup, scope: str | None) -> _PlannedLookup:
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
        return _PlannedLookup(name, lookup, source, query_key, key)

    async def _lookup(
        self, planned: _PlannedLookup, correlation_id: str, scope: str | None, bypass_cache: bool
    ) -> LookupOutcome:
        source, lookup = planned.source, planned.lookup
        # An answer scoped to one encounter (or kept nowhere) must be fresh: not even the API
        # gateway's 30-minute response cache may give another caller's (GP Connect: SDS
        # answers are not reused across encounters). Repeats within the scope hit our cache.
        no_cache = bypass_cache or scope != ""

        async def fetch() -> tuple[tuple[Any, ...], int]:
            result = await source.fetch(
                lookup.query, correlation_id=correlation_id, no_cache=no_cache
            )
            return result.records, result.attempts

        started = time.perf_counter()
        try:
            cached = await self.cache.get_or_fetch(
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
            self._emit_lookup(
                source, planned.query_key, "miss", exc.attempts, started, correlation_id, error=exc
            )
            raise
        self._emit_lookup(
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

    def _fresh_from_cache(
        self, prepared: _Prepared, correlation_id: str
    ) -> dict[str, LookupOutcome] | None:
        """Every lookup of the plan as a fresh in-process cache hit, or ``None``.

        The warm path: no task, no await, no decoding (the cache keeps decoded records), and
        while the in-process backend has stored, deleted and evicted nothing since this route
        last read its entries (its ``generation``), not even a read: the outcomes of last time
        stand until the first of their entries stops being fresh. Anything else (a miss, a
        stale entry, a shared backend) takes the full path.
        """
        cache, warm = self.cache, prepared.warm
        generation = cache.generation()
        now = self.clock()  # the cache's clock too: the router hands it over
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
        if not self.host.has_listeners("sds_lookup_completed"):
            return outcomes
        # Events only once every lookup was a hit: a plan that falls back to the full path
        # half-way reports its lookups there, and must not report the first ones twice. A hit
        # on the same outcome says the same but for its time and correlation id.
        changes = {"time": datetime.now(UTC), "duration_s": 0.0, "correlation_id": correlation_id}
        for planned in prepared.lookups:
            outcome = outcomes[planned.name]
            seen = warm.hit_events.get(planned.cache_key)
            if seen is None or seen[0] is not outcome:
                event = _lookup_event(
                    planned.source,
                    planned.query_key,
                    "hit",
                    0,
                    0.0,
                    correlation_id,
                    records=len(outcome.records),
                )
                seen = warm.hit_events[planned.cache_key] = (outcome, event)
            self.host.lookup_completed(replaced(seen[1], changes))
        return outcomes

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
        if not self.host.has_listeners("sds_lookup_completed"):
            return  # nobody listens: skip building the event on the hot path
        duration_s = time.perf_counter() - started
        self.host.lookup_completed(
            _lookup_event(
                source, query, cache, attempts, duration_s, correlation_id, records, error
            )
        )

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
        try:
            await self.start()
            cid = check_correlation_id(correlation_id)
            if patient is not None:
                if org is not None:
                    raise InvalidInputError(
                        "pass org (an ODS code) or patient (an NHS number), not both",
                        field="patient",
                    )
                registration = await self._patient_for_route(
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
                outcomes = self._fresh_from_cache(prepared, request.correlation_id)
            if outcomes is None:
                outcomes = await self._resolve(prepared, request)
            resolution = Resolution(
                request,
                outcomes,
                self._select,
                datetime.fromtimestamp(self.clock(), UTC),
                warm=prepared.warm,
            )
            envelope = prepared.adapter.build(request, resolution)
            if registration is not None:
                envelope = _with_patient(envelope, *registration)
            final = self.host.finalize_envelope(envelope, request)
            if final is None:
                raise EnvelopeVetoedError(
                    "a plugin returned no envelope from sds_finalize_envelope"
                )
        except SdsPluginsError as exc:
            self._emit_route(
                adapter, request, resolution, started, exc, org, interaction, registration
            )
            raise
        self._emit_route(
            adapter,
            request,
            resolution,
            started,
            None,
            org,
            interaction,
            registration,
            prepared.warm,
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
        registration, _ = await self._patient_lookup(
            number, check_correlation_id(correlation_id), scope, bypass_cache, None, None
        )
        return registration

    async def _patient_for_route(
        self,
        adapter: str,
        patient: str,
        interaction: str,
        encounter: str | None,
        bypass_cache: bool,
        options: Mapping[str, Any],
        correlation_id: str,
        requesting_org: str | None,
        request_id: str | None,
    ) -> tuple[PatientRegistration, str, str]:
        number = check_nhs_number(patient)
        chosen = self._adapter(adapter)
        early = self._early_request(chosen, interaction, encounter, bypass_cache, options)
        # The PDS answer is reused exactly as far as the route's own lookups are (GP Connect:
        # within the encounter), so a patient's practice is never remembered beyond that.
        scope = chosen.cache_scope(early)
        end_user_org = self._end_user_org(requesting_org, chosen.end_user_org(early))
        registration, key = await self._patient_lookup(
            number, correlation_id, scope, bypass_cache, end_user_org, request_id
        )
        return registration, key, number

    def _end_user_org(self, requesting_org: str | None, adapters: str | None) -> str | None:
        """PDS's ``NHSD-End-User-Organisation-ODS`` for a route: the route's requesting
        organisation, the adapter's, the setting; refused when the application serves several
        organisations and there is none (PDS: "mandatory for client applications which
        service multiple end user organisations")."""
        chosen = requesting_org or adapters or self.settings.pds_end_user_org
        if chosen is None:
            if self.settings.pds_several_orgs:
                raise InvalidInputError(
                    "requesting_org is needed: this application serves several organisations "
                    "(SDS_PDS_SEVERAL_ORGS), and PDS must be told which one a patient route is "
                    "made for (NHSD-End-User-Organisation-ODS); or set SDS_PDS_END_USER_ORG",
                    field="requesting_org",
                )
            return None
        return normalise_ods_code(chosen, "requesting_org")

    def _early_request(
        self,
        chosen: Adapter,
        interaction: str,
        encounter: str | None,
        bypass_cache: bool,
        options: Mapping[str, Any],
    ) -> RouteRequest:
        """A route's request before its organisation is known (a route to a patient, before
        PDS names the practice): interaction and options checked (InvalidInputError)."""
        return RouteRequest.model_construct(
            adapter=chosen.name,
            org="",
            interaction=chosen.normalise_interaction(interaction),
            options=chosen.parse_options(options),
            correlation_id="",
            correlation_id_given=False,
            encounter=encounter,
            bypass_cache=bypass_cache,
        )

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
        request = self._early_request(chosen, interaction, encounter, bypass_cache, options or {})
        if org is not None:
            request = replaced(request, {"org": normalise_ods_code(org)})
        return chosen.cache_scope(request)

    async def _patient_lookup(
        self,
        number: str,
        correlation_id: str,
        scope: str | None,
        bypass_cache: bool,
        end_user_org: str | None,
        request_id: str | None,
    ) -> tuple[PatientRegistration, str]:
        if PDS_SOURCE not in self.sources:
            raise ConfigurationError(
                "routing to a patient needs the pds directory source (PDS FHIR API): set "
                "SDS_PDS_BASE_URL, or check SDS_PLUGINS_DISABLE"
            )
        ref = self.patient_refs.ref(number)
        query = PatientQuery(
            nhs_number=number, ref=ref, end_user_org=end_user_org, request_id=request_id
        )
        lookup = Lookup(source=PDS_SOURCE, query=query)
        planned = self._plan_lookup("patient", lookup, scope)
        outcome = await self._lookup(planned, correlation_id, scope, bypass_cache)
        if not outcome.records:
            raise PatientNotFoundError(
                f"PDS knows no patient {ref}", reason="unknown", correlation_id=correlation_id
            )
        registration = outcome.records[0]
        assert isinstance(registration, PatientRegistration)  # the pds source's record type
        if registration.practice is None:
            raise PatientNotFoundError(
                f"patient {ref} has no registered GP practice in PDS",
                reason="no_registration",
                correlation_id=correlation_id,
            )
        # Registration periods are dates in England, both ends included.
        today = london_today(self.clock())
        if registration.current_practice(today) is None:
            start, end = registration.registration_start, registration.registration_end
            if start is not None and start > today:
                raise PatientNotFoundError(
                    f"patient {ref}'s registration with {registration.practice} starts on "
                    f"{start}; PDS gives no current practice until then",
                    reason="registration_not_started",
                    correlation_id=correlation_id,
                )
            removal = registration.removal_reason
            why = f" (removed from registration: {REMOVAL_REASONS[removal]})" if removal else ""
            raise PatientNotFoundError(
                f"patient {ref}'s registration with {registration.practice} ended on "
                f"{end}{why}; PDS gives no current practice",
                reason="registration_ended",
                correlation_id=correlation_id,
            )
        if registration.superseded:
            logger.info(
                "patient %s: PDS answered with record %s (the number was superseded); routing "
                "to that record's practice (correlation_id=%r)",
                ref,
                registration.record,
                correlation_id,
            )
        return registration, lookup.key()

    def _prepare(
        self,
        adapter: str,
        org: str,
        interaction: str,
        encounter: str | None,
        bypass_cache: bool,
        options: Mapping[str, Any],
    ) -> _Prepared:
        """The validated request and plan of a route (remembered for plain-valued arguments)."""
        plain = options_key(options) if isinstance(encounter, str | None) else None
        key = (adapter, org, interaction, encounter, bypass_cache, plain)
        if plain is not None:
            prepared = self._prepared.get(key)
            if prepared is not None:
                return prepared
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
        plan = chosen.plan(request)
        scope = chosen.cache_scope(request)
        prepared = _Prepared(
            chosen,
            request,
            tuple(self._plan_lookup(name, lookup, scope) for name, lookup in plan.items()),
            scope,
        )
        if plain is not None:
            if len(self._prepared) >= _PREPARED_ROUTES:
                del self._prepared[next(iter(self._prepared))]
            self._prepared[key] = prepared
        return prepared

    async def _resolve(
        self, prepared: _Prepared, request: RouteRequest
    ) -> dict[str, LookupOutcome]:
        lookups = prepared.lookups
        results = await asyncio.gather(
            *(
                self._lookup(planned, request.correlation_id, prepared.scope, request.bypass_cache)
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

    def _emit_route(
        self,
        adapter: str,
        request: RouteRequest | None,
        resolution: Resolution | None,
        started: float,
        error: SdsPluginsError | None,
        org: str | None,
        interaction: str,
        registration: tuple[PatientRegistration, str, str] | None = None,
        warm: WarmState | None = None,
    ) -> None:
        if not self.host.has_listeners("sds_route_completed"):
            return
        outcome: RouteOutcome = "ok"
        details: dict[str, Any] = {}
        if registration is not None:
            details["patient"] = registration[0].patient
            details["superseded"] = registration[0].superseded
            if self.settings.audit_nhs_numbers:  # the operator's governance asks for it
                details["nhs_number"] = registration[2]
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
        # A route that went well says what the last one with the same cache status said
        # (adapter, organisation, interaction and lookups are the prepared route's own), but
        # for its time, duration and correlation id: copied from the first one's event.
        template_key = None
        if warm is not None and error is None and request and resolution and not details:
            template_key = resolution.cache
            template = warm.route_events.get(template_key)
            if template is not None:
                changes = {
                    "time": datetime.now(UTC),
                    "duration_s": time.perf_counter() - started,
                    "correlation_id": request.correlation_id,
                    "details": {},  # its own: an observer writing to it must not touch the next
                }
                self.host.route_completed(replaced(template, changes))
                return
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
        if template_key is not None and warm is not None:
            # Not the dict observers get: theirs is their own.
            warm.route_events[template_key] = replaced(event, {"details": {}})
        self.host.route_completed(event)


def _lookup_event(
    source: DirectorySource,
    query: str,
    cache: str,
    attempts: int,
    duration_s: float,
    correlation_id: str,
    records: int = 0,
    error: DirectoryError | None = None,
) -> LookupEvent:
    return LookupEvent(
        time=datetime.now(UTC),
        source=source.name,
        query=query,
        namespace=source.namespace,
        cache=cache,
        attempts=attempts,
        duration_s=duration_s,
        outcome="error" if error is not None else ("found" if records else "not_found"),
        records=records,
        error=f"{type(error).__name__}: {error.message}" if error is not None else None,
        correlation_id=correlation_id,
    )


def _prepare_http_stack() -> None:
    """What the HTTP stack sets up on its first connection, done now, at start: httpcore
    imports anyio's asyncio backend and its socket and TLS streams lazily, ~15 ms that would
    otherwise fall on a new process's first route (``bench/fleet.py`` measures it)."""
    import anyio
    import anyio.streams.tls  # imported for its side effect: loaded once

    anyio.get_current_task()  # loads the running event loop's backend


def _with_patient(
    envelope: RoutingEnvelope, registration: PatientRegistration, key: str, number: str
) -> RoutingEnvelope:
    """The envelope with the PDS record it was routed by first in its provenance (the
    patient's and the record's references, the practice and the life events; never a number),
    and, for its sender only, the patient's current NHS number when PDS answered for a
    superseded one."""
    provenance = envelope.provenance
    record = ForeignRecord(**registration.model_dump(mode="json", exclude={"current_nhs_number"}))
    current = registration.current_nhs_number
    return envelope.model_copy(
        update={
            "provenance": provenance.model_copy(
                update={
                    "records": (record, *provenance.records),
                    "lookups": (key, *provenance.lookups),
                }
            ),
            "current_nhs_number": current if current is not None and current != number else None,
        }
    )
