"""Fleet-wide pacing in Redis: every process of a fleet takes its slots from one timeline.

The gateway's spike arrest and quota are per application, and a fleet is one application, so
the timeline of :class:`~sds_plugins._pacing.Pacer` lives in Redis::

    {prefix}pace:next          the next free slot (microseconds, Redis server time)
    {prefix}pace:quota:{min}   requests reserved in calendar minute ``min``
    {prefix}pace:closed        no slot before this time (the gateway said the quota is spent)

One Lua script reserves slots (one round trip): it reads Redis's own clock (``TIME``), so
machines with skewed clocks still share one timeline, and it refuses without reserving when a
slot lies beyond its caller's deadline. The caller then sleeps until its slot on its own clock
(translated with a measured offset, so skew does not matter there either).

Requests that ask while a reservation is on its way are reserved together by the next one, as
a **run** of consecutive slots (at most :data:`_MAX_RUN`, in one round trip): their neighbours
are this process's own requests, which its wire gate keeps the minimum gap apart (``1/rate``
plus three quarters of the guard), so a fleet's margin (see ``RedisPacer._margin_s``) is left once
after the run rather than after every slot, and only a request that would go beyond its run's
end takes a new slot. A process alone batches the same way (fewer round trips; no margin, and a
late request keeps its slot, as with ``Pacer``). A process that is not busy reserves one slot
at a time.

When Redis is unreachable, each process paces itself at ``per_second / fleet_size`` (and the
quota divided likewise) rather than not at all: a fleet that loses its shared state must slow
down, never stampede. One warning per outage; Redis is tried again every ``reconnect_after_s``.
A busy connection pool is back-pressure: the reservation waits for a connection.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from typing import Final

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
    writes_at_gate,
)
from ._link import DEFAULT_MAX_CONNECTIONS, PoolBusy, RedisLink
from ._link import REDIS_ERRORS as _REDIS_ERRORS

__all__ = ["RedisPacer"]

logger = logging.getLogger("sds_plugins.redis")

_US: Final = 1_000_000
#: The most requests one reservation puts in a run: long enough that a fleet's margin costs
#: little (1/16 of it a slot), short enough that no process holds the timeline for long
#: (16 slots: ~0.4 s at 40/s) while the others' requests wait.
_MAX_RUN: Final = 16


class _Unshared(Exception):
    """Redis could not reserve: the waiter paces itself with the fallback."""


def _run_ends(slots: list[float | None], interval_s: float) -> list[float]:
    """For each reserved slot, the last slot of the unbroken stretch it belongs to.

    A run is consecutive slots an interval apart, except where the script skipped to the next
    calendar minute (that minute's quota spent): a request must not take the run's later end
    as leave to go that late, so each stretch ends where the slots stop being an interval apart.
    """
    ends = [0.0] * len(slots)
    stretch: list[int] = []
    previous: float | None = None
    for index, slot in enumerate(slots):
        if slot is None:
            continue
        if previous is not None and slot - previous > interval_s * 1.5:
            for member in stretch:
                ends[member] = previous
            stretch = []
        stretch.append(index)
        previous = slot
    for member in stretch:
        ends[member] = previous if previous is not None else 0.0
    return ends


# KEYS: next slot, quota key prefix, closed-until. ARGV: interval (µs), per minute, margin
# (µs), head start (µs: no slot sooner than this from now, the time the answer takes to reach
# the wire gate), then each request's max wait (µs; negative: none), in order. Reserves one slot per
# request, an interval apart (skipping calendar minutes whose quota is spent); a request whose
# slot lies beyond its max wait is refused and reserves nothing (the next one may take that
# slot). The next free slot is then the margin after the last one's interval. Returns
# {Redis time, then for each request 1 (reserved) or 0 (refused) and its wait} in µs.
# Times are integers of microseconds kept as strings with %.0f: Lua's tostring() would print
# 1.7e+15 and lose the precision.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local slot = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now + tonumber(ARGV[4]),
                      tonumber(redis.call('GET', KEYS[3]) or '0'))
local interval = tonumber(ARGV[1])
local per_minute = tonumber(ARGV[2])
local margin = tonumber(ARGV[3])
local result = {string.format('%.0f', now)}
local minute = -1
local used = 0
local last = nil
for i = 5, #ARGV do
  if math.floor(slot / 60000000) ~= minute then
    minute = math.floor(slot / 60000000)
    used = tonumber(redis.call('GET', KEYS[2] .. minute) or '0')
  end
  for _ = 1, 3 do
    if used < per_minute then break end
    minute = minute + 1
    slot = minute * 60000000
    used = tonumber(redis.call('GET', KEYS[2] .. minute) or '0')
  end
  local wait = slot - now
  local limit = tonumber(ARGV[i])
  if limit >= 0 and wait > limit then
    result[#result + 1] = 0
  else
    local quota = KEYS[2] .. minute
    redis.call('INCR', quota)
    redis.call('PEXPIRE', quota, 120000 + math.floor(wait / 1000))
    used = used + 1
    result[#result + 1] = 1
    last = slot
    slot = slot + interval
  end
  result[#result + 1] = string.format('%.0f', wait)
end
if last then
  local free = last + interval + margin
  redis.call('SET', KEYS[1], string.format('%.0f', free),
             'PX', math.floor((free - now) / 1000) + 1000)
end
return result
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
        # distance). A fleet: the wire gate cannot see the others' sends, so a request that
        # would go too late for its run takes a new slot (runs end _margin_s early for that).
        self.spacer = Spacer.following(
            self.guard,
            tolerance_s=guard_s * _TOLERANCE,
            # A late send is still an interval from the next slot while it is within the
            # margin (which allows for it) and half the guard (the other half stays for the
            # gateway's jitter): only later does it take a new slot.
            slack_s=guard_s / 2,
        )
        # (round trip, Redis clock - our clock) of recent reservations; see _reserve_run.
        self._offsets: deque[tuple[float, float]] = deque(maxlen=64)
        # Requests waiting for a reservation (with their deadlines), and the task reserving.
        self._queue: list[tuple[asyncio.Future[tuple[float, float]], float | None]] = []
        self._reserving: asyncio.Task[None] | None = None
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
        """How much room a fleet's run leaves after its last slot, beyond the interval.

        Each process sends up to ``tolerance`` after its slot, and reads the shared timeline
        (Redis's clock) through its estimate of the offset between Redis's clock and its own,
        which is off by up to half the quickest round trip seen (as NTP's is): this much room
        between two runs keeps two processes' sends an interval apart however both errors
        fall. Measured, per reservation; none for one process.
        """
        if not self._fleet:
            return 0.0
        quickest = min(self._offsets)[0] if self._offsets else 0.001
        return self.spacer.tolerance_s + quickest / 2

    def _head_start_s(self) -> float:
        """How soon a slot may be, at the earliest, when the timeline is idle (a fleet's).

        A slot "now" on Redis's clock is already past when the answer arrives and the request
        reaches the wire gate; it would go late, and every request after it in its run would
        keep its distance from that late one, pushing the run's last request into the next
        process's slot (so it takes a new one, and a slot goes unused). So the first slot is
        no sooner than the answer's way back (half the quickest round trip) and the recent
        delays between a release and the wire gate. Costs a few milliseconds of latency on an
        idle timeline, none on a busy one. None for one process, whose late requests keep
        their slots.
        """
        if not self._fleet:
            return 0.0
        quickest = min(self._offsets)[0] if self._offsets else 0.001
        return quickest / 2 + self.spacer.lead_s

    def _interval_us(self) -> int:
        """The interval between two of this process's slots (µs)."""
        return math.ceil((1.0 / self.per_second + self.guard.current_s) * _US)

    async def start(self) -> None:
        """Learn whether writes leave at the wire gate (:func:`writes_at_gate`)."""
        self.spacer.writes_at_gate = await writes_at_gate()
        self.fallback.spacer.writes_at_gate = self.spacer.writes_at_gate

    async def acquire(self, *, deadline: float | None = None) -> SendTicket:
        if self.link.client() is None:
            return await self.fallback.acquire(deadline=deadline)
        # Queue up; a reservation already on its way leaves the rest for the next one, which
        # reserves every request queued by then as one run (see the module's docstring).
        waiter: asyncio.Future[tuple[float, float]] = asyncio.get_running_loop().create_future()
        self._queue.append((waiter, deadline))
        if self._reserving is None or self._reserving.done():
            self._reserving = asyncio.create_task(self._reserve_queued())
        try:
            slot, run_end = await waiter
        except _Unshared:
            return await self.fallback.acquire(deadline=deadline)
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                waiter.exception()  # answered as we were cancelled: nobody else will read it
            raise
        reslot = self._reslot if self._fleet else None
        ticket = self.spacer.ticket_at(slot, reslot, deadline, run_end=run_end)
        return await self.spacer.release(ticket)

    def _unshare_queued(self) -> None:
        """Send every queued request to the fallback (Redis failed, or the pacer closed)."""
        queued, self._queue = self._queue, []
        for waiter, _ in queued:
            if not waiter.done():
                waiter.set_exception(_Unshared())

    async def _reserve_queued(self) -> None:
        """Reserve runs for the queued requests until none is left (a task of its own, so a
        caller that gives up does not strand the others)."""
        try:
            while self._queue:
                batch = [w for w in self._queue[:_MAX_RUN] if not w[0].done()]  # not cancelled
                del self._queue[:_MAX_RUN]
                if batch:
                    await self._reserve_batch(batch)
        except asyncio.CancelledError:
            self._unshare_queued()
            raise
        except Exception:
            # A bug, not an outage: say so once, and let the fallback pace these requests.
            logger.exception("the rate limiter could not reserve slots in Redis")
            self._unshare_queued()

    async def _reserve_batch(
        self, batch: list[tuple[asyncio.Future[tuple[float, float]], float | None]]
    ) -> None:
        try:
            slots = await self._reserve_run([deadline for _, deadline in batch])
        except _Unshared:
            slots = None
        except _REDIS_ERRORS as exc:
            self.link.failed(exc, f"pacing this process alone at {self.fallback.per_second:g}/s")
            slots = None
        except BaseException:
            self._queue[:0] = batch  # answered by whoever handles this
            raise
        ends = _run_ends([slot for slot, _ in slots or ()], self._interval_us() / _US)
        for index, (waiter, _) in enumerate(batch):
            if waiter.done():
                continue  # cancelled meanwhile: its slot (if any) goes unused
            if slots is None:
                waiter.set_exception(_Unshared())
                continue
            slot, wait = slots[index]
            if slot is None:
                # Beyond this caller's deadline: refused at once, nothing reserved.
                waiter.set_exception(too_long(wait))
            else:
                waiter.set_result((slot, ends[index]))

    async def _reserve_run(self, deadlines: list[float | None]) -> list[tuple[float | None, float]]:
        """A slot on the shared timeline for each request whose ``deadline`` (monotonic)
        allows it, consecutive: ``(its time on this machine's clock, wait)``, or ``(None,
        wait)`` for one refused (its slot would lie ``wait`` seconds away, beyond its deadline).

        The slots are Redis's times; reading them as "``wait`` from whenever the answer was
        read" would shift them by however long this process took to get to the answer (a busy
        event loop: milliseconds), so the offset between Redis's clock and ours is estimated
        instead, from the quickest round trips (as NTP does), and the slots translated with it.
        """
        while True:
            client = self.link.client()
            if client is None:
                raise _Unshared()
            # Read afresh on every attempt: a wait for a connection spends the deadlines too.
            limits = [max_wait(deadline) for deadline in deadlines]
            sent = time.time()
            try:
                answer = await client.eval(
                    _RESERVE,
                    3,
                    self._next_key,
                    self._quota_prefix,
                    self._closed_key,
                    self._interval_us(),
                    self.per_minute,
                    math.ceil(self._margin_s() * _US),
                    math.ceil(self._head_start_s() * _US),
                    *(-1 if limit is None else max(0, math.floor(limit * _US)) for limit in limits),
                )
            except PoolBusy:
                # Every connection is in use: wait for one again (back-pressure, not an
                # outage), as long as some deadline allows.
                if all(limit is not None and limit <= 0 for limit in limits):
                    return [(None, 0.0) for _ in limits]
                continue
            received = time.time()
            self.link.succeeded()
            redis_now = int(answer[0]) / _US
            self._offsets.append((received - sent, redis_now - (sent + received) / 2))
            offset = min(self._offsets)[1]
            result: list[tuple[float | None, float]] = []
            for flag, wait_us in zip(answer[1::2], answer[2::2], strict=True):
                wait = int(wait_us) / _US
                if int(flag):
                    self.guard.sent()
                    result.append((redis_now + wait - offset, wait))
                else:
                    result.append((None, wait))
            return result

    async def _reslot(self, deadline: float | None) -> float:
        """A new slot for a request that would reach the wire too late for its own."""
        try:
            [(slot, wait)] = await self._reserve_run([deadline])
        except _Unshared:
            pass
        except _REDIS_ERRORS as exc:
            self.link.failed(exc, f"pacing this process alone at {self.fallback.per_second:g}/s")
        else:
            if slot is None:
                raise too_long(wait)
            return slot
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
        task = self._reserving
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])  # (a task cancelled before it ran has no handler)
        self._unshare_queued()
        await self.link.aclose()
