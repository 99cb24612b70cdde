"""One node of a test fleet: a process with its own Router, sharing Redis with the others.

Run as ``python -m tests._fleet_worker BASE_URL PREFIX BARRIER`` from the repository root, with
``SDS_TEST_REDIS_URL`` in the environment (kept out of argv, where a password would show in
``ps``). It starts its router, reports ready (``INCR BARRIER:ready``), waits for the go signal
(``BLPOP BARRIER:go``) so that every node routes the same cold key at the same moment, routes
once and prints one JSON line: the envelope's party key and each lookup's cache status and
attempts.

:class:`SharedRedis` (the cache and rate limiter on one Redis, under a test's own key prefix)
is also used in-process by ``tests/test_redis.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import redis.asyncio as aioredis

from sds_plugins import (
    CacheBackend,
    LookupEvent,
    RateLimiter,
    Router,
    Settings,
    WindowRateLimiter,
    hookimpl,
)
from sds_plugins._redis import RedisCache, redis_rate_limit_storage
from tests._adapters import JoinPlugin

PSIS = "urn:nhs:names:services:psis:REPC_IN150016UK05"


class _ClosingRateLimiter(WindowRateLimiter):
    """Closes its Redis connections (``WindowRateLimiter.aclose`` does not close its storage)."""

    async def aclose(self) -> None:
        close = getattr(self._storage, "aclose", None)
        if close is not None:
            await close()


class SharedRedis:
    """Cache and rate limiter in Redis under ``prefix``, so a test's keys are its own."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix

    @hookimpl
    def sds_provide_cache(self, settings: Settings) -> CacheBackend:
        return RedisCache(self.url, prefix=self.prefix)

    @hookimpl
    def sds_provide_rate_limiter(self, settings: Settings) -> RateLimiter:
        return _ClosingRateLimiter(
            per_second=settings.rate_limit_per_s,
            per_minute=settings.rate_limit_per_min,
            storage=redis_rate_limit_storage(self.url, key_prefix=self.prefix + "ratelimit"),
        )


class _Lookups:
    def __init__(self) -> None:
        self.events: list[LookupEvent] = []

    @hookimpl
    def sds_lookup_completed(self, event: LookupEvent) -> None:
        self.events.append(event)


async def main(base_url: str, prefix: str, barrier: str) -> dict[str, object]:
    url = os.environ["SDS_TEST_REDIS_URL"]
    lookups = _Lookups()
    settings = Settings(base_url=base_url, redis_url=url, retry_attempts=2)
    control = aioredis.from_url(url)
    try:
        async with Router(
            settings, plugins=[JoinPlugin(), SharedRedis(url, prefix), lookups]
        ) as router:
            await control.incr(f"{barrier}:ready")
            if await control.blpop([f"{barrier}:go"], timeout=20) is None:
                raise TimeoutError("no go signal")
            envelope = await router.route("join", org="YES", interaction=PSIS)
    finally:
        await control.aclose()
    return {
        "party_key": envelope.target.party_key,
        "lookups": [
            {"query": event.query, "cache": event.cache, "attempts": event.attempts}
            for event in lookups.events
        ],
    }


if __name__ == "__main__":
    result = asyncio.run(asyncio.wait_for(main(*sys.argv[1:4]), timeout=30))
    print(json.dumps(result), flush=True)
