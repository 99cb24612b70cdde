"""Pacing below the API gateway: the pacer on a fake clock, the client's answers to Apigee's
429s, and, over real sockets against a sandbox in its own process behind a gateway like NHS's,
bulk work that never meets spike arrest."""

from __future__ import annotations

import asyncio
import importlib.metadata
import ipaddress
import itertools
import json
import math
import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sds_plugins import (
    ConfigurationError,
    Lookup,
    Pacer,
    RateLimitedError,
    RetryPolicy,
    Router,
    SdsClient,
    Settings,
    hookimpl,
)
from sds_plugins._pacing import (
    GUARD_S,
    Guard,
    MissedSlot,
    RateLimiter,
    SendTicket,
    Spacer,
    Throttle,
    too_long,
    writes_at_gate,
)
from sds_plugins._retrying import gateway_throttle, seconds_to_next_minute
from sds_plugins._tools._prewarm import prewarm
from sds_plugins.sandbox import SandboxProcess

from ._adapters import JoinPlugin
from ._reference import GPC_STRUCTURED, PSIS, SDS_REFERENCE, load_json
from .test_redis import _practices

BASE = "https://int.api.service.nhs.uk/spine-directory/FHIR/R4"
DEVICE_BODY = load_json(SDS_REFERENCE / "observed-responses" / "sds-server-single_device.json")
SPIKE = {
    "fault": {
        "faultstring": "Spike arrest violation. Allowed rate : 40ps",
        "detail": {"errorcode": "policies.ratelimit.SpikeArrestViolation"},
    }
}
QUOTA = {
    "fault": {
        "faultstring": "Rate limit quota violation. Quota limit  exceeded. Identifier : _default",
        "detail": {"errorcode": "policies.ratelimit.QuotaViolation"},
    }
}


class FakeTime:
    """A wall clock that moves only when someone sleeps on it."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += max(seconds, 0.0)


def _pacer(fake: FakeTime, **options: Any) -> Pacer:
    return Pacer(clock=fake.clock, sleep=fake.sleep, **options)


# -- the pacer ---------------------------------------------------------------------------------


async def test_requests_are_spaced_not_counted() -> None:
    fake = FakeTime()
    pacer = _pacer(fake, per_second=40)
    released = []
    for _ in range(5):
        ticket = await pacer.acquire()
        released.append(fake.now)
        ticket.finished()  # as a request that ended at once
    gaps = [b - a for a, b in itertools.pairwise(released)]
    # 40/s is one request per 25 ms (plus the guard), from the first: never 40 at once.
    assert gaps == pytest.approx([0.025 + GUARD_S] * 4, rel=1e-4)


async def test_a_calendar_minute_never_exceeds_the_quota() -> None:
    fake = FakeTime(start=1_800_000_000.0 + 59.0)  # one second before a minute turns
    pacer = _pacer(fake, per_second=1000, per_minute=3)
    minutes = []
    for _ in range(7):
        (await pacer.acquire()).finished()
        minutes.append(math.floor(fake.now / 60))
    first = minutes[0]
    assert minutes == [first] * 3 + [first + 1] * 3 + [first + 2]


async def test_a_wait_beyond_the_deadline_is_refused_at_once_and_reserves_nothing() -> None:
    fake = FakeTime()
    pacer = _pacer(fake, per_second=1)
    (await pacer.acquire()).finished()
    with pytest.raises(RateLimitedError) as raised:
        await pacer.acquire(deadline=time.monotonic() + 0.5)
    assert raised.value.limit == "pace"
    assert raised.value.attempts == 0
    assert raised.value.retry_after_s == pytest.approx(1 + GUARD_S)
    assert fake.slept == []  # not a moment spent waiting in vain
    # Nothing was reserved: the next caller with time to wait gets the very next slot.
    (await pacer.acquire()).finished()
    assert fake.slept == pytest.approx([1 + GUARD_S])


async def test_a_spike_arrest_refusal_leaves_about_an_interval_free() -> None:
    fake = FakeTime()
    pacer = _pacer(fake, per_second=10)
    (await pacer.acquire()).finished()
    await pacer.throttled("spike_arrest")
    before = fake.now
    (await pacer.acquire()).finished()
    # About an interval, jittered so two processes at one rate fall out of step.
    assert 0.05 <= fake.now - before <= 0.15 + GUARD_S * 1.5
    assert pacer.throttles == {"spike_arrest": 1, "quota": 0}


async def test_a_spent_quota_closes_the_pace_until_the_gateway_s_next_minute() -> None:
    fake = FakeTime()
    pacer = _pacer(fake)
    await pacer.throttled("quota", retry_after_s=12.0)
    with pytest.raises(RateLimitedError) as raised:
        await pacer.acquire(deadline=time.monotonic() + 5)
    assert raised.value.retry_after_s == pytest.approx(12.0)
    start = fake.now
    (await pacer.acquire()).finished()
    assert fake.now - start == pytest.approx(12.0)


async def test_sends_land_on_their_slots_and_a_late_one_does_not_push_the_rest_back() -> None:
    fake = FakeTime()
    pacer = _pacer(fake, per_second=40)
    start = fake.now
    first = await pacer.acquire()
    await first.at_wire()
    fake.now += 0.010  # its write takes 10 ms (a busy loop, a handshake)
    first.written()
    sent = []
    for _ in range(24):
        ticket = await pacer.acquire()
        await ticket.at_wire()
        ticket.written()
        sent.append(ticket.sent_at - start)
    slots = [(k + 1) * pacer.interval_s for k in range(24)]
    # The late write pushes its successors back only by what each slot's guard cannot absorb
    # (each gap keeps 1/rate plus three quarters of the guard: 26.5 ms), and within some
    # slots every request goes on its own slot again: nothing accumulates.
    assert sent[:3] == pytest.approx([0.0365, 0.063, 0.0895], abs=1e-6)
    assert sent[-4:] == pytest.approx(slots[-4:], abs=1e-5)
    gaps = [b - a for a, b in itertools.pairwise([0.010, *sent])]
    assert min(gaps) >= 1 / 40  # never closer than the rate, however late one was


async def test_a_fleet_request_late_for_its_slot_takes_a_new_one_away_from_the_wire() -> None:
    fake = FakeTime()
    spacer = Spacer(0.025, clock=fake.clock, sleep=fake.sleep, tolerance_s=0.001)
    later = fake.now + 1.0

    async def reslot(deadline: float | None) -> float:
        return later

    on_time = spacer.ticket_at(fake.now - 0.0005, reslot)  # late, but within tolerance
    await on_time.at_wire()
    on_time.written()
    late = spacer.ticket_at(fake.now - 0.002, reslot)
    with pytest.raises(MissedSlot) as missed:
        await late.at_wire()
    assert missed.value.ticket is late and late.not_before == later
    assert spacer.missed == 1
    await late.wait_for_slot()  # no connection held meanwhile
    await late.at_wire()
    assert fake.now == pytest.approx(later)


async def test_in_a_run_a_late_request_keeps_its_slot_until_the_run_s_end() -> None:
    fake = FakeTime()
    spacer = Spacer(0.027, clock=fake.clock, sleep=fake.sleep, min_gap_s=0.0255, tolerance_s=0.001)
    later = fake.now + 1.0

    async def reslot(deadline: float | None) -> float:
        return later

    # Three consecutive slots of this process's run; the first request reaches the gate
    # 10 ms late. Its neighbours are this process's own, so it goes, and so do the others,
    # each the minimum gap after the one before (the rest of the run absorbs the delay).
    start = fake.now - 0.010
    run = [spacer.ticket_at(start + k * 0.027, reslot, run_end=start + 0.054) for k in range(3)]
    for ticket in run[:2]:
        await ticket.at_wire()
        ticket.written()
    assert [t.sent_at - start for t in run[:2]] == pytest.approx([0.010, 0.0355], abs=1e-6)
    # The last one would go later still, beyond its run's end and its tolerance, into the
    # next process's slot: it takes a new slot instead.
    fake.now += 0.030
    with pytest.raises(MissedSlot):
        await run[2].at_wire()
    assert run[2].not_before == later and spacer.missed == 1


async def test_a_run_s_last_request_pushed_past_its_tolerance_by_the_gap_takes_a_new_slot() -> None:
    fake = FakeTime()
    spacer = Spacer(0.027, clock=fake.clock, sleep=fake.sleep, min_gap_s=0.0255, tolerance_s=0.001)

    async def reslot(deadline: float | None) -> float:
        return fake.now + 1.0

    previous = spacer.ticket_at(fake.now - 0.008)  # went 8 ms late
    await previous.at_wire()
    previous.written()
    # On time at the gate, but the gap after the late one would make it go 6.5 ms late.
    last = spacer.ticket_at(fake.now + 0.019, reslot)
    fake.now += 0.019
    with pytest.raises(MissedSlot):
        await last.at_wire()


async def test_the_gap_counts_from_the_previous_write_less_the_shortest_write_delay() -> None:
    fake = FakeTime()
    spacer = Spacer(0.027, clock=fake.clock, sleep=fake.sleep, min_gap_s=0.0255, floor_gap_s=0.025)
    start = fake.now

    async def send(slot: float, write_delay: float) -> float:
        ticket = spacer.ticket_at(start + slot)
        await ticket.at_wire()
        fake.now += write_delay  # the transport yields before it writes
        ticket.written()
        return ticket.sent_at - start

    # Writes take 1 ms after the gate; eight of them teach the spacer so.
    writes = [await send(k * 0.027, 0.001) for k in range(8)]
    assert writes == pytest.approx([k * 0.027 + 0.001 for k in range(8)], abs=1e-6)
    # One request goes 10 ms late. Its successors keep the minimum gap counted from its
    # write less (part of) the write delay they will take too, so they regain 1 ms a slot
    # (from its write's end as it is: 0.5 ms a slot) and are back on their slots in ten.
    fake.now = start + 8 * 0.027 + 0.010
    writes = [await send(k * 0.027, 0.001) for k in range(8, 20)]
    gaps = [b - a for a, b in itertools.pairwise(writes)]
    assert gaps[:3] == pytest.approx([0.026] * 3, abs=1e-6)
    assert writes[-1] == pytest.approx(19 * 0.027 + 0.001, abs=1e-6)
    # A write much quicker than the recent ones still ends at least 1/rate after the last.
    fake.now = start + 20 * 0.027 + 0.004
    late = await send(20 * 0.027, 0.001)
    quick = await send(21 * 0.027, 0.0)
    assert quick - late >= 0.025 - 1e-9
    assert spacer.closest_s >= 0.025 - 1e-9


async def test_when_writes_leave_at_the_gate_the_gap_counts_from_the_gate() -> None:
    fake = FakeTime()
    guard = Guard(0.002, 1 / 40)
    spacer = Spacer.following(guard, clock=fake.clock, sleep=fake.sleep)
    spacer.writes_at_gate = True
    start = fake.now

    async def send(slot: float, report_after: float) -> SendTicket:
        ticket = spacer.ticket_at(start + slot)
        await ticket.at_wire()
        fake.now += report_after  # the trace hook hears of the write a loop turn later
        ticket.written()
        return ticket

    # The first request reaches the gate 10 ms late; its write is reported 3 ms after that.
    fake.now = start + 0.010
    first = await send(0.0, 0.003)
    assert first.sent_at == pytest.approx(start + 0.010)  # the gate, not the report
    # Its successors keep 1/rate plus three quarters of the guard from the previous gate,
    # whatever the reports say, and are back on their 27 ms slots once caught up.
    sent = [(await send(k * 0.027, 0.003)).sent_at - start for k in range(1, 24)]
    assert sent[:2] == pytest.approx([0.0365, 0.063], abs=1e-5)
    assert sent[-1] == pytest.approx(23 * 0.027, abs=1e-5)
    assert spacer.closest_s == pytest.approx(0.0265, abs=1e-5)


async def test_at_the_gate_a_write_that_waited_still_keeps_its_successor_away() -> None:
    fake = FakeTime()
    spacer = Spacer.following(Guard(0.002, 1 / 40), clock=fake.clock, sleep=fake.sleep)
    spacer.writes_at_gate = True
    start = fake.now
    for k in range(8):  # reports come 1 ms after the gate
        ticket = spacer.ticket_at(start + k * 0.027)
        await ticket.at_wire()
        fake.now += 0.001
        ticket.written()
    # A transport that had to drain first: its write is reported 15 ms after the gate, and
    # its bytes may have left as late as that. The next request keeps 1/rate from the report
    # (less the report's usual delay), beyond its slot and the gap from the gate.
    waited = spacer.ticket_at(start + 8 * 0.027)
    await waited.at_wire()
    fake.now += 0.015
    waited.written()
    after = spacer.ticket_at(start + 9 * 0.027)
    await after.at_wire()
    assert fake.now - start == pytest.approx(8 * 0.027 + 0.015 + 0.025 - 0.001, abs=1e-5)


async def test_every_gap_keeps_three_quarters_of_the_guard_as_it_widens() -> None:
    fake = FakeTime()
    pacer = _pacer(fake, per_second=40)
    assert (pacer.spacer.interval_s, pacer.spacer.min_gap_s) == pytest.approx((0.027, 0.0265))
    await pacer.throttled("spike_arrest")  # the guard widens by 1 ms, and the gaps with it
    assert pacer.guard.current_s == pytest.approx(0.003)
    assert (pacer.spacer.interval_s, pacer.spacer.min_gap_s) == pytest.approx((0.028, 0.02725))
    assert pacer.spacer.floor_gap_s == pytest.approx(0.025)


# httpcore's network interface takes ``timeout`` arguments (ASYNC109 is about our own APIs).
async def test_a_guard_widened_mid_run_leaves_the_slots_already_reserved_alone() -> None:
    fake = FakeTime()
    guard = Guard(0.002, 1 / 40)
    spacer = Spacer.following(
        guard, clock=fake.clock, sleep=fake.sleep, tolerance_s=0.001, slack_s=0.001
    )
    spacer.writes_at_gate = True

    async def reslot(deadline: float | None) -> float:
        return fake.now + 1.0

    # A run of 16 slots, 27 ms apart, reserved with the 2 ms guard.
    start = fake.now
    run_end = start + 15 * 0.027
    run = [spacer.ticket_at(start + k * 0.027, reslot, run_end=run_end) for k in range(16)]
    await run[0].at_wire()
    run[0].written()
    guard.refused()  # a spike arrest: 3 ms now, so the next reservations are 28 ms apart
    assert spacer.min_gap_s == pytest.approx(0.02725)
    for ticket in run[1:]:  # each on its slot: at the old gap, none drifts into a miss
        await ticket.at_wire()
        ticket.written()
    assert spacer.missed == 0
    assert [t.sent_at - start for t in run] == pytest.approx(
        [k * 0.027 for k in range(16)], abs=1e-5
    )
    # A slot reserved from now on is spaced by the wider guard.
    assert spacer.ticket_at(fake.now + 0.028).min_gap_s == pytest.approx(0.02725)


class _YieldFirst(httpcore.AsyncNetworkBackend):
    """httpcore's own backend, but each write yields to the event loop before it writes (as
    anyio's did up to 4.15)."""

    def __init__(self) -> None:
        self.backend = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        return _YieldingStream(await self.backend.connect_tcp(host, port, timeout))

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _YieldingStream(httpcore.AsyncNetworkStream):
    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self.stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        return await self.stream.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await asyncio.sleep(0)
        await self.stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self.stream.aclose()


def _anyio_writes_first() -> bool:
    major, minor = (int(part) for part in importlib.metadata.version("anyio").split(".")[:2])
    return (major, minor) >= (4, 16)


async def test_the_probe_tells_whether_a_write_leaves_before_it_yields() -> None:
    # Over real loopback sockets: anyio writes first from 4.16 (the locked version), and
    # yielded first before; a transport that yields first is never taken for one that does not.
    assert await writes_at_gate() is _anyio_writes_first()
    assert await writes_at_gate(_YieldFirst()) is False
    # One that cannot tell answers the cautious way.
    assert await writes_at_gate(_Unreachable()) is False


class _Unreachable(_YieldFirst):
    async def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("no loopback here")


async def test_the_router_starts_its_rate_limiter_which_learns_when_writes_leave() -> None:
    keep = KeepPacer()
    async with Router(Settings(base_url="http://127.0.0.1:9/FHIR/R4"), plugins=[keep]) as router:
        assert router.rate_limiter is keep.pacer
        assert keep.pacer is not None
        assert keep.pacer.spacer.writes_at_gate is _anyio_writes_first()
    # A pacer nobody started spaces from the writes' reported ends (the cautious way); a
    # client used alone starts its own.
    alone = Pacer()
    assert alone.spacer.writes_at_gate is False
    async with SdsClient(BASE, transport=httpx.MockTransport(Script()), rate_limiter=alone):
        assert alone.spacer.writes_at_gate is _anyio_writes_first()


class _Failing:
    """Provides a rate limiter that records its closing, and no cache: the start fails."""

    def __init__(self) -> None:
        self.limiter = _Closing()

    @hookimpl
    def sds_provide_rate_limiter(self, settings: Settings) -> RateLimiter:
        return self.limiter

    @hookimpl(tryfirst=True)
    def sds_provide_cache(self, settings: Settings) -> Any:
        raise ConfigurationError("no cache for this test")


class _Closing(RateLimiter):
    def __init__(self) -> None:
        self.started = self.closed = 0

    async def start(self) -> None:
        self.started += 1
        await asyncio.sleep(0.01)  # long enough for a second caller to arrive meanwhile

    async def aclose(self) -> None:
        self.closed += 1


async def test_a_router_started_twice_at_once_starts_once() -> None:
    keep = _Closing()

    class Keep:
        @hookimpl
        def sds_provide_rate_limiter(self, settings: Settings) -> RateLimiter:
            return keep

    router = Router(Settings(base_url="http://127.0.0.1:9/FHIR/R4"), plugins=[Keep()])
    await asyncio.gather(router.start(), router.start())
    try:
        assert router.started and router.rate_limiter is keep and keep.started == 1
    finally:
        await router.aclose()
    assert keep.closed == 1


async def test_a_router_whose_start_fails_closes_what_it_had_started() -> None:
    failing = _Failing()
    router = Router(Settings(base_url="http://127.0.0.1:9/FHIR/R4"), plugins=[failing])
    with pytest.raises(ConfigurationError, match="no cache for this test"):
        await router.start()
    assert (failing.limiter.started, failing.limiter.closed) == (1, 1)
    assert not router.started and router.rate_limiter is None and not router.sources


async def test_a_request_whose_new_slot_would_miss_its_budget_is_refused_unsent() -> None:
    fake = FakeTime()
    spacer = Spacer(0.025, clock=fake.clock, sleep=fake.sleep, tolerance_s=0.001)

    async def reslot(deadline: float | None) -> float:
        raise too_long(30.0)

    ticket = spacer.ticket_at(fake.now - 0.5, reslot, deadline=time.monotonic() + 1)
    with pytest.raises(RateLimitedError) as refused:
        await ticket.at_wire()
    assert (refused.value.limit, refused.value.attempts) == ("pace", 0)


async def test_the_guard_widens_on_refusals_and_creeps_back_when_clean() -> None:
    fake = FakeTime()
    pacer = _pacer(fake, per_second=40)
    base = pacer.guard.current_s
    for _ in range(50):
        await pacer.throttled("spike_arrest")
    # Wider, never beyond half of 1/rate: pacing slows, never speeds past the rate.
    assert pacer.guard.current_s == pytest.approx(0.5 / 40)
    for _ in range(2000):
        (await pacer.acquire()).finished()
    assert pacer.guard.current_s == pytest.approx(base)


class _TracingTransport(httpx.AsyncBaseTransport):
    """Calls the ``trace`` extension as httpcore would, then answers."""

    def __init__(self) -> None:
        self.sent = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        trace = request.extensions["trace"]
        await trace("http11.send_request_headers.started", {})
        self.sent += 1
        await trace("http11.send_request_headers.complete", {})
        return httpx.Response(200, json=DEVICE_BODY)


class _LateOnce(RateLimiter):
    """Hands out a ticket that reaches the wire late for its slot, once (on a fake clock)."""

    def __init__(self) -> None:
        self.fake = FakeTime()
        self.spacer = Spacer(0.025, clock=self.fake.clock, sleep=self.fake.sleep, tolerance_s=0.001)

    async def acquire(self, *, deadline: float | None = None) -> SendTicket:
        async def reslot(limit: float | None) -> float:
            return self.fake.now + 0.01

        return self.spacer.ticket_at(self.fake.now - 0.5, reslot, deadline)


async def test_the_client_sends_a_missed_slots_request_once_on_its_new_slot() -> None:
    transport, limiter = _TracingTransport(), _LateOnce()
    client = SdsClient(BASE, transport=transport, rate_limiter=limiter)
    async with client:
        result = await client.devices(org="B82617", interaction=GPC_STRUCTURED)
    assert len(result.records) == 1
    assert (result.attempts, transport.sent, limiter.spacer.missed) == (1, 1, 1)


# -- the client's answers to the gateway's 429s ------------------------------------------------


def test_apigee_fault_documents_are_recognised() -> None:
    assert gateway_throttle(SPIKE) == "spike_arrest"
    assert gateway_throttle(QUOTA) == "quota"
    for other in (None, [], {"fault": "x"}, {"fault": {"detail": []}}, {"issue": []}):
        assert gateway_throttle(other) is None


def test_seconds_to_the_gateway_s_next_minute() -> None:
    assert seconds_to_next_minute("Sat, 28 Nov 2026 10:15:59 GMT") == pytest.approx(1)
    assert seconds_to_next_minute("Sat, 28 Nov 2026 10:16:00 GMT") == pytest.approx(60)
    assert seconds_to_next_minute("not a date", now=120.5) == pytest.approx(59.5)


class Script:
    def __init__(self, *answers: httpx.Response) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


class Recorder(RateLimiter):
    def __init__(self) -> None:
        self.throttles: list[tuple[Throttle, float | None]] = []

    async def throttled(self, kind: Throttle, *, retry_after_s: float | None = None) -> None:
        self.throttles.append((kind, retry_after_s))


async def _devices(script: Script, policy: RetryPolicy, limiter: RateLimiter | None) -> Any:
    transport = httpx.MockTransport(script)
    async with SdsClient(BASE, transport=transport, retry=policy, rate_limiter=limiter) as client:
        return await client.devices(org="B82617", interaction=GPC_STRUCTURED)


async def test_spike_arrest_is_retried_on_the_next_slot_without_spending_attempts(
    slept: list[float],
) -> None:
    spike = httpx.Response(429, json=SPIKE)
    script = Script(spike, spike, spike, httpx.Response(200, json=DEVICE_BODY))
    limiter = Recorder()
    result = await _devices(script, RetryPolicy(attempts=2, budget_s=10), limiter)
    assert len(result.records) == 1
    assert result.attempts == 4  # three refusals did not use up the two attempts...
    assert [wait for wait in slept if wait > 0] == []  # ...nor wait with back-off
    assert limiter.throttles == [("spike_arrest", None)] * 3


async def test_a_spent_quota_is_waited_out_until_the_next_minute(slept: list[float]) -> None:
    quota = httpx.Response(429, json=QUOTA, headers={"Date": "Sat, 28 Nov 2026 10:15:58 GMT"})
    script = Script(quota, httpx.Response(200, json=DEVICE_BODY))
    limiter = Recorder()
    result = await _devices(script, RetryPolicy(attempts=3, budget_s=10), limiter)
    assert result.attempts == 2
    assert [wait for wait in slept if wait > 0] == [pytest.approx(2.0)]
    assert limiter.throttles == [("quota", pytest.approx(2.0))]


async def test_a_spent_quota_beyond_the_budget_fails_at_once_saying_when(
    slept: list[float],
) -> None:
    quota = httpx.Response(429, json=QUOTA, headers={"Date": "Sat, 28 Nov 2026 10:16:00 GMT"})
    script = Script(quota)
    with pytest.raises(RateLimitedError) as raised:
        await _devices(script, RetryPolicy(attempts=3, budget_s=10), Recorder())
    error = raised.value
    assert (error.limit, error.spine_code, error.status_code) == ("quota", "QuotaViolation", 429)
    assert error.retry_after_s == pytest.approx(60.0)
    assert error.retryable is True
    assert error.attempts == 1
    assert len(script.requests) == 1


# -- over real sockets, behind a gateway like NHS's -------------------------------------------


@pytest.fixture(scope="module")
def gateway() -> Iterator[SandboxProcess]:
    """The sandbox in its own process (its arrival times unaffected by the test's own work),
    with NHS's live gateway policies and 200 synthetic GP practices."""
    with SandboxProcess(gateway=True, synthetic=200) as sandbox:
        yield sandbox


def _refused(sandbox: SandboxProcess) -> tuple[int, int]:
    gateway = sandbox.stats()["gateway"]
    return gateway["spike_arrest_refused"], gateway["quota_refused"]


class KeepPacer:
    """Keeps the router's pacer, to look at what it did after the run."""

    pacer: Pacer | None = None

    @hookimpl
    def sds_provide_rate_limiter(self, settings: Settings) -> Pacer:
        self.pacer = Pacer(per_second=settings.rate_limit_per_s)
        return self.pacer


async def test_a_prewarm_behind_the_gateway_meets_no_spike_arrest(
    gateway: SandboxProcess,
) -> None:
    gateway.reset()
    keep = KeepPacer()
    summary = await prewarm(
        Settings(base_url=gateway.base_url),
        adapter="join",
        interaction=GPC_STRUCTURED,
        orgs=_practices(40),
        progress=False,
        plugins=[JoinPlugin(), keep],
        require_shared_cache=False,
    )
    assert summary["resolved"] == 40
    # What the client controls, exactly: no two requests were written to the wire closer than
    # the pace's interval (25 ms plus a 2 ms guard for jitter). What the gateway then sees also
    # depends on how loaded the machine is (a request can reach the sandbox's process late, so
    # the next one seems early): bench/gateway.py measures that, on a machine kept for it.
    assert keep.pacer is not None
    assert keep.pacer.spacer.closest_s >= 1 / keep.pacer.per_second
    # The summary counts what the gateway refused, and every refusal went again.
    spike_arrest, quota = _refused(gateway)
    assert quota == 0
    assert summary["gateway_429s"] == {"spike_arrest": spike_arrest, "quota": 0}
    assert summary["directory_requests"] == 80 + spike_arrest


async def test_a_cold_route_s_lookups_go_one_interval_apart(gateway: SandboxProcess) -> None:
    gateway.reset()
    keep = KeepPacer()
    settings = Settings(base_url=gateway.base_url)
    async with Router(settings, plugins=[JoinPlugin(), keep]) as router:
        for org in _practices(10):
            await router.route("join", org=org, interaction=GPC_STRUCTURED)
    assert keep.pacer is not None
    assert keep.pacer.spacer.closest_s >= 1 / keep.pacer.per_second
    spike_arrest, quota = _refused(gateway)  # refusals, if the machine delayed one, went again
    assert quota == 0
    assert sum(gateway.stats()["requests"].values()) == 20 + spike_arrest


async def test_without_pacing_the_gateway_refuses_and_the_client_recovers(
    gateway: SandboxProcess,
) -> None:
    gateway.reset()
    client = SdsClient(gateway.base_url, retry=RetryPolicy(attempts=4, budget_s=20))
    async with client:
        results = await asyncio.gather(
            *(client.devices(org=org, interaction=GPC_STRUCTURED) for org in _practices(10))
        )
    assert all(len(result.records) == 1 for result in results)
    spiked, _ = _refused(gateway)
    assert spiked > 0  # ten at once: what the pacer is for
    assert sum(result.attempts for result in results) == 10 + spiked


async def test_bypassing_the_cache_bypasses_the_gateway_s_too(gateway: SandboxProcess) -> None:
    gateway.reset()
    async with Router(Settings(base_url=gateway.base_url), plugins=[JoinPlugin()]) as router:
        await router.lookup(Lookup.devices(org="YES", interaction=PSIS))
        await router.lookup(Lookup.devices(org="YES", interaction=PSIS), bypass_cache=True)
        await router.lookup(Lookup.devices(org="YES", interaction=PSIS), bypass_cache=True)
    stats = gateway.stats()["gateway"]
    assert (stats["cache_misses"], stats["cache_bypassed"], stats["cache_hits"]) == (1, 2, 0)


async def test_quota_exhaustion_fails_typed_with_when_to_come_back() -> None:
    # The gateway's quota is per calendar minute of the wall clock (the sandbox's is the same
    # clock): start with at least 8 s of the minute left, so it cannot turn mid-test and
    # give the fourth lookup a fresh quota within its 2 s budget.
    if time.time() % 60 > 52:
        await asyncio.sleep(60 - time.time() % 60 + 0.5)
    with SandboxProcess(quota_per_min=3) as sandbox:
        # ldap_timeout_s=0: an empty answer is taken at once (not asked again), so the three
        # lookups spend exactly the quota.
        settings = Settings(base_url=sandbox.base_url, retry_budget_s=2, ldap_timeout_s=0)
        async with Router(settings, plugins=[JoinPlugin()]) as router:
            for org in ("YES", "X26", "B82617"):
                await router.lookup(Lookup.devices(org=org, interaction=PSIS))
            with pytest.raises(RateLimitedError) as raised:
                await router.lookup(Lookup.devices(org="R1A14", interaction=PSIS))
            assert raised.value.limit == "quota"
            assert raised.value.retry_after_s is not None
            assert 0 < raised.value.retry_after_s <= 60
            # The rest of this process now waits for the gateway's next minute too, without
            # spending a request on a refusal it already knows about.
            with pytest.raises(RateLimitedError) as again:
                await router.lookup(Lookup.devices(org="RXX01", interaction=PSIS))
            assert again.value.limit == "pace"
            assert again.value.attempts == 0
        assert sandbox.stats()["gateway"]["quota_refused"] == 1


# -- through an HTTPS proxy -------------------------------------------------------------------


def _tls_contexts(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A self-signed certificate for 127.0.0.1: the server's context and a client's trusting it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    return server, ssl.create_default_context(cafile=str(cert_file))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def test_through_an_https_proxy_the_tunnel_s_connect_is_not_paced(tmp_path: Path) -> None:
    server_tls, client_tls = _tls_contexts(tmp_path)
    answered: list[bytes] = []
    tunnels: list[bytes] = []
    body = json.dumps(DEVICE_BODY).encode()

    handlers: set[asyncio.Task[Any]] = set()  # to see each connection's end before ours

    async def directory(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            while True:
                answered.append((await reader.readuntil(b"\r\n\r\n")).split(b" ", 1)[0])
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        head = await reader.readuntil(b"\r\n\r\n")
        tunnels.append(head.split(b"\r\n", 1)[0])
        host, port = head.split(b" ")[1].decode().rsplit(":", 1)
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

    tls_server = await asyncio.start_server(directory, "127.0.0.1", 0, ssl=server_tls)
    proxy_server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    port = tls_server.sockets[0].getsockname()[1]
    proxy_port = proxy_server.sockets[0].getsockname()[1]
    pacer = Pacer(per_second=40)
    transport = httpx.AsyncHTTPTransport(proxy=f"http://127.0.0.1:{proxy_port}", verify=client_tls)
    try:
        async with SdsClient(
            f"https://127.0.0.1:{port}/spine-directory/FHIR/R4",
            transport=transport,
            rate_limiter=pacer,
        ) as client:
            pacer.spacer.writes_at_gate = True  # each pass through the gate is then a send
            first = await client.devices(org="B82617", interaction=GPC_STRUCTURED)
            # One request, one pass through the gate: the CONNECT before it took no slot
            # (paced, it would have, and the GET would have waited an interval after it).
            assert pacer.spacer.closest_s == math.inf
            second = await client.devices(org="B82618", interaction=GPC_STRUCTURED)
            assert pacer.spacer.closest_s >= 1 / 40
        # The client closed its connection: the proxy's tunnel and the directory's end too.
        await asyncio.wait(handlers, timeout=10)
    finally:
        for server in (tls_server, proxy_server):
            server.close()
            await server.wait_closed()
    assert len(first.records) == len(second.records) == 1
    assert tunnels == [f"CONNECT 127.0.0.1:{port} HTTP/1.1".encode()]  # kept alive
    assert answered == [b"GET", b"GET"]
    assert pacer.spacer.released == 2
