"""Fleet-wide pacing in Redis: every process of a fleet takes its slots from one timeline.

The gateway's spike arrest and quota are per application, and a fleet is one application, so
the timeline of :class:`~sds_plugins._pacing.Pacer` lives in Redis::

    {prefix}pace:next          the next free slot (microseconds, Redis server time)
    {prefix}pace:quota:{min}   requests reserved in calendar minute ``min``
    {prefix}pace:closed        no slot before this time (the gateway said the quota is spent)

One Lua script per request reserves a slot (one round trip): it reads Redis's own clock
(``TIME``), so machines with skewed clocks still share one timeline, and it refuses without
reserving when the slot lies beyond the caller's deadline. The caller then sleeps until its slot
on its own clock (a relative wait, so skew does not matter there either).

When Redis is unreachable, each process paces itself at ``per_second / fleet_size`` (and the
quota divided likewise) rather than not at all: a fleet that loses its shared state must slow
down, never stampede. One warning per outage; Redis is tried again every ``reconnect_after_s``.
A busy connection pool is back-pressure: the reservation waits for a connection.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Final

import redis.asyncio as aioredis

from .._exceptions import ConfigurationError
from .._pacing import (
    _TOLERANCE,
    GUARD_S,
    Guard,
    Pacer,
    RateLimiter,
    SendTicket,
    Spacer,
    Throttle,
    max_wait,
    too_long,
)
from ._link import DEFAULT_MAX_CONNECTIONS, PoolBusy, RedisLink
from ._link import REDIS_ERRORS as _REDIS_ERRORS

__all__ = ["RedisPacer"]

_US: Final = 1_000_000

# KEYS: next slot, quota key prefix, closed-until. ARGV: interval (µs), per minute, max wait (µs;
# negative: none). Returns {1, wait µs, Redis time µs} with a slot reserved, or {0, ...} when
# refused.
# Times are integers of microseconds kept as strings with %.0f: Lua's tostring() would print
# 1.7e+15 and lose the precision.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local slot = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now,
                      tonumber(redis.call('GET', KEYS[3]) or '0'))
local per_minute = tonumber(ARGV[2])
local minute = math.floor(slot / 60000000)
for _ = 1, 3 do
  if tonumber(redis.call('GET', KEYS[2] .. minute) or '0') < per_minute then break end
  minute = minute + 1
  slot = minute * 60000000
end
local wait = slot - now
local limit = tonumber(ARGV[3])
if limit >= 0 and wait > limit then
  return {0, string.format('%.0f', wait), string.format('%.0f', now)}
end
local interval = tonumber(ARGV[1])
local quota = KEYS[2] .. minute
redis.call('INCR', quota)
redis.call('PEXPIRE', quota, 120000 + math.floor(wait / 1000))
redis.call('SET', KEYS[1], string.format('%.0f', slot + interval),
           'PX', math.floor((wait + interval) / 1000) + 1000)
return {1, string.format('%.0f', wait), string.format('%.0f', now)}
"""

# KEYS: next slot or closed-until. ARGV: seconds from now (µs). Nothing before now + ARGV[1].
_PUSH = """
local t = redis.call('TIME')
local until_ = tonumber(t[1]) * 1000000 + tonumber(t[2]) + tonumber(ARGV[1])
if until_ > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], string.format('%.0f', until_),
             'PX', math.floor(tonumber(ARGV[1]) / 1000) + 1000)
end
return 1
"""


class RedisPacer(RateLimiter):
    """A :class:`~sds_plugins._pacing.Pacer` shared by every process using the same Redis
    ``url`` and ``prefix``. ``fleet_size`` is how many processes to assume when Redis is gone.
    """

    def __init__(
        self,
        url: str,
        *,
        per_second: float = 40,
        per_minute: int = 2400,
        fleet_size: int = 1,
        prefix: str = "sds-plugins:",
        guard_s: float = GUARD_S,
        reconnect_after_s: float = 5.0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        if per_second <= 0 or per_minute < 1 or fleet_size < 1:
            raise ConfigurationError(
                "RedisPacer needs per_second > 0, per_minute >= 1 and fleet_size >= 1"
            )
        self.link = RedisLink(
            url,
            role="rate limiter",
            reconnect_after_s=reconnect_after_s,
            max_connections=max_connections,
        )
        self.per_second = per_second
        self.per_minute = per_minute
        self.fleet_size = fleet_size
        self.guard = Guard(guard_s, 1.0 / per_second)
        #: The narrowest interval between this process's slots.
        self.interval_s = 1.0 / per_second + guard_s
        # Several processes: slots a margin wider (see _margin_s).
        self._fleet = fleet_size > 1
        self._next_key = f"{prefix}pace:next"
        self._quota_prefix = f"{prefix}pace:quota:"
        self._closed_key = f"{prefix}pace:closed"
        # One process: as Pacer (a late request keeps its slot, its successor keeps its
        # distance). A fleet: the wire gate cannot see the others' sends, so a request too
        # late for its slot takes a new one (the slots are wider by _margin_s for that).
        self.spacer = Spacer(
            self.interval_s,
            min_gap_s=1.0 / per_second + guard_s / 4,
            tolerance_s=guard_s * _TOLERANCE,
            # A late send is still an interval from the next slot while it is within the
            # margin (which allows for it) and half the guard (the other half stays for the
            # gateway's jitter): only later does it take a new slot.
            slack_s=guard_s / 2,
        )
        # (round trip, Redis clock - our clock) of recent reservations; see _reserve.
        self._offsets: deque[tuple[float, float]] = deque(maxlen=64)
        #: Used while Redis is unreachable: this process's share of the application's limits.
        self.fallback = Pacer(
            per_second=per_second / fleet_size,
            per_minute=max(1, per_minute // fleet_size),
            guard_s=guard_s,
        )
        self.throttles: dict[str, int] = {"spike_arrest": 0, "quota": 0}

    def __repr__(self) -> str:
        return (
            f"RedisPacer({self.link.location!r}, {self.per_second:g}/s, {self.per_minute}/min, "
            f"fleet_size={self.fleet_size})"
        )

    @property
    def waited_s(self) -> float:
        return self.spacer.waited_s + self.fallback.waited_s

    def _margin_s(self) -> float:
        """How much wider than this process's interval the shared slots are, in a fleet.

        Each process sends up to ``tolerance`` after its slot, and reads the shared timeline
        (Redis's clock) through its estimate of the offset between Redis's clock and its own,
        which is off by up to half the quickest round trip seen (as NTP's is): slots this much
        wider keep two processes' sends an interval apart however both errors fall. Measured,
        per reservation; none for one process.
        """
        if not self._fleet:
            return 0.0
        quickest = min(self._offsets)[0] if self._offsets else 0.001
        return self.spacer.tolerance_s + quickest / 2

    def _interval_us(self) -> int:
        interval = 1.0 / self.per_second + self.guard.current_s + self._margin_s()
        return math.ceil(interval * _US)

    async def acquire(self, *, deadline: float | None = None) -> SendTicket:
        client = self.link.client()
        if client is None:
            return await self.fallback.acquire(deadline=deadline)
        try:
            slot = await self._reserve(client, max_wait(deadline))
        except _REDIS_ERRORS as exc:
            self.link.failed(exc, f"pacing this process alone at {self.fallback.per_second:g}/s")
            return await self.fallback.acquire(deadline=deadline)
        ticket = self.spacer.ticket_at(slot, self._reslot if self._fleet else None, deadline)
        return await self.spacer.release(ticket)

    async def _reserve(self, client: aioredis.Redis, limit: float | None) -> float:
        """A slot on the shared timeline, as a time on this machine's clock (or ``too_long``).

        The slot is Redis's time; reading it as "``wait`` from whenever the answer was read"
        would shift it by however long this process took to get to the answer (a busy event
        loop: milliseconds), so the offset between Redis's clock and ours is estimated instead,
        from the quickest round trips (as NTP does), and the slot translated with it.
        """
        while True:
            sent = time.time()
            try:
                reserved, wait_us, now_us = await client.eval(
                    _RESERVE,
                    3,
                    self._next_key,
                    self._quota_prefix,
                    self._closed_key,
                    self._interval_us(),
                    self.per_minute,
                    -1 if limit is None else max(0, math.floor(limit * _US)),
                )
            except PoolBusy:
                # Every connection is in use: wait for one again (back-pressure, not an
                # outage), as long as the deadline allows.
                if limit is not None and limit <= 0:
                    raise too_long(0.0) from None
                continue
            received = time.time()
            self.link.succeeded()
            redis_now = int(now_us) / _US
            self._offsets.append((received - sent, redis_now - (sent + received) / 2))
            wait = int(wait_us) / _US
            if not int(reserved):
                raise too_long(wait)
            offset = min(self._offsets)[1]
            self.guard.sent()
            return redis_now + wait - offset

    async def _reslot(self, deadline: float | None) -> float:
        """A new slot for a request that reached the wire too late for its own."""
        client = self.link.client()
        if client is not None:
            try:
                return await self._reserve(client, max_wait(deadline))
            except _REDIS_ERRORS as exc:
                self.link.failed(
                    exc, f"pacing this process alone at {self.fallback.per_second:g}/s"
                )
        return self.fallback._reserve(deadline)  # no shared timeline now: this process's share

    async def throttled(self, kind: Throttle, *, retry_after_s: float | None = None) -> None:
        self.throttles[kind] += 1
        if kind == "spike_arrest":
            # Wider slots here, and the shared timeline pushed back for every process.
            self.guard.refused()
            key, seconds = self._next_key, self.interval_s
        elif retry_after_s is not None:
            key, seconds = self._closed_key, retry_after_s
        else:
            return
        await self.fallback.throttled(kind, retry_after_s=retry_after_s)
        client = self.link.client()
        if client is None:
            return
        try:
            await client.eval(_PUSH, 1, key, math.ceil(seconds * _US))
        except PoolBusy:
            pass  # the local push above still spaces this process's next request
        except _REDIS_ERRORS as exc:
            self.link.failed(exc, f"pacing this process alone at {self.fallback.per_second:g}/s")

    async def aclose(self) -> None:
        await self.link.aclose()
