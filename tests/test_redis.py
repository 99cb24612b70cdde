"""The Redis backend over a real Redis: shared entries, fleet-wide single-flight, fallback.

Most need ``SDS_TEST_REDIS_URL`` (e.g. ``redis://127.0.0.1:6379/15``) and skip without it;
each works under its own key prefix and deletes its keys before and after.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from sds_plugins import (
    CacheEntry,
    DirectoryTimeoutError,
    DirectoryUnavailableError,
    RateLimitedError,
    Router,
    Settings,
)
from sds_plugins._cache import LookupCache
from sds_plugins._pacing import writes_at_gate
from sds_plugins._redis import RedisCache, RedisPacer
from sds_plugins._redis._pacer import _run_ends
from sds_plugins.sandbox import Sandbox
from sds_plugins.testing import ManualClock

from ._adapters import JoinPlugin
from ._fleet_worker import PSIS

REDIS_URL = os.environ.get("SDS_TEST_REDIS_URL", "")
UNREACHABLE = "redis://127.0.0.1:1/0"
ROOT = Path(__file__).resolve().parents[1]
DEVICE_PATH = "/spine-directory/FHIR/R4/Device"
ENDPOINT_PATH = "/spine-directory/FHIR/R4/Endpoint"

# Only the tests that talk to a real Redis skip without one (they ask for ``prefix`` or
# ``raw``); the fallbacks when Redis is unreachable and the URL checks run everywhere.
NEEDS_REDIS = "needs a real Redis: set SDS_TEST_REDIS_URL (e.g. redis://127.0.0.1:6379/15)"


def _need_redis() -> None:
    if not REDIS_URL:
        pytest.skip(NEEDS_REDIS)


# -- helpers ----------------------------------------------------------------------------------


def _delete_prefixed(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        names = list(client.scan_iter(match=prefix + "*", count=500))
        if names:
            client.delete(*names)
    finally:
        client.close()


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted before and after."""
    _need_redis()
    value = f"sds-test-{uuid.uuid4().hex[:12]}:"
    _delete_prefixed(value)
    yield value
    _delete_prefixed(value)


@pytest.fixture
def raw() -> Iterator[redis.Redis]:
    """A plain client, to look at what the backend wrote."""
    _need_redis()
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


def _entry(
    data: bytes = b'{"records": []}', *, fresh_s: float = 60.0, stale_s: float = 120.0
) -> CacheEntry:
    now = time.time()
    return CacheEntry(
        data=data, stored_at=now, fresh_until=now + fresh_s, stale_until=now + stale_s
    )


class Fetcher:
    """A fetch function that counts its calls and can be held until released."""

    def __init__(self, result: CacheEntry | BaseException | None = None, delay_s: float = 0.0):
        self.result = result if result is not None else _entry(b"fetched")
        self.delay_s = delay_s
        self.calls = 0
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()

    def hold(self) -> Fetcher:
        self.release.clear()
        return self

    async def __call__(self) -> CacheEntry:
        self.calls += 1
        self.started.set()
        await self.release.wait()
        await asyncio.sleep(self.delay_s)
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


async def _until_waiting(cache: RedisCache, key: str) -> None:
    """Until ``cache`` is waiting for another process's fetch of ``key``."""
    for _ in range(2500):  # up to ~5 s
        if key in cache._wakeups:
            return
        await asyncio.sleep(0.002)
    raise AssertionError(f"nobody is waiting for {key}")


def _caches(
    prefix: str,
    count: int,
    *,
    lock_ttl_s: float = 10.0,
    wait_timeout_s: float = 15.0,
    near_ttl_s: float = 5.0,
) -> list[RedisCache]:
    return [
        RedisCache(
            REDIS_URL,
            prefix=prefix,
            lock_ttl_s=lock_ttl_s,
            wait_timeout_s=wait_timeout_s,
            near_ttl_s=near_ttl_s,
        )
        for _ in range(count)
    ]


async def _eventually(check: Any, within_s: float = 5.0) -> None:
    """Until ``await check()`` is true: a change reaches another process's near cache when its
    invalidation arrives (milliseconds), not at the same instant."""
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, "the change never reached the other instance"
        await asyncio.sleep(0.01)


async def _close(*caches: RedisCache) -> None:
    for cache in caches:
        await cache.aclose()


def _redis_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "sds_plugins.redis" and r.levelno == logging.WARNING
    ]


# -- backend ----------------------------------------------------------------------------------


async def test_entries_are_shared_between_instances(prefix: str) -> None:
    a, b = _caches(prefix, 2)
    try:
        entry = _entry(b'{"records": ["\\u00e9", "\\n"]}\n\x00binary')
        negative = _entry(b"[]").model_copy(update={"negative": True})
        await a.set("k", entry)
        await a.set("empty", negative)
        assert await b.get("k") == entry
        assert await b.get("empty") == negative
        assert await b.get("missing") is None

        await b.delete("k")
        await _eventually(lambda: _is_none(a.get("k")))
        await a.clear()
        await _eventually(lambda: _is_none(b.get("empty")))
    finally:
        await _close(a, b)


async def _is_none(pending: Any) -> bool:
    return await pending is None


async def test_the_near_cache_answers_without_redis_and_hears_every_change(
    prefix: str, raw: redis.Redis
) -> None:
    a, b = _caches(prefix, 2)
    try:
        await a.set("k", _entry(b"one"))
        assert (await b.get("k")).data == b"one"  # read once from Redis...
        assert b._entry_now("k") is not None  # ...then held near: no I/O
        generation = b._generation
        await a.set("k", _entry(b"two"))  # another process writes: b hears it
        await _eventually(lambda: _has(b, "k", b"two"))
        assert b._generation != generation  # the warm path notices the change too
        raw.delete(f"{prefix}entry:k")  # behind every cache's back: no invalidation...
        assert b._entry_now("k") is not None  # ...so held until near_ttl_s at most
    finally:
        await _close(a, b)


async def _has(cache: RedisCache, key: str, data: bytes) -> bool:
    entry = await cache.get(key)
    return entry is not None and entry.data == data


async def test_a_near_cache_without_its_subscription_holds_nothing(prefix: str) -> None:
    (cache,) = _caches(prefix, 1)
    try:
        await cache.set("k", _entry(b"one"))
        assert await cache.get("k") is not None and cache._entry_now("k") is not None
        assert cache._listener is not None
        cache._listener.cancel()  # the subscription is gone: invalidations would be missed
        await asyncio.wait([cache._listener])
        assert cache._entry_now("k") is None
        assert (await cache.get("k")).data == b"one"  # from Redis again, and held again
        assert cache._entry_now("k") is not None
    finally:
        await cache.aclose()


async def test_entries_expire_at_stale_until(prefix: str, raw: redis.Redis) -> None:
    # No near cache: the test removes keys behind the cache's back, which only Redis sees.
    (cache,) = _caches(prefix, 1, near_ttl_s=0)
    try:
        await cache.set("soon", _entry(fresh_s=0.1, stale_s=0.4))
        ttl_ms = raw.pttl(f"{prefix}entry:soon")
        assert isinstance(ttl_ms, int)
        assert 0 < ttl_ms <= 400
        assert await cache.get("soon") is not None
        # When Redis drops it (at that TTL; here at once: a non-positive PEXPIRE deletes the
        # key, so the test does not wait for time to pass), it is a miss.
        raw.pexpire(f"{prefix}entry:soon", 0)
        assert await cache.get("soon") is None

        # Already past stale_until: nothing is stored (never a non-positive TTL), and an older
        # value under that key is removed rather than left behind.
        await cache.set("gone", _entry())
        await cache.set("gone", _entry(fresh_s=-2, stale_s=-1))
        assert not raw.exists(f"{prefix}entry:gone")
        assert await cache.get("gone") is None
    finally:
        await cache.aclose()


async def test_coalesce_across_instances_fetches_once(prefix: str) -> None:
    caches = _caches(prefix, 3)
    fetch = Fetcher(delay_s=0.2)
    try:
        results = await asyncio.gather(*(cache.coalesce("cold", fetch) for cache in caches))
        assert fetch.calls == 1
        assert [entry for entry, _ in results] == [fetch.result] * 3
        assert sorted(fetched_here for _, fetched_here in results) == [False, False, True]
        # The leader stored the entry for everyone.
        assert await caches[2].get("cold") == fetch.result
    finally:
        await _close(*caches)


async def test_waiters_only_accept_a_result_stored_after_they_started(prefix: str) -> None:
    a, b = _caches(prefix, 2)
    try:
        await a.coalesce("k", Fetcher(_entry(b"old")))  # a finished round leaves an outcome
        leader = Fetcher(_entry(b"new")).hold()
        first = asyncio.create_task(a.coalesce("k", leader))
        await leader.started.wait()
        waiter = Fetcher(_entry(b"wrong"))
        second = asyncio.create_task(b.coalesce("k", waiter))
        await _until_waiting(b, "k")
        leader.release.set()
        assert (await first)[0].data == b"new"
        assert await second == (leader.result, False)
        assert waiter.calls == 0
    finally:
        await _close(a, b)


async def test_a_node_that_wins_the_lock_after_another_stored_the_answer_does_not_fetch(
    prefix: str,
) -> None:
    # The race of two nodes: B reads the cache and misses; A fetches, stores the answer and
    # releases its lock; B then wins the free lock. B reads once more instead of fetching.
    a, b = (LookupCache(cache) for cache in _caches(prefix, 2))
    fetches: list[str] = []

    async def fetch(node: str) -> tuple[tuple[Any, ...], int]:
        fetches.append(node)
        return ("record",), 1

    def get_or_fetch(cache: LookupCache, node: str) -> Any:
        return cache.get_or_fetch(
            "k",
            namespace="sds:test",
            fetch=lambda: fetch(node),
            encode=lambda records: json.dumps(list(records)).encode(),
            decode=lambda data: tuple(json.loads(data)),
        )

    try:
        assert (await get_or_fetch(a, "a")).cache == "miss"

        async def missed(key: str) -> None:  # B's read, made before A stored the answer
            return None

        b._get = missed  # type: ignore[method-assign]
        second = await get_or_fetch(b, "b")
        assert (second.cache, second.records, fetches) == ("coalesced", ("record",), ["a"])
        # An explicit refresh still asks the directory.
        refreshed = await b.get_or_fetch(
            "k",
            namespace="sds:test",
            fetch=lambda: fetch("b"),
            encode=lambda records: json.dumps(list(records)).encode(),
            decode=lambda data: tuple(json.loads(data)),
            bypass=True,
        )
        assert (refreshed.cache, fetches) == ("bypass", ["a", "b"])
    finally:
        await _close(a.backend, b.backend)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (DirectoryUnavailableError("says 503", status_code=503), DirectoryUnavailableError),
        (RateLimitedError("still 429", status_code=429, retry_after_s=2.0), RateLimitedError),
        (RuntimeError("a bug in a source"), DirectoryUnavailableError),
    ],
)
async def test_leader_failure_reaches_waiters_at_once(
    prefix: str, error: Exception, expected: type[Exception]
) -> None:
    a, b = _caches(prefix, 2, wait_timeout_s=15.0)
    leader = Fetcher(error).hold()
    waiter = Fetcher()
    try:
        first = asyncio.create_task(a.coalesce("k", leader))
        await leader.started.wait()
        second = asyncio.create_task(b.coalesce("k", waiter))
        await _until_waiting(b, "k")
        leader.release.set()
        with pytest.raises(type(error)):
            await first
        with pytest.raises(expected) as raised:
            await second
        # Told by the leader (its message, below), not by the wait timeout, and without fetching.
        assert waiter.calls == 0
        assert getattr(error, "message", str(error)) in str(raised.value)
        assert raised.value.attempts == 0
        if isinstance(error, RateLimitedError):
            assert raised.value.retry_after_s == 2.0
            assert raised.value.status_code == 429
    finally:
        await _close(a, b)


async def test_a_dead_leader_is_taken_over(prefix: str, raw: redis.Redis) -> None:
    (cache,) = _caches(prefix, 1)
    # A leader that took the lock and died: nothing renews it, nothing is published.
    raw.set(f"{prefix}lock:k", "f" * 32, px=300)
    fetch = Fetcher()
    try:
        entry, fetched_here = await cache.coalesce("k", fetch)
        assert (entry, fetched_here, fetch.calls) == (fetch.result, True, 1)
    finally:
        await cache.aclose()


async def test_a_live_leader_keeps_its_lock(prefix: str) -> None:
    a, b = _caches(prefix, 2, lock_ttl_s=0.15)
    fetch = Fetcher(delay_s=0.6)
    try:
        results = await asyncio.gather(a.coalesce("k", fetch), b.coalesce("k", fetch))
        # The fetch outlived the lock TTL several times over; the lock was extended, so the
        # waiter never mistook the leader for dead.
        assert fetch.calls == 1
        assert sorted(fetched for _, fetched in results) == [False, True]
    finally:
        await _close(a, b)


async def test_a_cancelled_leader_hands_over_at_once(prefix: str) -> None:
    a, b = _caches(prefix, 2, lock_ttl_s=10.0)
    leader = Fetcher().hold()
    waiter = Fetcher()
    try:
        first = asyncio.create_task(a.coalesce("k", leader))
        await leader.started.wait()
        second = asyncio.create_task(b.coalesce("k", waiter))
        await _until_waiting(b, "k")
        first.cancel()
        async with asyncio.timeout(5):  # well before the 10 s lock expiry
            assert await second == (waiter.result, True)
    finally:
        await _close(a, b)


async def test_waiting_is_bounded(prefix: str, raw: redis.Redis) -> None:
    (cache,) = _caches(prefix, 1, wait_timeout_s=0.3)
    raw.set(f"{prefix}lock:k", "f" * 32, px=10_000)  # a leader that is taking too long
    fetch = Fetcher()
    try:
        with pytest.raises(DirectoryTimeoutError, match="waiting for another process"):
            await cache.coalesce("k", fetch)
        assert fetch.calls == 0
    finally:
        await cache.aclose()


async def test_unreachable_redis_falls_back_to_memory(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    clock = ManualClock(1000.0)
    cache = RedisCache(UNREACHABLE, reconnect_after_s=0.05, clock=clock)
    fetch = Fetcher()
    try:
        entry = _entry()
        await cache.set("k", entry)
        assert await cache.get("k") == entry
        assert await cache.coalesce("c", fetch) == (fetch.result, True)
        clock.advance(0.1)  # past reconnect_after_s: Redis is tried (and fails) again
        assert await cache.get("k") == entry
        await cache.delete("k")
        assert await cache.get("k") is None
        await cache.clear()
    finally:
        await cache.aclose()
    assert fetch.calls == 1
    warnings = _redis_warnings(caplog)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "127.0.0.1:1/0" in warnings[0].getMessage()


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in {"redis", "rediss"}:
        pytest.skip("needs a redis:// URL to add a password to")
    return urlunsplit(parts._replace(netloc=f":{password}@{parts.hostname}:{parts.port or 6379}"))


async def test_the_password_is_never_shown(prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # Against the test Redis (which may or may not accept the password), and against nothing
    # (every operation fails and is logged).
    for url in (_with_password(REDIS_URL, "s3cret"), "redis://:s3cret@127.0.0.1:1/0"):
        cache = RedisCache(url, prefix=prefix)
        pacer = RedisPacer(url, prefix=prefix)
        try:
            assert "s3cret" not in repr(cache)
            assert "s3cret" not in repr(pacer)
            await cache.set("k", _entry())
            assert await cache.get("k") is not None  # from Redis or the in-memory fallback
            fetch = Fetcher()
            assert await cache.coalesce("c", fetch) == (fetch.result, True)
            ticket = await pacer.acquire()  # where Redis fails: paces this process alone
            ticket.finished()
        finally:
            await cache.aclose()
            await pacer.aclose()
    # The unreachable one, once for the cache and once for the pacer.
    assert len(_redis_warnings(caplog)) == 2
    assert "127.0.0.1:1/0" in caplog.text
    assert "s3cret" not in caplog.text


# -- shared pacing ----------------------------------------------------------------------------


def _quota_reserved(raw: redis.Redis, prefix: str) -> int:
    """Requests counted against the quota, over every calendar minute's key."""
    return sum(int(raw.get(key) or 0) for key in raw.scan_iter(match=f"{prefix}pace:quota:*"))


async def test_two_pacers_on_one_redis_share_one_timeline(prefix: str, raw: redis.Redis) -> None:
    pacers = [RedisPacer(REDIS_URL, per_second=50, prefix=prefix) for _ in "ab"]

    async def acquire(which: int) -> None:
        ticket = await pacers[which].acquire()
        ticket.finished()

    try:
        before = raw.time()
        async with asyncio.timeout(10):
            await asyncio.gather(*(acquire(i % 2) for i in range(10)))
    finally:
        for pacer in pacers:
            await pacer.aclose()
    # Ten slots were reserved on one timeline, one interval apart, whichever pacer asked:
    # the next free slot is ten intervals after the first (separate timelines: two).
    interval_us = pacers[0]._interval_us()
    next_slot = int(raw.get(f"{prefix}pace:next") or 0)
    start_us = before[0] * 1_000_000 + before[1]
    assert start_us + 10 * interval_us <= next_slot < start_us + 10 * interval_us + 1_000_000
    assert _quota_reserved(raw, prefix) == 10


async def test_a_started_fleet_pacer_and_its_fallback_learn_when_writes_leave(
    prefix: str,
) -> None:
    pacer = RedisPacer(REDIS_URL, per_second=50, prefix=prefix, fleet_size=2)
    try:
        await pacer.start()
        expected = await writes_at_gate()
        assert pacer.spacer.writes_at_gate is expected
        assert pacer.fallback.spacer.writes_at_gate is expected
    finally:
        await pacer.aclose()


async def test_a_busy_fleet_process_reserves_runs_with_one_margin_after_each(
    prefix: str, raw: redis.Redis
) -> None:
    pacer = RedisPacer(REDIS_URL, per_second=50, prefix=prefix, fleet_size=2)
    evals = 0
    reserve_run = pacer._reserve_run

    async def counted(limits: list[float | None]) -> list[tuple[float | None, float]]:
        nonlocal evals
        evals += 1
        return await reserve_run(limits)

    pacer._reserve_run = counted  # type: ignore[method-assign]
    try:
        before = raw.time()
        async with asyncio.timeout(10):
            tickets = await asyncio.gather(*(pacer.acquire() for _ in range(20)))
        for ticket in tickets:
            ticket.finished()
    finally:
        await pacer.aclose()
    # Twenty requests asked at once: two reservations, runs of 16 and 4.
    assert evals == 2
    interval = 1 / 50 + pacer.guard.base_s
    slots = sorted(t.not_before for t in tickets)
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    # Inside a run: one interval.
    assert sum(abs(g - interval) < 1e-5 for g in gaps) == 18
    # After each run, on Redis's clock, the margin too (at least the 1 ms tolerance): twenty
    # intervals and two margins from the first slot to the next free one.
    next_slot = int(raw.get(f"{prefix}pace:next") or 0) / 1_000_000
    start = before[0] + before[1] / 1_000_000
    assert start + 20 * interval + 2 * 0.001 <= next_slot < start + 20 * interval + 1.0
    # Each request knows where its run ends: only beyond that would it meet another's slot.
    assert sorted({t.run_end for t in tickets}) == [slots[15], slots[19]]
    assert _quota_reserved(raw, prefix) == 20


async def test_in_a_run_a_request_beyond_its_deadline_reserves_nothing_and_others_go_on(
    prefix: str, raw: redis.Redis
) -> None:
    pacer = RedisPacer(REDIS_URL, per_second=10, prefix=prefix, fleet_size=2)
    try:
        first = await pacer.acquire()  # the timeline is busy for the next 100 ms
        first.finished()
        soon = time.monotonic() + 0.05
        outcomes = await asyncio.gather(
            pacer.acquire(),
            pacer.acquire(deadline=soon),  # its slot would be ~200 ms away
            pacer.acquire(),
            return_exceptions=True,
        )
    finally:
        await pacer.aclose()
    refused = outcomes[1]
    assert isinstance(refused, RateLimitedError) and refused.limit == "pace"
    assert refused.retry_after_s is not None and 0.05 < refused.retry_after_s < 0.5
    granted = [o for o in (outcomes[0], outcomes[2]) if not isinstance(o, BaseException)]
    assert len(granted) == 2
    for ticket in granted:
        ticket.finished()
    # The refused request's slot went to the next one: two slots one interval apart.
    assert granted[1].not_before - granted[0].not_before == pytest.approx(0.102, abs=1e-5)
    assert _quota_reserved(raw, prefix) == 3


async def test_an_idle_fleet_timeline_gives_a_slot_the_answer_can_reach_in_time(
    prefix: str, raw: redis.Redis
) -> None:
    pacer = RedisPacer(REDIS_URL, per_second=50, prefix=prefix, fleet_size=2)
    try:
        for delay in (0.004, 0.004, 0.004, 0.004):  # as seen between releases and the gate
            pacer.spacer._release_delays.append(delay)
        before = raw.time()
        ticket = await pacer.acquire()
        ticket.finished()
        head = pacer._head_start_s()
    finally:
        await pacer.aclose()
    assert head >= 0.004
    # On Redis's clock the slot was no sooner than the head start: the next free slot is at
    # least that, plus one interval and the margin, after the reservation.
    next_slot = int(raw.get(f"{prefix}pace:next") or 0)
    start_us = before[0] * 1_000_000 + before[1]
    assert next_slot >= start_us + (0.004 + 1 / 50 + pacer.guard.base_s) * 1_000_000
    assert RedisPacer(REDIS_URL, prefix=prefix)._head_start_s() == 0.0  # one process: none


async def test_closing_a_pacer_releases_every_waiter(prefix: str) -> None:
    pacer = RedisPacer(REDIS_URL, per_second=50, prefix=prefix, fleet_size=2)
    started = asyncio.Event()
    reserve_run = pacer._reserve_run

    async def stuck(limits: list[float | None]) -> list[tuple[float | None, float]]:
        started.set()
        await asyncio.sleep(30)
        return await reserve_run(limits)

    pacer._reserve_run = stuck  # type: ignore[method-assign]
    waiters = [asyncio.create_task(pacer.acquire()) for _ in range(3)]
    await started.wait()
    await pacer.aclose()
    async with asyncio.timeout(5):
        tickets = await asyncio.gather(*waiters)
    # Nobody hangs: each was paced by the fallback (this process's share of the rate).
    assert len(tickets) == 3 and pacer.fallback.spacer.released == 3


async def test_closing_before_the_reservation_starts_releases_the_waiter(prefix: str) -> None:
    pacer = RedisPacer(REDIS_URL, per_second=50, prefix=prefix, fleet_size=2)
    waiter = asyncio.create_task(pacer.acquire())
    await asyncio.sleep(0)  # queued; its reservation task created but not yet run
    await pacer.aclose()
    async with asyncio.timeout(5):
        ticket = await waiter
    ticket.finished()
    assert pacer.fallback.spacer.released == 1


async def test_a_bug_in_the_reservation_is_logged_once_and_paced_locally(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    pacer = RedisPacer(REDIS_URL, per_second=50, prefix=prefix, fleet_size=2)

    async def broken(deadlines: list[float | None]) -> list[tuple[float | None, float]]:
        raise ValueError("an answer of the wrong shape")

    pacer._reserve_run = broken  # type: ignore[method-assign]
    loop_errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: loop_errors.append(context))
    try:
        async with asyncio.timeout(5):
            tickets = await asyncio.gather(*(pacer.acquire() for _ in range(3)))
        for ticket in tickets:
            ticket.finished()
    finally:
        await pacer.aclose()
        asyncio.get_running_loop().set_exception_handler(None)
    assert pacer.fallback.spacer.released == 3
    logged = [r for r in caplog.records if "could not reserve" in r.getMessage()]
    assert len(logged) == 1 and loop_errors == []


def test_a_run_that_skips_to_the_next_minute_ends_where_its_slots_stop() -> None:
    # Two slots, a refused request, then the minute's quota spent: the rest in the next one.
    slots = [10.0, 10.027, None, 60.0, 60.027]
    assert _run_ends(slots, 0.027) == [10.027, 10.027, 0.0, 60.027, 60.027]
    assert _run_ends([], 0.027) == []


async def test_a_pacer_refuses_at_once_a_wait_beyond_the_deadline(
    prefix: str, raw: redis.Redis
) -> None:
    pacer = RedisPacer(REDIS_URL, per_second=1, prefix=prefix)
    try:
        ticket = await pacer.acquire()
        ticket.finished()
        # The next slot is a second away: a caller with 0.1 s left is told so, not kept.
        with pytest.raises(RateLimitedError) as raised:
            await pacer.acquire(deadline=time.monotonic() + 0.1)
        assert raised.value.limit == "pace"
        assert raised.value.retry_after_s is not None and 0.5 < raised.value.retry_after_s <= 1.1
        assert raised.value.attempts == 0
        assert _quota_reserved(raw, prefix) == 1  # the refused request reserved nothing
    finally:
        await pacer.aclose()


async def test_a_spent_quota_closes_the_timeline_for_the_whole_fleet(
    prefix: str, raw: redis.Redis
) -> None:
    pacers = [RedisPacer(REDIS_URL, prefix=prefix) for _ in "ab"]
    try:
        # One node met the gateway's quota fault: every node waits for the next minute.
        await pacers[0].throttled("quota", retry_after_s=30)
        with pytest.raises(RateLimitedError) as raised:
            await pacers[1].acquire(deadline=time.monotonic() + 1)
        assert raised.value.retry_after_s is not None and 28 < raised.value.retry_after_s <= 30
    finally:
        for pacer in pacers:
            await pacer.aclose()


# -- engine -----------------------------------------------------------------------------------


def _router(sb: Sandbox, url: str, prefix: str = "sds-plugins:", **settings: Any) -> Router:
    options: dict[str, Any] = {"retry_attempts": 2, **settings}
    config = Settings(base_url=sb.base_url, redis_url=url, redis_prefix=prefix, **options)
    return Router(config, plugins=[JoinPlugin()])


def _requests(sb: Sandbox) -> dict[str, int]:
    return dict(sb.stats()["requests"])


async def test_a_second_node_is_served_from_the_shared_cache(
    make_sandbox: Callable[..., Sandbox], prefix: str
) -> None:
    sb = make_sandbox()
    async with _router(sb, REDIS_URL, prefix) as first:
        envelope = await first.route("join", org="YES", interaction=PSIS)
    assert envelope.target.party_key == "YES-0000806"
    assert _requests(sb) == {DEVICE_PATH: 1, ENDPOINT_PATH: 1}

    async with _router(sb, REDIS_URL, prefix) as second:
        again = await second.route("join", org="YES", interaction=PSIS)
    assert again.target == envelope.target
    assert again.provenance.cache == "hit"
    assert _requests(sb) == {DEVICE_PATH: 1, ENDPOINT_PATH: 1}


async def test_a_burst_of_identical_routes_reads_redis_once_per_lookup(
    make_sandbox: Callable[..., Sandbox], prefix: str
) -> None:
    sb = make_sandbox()
    async with _router(sb, REDIS_URL, prefix) as router:
        await router.route("join", org="YES", interaction=PSIS)
        cache = router.cache
        reads = 0
        get = cache.backend.get

        async def counting_get(key: str) -> Any:
            nonlocal reads
            reads += 1
            return await get(key)

        cache.backend.get = counting_get  # type: ignore[method-assign]
        # Far more routes than the connection pool has connections.
        envelopes = await asyncio.gather(
            *(router.route("join", org="YES", interaction=PSIS) for _ in range(1000))
        )
    assert {e.provenance.cache for e in envelopes} == {"hit"}
    assert reads == 2  # one per lookup, not one per route
    assert _requests(sb) == {DEVICE_PATH: 1, ENDPOINT_PATH: 1}


class Fleet:
    """Worker processes (``tests/_fleet_worker.py``) started together through a Redis barrier."""

    def __init__(self, raw: redis.Redis, prefix: str) -> None:
        self.raw = raw
        self.prefix = prefix
        self.barrier = prefix + "barrier"

    def run(self, configs: list[dict[str, Any]], timeout_s: float = 90) -> list[dict[str, Any]]:
        env = {**os.environ, "SDS_TEST_REDIS_URL": REDIS_URL}
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests._fleet_worker",
                    json.dumps({"prefix": self.prefix, "barrier": self.barrier, **config}),
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for config in configs
        ]
        try:
            deadline = time.monotonic() + 60
            while int(self.raw.get(f"{self.barrier}:ready") or 0) < len(workers):
                failed = [w for w in workers if w.poll() is not None]
                assert not failed, failed[0].communicate()[1]
                assert time.monotonic() < deadline, "the workers did not start"
                time.sleep(0.01)
            self.raw.rpush(f"{self.barrier}:go", *["go"] * len(workers))  # go together
            outputs = []
            for worker in workers:
                out, err = worker.communicate(timeout=timeout_s)
                assert worker.returncode == 0, err
                outputs.append(json.loads(out.strip().splitlines()[-1]))
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()
        return outputs


def test_a_fleet_of_processes_makes_one_request_per_lookup(
    make_sandbox: Callable[..., Sandbox], prefix: str, raw: redis.Redis
) -> None:
    sb = make_sandbox()
    sb.set_faults(latency_ms=300)  # so the nodes' lookups overlap however they are scheduled
    # Four processes, each with 500 concurrent identical routes: far more than a process's
    # Redis connection pool holds, so the pool waits rather than giving up.
    config = {"base_url": sb.base_url, "orgs": ["YES"], "copies": 500}
    outputs = Fleet(raw, prefix).run([config] * 4)

    for output in outputs:
        assert output["outcomes"] == {"ok": 500}
        assert output["party_keys"] == ["YES-0000806"]
        assert output["warnings"] == []  # Redis was never given up on
    assert _requests(sb) == {DEVICE_PATH: 1, ENDPOINT_PATH: 1}
    # Per lookup, exactly one node sent the request; the others waited for its answer.
    lookups = [lookup for output in outputs for lookup in output["lookups"]]
    for query in {lookup["query"] for lookup in lookups}:
        senders = [lk for lk in lookups if lk["query"] == query and lk["attempts"] > 0]
        assert len(senders) == 1, lookups


def _practices(count: int, seed: int = 0) -> list[str]:
    """ODS codes of the sandbox's synthetic practices (``SandboxConfig(synthetic=...)``)."""
    from sds_plugins._sandbox._records import AS_FILE, MHS_FILE, iter_synthetic, packaged_raw

    existing = {str(r.get("nhsIDCode")) for name in (MHS_FILE, AS_FILE) for r in packaged_raw(name)}
    return [mhs["nhsIDCode"] for mhs, _ in iter_synthetic(count, seed, exclude=existing)]


GPC = "urn:nhs:names:services:gpconnect:fhir:operation:gpc.getstructuredrecord-1"


# What a fleet pacing on one shared timeline draws from a gateway depends on the machine's load,
# so bench/fleet.py measures it (fleets of 2 and 4 processes); the
# tests above assert the timeline the processes share.


@pytest.mark.parametrize(("fleet_size", "share"), [(1, "40/s"), (2, "20/s")])
async def test_routes_succeed_when_redis_is_unreachable(
    make_sandbox: Callable[..., Sandbox],
    caplog: pytest.LogCaptureFixture,
    fleet_size: int,
    share: str,
) -> None:
    caplog.set_level(logging.WARNING)
    sb = make_sandbox()
    # The default wiring: SDS_REDIS_URL set, so Redis for the cache and the pacer. Alone, a
    # process of a fleet paces itself at its share of the gateway's rate.
    async with _router(sb, UNREACHABLE, fleet_size=fleet_size) as router:
        envelope = await router.route("join", org="YES", interaction=PSIS)
        again = await router.route("join", org="YES", interaction=PSIS)
    assert envelope.target.party_key == again.target.party_key == "YES-0000806"
    assert again.provenance.cache == "hit"  # from the in-memory fallback
    assert _requests(sb) == {DEVICE_PATH: 1, ENDPOINT_PATH: 1}
    messages = [r.getMessage() for r in _redis_warnings(caplog)]
    assert len(messages) == 2, messages  # one per outage: the cache's and the pacer's
    assert any("in-process cache" in m for m in messages)
    assert any(f"pacing this process alone at {share}" in m for m in messages)


async def test_redis_urls_are_checked_without_showing_them() -> None:
    from sds_plugins import ConfigurationError

    for make in (RedisCache, RedisPacer):
        with pytest.raises(ConfigurationError) as raised:
            make("http://user:s3cret@example.invalid/0")
        assert "s3cret" not in str(raised.value)


def test_a_change_made_by_another_process_reaches_the_near_cache(prefix: str) -> None:
    # Two processes: this one holds an entry near; another process writes the key. Within the
    # staleness bound (the invalidation's arrival; at worst near_ttl_s), this one sees it.
    writer = (
        "import asyncio, sys, time\n"
        "from sds_plugins import CacheEntry\n"
        "from sds_plugins._redis import RedisCache\n"
        "async def main():\n"
        "    cache = RedisCache(sys.argv[1], prefix=sys.argv[2])\n"
        "    now = time.time()\n"
        "    entry = CacheEntry(data=b'two', stored_at=now, fresh_until=now + 60,\n"
        "                       stale_until=now + 120)\n"
        "    await cache.set('k', entry)\n"
        "    await cache.aclose()\n"
        "asyncio.run(main())\n"
    )

    async def scenario() -> float:
        (cache,) = _caches(prefix, 1, near_ttl_s=30.0)  # a bound the test could not wait out
        try:
            await cache.set("k", _entry(b"one"))
            assert (await cache.get("k")).data == b"one" and cache._entry_now("k") is not None
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-c", writer, REDIS_URL, prefix, env=env
            )
            assert await process.wait() == 0
            written = time.monotonic()
            await _eventually(lambda: _has(cache, "k", b"two"), within_s=5.0)
            return time.monotonic() - written
        finally:
            await cache.aclose()

    assert asyncio.run(scenario()) < 5.0  # far inside near_ttl_s: the invalidation did it
