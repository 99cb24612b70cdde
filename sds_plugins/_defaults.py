"""Built-in behaviour, shipped as ordinary plugins registered ``trylast``.

Override any of it by registering a plugin that returns a value from the same hook; block a
default entirely with ``SDS_PLUGINS_DISABLE=<name>`` (names below).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import httpx

from ._cache import CacheBackend, MemoryCache
from ._client import SdsClient
from ._environments import default_token_url, is_live_platform
from ._exceptions import AmbiguousError, ConfigurationError, NotFoundError
from ._pacing import Pacer, RateLimiter
from ._patients import PDS_SOURCE, PatientRefs, PdsSource, UnavailablePds
from ._retrying import RetryPolicy
from ._sources import DirectorySource, SdsSource, SourceContext
from ._validation import normalise_party_key
from .hookspecs import hookimpl

if TYPE_CHECKING:
    from ._adapter import Candidate, RouteRequest
    from ._envelope import RoutingEnvelope
    from ._settings import Settings

__all__ = ["LowestPartyKeyPolicy", "default_plugins"]

logger = logging.getLogger("sds_plugins.defaults")


class SdsDirectory:
    """Registers the ``sds`` directory source (SDS FHIR API) and gives it its configured auth."""

    @hookimpl(trylast=True)
    def sds_provide_auth(self, source: str, settings: Settings) -> httpx.Auth | None:
        return settings.build_auth() if source == "sds" else None

    @hookimpl(trylast=True)
    def sds_register_sources(
        self, register: Callable[[DirectorySource], None], context: SourceContext
    ) -> None:
        client = SdsClient.from_settings(
            context.settings, auth=context.auth_for("sds"), rate_limiter=context.rate_limiter
        )
        register(SdsSource(client))


class PdsDirectory:
    """Registers the ``pds`` directory source (PDS FHIR API: a patient's registered practice),
    with its own pacing (``SDS_PDS_RATE_LIMIT_PER_S``, shared by ``SDS_FLEET_SIZE`` processes)
    and signed-JWT client credentials (application-restricted access: PDS's live proxy verifies
    an OAuth access token first, ``proxies/live/apiproxy/targets/ig3.xml``)."""

    @hookimpl(trylast=True)
    def sds_provide_auth(self, source: str, settings: Settings) -> httpx.Auth | None:
        if source != PDS_SOURCE or not settings.configured_auth():
            return None  # NHS's public sandbox, or ours started open, takes no credentials
        token_url = (
            settings.pds_token_url
            or settings.token_url
            or default_token_url(settings.resolved_pds_base_url())
        )
        return settings.signed_jwt_auth(token_url, purpose="PDS (signed-JWT auth)")

    @hookimpl(trylast=True)
    def sds_register_sources(
        self, register: Callable[[DirectorySource], None], context: SourceContext
    ) -> None:
        settings = context.settings
        # Organisation routing does not need PDS: it keeps working either way, and routes to a
        # patient are refused, before anything is sent, saying why.
        try:
            base_url = settings.resolved_pds_base_url()
            auth = context.auth_for(PDS_SOURCE)
        except ConfigurationError as exc:
            register(UnavailablePds(f"routes to a patient are refused: {exc}"))
            return
        refusal = None
        if auth is None and is_live_platform(base_url):
            refusal = (
                f"PDS at {base_url} takes a signed-JWT bearer token and none is configured: "
                "set SDS_CLIENT_ID (or SDS_API_KEY), SDS_PRIVATE_KEY_FILE and SDS_KID (only an "
                "open sandbox answers without them)"
            )
        per_second = settings.pds_rate_limit_per_s / settings.fleet_size
        register(
            PdsSource(
                base_url,
                refs=PatientRefs.for_settings(settings),
                auth=auth,
                rate_limiter=Pacer(per_second=per_second, per_minute=max(1, int(per_second * 60))),
                retry=RetryPolicy.from_settings(settings),
                cache_ttl_s=settings.pds_cache_ttl_s,
                end_user_org=settings.pds_end_user_org,
                connect_timeout_s=settings.connect_timeout_s,
                read_timeout_s=settings.read_timeout_s,
                refusal=refusal,
            )
        )


class DefaultCache:
    """Redis when ``SDS_REDIS_URL`` is set (falling back to memory if unreachable), else memory."""

    @hookimpl(trylast=True)
    def sds_provide_cache(self, settings: Settings) -> CacheBackend:
        if settings.redis_url is not None:
            from ._redis import RedisCache

            # Waiters must outlast a leader that is legitimately retrying.
            return RedisCache(
                settings.redis_url.get_secret_value(),
                prefix=settings.redis_prefix,
                wait_timeout_s=settings.retry_budget_s + settings.read_timeout_s,
            )
        return MemoryCache()


class DefaultRateLimiter:
    """Pacing below the gateway's spike arrest (40/s → one request per 25 ms) and per-minute
    quota (2,400), fleet-wide through Redis when configured."""

    @hookimpl(trylast=True)
    def sds_provide_rate_limiter(self, settings: Settings) -> RateLimiter:
        if settings.redis_url is not None:
            from ._redis import RedisPacer

            return RedisPacer(
                settings.redis_url.get_secret_value(),
                per_second=settings.rate_limit_per_s,
                per_minute=settings.rate_limit_per_min,
                fleet_size=settings.fleet_size,
                prefix=settings.redis_prefix,
            )
        return Pacer(
            per_second=settings.rate_limit_per_s / settings.fleet_size,
            per_minute=max(1, settings.rate_limit_per_min // settings.fleet_size),
        )


class ExactlyOnePolicy:
    """Default selection: exactly one candidate, after narrowing by a ``party_key`` option."""

    @hookimpl(trylast=True)
    def sds_select_candidate(
        self,
        candidates: Sequence[Candidate],
        request: RouteRequest,
        role: str,
        option: str | None,
    ) -> Candidate:
        wanted = request.option(option) if option else None
        pool = list(candidates)
        if wanted is not None:
            key = normalise_party_key(wanted) if option == "party_key" else str(wanted).strip()
            pool = [candidate for candidate in pool if candidate.choice == key]
            if not pool:
                what = "party key" if option == "party_key" else option
                raise NotFoundError(
                    f"no {role} record has {what} {key} for {request.org} "
                    f"(candidates: {_describe(candidates)})",
                    correlation_id=request.correlation_id,
                )
        if len(pool) == 1:
            return pool[0]
        if not pool:
            raise NotFoundError(
                f"no {role} record for {request.org} and {request.interaction}",
                correlation_id=request.correlation_id,
            )
        how = f"pass the {option} option to choose" if option else "candidates"
        raise AmbiguousError(
            f"{len(pool)} {role} records for {request.org} and {request.interaction}; "
            f"{how}: {_describe(pool)}",
            candidates=[candidate.describe() for candidate in pool],
            correlation_id=request.correlation_id,
        )


class LowestPartyKeyPolicy:
    """Opt-in policy: when several candidates remain, take the lowest party key, with a warning.

    For operators who accept the risk during a known supplier migration; register it (e.g.
    ``Router(settings, plugins=[LowestPartyKeyPolicy()])``) to replace the refusal. A
    ``party_key`` option still wins, and zero candidates is still "not found".
    """

    @hookimpl
    def sds_select_candidate(
        self,
        candidates: Sequence[Candidate],
        request: RouteRequest,
        role: str,
        option: str | None,
    ) -> Candidate | None:
        if (option and request.option(option) is not None) or len(candidates) < 2:
            return None  # leave the usual rules to the default policy
        chosen = min(candidates, key=lambda c: (c.choice or "", c.address or ""))
        logger.warning(
            "%d %s records for %s and %s; chose party key %s by policy (correlation_id=%r)",
            len(candidates),
            role,
            request.org,
            request.interaction,
            chosen.party_key,
            request.correlation_id,
        )
        return chosen


def _describe(candidates: Sequence[Candidate]) -> str:
    return "; ".join(
        f"party_key={c.party_key} address={c.address} asid={c.asid}"
        + (f" key={c.key}" if c.key is not None else "")
        for c in candidates
    )


class PassThroughEnvelope:
    """Default ``sds_finalize_envelope``: the envelope as the adapter built it."""

    @hookimpl(trylast=True)
    def sds_finalize_envelope(
        self, envelope: RoutingEnvelope, request: RouteRequest
    ) -> RoutingEnvelope:
        return envelope


def default_plugins() -> Iterator[tuple[str, object]]:
    """The built-in plugins, by the names ``SDS_PLUGINS_DISABLE`` and ``plugins`` use."""
    yield "sds_plugins.sds", SdsDirectory()
    yield "sds_plugins.pds", PdsDirectory()
    yield "sds_plugins.cache", DefaultCache()
    yield "sds_plugins.ratelimit", DefaultRateLimiter()
    yield "sds_plugins.selection", ExactlyOnePolicy()
    yield "sds_plugins.finalize", PassThroughEnvelope()
