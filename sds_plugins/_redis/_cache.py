"""Redis: a cache shared by every node of a fleet, fleet-wide single-flight, a shared rate limit.

Keys (``prefix`` defaults to ``sds-plugins:``; ``key`` is the engine's cache key)::

    {prefix}entry:{key}     the cached answer, expiring at the entry's ``stale_until``
    {prefix}lock:{key}      held (SET NX PX) by the one process fetching ``key``; value = its token
    {prefix}outcome:{key}   the last fetch's result for waiters: token + ok/error + payload
    {prefix}done:{key}      pub/sub channel: "an outcome or entry for ``key`` was written"

How waiting works (``coalesce``): a process that does not get the lock subscribes (one
``PSUBSCRIBE`` per :class:`RedisCache`, shared by all its waits) and re-checks the outcome key
whenever a message arrives, and at least every :data:`_POLL_INTERVAL_S` in any case. Pub/sub
gives sub-millisecond hand-over and costs Redis nothing while nobody finishes (notifications are
bounded by the directory's rate limit, ~40/s fleet-wide); the slow poll is only a safety net,
for messages lost while the subscriber reconnects and for a leader that died (a lock expiry
publishes nothing). Pure 10-20 ms polling would cost N waiters x 50-100 round trips per second.

Whether a result is "new" is decided by the leader's random token, never by comparing clocks
across machines: a waiter remembers the outcome present when it began waiting and accepts any
other one. Writing the entry, the outcome, releasing the lock and publishing happen in one Lua
script, so a waiter never sees the lock gone without the outcome.

Redis failures never fail a route: the first error switches every operation to an in-process
fallback (``MemoryCache``) for ``reconnect_after_s``, with one warning per outage.

**The near cache.** A warm route of a fleet would otherwise cost a Redis round trip per lookup.
Each :class:`RedisCache` keeps the entries it read or wrote in process, and drops one as soon
as any process writes that key: every write (``set``, ``delete``, a leader's outcome) publishes
on the key's ``done:`` channel, which the same subscriber as the waiters' listens to (``clear``
publishes on ``done:`` with no key: everything). Entries are held only while that subscription
is confirmed and alive (a subscriber that stops drops them all), and never longer than
``near_ttl_s`` however quiet the channel: the staleness bound for a change made by another
process is the time its invalidation takes to arrive (milliseconds), and at worst
``near_ttl_s`` should one be lost. An entry read while an invalidation arrived is not kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import redis.asyncio as aioredis
from cachetools import LRUCache
from redis.asyncio.client import PubSub

from .._cache import CacheBackend, CacheEntry, MemoryCache
from .._exceptions import ConfigurationError, DirectoryTimeoutError
from ._link import _SOCKET_TIMEOUT_S, DEFAULT_MAX_CONNECTIONS, PoolBusy, RedisLink
from ._link import REDIS_ERRORS as _REDIS_ERRORS
from ._wire import (
    CLAIM,
    FINISH,
    OUTCOME_ERROR,
    OUTCOME_OK,
    RELEASE,
    RENEW,
    STORE,
    TOKEN_LEN,
    decode_entry,
    encode_entry,
    error_payload,
    glob_escape,
    waiter_error,
)

__all__ = ["RedisCache"]

logger = logging.getLogger("sds_plugins.redis")

_T = TypeVar("_T")

#: Safety-net poll while waiting for another process's fetch (pub/sub wakes us sooner).
_POLL_INTERVAL_S: Final = 0.1


class _Down(Exception):
    """Internal: Redis failed inside ``coalesce``; fall back to fetching here."""


class RedisCache(CacheBackend):
    """Entries in Redis, shared by every process that uses the same URL and ``prefix``.

    ``coalesce`` makes concurrent fetches of one key *across processes* share one fetch (see
    the module docstring). When Redis is unreachable, every operation uses ``fallback``
    (default: a fresh :class:`MemoryCache`) and ``coalesce`` just fetches; Redis is tried again
    after ``reconnect_after_s``. ``lock_ttl_s`` bounds how long a dead leader blocks others
    (a live one keeps extending its lock); ``wait_timeout_s`` bounds how long a waiter waits.
    """

    name = "redis"
    shared = True

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "sds-plugins:",
        lock_ttl_s: float = 10.0,
        wait_timeout_s: float = 15.0,
        fallback: CacheBackend | None = None,
        reconnect_after_s: float = 5.0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        clock: Callable[[], float] = time.monotonic,
        near_ttl_s: float = 5.0,
        near_size: int = 10_000,
    ) -> None:
        if lock_ttl_s <= 0 or wait_timeout_s <= 0:
            raise ConfigurationError("RedisCache needs lock_ttl_s > 0 and wait_timeout_s > 0")
        if near_ttl_s < 0:
            raise ConfigurationError("RedisCache needs near_ttl_s >= 0 (0: no near cache)")
        self.link = RedisLink(
            url,
            role="cache",
            reconnect_after_s=reconnect_after_s,
            max_connections=max_connections,
            clock=clock,
        )
        self.location = self.link.location
        self.prefix = prefix
        self.lock_ttl_s = lock_ttl_s
        self.wait_timeout_s = wait_timeout_s
        self.reconnect_after_s = reconnect_after_s
        self.fallback: CacheBackend = fallback if fallback is not None else MemoryCache()
        self._lock_ttl_ms = max(1, math.ceil(lock_ttl_s * 1000))
        # Waiters only need an outcome until their next check; it must outlive their wait.
        self._outcome_ttl_ms = max(1000, math.ceil(wait_timeout_s * 1000))
        self._listener: asyncio.Task[None] | None = None
        self._listener_lock = asyncio.Lock()
        self._wakeups: dict[str, set[asyncio.Event]] = {}
        # The near cache: key -> (held until, on our monotonic clock; entry).
        self.near_ttl_s = near_ttl_s
        self._near: LRUCache[str, tuple[float, CacheEntry]] = LRUCache(maxsize=max(1, near_size))
        self._near_live = False  # the subscription that invalidates it is confirmed and alive
        self._invalidations = 0  # invalidations heard so far (a read racing one is not kept)
        self._writer = b"w" + secrets.token_hex(8).encode()  # our own writes' messages
        # Changes with every change to the near cache (the warm path's "nothing changed": the
        # _cache._InProcess protocol, with _entry_now).
        self._generation = 0

    def __repr__(self) -> str:
        return f"RedisCache({self.location!r}, prefix={self.prefix!r})"

    # -- connection and fallback --------------------------------------------------------------

    def _redis(self) -> aioredis.Redis | None:
        return self.link.client()

    def _scrub(self, text: str) -> str:
        return self.link.scrub(text)

    def _failed(self, exc: BaseException) -> None:
        self.link.failed(exc, "using the in-process cache")

    def _succeeded(self) -> None:
        self.link.succeeded()

    async def _run(
        self, op: Callable[[aioredis.Redis], Awaitable[_T]], fallback: Callable[[], Awaitable[_T]]
    ) -> _T:
        client = self._redis()
        if client is None:
            return await fallback()
        try:
            result = await op(client)
        except PoolBusy as exc:
            # Busy, not broken: this one operation uses the fallback; Redis stays in use.
            logger.debug("Redis cache busy: %s", exc)
            return await fallback()
        except _REDIS_ERRORS as exc:
            self._failed(exc)
            return await fallback()
        self._succeeded()
        return result

    # -- keys ---------------------------------------------------------------------------------

    def _entry_key(self, key: str) -> str:
        return f"{self.prefix}entry:{key}"

    def _lock_key(self, key: str) -> str:
        return f"{self.prefix}lock:{key}"

    def _outcome_key(self, key: str) -> str:
        return f"{self.prefix}outcome:{key}"

    def _channel(self, key: str) -> str:
        return f"{self.prefix}done:{key}"

    # -- CacheBackend -------------------------------------------------------------------------

    def _entry_now(self, key: str) -> CacheEntry | None:
        """The entry held in the near cache, if it may still be used (no I/O)."""
        if not self._near_live:
            return None
        held = self._near.get(key)
        if held is None:
            return None
        until, entry = held
        if until <= time.monotonic() or entry.stale_until <= time.time():
            self._forget(key)
            return None
        return entry

    def _keep(self, key: str, entry: CacheEntry | None, invalidations: int) -> None:
        """Hold ``entry`` near, unless an invalidation arrived since its read began."""
        if (
            entry is None
            or not self._near_live
            or self.near_ttl_s <= 0
            or invalidations != self._invalidations
        ):
            return
        self._near[key] = (time.monotonic() + self.near_ttl_s, entry)
        self._changed()

    def _forget(self, key: str) -> None:
        if self._near.pop(key, None) is not None:
            self._changed()

    def _changed(self) -> None:
        self._generation += 1

    async def get(self, key: str) -> CacheEntry | None:
        near = self._entry_now(key)
        if near is not None:
            return near

        async def from_redis(client: aioredis.Redis) -> CacheEntry | None:
            invalidations = self._invalidations
            if self.near_ttl_s > 0:
                await self._start_near(client)
            raw = await client.get(self._entry_key(key))
            entry = decode_entry(raw) if isinstance(raw, bytes) else None
            # Redis expires the key, but a writer's clock may differ from ours: be exact.
            if entry is None or entry.stale_until <= time.time():
                return None
            self._keep(key, entry, invalidations)
            return entry

        return await self._run(from_redis, lambda: self.fallback.get(key))

    async def _start_near(self, client: aioredis.Redis) -> None:
        """The subscription that keeps the near cache true (started once, on first use)."""
        if self._near_live and self._listener is not None and not self._listener.done():
            return
        with contextlib.suppress(_Down):
            await self._ensure_listener(client)

    async def set(self, key: str, entry: CacheEntry) -> None:
        async def to_redis(client: aioredis.Redis) -> None:
            # A relative TTL computed here, rather than PEXPIREAT, so that a skewed Redis
            # server clock cannot expire entries early or late.
            ttl_ms = self._ttl_ms(entry)
            self._forget(key)  # ours is about to change: never serve the old one meanwhile
            invalidations = self._invalidations
            # Already past stale_until: storing it would mean a non-positive TTL, so delete.
            value = encode_entry(entry) if ttl_ms > 0 else b""
            await client.eval(
                STORE, 1, self._entry_key(key), value, ttl_ms, self._channel(key), self._writer
            )
            if ttl_ms > 0:
                self._keep(key, entry, invalidations)

        await self._run(to_redis, lambda: self.fallback.set(key, entry))

    async def delete(self, key: str) -> None:
        async def in_redis(client: aioredis.Redis) -> None:
            await client.eval(
                STORE, 1, self._entry_key(key), b"", 0, self._channel(key), self._writer
            )

        # Also from the fallback, so a later outage cannot resurrect what was deleted.
        self._forget(key)
        await self.fallback.delete(key)
        await self._run(in_redis, _nothing)

    async def clear(self) -> None:
        """Delete every key under ``prefix`` (entries, locks, outcomes)."""

        async def in_redis(client: aioredis.Redis) -> None:
            batch: list[bytes] = []
            async for name in client.scan_iter(match=glob_escape(self.prefix) + "*", count=500):
                batch.append(name)
                if len(batch) >= 500:
                    await client.unlink(*batch)
                    batch.clear()
            if batch:
                await client.unlink(*batch)
            await client.publish(self._channel(""), b"")  # every process drops its near cache

        self._drop_near()
        await self.fallback.clear()
        await self._run(in_redis, _nothing)

    def _drop_near(self) -> None:
        if self._near:
            self._near.clear()
            self._changed()

    async def aclose(self) -> None:
        self._near_live = False
        self._drop_near()
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            await asyncio.wait([listener])  # not `await listener`: keep our own cancellation
        await self.link.aclose()
        await self.fallback.aclose()

    @staticmethod
    def _ttl_ms(entry: CacheEntry) -> int:
        return math.ceil((entry.stale_until - time.time()) * 1000)

    # -- fleet-wide single-flight -------------------------------------------------------------

    async def coalesce(
        self, key: str, fetch: Callable[[], Awaitable[CacheEntry]]
    ) -> tuple[CacheEntry, bool]:
        client = self._redis()
        if client is None:
            return await fetch(), True
        try:
            return await self._coalesce(client, key, fetch)
        except _Down as down:
            self._failed(down.__cause__ or down)
            return await fetch(), True
        except PoolBusy as exc:  # load, not an outage: fetch here without declaring Redis down
            logger.debug("Redis cache busy while coalescing %s: %s", key, exc)
            return await fetch(), True

    async def _coalesce(
        self, client: aioredis.Redis, key: str, fetch: Callable[[], Awaitable[CacheEntry]]
    ) -> tuple[CacheEntry, bool]:
        token = secrets.token_hex(TOKEN_LEN // 2)
        deadline = time.monotonic() + self.wait_timeout_s
        seen = "*"  # see CLAIM
        wakeup: asyncio.Event | None = None
        try:
            while True:
                status, outcome = await self._claim(client, key, token, seen)
                self._succeeded()
                if status == 1:
                    return await self._lead(client, key, token, fetch)
                if status == 2 and outcome is not None:
                    if outcome[TOKEN_LEN : TOKEN_LEN + 1] == OUTCOME_OK:
                        entry = decode_entry(outcome[TOKEN_LEN + 1 :])
                        if entry is not None:
                            return entry, False
                        # unreadable (another version of this code): ignore it, wait on
                    else:
                        raise waiter_error(outcome[TOKEN_LEN + 1 :], key)
                if seen == "*":
                    seen = outcome[:TOKEN_LEN].decode() if outcome else ""
                elif status == 2 and outcome is not None:
                    seen = outcome[:TOKEN_LEN].decode()
                if wakeup is None:
                    # Subscribe before the next check, so no notification can slip between.
                    await self._ensure_listener(client)
                    wakeup = asyncio.Event()
                    self._wakeups.setdefault(key, set()).add(wakeup)
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DirectoryTimeoutError(
                        f"gave up after {self.wait_timeout_s:g}s waiting for another process "
                        f"to fetch {key}",
                        attempts=0,
                    )
                try:
                    async with asyncio.timeout(min(_POLL_INTERVAL_S, remaining)):
                        await wakeup.wait()
                except TimeoutError:
                    pass
                wakeup.clear()
        finally:
            if wakeup is not None:
                waiting = self._wakeups.get(key)
                if waiting is not None:
                    waiting.discard(wakeup)
                    if not waiting:
                        del self._wakeups[key]

    async def _claim(
        self, client: aioredis.Redis, key: str, token: str, seen: str
    ) -> tuple[int, bytes | None]:
        try:
            status, outcome = await client.eval(
                CLAIM,
                2,
                self._lock_key(key),
                self._outcome_key(key),
                token,
                self._lock_ttl_ms,
                seen,
            )
        except _REDIS_ERRORS as exc:
            raise _Down from exc
        return int(status), outcome

    async def _lead(
        self,
        client: aioredis.Redis,
        key: str,
        token: str,
        fetch: Callable[[], Awaitable[CacheEntry]],
    ) -> tuple[CacheEntry, bool]:
        keeper = asyncio.create_task(self._keep_lock(client, key, token))
        try:
            entry = await fetch()
        except Exception as exc:
            await self._finish(client, key, token, OUTCOME_ERROR, error_payload(exc), 0)
            raise
        except BaseException:  # cancelled: let a waiter take over now rather than at lock expiry
            await self._release(client, key, token)
            raise
        finally:
            keeper.cancel()
        payload = encode_entry(entry)
        if not await self._finish(client, key, token, OUTCOME_OK, payload, self._ttl_ms(entry)):
            await self.fallback.set(key, entry)
        return entry, True

    async def _keep_lock(self, client: aioredis.Redis, key: str, token: str) -> None:
        """Extend the lock while the fetch runs, so only a dead leader's lock expires."""
        try:
            while True:
                await asyncio.sleep(self.lock_ttl_s / 3)
                renewed = await client.eval(RENEW, 1, self._lock_key(key), token, self._lock_ttl_ms)
                if not renewed:  # expired anyway (a long pause): someone else may lead now
                    return
        except (*_REDIS_ERRORS, PoolBusy):
            return  # the leader finds out when it writes its result

    async def _finish(
        self,
        client: aioredis.Redis,
        key: str,
        token: str,
        status: bytes,
        payload: bytes,
        entry_ttl_ms: int,
    ) -> bool:
        """Publish the outcome (and store the entry); ``False`` if Redis failed."""
        try:
            await client.eval(
                FINISH,
                3,
                self._entry_key(key),
                self._lock_key(key),
                self._outcome_key(key),
                token,
                status,
                payload,
                entry_ttl_ms,
                self._outcome_ttl_ms,
                self._channel(key),
            )
        except PoolBusy:
            return False
        except _REDIS_ERRORS as exc:
            self._failed(exc)
            return False
        return True

    async def _release(self, client: aioredis.Redis, key: str, token: str) -> None:
        try:
            await client.eval(RELEASE, 1, self._lock_key(key), token, self._channel(key))
        except (*_REDIS_ERRORS, PoolBusy) as exc:  # the lock expires by itself
            logger.debug("could not release Redis lock: %s", self._scrub(str(exc)))

    # -- pub/sub ------------------------------------------------------------------------------

    async def _ensure_listener(self, client: aioredis.Redis) -> None:
        """Start the shared subscriber (once); returns when the subscription is confirmed."""
        if self._listener is not None and not self._listener.done():
            return
        async with self._listener_lock:
            if self._listener is not None and not self._listener.done():
                return
            pubsub = client.pubsub()
            try:
                await pubsub.psubscribe(glob_escape(self._channel("")) + "*")
                # Wait for Redis to confirm: only then is every later PUBLISH delivered to us.
                confirm_by = time.monotonic() + 2 * _SOCKET_TIMEOUT_S
                while True:
                    message = await pubsub.get_message(timeout=_SOCKET_TIMEOUT_S)
                    if message is not None and message["type"] == "psubscribe":
                        break
                    if time.monotonic() > confirm_by:
                        raise TimeoutError("no confirmation of PSUBSCRIBE from Redis")
            except _REDIS_ERRORS as exc:
                await _close_quietly(pubsub)
                raise _Down from exc
            except BaseException:
                await _close_quietly(pubsub)
                raise
            self._listener = asyncio.create_task(self._listen(pubsub))
            # From now on every write's invalidation reaches us: entries may be held near.
            self._near_live = True

    async def _listen(self, pubsub: PubSub) -> None:
        start = len(self._channel("").encode())
        try:
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is None or message["type"] != "pmessage":
                    continue
                key = bytes(message["channel"])[start:].decode("utf-8", "replace")
                if message["data"] != self._writer:  # our own write: we know what we wrote
                    self._invalidations += 1
                    if key:
                        self._forget(key)
                    else:
                        self._drop_near()  # clear(): everything
                for event in self._wakeups.get(key, ()):
                    event.set()
        except Exception as exc:  # a task must not die with an unretrieved exception
            # Waiters keep polling; the next wait starts a new listener.
            logger.debug("Redis pub/sub listener stopped: %s", self._scrub(str(exc)))
        finally:
            # Invalidations no longer reach us: nothing held near can be trusted.
            self._near_live = False
            self._drop_near()
            await _close_quietly(pubsub)


async def _nothing() -> None:
    return None


async def _close_quietly(pubsub: PubSub) -> None:
    with contextlib.suppress(*_REDIS_ERRORS):
        await pubsub.aclose()
