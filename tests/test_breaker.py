"""The breaker isolates: a bad answer for one key does not stop the others, half-open lets
exactly one probe through, and an open breaker says so with its own error and when to retry.

On the cache layer itself, with a clock the test moves (no sleeping).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sds_plugins import (
    BreakerOpenError,
    DirectoryUnavailableError,
    MalformedResponseError,
    MemoryCache,
    RateLimitedError,
)
from sds_plugins._cache import LookupCache


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Directory:
    """A fetch per key that fails or answers as told, counting calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.failure: BaseException | None = None
        self.gate: asyncio.Event | None = None

    def fetch(self, key: str) -> Any:
        async def run() -> tuple[tuple[Any, ...], int]:
            self.calls.append(key)
            if self.gate is not None:
                await self.gate.wait()
            if self.failure is not None:
                raise self.failure
            return (f"record for {key}",), 1

        return run


def _cache(clock: Clock) -> LookupCache:
    return LookupCache(
        MemoryCache(), ttl_s=60, stale_if_error_s=3600, breaker_cooldown_s=5, clock=clock
    )


async def _get(cache: LookupCache, directory: Directory, key: str) -> Any:
    return await cache.get_or_fetch(
        key,
        namespace="sds:test",
        fetch=directory.fetch(key),
        encode=lambda records: repr(records).encode(),
        decode=lambda data: (data.decode(),),
    )


async def test_a_malformed_answer_for_one_key_leaves_the_others_alone() -> None:
    clock, directory = Clock(), Directory()
    cache = _cache(clock)
    directory.failure = MalformedResponseError("bad body for this practice")
    with pytest.raises(MalformedResponseError):
        await _get(cache, directory, "broken")
    directory.failure = None
    results = await asyncio.gather(*(_get(cache, directory, f"healthy-{n}") for n in range(20)))
    assert [r.cache for r in results] == ["miss"] * 20
    assert cache.breaker("sds:test").state == "closed"


async def test_a_rate_limit_does_not_open_the_breaker() -> None:
    clock, directory = Clock(), Directory()
    cache = _cache(clock)
    directory.failure = RateLimitedError("quota", limit="quota", retry_after_s=30)
    with pytest.raises(RateLimitedError):
        await _get(cache, directory, "a")
    assert cache.breaker("sds:test").state == "closed"


async def test_an_open_breaker_fails_cold_keys_at_once_with_its_own_error() -> None:
    clock, directory = Clock(), Directory()
    cache = _cache(clock)
    directory.failure = DirectoryUnavailableError("SDS failed with 503", status_code=503)
    with pytest.raises(DirectoryUnavailableError):
        await _get(cache, directory, "first")
    clock.now += 2
    with pytest.raises(BreakerOpenError) as raised:
        await _get(cache, directory, "second")
    error = raised.value
    assert directory.calls == ["first"]  # nothing sent for the second
    assert error.status_code is None  # not an upstream answer
    assert error.attempts == 0
    assert error.retryable
    assert error.retry_after_s == pytest.approx(3)  # the cooldown's remainder
    assert "503" in (error.cause or "")
    assert cache.breaker("sds:test").state == "open"


async def test_half_open_admits_exactly_one_probe() -> None:
    clock, directory = Clock(), Directory()
    cache = _cache(clock)
    directory.failure = DirectoryUnavailableError("down", status_code=503)
    with pytest.raises(DirectoryUnavailableError):
        await _get(cache, directory, "first")
    clock.now += 5  # cooldown over
    directory.failure = None
    directory.gate = asyncio.Event()  # the probe takes a while
    tasks = [asyncio.ensure_future(_get(cache, directory, f"key-{n}")) for n in range(50)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert cache.breaker("sds:test").state == "half-open"
    directory.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert directory.calls == ["first", "key-0"]  # one probe, not 50 requests
    assert not isinstance(results[0], BaseException)
    assert results[0].cache == "miss"
    refused = [r for r in results[1:] if isinstance(r, BreakerOpenError)]
    assert len(refused) == 49
    assert "probe" in refused[0].message
    # The probe's success closed it: the next cold key goes straight through.
    assert (await _get(cache, directory, "after")).cache == "miss"
    assert cache.breaker("sds:test").state == "closed"


async def test_a_failed_probe_opens_the_breaker_again() -> None:
    clock, directory = Clock(), Directory()
    cache = _cache(clock)
    directory.failure = DirectoryUnavailableError("down", status_code=503)
    with pytest.raises(DirectoryUnavailableError):
        await _get(cache, directory, "first")
    clock.now += 5
    with pytest.raises(DirectoryUnavailableError):
        await _get(cache, directory, "probe")
    with pytest.raises(BreakerOpenError):
        await _get(cache, directory, "next")
    assert directory.calls == ["first", "probe"]


async def test_warm_keys_are_served_stale_through_an_outage_and_a_bad_body() -> None:
    clock, directory = Clock(), Directory()
    cache = _cache(clock)
    await _get(cache, directory, "warm")
    clock.now += 120  # past its freshness
    directory.failure = MalformedResponseError("half-deployed upstream")
    assert (await _get(cache, directory, "warm")).cache == "stale"
    directory.failure = DirectoryUnavailableError("down", status_code=503)
    assert (await _get(cache, directory, "warm")).cache == "stale"
    assert (await _get(cache, directory, "warm")).cache == "stale"  # breaker open: not asked
    assert directory.calls == ["warm", "warm", "warm"]


async def test_a_cooldown_of_zero_means_no_breaker() -> None:
    clock, directory = Clock(), Directory()
    cache = LookupCache(MemoryCache(), breaker_cooldown_s=0, clock=clock)
    directory.failure = DirectoryUnavailableError("down", status_code=503)
    for key in ("a", "b"):
        with pytest.raises(DirectoryUnavailableError) as raised:
            await _get(cache, directory, key)
        assert not isinstance(raised.value, BreakerOpenError)
    assert directory.calls == ["a", "b"]
