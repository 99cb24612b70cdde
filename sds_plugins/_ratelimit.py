"""Client-side pacing, so no request ever meets the API gateway's spike arrest.

NHS England's API platform (Apigee) guards the SDS FHIR API with two policies, both per
application (``proxies/live/apiproxy/policies/`` of ``NHSDigital/spine-directory-service-api``):

- ``SpikeArrest.xml``: ``<Rate>40ps</Rate>`` without ``UseEffectiveCount``, which Apigee
  *smooths*: one request per 25 ms. A request arriving less than 25 ms after the previously
  accepted one is refused with 429, even if it is only the second of that second. Counting
  requests per second (40 may go at once) is therefore exactly wrong: they must be **spaced**.
- ``Quota.xml``: 2,400 per **calendar** minute. The quota step runs before spike arrest, so even
  a refused spike costs quota.

:class:`Pacer` is a GCRA ("virtual scheduling") limiter: each request reserves the next free
slot on a timeline whose slots are ``interval_s`` apart and sleeps until it. With a per-minute
counter on the same timeline it also never lets a calendar minute exceed the quota. A request
whose slot lies beyond its deadline is refused at once with :class:`RateLimitedError` (and
reserves nothing), carrying the wait in ``retry_after_s``. ``RedisPacer``
keeps the same timeline in Redis for a fleet (``_redis_pacer.py``).

The slots are a little wider than ``1/rate`` (:data:`GUARD_S`): the gateway judges arrival
times, which differ from our send times by a little network and scheduling jitter. And what is
spaced is the moment each request is *written to its connection*, not the moment the pacer lets
it go (see :class:`Spacer`): between the two lie timer overshoot, a busy event loop, connection
hand-off and TLS handshakes, any of which would otherwise let a late request and its on-time
successor reach the gateway less than an interval apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Literal

from ._exceptions import RateLimitedError

__all__ = [
    "GUARD_S",
    "SLOT_MARGIN_S",
    "Pacer",
    "RateLimiter",
    "SendTicket",
    "Spacer",
    "Throttle",
    "max_wait",
    "too_long",
]

#: Added to every interval: the jitter between our send times and the gateway's arrival times
#: that pacing tolerates without a spike-arrest 429 (25 ms becomes 27 ms at 40/s: 8 % below
#: the theoretical maximum, in exchange for no refusals, each of which also costs quota).
GUARD_S = 0.002
#: A fleet's shared timeline has slots this much wider than the spacing between one process's
#: sends: a send lands a little after its slot (the write itself takes a moment), and without
#: this margin a process running late would land in its neighbours' slots.
SLOT_MARGIN_S = 0.0025
#: How long a request may take between the wire gate and its write before the next one goes.
_SEND_WAIT_S = 1.0
#: A request this late for its fleet slot at the wire gate takes a new slot rather than risk
#: another process's (its write may still take a millisecond or two).
_LATE_S = 0.0005
#: The last stretch of a wait at the wire gate is spent yielding, not sleeping (see _pause).
_SPIN_S = 0.002

#: Which gateway limit a 429 came from (Apigee's fault codes), when the body said.
Throttle = Literal["spike_arrest", "quota"]


class RateLimiter:
    """Something every outgoing directory request waits on. Subclass to plug in another one.

    The base class does not limit at all.
    """

    async def acquire(self, *, deadline: float | None = None) -> SendTicket | None:
        """Return when one more request may be sent.

        ``deadline`` (``time.monotonic()`` based) is when the caller gives up: a limiter that
        would make it wait beyond should raise :class:`RateLimitedError` at once (see
        :func:`too_long`), with the wait in ``retry_after_s``, rather than sleep in vain. A
        limiter may return a :class:`SendTicket` for the caller to report when the request
        really left, so that spacing follows send times rather than release times.
        """
        return None

    async def throttled(self, kind: Throttle, *, retry_after_s: float | None = None) -> None:
        """The gateway refused a request anyway (``kind``): adjust the pace.

        ``retry_after_s`` is, for a spent quota, the time until the gateway's next minute.
        """

    async def aclose(self) -> None:
        """Release connections."""


def too_long(wait: float) -> RateLimitedError:
    """What a limiter raises when the next free slot lies beyond the caller's deadline."""
    return RateLimitedError(
        f"the client-side pace allows the next request only in {wait:.3g}s, beyond this "
        "request's deadline",
        limit="pace",
        retry_after_s=wait,
        attempts=0,
    )


def max_wait(deadline: float | None) -> float | None:
    """Seconds from now to a ``time.monotonic()`` deadline (``None``: no deadline)."""
    return None if deadline is None else deadline - time.monotonic()


class _Timeline:
    """The GCRA state of one pacer: the next free slot and the count per calendar minute.

    Times are wall-clock seconds, because calendar minutes are wall-clock minutes.
    """

    def __init__(self, interval_s: float, per_minute: int) -> None:
        self.interval_s = interval_s
        self.per_minute = per_minute
        self.next_slot = 0.0
        self._minute = -1
        self._used = 0
        self._closed_until = 0.0  # the gateway said this minute's quota is spent

    def reserve(self, now: float, limit: float | None) -> tuple[bool, float]:
        """``(True, wait)``: a slot is reserved ``wait`` seconds from now; ``(False, wait)``:
        the first free slot is beyond ``limit`` seconds, and nothing is reserved."""
        slot = max(self.next_slot, now, self._closed_until)
        minute = math.floor(slot / 60)
        if minute == self._minute and self._used >= self.per_minute:
            minute += 1
            slot = minute * 60.0
        wait = slot - now
        if limit is not None and wait > limit:
            return False, wait
        if minute != self._minute:
            self._minute, self._used = minute, 0
        self._used += 1
        self.next_slot = slot + self.interval_s
        return True, wait

    def push_back(self, until: float) -> None:
        """No slot before ``until`` (after a spike-arrest refusal)."""
        self.next_slot = max(self.next_slot, until)

    def close_until(self, until: float) -> None:
        """The gateway's quota is spent: no slot before ``until``."""
        self._closed_until = max(self._closed_until, until)


class Spacer:
    """Keeps this process's requests at least ``interval_s`` apart *as they reach the wire*.

    Two gates. :meth:`release` lets a request go shortly before its slot (``not_before``);
    then, in the HTTP client's trace hook right before its headers are written,
    :meth:`SendTicket.at_wire` holds it until its slot *and* an interval after the previous
    request's headers were written, one request at a time. Spacing measured at the socket
    leaves out what lies between a release and the wire (timer overshoot, a busy event loop,
    connection set-up, a TLS handshake), which would otherwise let a late request and an
    on-time successor reach the gateway less than an interval apart. A transport that does not
    trace still gets the first gate (and the request's end as its send time).
    """

    def __init__(
        self,
        interval_s: float,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._sleep = sleep
        # Fine-grained waiting only on the real clock: a test's fake clock moves in its sleeps.
        self._precise = clock is time.time and sleep is asyncio.sleep
        self._last_sent = -math.inf
        self._writing: SendTicket | None = None  # through the wire gate, not yet written
        # Recent delays between a release and the wire gate; releases come that much early
        # (the largest), so that requests wait at the precise gate rather than arrive late.
        self._release_delays: deque[float] = deque(maxlen=32)
        self.waited_s = 0.0
        self.released = 0
        #: The shortest gap seen between two consecutive writes (for metrics and tests).
        self.closest_s = math.inf

    async def _pause(self, gap: float) -> None:
        """Sleep ``gap`` precisely: the event loop's timers wake up to a millisecond or two
        late (epoll counts whole milliseconds), which at 25 ms intervals is ~6 % of the
        throughput. So sleep all but the last stretch, then yield to the loop until due."""
        if not self._precise or gap > _SPIN_S:
            await self._sleep(gap - _SPIN_S if self._precise else gap)
        else:
            await asyncio.sleep(0)  # other tasks run meanwhile; only the last ~2 ms spin

    def _lead(self) -> float:
        if len(self._release_delays) < 4:
            return 0.0
        return min(max(self._release_delays), self.interval_s / 2)

    def ticket(
        self, wait: float, reslot: Callable[[], Awaitable[float]] | None = None
    ) -> SendTicket:
        """A ticket for the slot ``wait`` seconds from now (see :class:`SendTicket`)."""
        return self.ticket_at(self._clock() + wait, reslot)

    def ticket_at(
        self, not_before: float, reslot: Callable[[], Awaitable[float]] | None = None
    ) -> SendTicket:
        """A ticket for the slot at ``not_before`` (this process's clock)."""
        return SendTicket(self, not_before, reslot)

    async def release(self, ticket: SendTicket) -> SendTicket:
        """Return shortly before ``ticket``'s slot and an interval after the last send."""
        started = self._clock()
        lead = self._lead()
        while (
            gap := max(ticket.not_before, self._last_sent + self.interval_s) - lead - self._clock()
        ) > 0:
            await self._pause(gap)
        now = ticket.released_at = self._clock()
        self.waited_s += now - started
        self.released += 1
        return ticket

    async def release_after(self, wait: float) -> SendTicket:
        """:meth:`ticket` then :meth:`release`."""
        return await self.release(self.ticket(wait))

    def _sent(self, ticket: SendTicket, when: float, traced: bool) -> None:
        if traced and self._last_sent > -math.inf:
            self.closest_s = min(self.closest_s, when - self._last_sent)
        self._last_sent = max(self._last_sent, when)
        if self._writing is ticket:
            self._writing = None


class SendTicket:
    """One request's passage: its slot, the wire gate, its send time.

    The caller awaits :meth:`at_wire` just before the request's headers are written and calls
    :meth:`written` just after (an httpcore ``trace`` hook does both: the write itself may
    yield to other tasks for a while, so the send time is taken after it), and calls
    :meth:`finished` when the request has ended, however it ended (then a no-op).

    ``reslot`` (fleet pacing) gets a new slot, as an absolute time, for a request that reaches
    the wire gate too late for its own: sending anyway would land in another process's slot.
    """

    __slots__ = ("_done", "_reslot", "_spacer", "not_before", "released_at", "sent_at")

    def __init__(
        self,
        spacer: Spacer,
        not_before: float,
        reslot: Callable[[], Awaitable[float]] | None = None,
    ) -> None:
        self._spacer = spacer
        #: The reserved slot: not written before it.
        self.not_before = not_before
        self._reslot = reslot
        self._done = asyncio.Event()
        self.released_at = not_before
        #: When the request's headers were written (``-inf`` until then).
        self.sent_at = -math.inf

    async def at_wire(self) -> None:
        """Hold the request until its slot and an interval after the last write, alone."""
        spacer = self._spacer
        spacer._release_delays.append(spacer._clock() - self.released_at)
        while True:
            writing = spacer._writing
            if writing is not None:
                await writing._wait_written()
                if spacer._writing is writing:  # stuck in its write: stop waiting for it
                    spacer._writing = None
                continue
            now = spacer._clock()
            due = max(self.not_before, spacer._last_sent + spacer.interval_s)
            if self._reslot is not None and max(due, now) - self.not_before > _LATE_S:
                self.not_before = await self._reslot()
                continue
            if due > now:
                await spacer._pause(due - now)
                continue  # someone else may have gone through meanwhile
            spacer._writing = self
            return

    def written(self) -> None:
        """The request's headers are in the kernel's hands: this is its send time."""
        self._report(self._spacer._clock(), traced=True)

    def finished(self) -> None:
        """The request ended (answered or failed); its send time if none was reported."""
        self._report(self._spacer._clock(), traced=False)

    def _report(self, when: float, *, traced: bool) -> None:
        if not self._done.is_set():
            self.sent_at = when
            self._reslot = None
            self._done.set()
            self._spacer._sent(self, when, traced)

    async def _wait_written(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_SEND_WAIT_S):
                await self._done.wait()

    @property
    def reported(self) -> bool:
        return self._done.is_set()


class Pacer(RateLimiter):
    """Spaces requests at least ``1/per_second`` (plus :data:`GUARD_S`) apart and keeps every
    calendar minute within ``per_minute``, in this process.

    ``clock`` (wall clock: calendar minutes) and ``sleep`` are injectable for tests.
    """

    def __init__(
        self,
        *,
        per_second: float = 40,
        per_minute: int = 2400,
        guard_s: float = GUARD_S,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if per_second <= 0 or per_minute < 1 or guard_s < 0:
            raise ValueError("Pacer needs per_second > 0, per_minute >= 1 and guard_s >= 0")
        self.per_second = per_second
        self.per_minute = per_minute
        self.interval_s = 1.0 / per_second + guard_s
        self._timeline = _Timeline(self.interval_s, per_minute)
        self._clock = clock
        self.spacer = Spacer(self.interval_s, clock, sleep)
        #: 429s the gateway answered despite the pacing, by kind (for metrics and tests).
        self.throttles: dict[str, int] = {"spike_arrest": 0, "quota": 0}

    def __repr__(self) -> str:
        return f"Pacer({self.per_second:g}/s, {self.per_minute}/min)"

    @property
    def waited_s(self) -> float:
        """Seconds requests spent waiting for their slot so far."""
        return self.spacer.waited_s

    async def acquire(self, *, deadline: float | None = None) -> SendTicket:
        reserved, wait = self._timeline.reserve(self._clock(), max_wait(deadline))
        if not reserved:
            raise too_long(wait)
        return await self.spacer.release_after(wait)

    async def throttled(self, kind: Throttle, *, retry_after_s: float | None = None) -> None:
        self.throttles[kind] += 1
        now = self._clock()
        if kind == "spike_arrest":
            # The slot went to someone else (another process): leave about an interval free
            # before the next request. About, not exactly: two processes pacing at the same
            # rate would otherwise stay in step and collide again and again.
            self._timeline.push_back(now + self.interval_s * random.uniform(0.5, 1.5))  # noqa: S311
        elif retry_after_s is not None:
            self._timeline.close_until(now + retry_after_s)
