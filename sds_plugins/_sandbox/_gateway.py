"""The API platform in front of SDS, as NHS England's live proxy configures it.

``proxies/live/apiproxy/`` of ``NHSDigital/spine-directory-service-api``: the target's PreFlow
runs ``FlowCallout.EnhancedVerifyApiKey`` → ``Quota`` → ``SpikeArrest`` → ``Response-Cache-SDS``
(``targets/target.xml``), and the PostFlow populates the response cache. So, in this order:

- **API key** (the ``apikey`` header; the shared flow's bundle is not in that repository, but
  the proxy's ``VerifyApiKey-Header.xml``, used until commit ``f6356bc``, read
  ``request.header.apikey``). There is no bearer-token path: ``OAuthV2.VerifyAccessToken.xml``
  is defined but no flow uses it;
- **quota** (``Quota.xml``): every request that passed the key check counts, including those
  spike arrest then refuses and those the cache answers. The policy's literal 2,400 per calendar
  minute is a fallback for ``apiproduct.developer.quota.limit``: the product NHS deploys
  (``manifest_template.yml``) sets 300 per minute;
- **spike arrest** (``SpikeArrest.xml``: ``40ps``, no ``UseEffectiveCount``): Apigee smooths the
  rate to one request per 1/rate; a request arriving sooner after the previously *accepted* one
  is refused, however few came that second. ``40ps`` is again the fallback of
  ``apiproduct.ratelimit``, which the product sets to ``300pm`` (one per 200 ms);
- **response cache** (``ResponseCache.xml``): successful answers kept 1,800 s, keyed on verb,
  path, raw query string and, through ``UseAcceptHeader``, the ``Accept``, ``Accept-Encoding``,
  ``Accept-Language`` and ``Accept-Charset`` headers (Apigee's ResponseCache documentation);
  a ``Cache-Control`` whose first value is exactly ``no-cache`` skips both lookup and
  population (Apigee's ``request.header.<name>`` is a header's first value); error
  responses are not cached (``ExcludeErrorResponse``). ``Scope`` is ``Exclusive`` with no key
  fragment for the app, so one cache serves every application, as the sandbox's does.

Quota and spike-arrest refusals are Apigee's own fault documents (not FHIR) with status 429 and
no ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from ._common import PLAIN_JSON, _error_response, _json_bytes

if TYPE_CHECKING:
    from ._state import _State

__all__ = ["ACCEPT_HEADERS", "CachedResponse", "Gateway", "GatewayConfig", "GatewayGuard"]

#: The request headers Apigee's ``UseAcceptHeader`` adds to a response-cache key.
ACCEPT_HEADERS = ("accept", "accept-encoding", "accept-language", "accept-charset")

#: How many distinct cached answers the sandbox keeps (oldest evicted first): bounded memory.
_CACHE_ENTRIES = 10_000


@dataclass(frozen=True)
class GatewayConfig:
    """Which gateway policies are on (``None``: off)."""

    spike_arrest_per_s: float | None = None
    quota_per_min: int | None = None
    response_cache_s: float | None = None

    def __post_init__(self) -> None:
        if self.spike_arrest_per_s is not None and not (
            math.isfinite(self.spike_arrest_per_s) and 0 < self.spike_arrest_per_s <= 100_000
        ):
            raise ValueError("spike_arrest_per_s must be a number in (0, 100000]")
        if self.quota_per_min is not None and not 1 <= self.quota_per_min <= 10**9:
            raise ValueError("quota_per_min must be between 1 and 10**9")
        if self.response_cache_s is not None and not (
            math.isfinite(self.response_cache_s) and 0 < self.response_cache_s <= 86_400
        ):
            raise ValueError("response_cache_s must be a number of seconds in (0, 86400]")

    @property
    def enabled(self) -> bool:
        return any(
            value is not None
            for value in (self.spike_arrest_per_s, self.quota_per_min, self.response_cache_s)
        )


@dataclass(frozen=True)
class CachedResponse:
    status: int
    body: bytes
    media_type: str
    expires_at: float


def _rate_text(per_second: float) -> str:
    return f"{per_second:g}ps"


class Gateway:
    """The policies' state: one per sandbox (all callers share one application here)."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self._interval_s = (
            1.0 / config.spike_arrest_per_s if config.spike_arrest_per_s is not None else 0.0
        )
        self._last_accepted = -math.inf
        self._minute = -1
        self._minute_count = 0
        self._cache: OrderedDict[tuple[str, ...], CachedResponse] = OrderedDict()
        self.counts = {
            "quota_refused": 0,
            "spike_arrest_refused": 0,
            "cache_hits": 0,
            "cache_misses": 0,
            "cache_bypassed": 0,
        }

    def reset(self) -> None:
        self._last_accepted = -math.inf
        self._minute = -1
        self._minute_count = 0
        self._cache.clear()
        for name in self.counts:
            self.counts[name] = 0

    def stats(self) -> dict[str, Any]:
        return {
            "spike_arrest_per_s": self.config.spike_arrest_per_s,
            "quota_per_min": self.config.quota_per_min,
            "response_cache_s": self.config.response_cache_s,
            **self.counts,
        }

    # -- the PreFlow's limits ---------------------------------------------------------------

    def limit(self, arrival: float, wall_clock: float) -> dict[str, Any] | None:
        """Quota, then spike arrest, for a request that arrived at ``arrival`` (monotonic);
        Apigee's fault document when one refuses it, else ``None``."""
        quota = self.config.quota_per_min
        if quota is not None:
            minute = math.floor(wall_clock / 60)
            if minute != self._minute:
                self._minute, self._minute_count = minute, 0
            self._minute_count += 1
            if self._minute_count > quota:
                self.counts["quota_refused"] += 1
                return _fault(
                    "Rate limit quota violation. Quota limit  exceeded. Identifier : _default",
                    "policies.ratelimit.QuotaViolation",
                )
        if self.config.spike_arrest_per_s is not None:
            if arrival - self._last_accepted < self._interval_s:
                self.counts["spike_arrest_refused"] += 1
                return _fault(
                    "Spike arrest violation. Allowed rate : "
                    + _rate_text(self.config.spike_arrest_per_s),
                    "policies.ratelimit.SpikeArrestViolation",
                )
            self._last_accepted = arrival
        return None

    # -- the response cache -----------------------------------------------------------------

    def cache_key(
        self, method: str, path: str, query: str, accept: Sequence[str | None] = ()
    ) -> tuple[str, ...]:
        """Verb, path, raw query string and the ``Accept*`` headers (``UseAcceptHeader``)."""
        return (method, path, query, *(value or "" for value in accept))

    def lookup(self, key: tuple[str, ...], no_cache: bool, now: float) -> CachedResponse | None:
        if self.config.response_cache_s is None:
            return None
        if no_cache:
            self.counts["cache_bypassed"] += 1
            return None
        cached = self._cache.get(key)
        if cached is not None and cached.expires_at > now:
            self._cache.move_to_end(key)
            self.counts["cache_hits"] += 1
            return cached
        if cached is not None:
            del self._cache[key]
        self.counts["cache_misses"] += 1
        return None

    def populate(
        self,
        key: tuple[str, ...],
        no_cache: bool,
        status: int,
        body: bytes,
        media_type: str,
        now: float,
    ) -> None:
        ttl = self.config.response_cache_s
        if ttl is None or no_cache or not 200 <= status < 300:
            return
        self._cache[key] = CachedResponse(status, body, media_type, now + ttl)
        self._cache.move_to_end(key)
        while len(self._cache) > _CACHE_ENTRIES:
            self._cache.popitem(last=False)


def _fault(faultstring: str, errorcode: str) -> dict[str, Any]:
    return {"fault": {"faultstring": faultstring, "detail": {"errorcode": errorcode}}}


class GatewayGuard:
    """The gateway's checks for one request: key, quota and spike arrest, then latency; and the
    faults injected behind it (SDS itself failing)."""

    def __init__(self, state: _State) -> None:
        self.state = state

    async def check(self, request: Request, correlation_id: str) -> Response | None:
        """What the API platform does before a request reaches SDS; a response ends it there.

        In the live proxy's order: key check, quota, spike arrest (see ``_gateway.py``); the
        response cache and injected faults come after (``_search``). Limits are judged at
        arrival, before the injected latency, which stands for the network round trip.
        """
        state = self.state
        arrival = time.monotonic()
        blocked: Response | None = None
        if not self._authorised(request):
            blocked = _error_response(request, 401, _auth_diagnostics(request), correlation_id)
        else:
            fault = state.gateway.limit(arrival, time.time())
            if fault is not None:
                blocked = Response(_json_bytes(fault), status_code=429, media_type=PLAIN_JSON)
        if state.faults.latency_ms > 0:
            await asyncio.sleep(state.faults.latency_ms / 1000)
        return blocked

    def injected_fault(self, request: Request, correlation_id: str) -> Response | None:
        faults = self.state.faults
        if faults.outage or (faults.error_rate > 0 and self.state.rng.random() < faults.error_rate):
            extra = {}
            if faults.retry_after is not None:
                extra["Retry-After"] = str(faults.retry_after)
            return _error_response(request, faults.error_status, None, correlation_id, extra)
        return None

    def _authorised(self, request: Request) -> bool:
        """The ``apikey`` header only, as the live SDS target's PreFlow checks it.

        ``Authorization: Bearer`` is ignored here, whatever ``/oauth2/token`` issued: the SDS
        proxy verifies no access token (other APIs on the platform, such as PDS, do).
        """
        config = self.state.config
        return config.api_key is None or request.headers.get("apikey") == config.api_key


def _auth_diagnostics(request: Request) -> str:
    if request.headers.get("apikey"):
        return "Invalid API Key"
    return "Missing API Key"
