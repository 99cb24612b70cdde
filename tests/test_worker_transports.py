"""Transport logic that needs no broker: the NATS consumer loop against a fake subscription."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from sds_plugins import RouteWorker, WorkerSettings

nats_errors = pytest.importorskip("nats.errors", reason="needs the 'nats' extra")


class FakeSubscription:
    """A pull subscription whose fetches answer, in turn, with what a test lists."""

    def __init__(self, answers: list[BaseException | list[str]], stop: asyncio.Event) -> None:
        self.answers = answers
        self.stop = stop
        self.fetches = 0

    async def fetch(self, batch: int, timeout: float) -> list[str]:  # noqa: ASYNC109 - nats-py's API
        self.fetches += 1
        if not self.answers:
            self.stop.set()  # nothing more to say: the worker is told to stop
            return []
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def _transport(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[str]]:
    from sds_plugins._worker._nats import NatsTransport

    settings = WorkerSettings(broker_url="nats://127.0.0.1:4222", concurrency=4)
    transport = NatsTransport(settings, cast(RouteWorker, None))
    handled: list[str] = []

    async def handle(message: str) -> None:
        handled.append(message)

    monkeypatch.setattr(transport, "_handle", handle)
    return transport, handled


async def test_idle_fetches_that_time_out_either_way_do_not_stop_the_consumer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """nats-py's fetch raises its own TimeoutError, or asyncio's plain one when the deadline
    runs out between its two pull requests: both mean "nothing to do", never "stop"."""
    transport, handled = _transport(monkeypatch)
    stop = asyncio.Event()
    plain = TimeoutError()  # asyncio.TimeoutError is the built-in TimeoutError on 3.11+
    assert not isinstance(plain, nats_errors.TimeoutError)
    subscription = FakeSubscription(
        [plain, nats_errors.TimeoutError(), ["first"], plain, ["second"]], stop
    )

    await asyncio.wait_for(transport._consume(cast(Any, subscription), stop), 5)
    assert await transport.in_flight.drained(5)

    assert handled == ["first", "second"]
    assert subscription.fetches == 6  # the five answers, then the one that stopped it
    assert not transport._lost.is_set()


async def test_a_closed_connection_ends_the_consumer_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    transport, handled = _transport(monkeypatch)
    stop = asyncio.Event()
    subscription = FakeSubscription(
        [TimeoutError(), nats_errors.ConnectionClosedError(), ["never"]], stop
    )

    await asyncio.wait_for(transport._consume(cast(Any, subscription), stop), 5)

    assert handled == []
    assert subscription.fetches == 2
    assert not stop.is_set()
