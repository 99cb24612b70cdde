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
keeps the same timeline in Redis for a fleet (``_redis/_pacer.py``).

The slots are a little wider than ``1/rate`` (:data:`GUARD_S`): the gateway judges arrival
times, which differ from our send times by a little network and scheduling jitter. And what is
spaced is the moment each request is *written to its connection*, not the moment the pacer lets
it go (see :class:`Spacer`): between the two lie timer overshoot, a busy event loop, connection
hand-off and TLS handshakes, any of which would otherwise let a late request and its on-time
successor reach the gateway less than an interval apart.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Literal

import httpcore

from ._exceptions import RateLimitedError

__all__ = [
    "GUARD_S",
    "Guard",
    "MissedSlot",
    "Pacer",
    "RateLimiter",
    "SendTicket",
    "Spacer",
    "Throttle",
    "max_wait",
    "too_long",
    "writes_at_gate",
]

logger = logging.getLogger("sds_plugins.pacing")

#: The starting guard added to every interval: the jitter between our send times and the
#: gateway's arrival times that pacing tolerates without a spike-arrest 429 (25 ms becomes
#: 27 ms at 40/s). It adapts (:class:`Guard`): wider after a refusal, back towards this when
#: sends go clean.
GUARD_S = 0.002
#: How late, as a share of the guard, a request may reach the wire and still take its slot: a
#: slot's neighbours are an interval away, so a send this late is still more than ``1/rate``
#: after its predecessor. Later than that, it takes a new slot (see :class:`SendTicket`).
_TOLERANCE = 0.5
#: The share of the guard every gap between two writes keeps, even a late request's successor
#: catching up with its slot: the gateway's jitter does not spare catch-up sends (the other
#: quarter of the guard is what lets a late run catch up, a quarter of the guard a slot).
_KEPT_GUARD = 0.75
#: The last stretch of a wait at the wire gate is spent yielding, not sleeping (see _pause).
_SPIN_S = 0.002
#: The guard never grows beyond this share of ``1/rate`` (pacing at most a third slower).
_MAX_GUARD_SHARE = 0.5
#: Clean sends between two steps of the guard back towards its starting width.
_CLEAN_STEP = 25

#: Which gateway limit a 429 came from (Apigee's fault codes), when the body said.
Throttle = Literal["spike_arrest", "quota"]


class MissedSlot(Exception):
    """A request reached the wire too late for its slot: it has a new one (``ticket``), and
    must wait for it away from its connection (the caller waits, then sends it again)."""

    def __init__(self, ticket: SendTicket) -> None:
        super().__init__("missed its slot")
        self.ticket = ticket


class Guard:
    """The margin added to ``1/rate``: the jitter the gateway may see between our sends.

    Starts at ``base_s``; each spike-arrest refusal widens it by half of ``base_s`` (a refusal
    costs a request and a slot, so the pace backs off at once), up to half of ``1/rate``;
    every :data:`_CLEAN_STEP` sends without a refusal narrow it by a quarter of ``base_s``,
    never below ``base_s``. Never faster than the configured rate, whatever happens.
    """

    def __init__(self, base_s: float, rate_interval_s: float) -> None:
        self.base_s = base_s
        #: ``1/rate``: the gateway's own interval, which the guard widens.
        self.rate_interval_s = rate_interval_s
        self.max_s = max(base_s, rate_interval_s * _MAX_GUARD_SHARE)
        self.current_s = base_s
        self._clean = 0

    def refused(self) -> None:
        self.current_s = min(self.max_s, self.current_s + max(self.base_s / 2, 0.0005))
        self._clean = 0

    def sent(self) -> None:
        self._clean += 1
        if self._clean >= _CLEAN_STEP and self.current_s > self.base_s:
            self.current_s = max(self.base_s, self.current_s - self.base_s / 4)
            self._clean = 0


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

    async def start(self) -> None:
        """Prepare before the first request: the router calls it when it starts."""

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


async def writes_at_gate(backend: httpcore.AsyncNetworkBackend | None = None) -> bool:
    """Whether httpcore's network streams (``backend``: the one httpx uses on asyncio) hand a
    write's bytes to the kernel before they first yield to the event loop, i.e. in the very
    turn a request leaves the wire gate.

    anyio from 4.16 writes first and then yields; up to 4.15 it yields first, and the bytes
    leave a loop turn later (1-3 ms on a busy loop). Which one is at work is asked of the
    stream itself, not of a version number: a byte is written over loopback TCP to a socket of
    our own, with a callback queued just before, which runs at the write's first yield and
    looks whether the byte has arrived. Loopback delivers within the sending call, though a
    loaded kernel may defer it: so a "no" is asked again, twice; a "yes" cannot be wrong.
    About half a millisecond; ``False`` (the cautious answer) whenever it cannot tell.

    What it answers for is httpcore's HTTP/1.1 connection, which writes straight to the
    stream (what ``SdsClient`` and ``PdsSource`` use). Its HTTP/2 connection takes a lock
    before it writes, which yields: a source sending over HTTP/2 should pace with a pacer of
    its own, left unstarted (the cautious way).
    """
    for _ in range(_PROBES):
        try:
            if await _write_leaves_first(backend or httpcore.AnyIOBackend()):
                return True
        except (OSError, httpcore.NetworkError, httpcore.TimeoutException) as exc:
            logger.info("could not tell when requests leave (%s): spacing from their ends", exc)
            return False
    logger.debug("writes yield before they leave: spacing from their reported ends")
    return False


#: How many times :func:`writes_at_gate` asks before it answers "no".
_PROBES = 3


async def _write_leaves_first(backend: httpcore.AsyncNetworkBackend) -> bool:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(1.0)
        port = listener.getsockname()[1]
        stream = await backend.connect_tcp("127.0.0.1", port, timeout=1.0)
        try:
            peer, _ = listener.accept()  # already in the backlog: does not block
            with peer:
                peer.setblocking(False)
                arrived: list[bool] = []
                asyncio.get_running_loop().call_soon(lambda: arrived.append(_ready(peer)))
                await stream.write(b"\0", timeout=1.0)
                # A write that never yielded: its bytes are there, or not, by now.
                return arrived[0] if arrived else _ready(peer)
        finally:
            await stream.aclose()


def _ready(sock: socket.socket) -> bool:
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except OSError:  # nothing there yet (BlockingIOError), or no connection left
        return False


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
    """Puts each request on the wire at its slot: an absolute time on a timeline whose slots
    are an interval apart, never "an interval after the previous one" (so one late request
    does not push every later one back, and delays never accumulate).

    Two gates. :meth:`release` lets a request go shortly before its slot (early by the delays
    recently seen between a release and the wire); then, in the HTTP client's trace hook right
    before its headers are written, :meth:`SendTicket.at_wire` holds it until its slot, to the
    millisecond. A request that reaches the wire gate later than its slot allows
    (``tolerance_s``: a busy event loop, a connection set-up, a TLS handshake) takes a new slot
    instead and waits for it away from its connection (:class:`MissedSlot`): sent anyway, it
    would reach the gateway less than an interval before the next slot's request. A transport
    that does not trace still gets the first gate.
    """

    def __init__(
        self,
        interval_s: float,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        *,
        min_gap_s: float | None = None,
        floor_gap_s: float | None = None,
        tolerance_s: float | None = None,
        slack_s: float = 0.0,
        guard: Guard | None = None,
    ) -> None:
        # With a guard, the interval and the minimum gap follow it (see the properties).
        self._guard = guard
        self._interval_s = interval_s
        #: How much more than :attr:`tolerance_s` a request may be late before it takes a new
        #: slot: the part of the guard the gateway's own jitter does not need (a fleet's).
        self.slack_s = slack_s
        self._min_gap_s = interval_s if min_gap_s is None else min_gap_s
        #: No two writes' ends closer than this, even when a write takes less time than the
        #: recent ones (see _due): ``1/rate``, the gateway's own limit. Without it: min_gap_s.
        self.floor_gap_s = (
            guard.rate_interval_s
            if guard is not None
            else self._min_gap_s
            if floor_gap_s is None
            else min(floor_gap_s, self._min_gap_s)
        )
        #: How late at the wire a request may take its slot when it has a ``reslot`` (a
        #: fleet's): at least this, or what lateness was recently seen (see tolerance_s).
        self.base_tolerance_s = GUARD_S * _TOLERANCE if tolerance_s is None else tolerance_s
        self._clock = clock
        self._sleep = sleep
        # Fine-grained waiting only on the real clock: a test's fake clock moves in its sleeps.
        self._precise = clock is time.time and sleep is asyncio.sleep
        #: Whether a request's bytes leave in the turn it passes the wire gate (see
        #: :func:`writes_at_gate`): then the gate is its send time, and the gap counts from
        #: there; otherwise from its write's reported end (see _due).
        self.writes_at_gate = False
        # The last request through the gate (or, untraced, its end), and the last write.
        self._last_sent = -math.inf
        self._last_written = -math.inf  # the last write's reported end (as traced)
        # Recent delays between the gate and the end of the write (see _due).
        self._write_delays: deque[float] = deque(maxlen=32)
        # Recent delays between a release and the wire gate; releases come that much early
        # (the largest), so that requests wait at the precise gate rather than arrive late.
        self._release_delays: deque[float] = deque(maxlen=32)
        # How late recent requests reached the wire gate for their slots (0 when early).
        self._lateness: deque[float] = deque(maxlen=64)
        self.waited_s = 0.0
        self.released = 0
        #: Requests that reached the wire too late for their slot and took a later one.
        self.missed = 0
        #: The shortest gap seen between two consecutive writes (for metrics and tests).
        self.closest_s = math.inf

    @classmethod
    def following(
        cls,
        guard: Guard,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        *,
        tolerance_s: float | None = None,
        slack_s: float = 0.0,
    ) -> Spacer:
        """A spacer for a pacer's slots, ``1/rate`` plus ``guard`` apart, whose every gap
        between two writes keeps three quarters of the guard, as it is now (it widens after a
        refusal): a late request's successor catches up with its slot by the other quarter."""
        return cls(
            guard.rate_interval_s + guard.current_s,
            clock,
            sleep,
            tolerance_s=tolerance_s,
            slack_s=slack_s,
            guard=guard,
        )

    @property
    def interval_s(self) -> float:
        """The interval between slots."""
        if self._guard is None:
            return self._interval_s
        return self._guard.rate_interval_s + self._guard.current_s

    @property
    def min_gap_s(self) -> float:
        """No write sooner than this after the previous one, whatever the slots say: at least
        ``1/rate``, so a request that went late pushes its successor back only by what the
        guard did not absorb (the next slots absorb the rest: nothing accumulates)."""
        if self._guard is None:
            return self._min_gap_s
        return self._guard.rate_interval_s + self._guard.current_s * _KEPT_GUARD

    @property
    def tolerance_s(self) -> float:
        """How late a request may reach the wire and keep its slot: the lateness most recent
        requests stayed within (9 in 10), at least :attr:`base_tolerance_s` and at most a
        quarter of the interval. Measured, because it is this machine's: a loaded event loop
        wakes sleepers late, and a slot margin narrower than that would only waste slots."""
        if len(self._lateness) < 16:
            return self.base_tolerance_s
        ordered = sorted(self._lateness)
        seen = ordered[int(len(ordered) * 0.9)]
        return min(max(self.base_tolerance_s, seen), self.interval_s / 4)

    async def _pause(self, gap: float) -> None:
        """Sleep ``gap`` precisely: the event loop's timers wake up to a millisecond or two
        late (epoll counts whole milliseconds), which at 25 ms intervals is ~6 % of the
        throughput. So sleep all but the last stretch, then yield to the loop until due."""
        if not self._precise or gap > _SPIN_S:
            await self._sleep(gap - _SPIN_S if self._precise else gap)
        else:
            await asyncio.sleep(0)  # other tasks run meanwhile; only the last ~2 ms spin

    @property
    def lead_s(self) -> float:
        """How early a request is released before its slot: the longest of the recent delays
        between a release and the wire gate, at most half an interval."""
        if len(self._release_delays) < 4:
            return 0.0
        return min(max(self._release_delays), self.interval_s / 2)

    def ticket_at(
        self,
        not_before: float,
        reslot: Callable[[float | None], Awaitable[float]] | None = None,
        deadline: float | None = None,
        *,
        run_end: float | None = None,
    ) -> SendTicket:
        """A ticket for the slot at ``not_before`` (this process's clock); ``run_end``: the last
        of this process's consecutive slots it belongs to (see :class:`SendTicket`)."""
        return SendTicket(self, not_before, reslot, deadline, run_end=run_end)

    def ticket(self, wait: float) -> SendTicket:
        """A ticket for the slot ``wait`` seconds from now."""
        return self.ticket_at(self._clock() + wait)

    async def release(self, ticket: SendTicket) -> SendTicket:
        """Return shortly before ``ticket``'s slot."""
        started = self._clock()
        # The lead is read afresh on every pass: a burst's requests all start waiting before
        # any has reached the wire, when no delay has been seen yet.
        while (gap := ticket.not_before - self.lead_s - self._clock()) > 0:
            await self._pause(gap)
        now = ticket.released_at = self._clock()
        self.waited_s += now - started
        self.released += 1
        return ticket

    async def release_after(self, wait: float) -> SendTicket:
        """:meth:`ticket` then :meth:`release`."""
        return await self.release(self.ticket(wait))

    def _sent(self, when: float, traced: bool) -> None:
        if traced:
            # (At the gate, the gap is measured as requests pass it: see at_wire.)
            if self._last_written > -math.inf and not self.writes_at_gate:
                self.closest_s = min(self.closest_s, when - self._last_written)
            self._last_written = max(self._last_written, when)
        else:
            self._last_sent = max(self._last_sent, when)

    def _due(self, not_before: float, min_gap_s: float) -> float:
        """When a request at the gate may go: at its slot, and its write at least
        ``min_gap_s`` (its ticket's minimum gap) after the previous write.

        The trace hook reports a write a loop turn after its request passed the gate: about a
        millisecond, several under load. Where the bytes left in between depends on the
        transport (see :func:`writes_at_gate`). When they leave at the gate
        (:attr:`writes_at_gate`), the previous pass through the gate is the previous write,
        exactly. Otherwise they leave just before the report, a loop turn after the gate,
        so the reported end is the reference; kept from it as it is, each gap would also
        hold the delay, and a request that went late would push its successors back slot
        after slot by almost as much, hardly catching up. So the gap counts from the previous
        write's end less the shortest delay recently seen (which this write will most likely
        take too), never from before the previous pass through the gate, and never by more
        than keeps two writes' ends :attr:`floor_gap_s` apart should this write take no time.
        """
        delays = self._write_delays
        if self.writes_at_gate:
            # And a backstop for a write that did not leave at the gate after all (a transport
            # that waited to drain first): its reported end, less the report's usual delay,
            # plus 1/rate. A report later than usual by more than the guard's kept part,
            # on a busy loop, costs the next request the excess (rarely: bench/fleet.py).
            return max(
                not_before,
                self._last_sent + min_gap_s,
                self._last_written + self.floor_gap_s - (min(delays) if delays else 0.0),
            )
        shortest = min(delays) if len(delays) >= 8 else 0.0
        write_delay = min(shortest, min_gap_s - self.floor_gap_s)
        return max(
            not_before,
            self._last_sent + min_gap_s,
            self._last_written + min_gap_s - write_delay,
        )


class SendTicket:
    """One request's passage: its slot, the wire gate, its send time.

    The caller awaits :meth:`at_wire` just before the request's headers are written and calls
    :meth:`written` just after (an httpcore ``trace`` hook does both), and calls
    :meth:`finished` when the request has ended, however it ended (then a no-op).

    ``reslot(deadline)`` gets a new slot, as an absolute time on this process's clock, for a
    request that would reach the wire too late for its own; it raises
    :class:`RateLimitedError` when the next free slot lies beyond ``deadline`` (the request's
    ``time.monotonic()`` deadline), so a request that would miss its budget is refused before
    it is sent. Without ``reslot`` a late request goes at once.

    ``run_end`` is for a slot in a run of consecutive slots that are all this process's (a
    fleet's batched reservation): its neighbours in the run are this process's own requests,
    which the minimum gap keeps apart, so it may go late as long as it goes before the run's
    last slot (plus the tolerance); only beyond that would it land in another process's slot.
    """

    __slots__ = (
        "_done",
        "_gate_at",
        "_reslot",
        "_spacer",
        "deadline",
        "min_gap_s",
        "not_before",
        "released_at",
        "run_end",
        "sent_at",
    )

    def __init__(
        self,
        spacer: Spacer,
        not_before: float,
        reslot: Callable[[float | None], Awaitable[float]] | None = None,
        deadline: float | None = None,
        *,
        run_end: float | None = None,
    ) -> None:
        self._spacer = spacer
        #: The reserved slot: not written before it.
        self.not_before = not_before
        #: The minimum gap of the guard the slot was reserved with: a guard that widens
        #: later (a refusal) widens the next reservations, not the slots already spaced by
        #: the narrower one, which would drift late slot after slot and miss their run.
        self.min_gap_s = spacer.min_gap_s
        #: The last slot of this process's run this one belongs to: never written much later.
        self.run_end = not_before if run_end is None else max(run_end, not_before)
        self._reslot = reslot
        self.deadline = deadline
        self._done = False
        self._gate_at = -math.inf
        self.released_at = not_before
        #: When the request's headers were written (``-inf`` until then).
        self.sent_at = -math.inf

    async def at_wire(self) -> None:
        """Hold the request until its slot (and at least the minimum gap after the previous
        write); with a ``reslot``, raise :class:`MissedSlot` (with a new slot) when it would
        go too late for its run (see :class:`SendTicket`), whether it came late or the
        minimum gap would push it there."""
        spacer = self._spacer
        now = spacer._clock()
        spacer._release_delays.append(now - self.released_at)
        spacer._lateness.append(max(now - self.not_before, 0.0))
        while True:
            due = spacer._due(self.not_before, self.min_gap_s)
            if (
                self._reslot is not None
                and max(now, due) - self.run_end > spacer.tolerance_s + spacer.slack_s
            ):
                self.not_before = self.run_end = await self._reslot(self.deadline)
                self.min_gap_s = spacer.min_gap_s  # reserved with the guard as it is now
                spacer.missed += 1
                raise MissedSlot(self)
            if due <= now:
                break
            await spacer._pause(due - now)
            now = spacer._clock()
        # Through the gate: until its write is reported, this is the send the next request
        # keeps its distance from (a slow write must not let a successor catch it up).
        self._gate_at = spacer._clock()
        if spacer.writes_at_gate and spacer._last_sent > -math.inf:
            spacer.closest_s = min(spacer.closest_s, self._gate_at - spacer._last_sent)
        spacer._last_sent = max(spacer._last_sent, self._gate_at)

    def written(self) -> None:
        """The request's headers are in the kernel's hands: this is its send time."""
        self._report(self._spacer._clock(), traced=True)

    def finished(self) -> None:
        """The request ended (answered or failed); its send time if none was reported."""
        self._report(self._spacer._clock(), traced=False)

    def _report(self, when: float, *, traced: bool) -> None:
        if not self._done:
            self._done = True
            self.sent_at = when
            if traced and self._gate_at > -math.inf:
                self._spacer._write_delays.append(when - self._gate_at)
                if self._spacer.writes_at_gate:
                    self.sent_at = self._gate_at  # the bytes left then; the report came later
            self._spacer._sent(when, traced)

    async def wait_for_slot(self) -> None:
        """After :class:`MissedSlot`: wait (holding no connection) until the new slot nears."""
        await self._spacer.release(self)

    @property
    def reported(self) -> bool:
        return self._done


class Pacer(RateLimiter):
    """Puts requests at least ``1/per_second`` (plus an adaptive :class:`Guard`) apart, each
    on its slot, and keeps every calendar minute within ``per_minute``, in this process.

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
        self.guard = Guard(guard_s, 1.0 / per_second)
        #: The narrowest interval between slots (the guard's starting width).
        self.interval_s = 1.0 / per_second + guard_s
        self._timeline = _Timeline(self.interval_s, per_minute)
        self._clock = clock
        # A late request may take its slot (nobody else's is near): its successor keeps at
        # least 1/rate, plus three quarters of the guard, from it.
        self.spacer = Spacer.following(self.guard, clock, sleep)
        #: 429s the gateway answered despite the pacing, by kind (for metrics and tests).
        self.throttles: dict[str, int] = {"spike_arrest": 0, "quota": 0}

    def __repr__(self) -> str:
        return f"Pacer({self.per_second:g}/s, {self.per_minute}/min)"

    @property
    def waited_s(self) -> float:
        """Seconds requests spent waiting for their slot so far."""
        return self.spacer.waited_s

    async def start(self) -> None:
        """Learn whether writes leave at the wire gate (:func:`writes_at_gate`)."""
        self.spacer.writes_at_gate = await writes_at_gate()

    def _reserve(self, deadline: float | None) -> float:
        """The next slot (this process's clock), or :func:`too_long` beyond ``deadline``."""
        self._timeline.interval_s = 1.0 / self.per_second + self.guard.current_s
        now = self._clock()
        reserved, wait = self._timeline.reserve(now, max_wait(deadline))
        if not reserved:
            raise too_long(wait)
        self.guard.sent()
        return now + wait

    async def acquire(self, *, deadline: float | None = None) -> SendTicket:
        ticket = self.spacer.ticket_at(self._reserve(deadline), deadline=deadline)
        return await self.spacer.release(ticket)

    async def throttled(self, kind: Throttle, *, retry_after_s: float | None = None) -> None:
        self.throttles[kind] += 1
        now = self._clock()
        if kind == "spike_arrest":
            self.guard.refused()
            # The slot went to someone else (another process): leave about an interval free
            # before the next request. About, not exactly: two processes pacing at the same
            # rate would otherwise stay in step and collide again and again.
            self._timeline.push_back(now + self.interval_s * random.uniform(0.5, 1.5))  # noqa: S311
        elif retry_after_s is not None:
            self._timeline.close_until(now + retry_after_s)
