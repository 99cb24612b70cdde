"""Keepalives (``sds_register_keepalives``): collected from plugins, made at start and then
every interval by the long-running processes, a failure logged and tried again sooner."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from sds_plugins import (
    PluginError,
    PluginHost,
    Router,
    Settings,
    WorkerSettings,
    create_service_app,
    hookimpl,
    run_worker,
)
from sds_plugins import _keepalive as keepalive_module
from sds_plugins._keepalive import KeepaliveRunner, collect_keepalives
from sds_plugins.sandbox import AppServer, Sandbox

NATS_URL = os.environ.get("SDS_TEST_NATS_URL", "")

Register = Callable[[str, float, Callable[[], Awaitable[object]]], None]


class _Plugin:
    def __init__(self, *entries: tuple[Any, Any, Any]) -> None:
        self.entries = entries

    @hookimpl
    def sds_register_keepalives(self, register: Register) -> None:
        for name, every, call in self.entries:
            register(name, every, call)


def _host(*plugins: object) -> PluginHost:
    host = PluginHost(load_entrypoints=False, environ={})
    for index, plugin in enumerate(plugins):
        host.register(plugin, name=f"p{index}")
    return host


async def _nothing() -> None:
    return None


def test_keepalives_are_collected_and_checked() -> None:
    [found] = collect_keepalives(_host(_Plugin(("ping", 60, _nothing))))
    assert (found.name, found.interval_s) == ("ping", 60.0)
    assert collect_keepalives(_host()) == []
    for bad, message in (
        (("", 60, _nothing), "needs a name"),
        (("ping", 0, _nothing), "positive"),
        (("ping", "daily", _nothing), "positive"),
        (("ping", 60, "not callable"), "async callable"),
    ):
        with pytest.raises(PluginError, match=message):
            collect_keepalives(_host(_Plugin(bad)))
    twice = _Plugin(("ping", 60, _nothing))
    with pytest.raises(PluginError, match="two plugins register a keepalive named 'ping'"):
        collect_keepalives(_host(twice, _Plugin(("ping", 30, _nothing))))


async def test_each_runs_at_start_then_every_interval_and_a_failure_is_retried_sooner(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The interval is long (an hour); after a failure the next try comes after RETRY_S,
    # made short here: the failing one is tried again, the good one is not (not due yet).
    monkeypatch.setattr(keepalive_module, "RETRY_S", 0.01)
    calls = {"good": 0, "flaky": 0}
    flaky_again = asyncio.Event()

    async def good() -> None:
        calls["good"] += 1

    async def flaky() -> None:
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise ConnectionError("mesh.example refused the connection")
        flaky_again.set()

    host = _host(_Plugin(("good", 3600, good), ("flaky", 3600, flaky)))
    caplog.set_level(logging.INFO, logger="sds_plugins.keepalive")
    async with KeepaliveRunner(collect_keepalives(host)) as runner:
        await asyncio.wait_for(flaky_again.wait(), timeout=10)
        assert calls == {"good": 1, "flaky": 2}
        assert (runner.done, runner.failed) == ({"good": 1, "flaky": 1}, {"good": 0, "flaky": 1})
    assert runner._tasks == []  # closed: nothing left running
    assert "keepalive flaky failed: ConnectionError: mesh.example refused" in caplog.text


async def test_a_keepalive_that_raises_anything_never_stops_the_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(keepalive_module, "RETRY_S", 0.01)
    tries = 0
    third = asyncio.Event()

    async def broken() -> None:
        nonlocal tries
        tries += 1
        if tries >= 3:
            third.set()
        raise RuntimeError("a bug in a plugin")

    async with KeepaliveRunner(collect_keepalives(_host(_Plugin(("broken", 60, broken))))):
        await asyncio.wait_for(third.wait(), timeout=10)


# -- the long-running processes make them: serve and the worker --------------------------------


class _Counting:
    """A plugin whose keepalive counts its calls and says when it was first called."""

    def __init__(self) -> None:
        self.calls = 0
        self.called = threading.Event()

    async def ping(self) -> None:
        self.calls += 1
        self.called.set()

    @hookimpl
    def sds_register_keepalives(self, register: Register) -> None:
        register("counting", 3600.0, self.ping)


def test_serve_makes_each_keepalive_when_it_starts(sandbox: Sandbox) -> None:
    counting = _Counting()
    host = PluginHost(load_entrypoints=False, environ={})
    host.register(counting, name="counting")
    router = Router(Settings(base_url=sandbox.base_url), host=host)
    with AppServer(create_service_app(router), lifespan=True) as server:
        assert counting.called.wait(10)
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert counting.calls == 1  # the next one is an hour away; the app stopped first


@pytest.mark.skipif(not NATS_URL, reason="SDS_TEST_NATS_URL is not set (NATS JetStream)")
async def test_the_worker_makes_each_keepalive_when_it_starts(sandbox: Sandbox) -> None:
    from ._worker_support import NatsBroker, unique_prefix

    counting = _Counting()
    host = PluginHost(load_entrypoints=False, environ={})
    host.register(counting, name="counting")
    router = Router(Settings(base_url=sandbox.base_url), host=host)
    broker = NatsBroker(NATS_URL, unique_prefix())
    await broker.open()
    stop = asyncio.Event()
    settings = WorkerSettings(
        broker_url=NATS_URL,
        requests=broker.requests,
        envelopes=broker.envelopes,
        failures=broker.failures,
    )
    try:
        worker = asyncio.create_task(run_worker(settings, router=router, stop=stop))
        await asyncio.wait_for(asyncio.to_thread(counting.called.wait, 20), timeout=30)
        stop.set()
        await asyncio.wait_for(worker, timeout=30)
    finally:
        stop.set()
        await broker.close()
        await router.aclose()
    assert counting.calls == 1


async def test_a_keepalive_that_hangs_times_out_and_is_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(keepalive_module, "CALL_TIMEOUT_S", 0.05)
    monkeypatch.setattr(keepalive_module, "RETRY_S", 0.01)
    tries = 0
    second = asyncio.Event()

    async def hangs() -> None:
        nonlocal tries
        tries += 1
        if tries >= 2:
            second.set()
        await asyncio.Event().wait()  # a server that never finishes answering

    async with KeepaliveRunner(collect_keepalives(_host(_Plugin(("hangs", 3600, hangs))))) as run:
        await asyncio.wait_for(second.wait(), timeout=10)
        assert run.failed["hangs"] >= 1


class _Broken:
    @hookimpl
    def sds_register_keepalives(self, register: Register) -> None:
        raise RuntimeError("a bug in a plugin")


def test_serve_starts_and_stops_cleanly_when_a_plugin_cannot_register_keepalives(
    sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    host = PluginHost(load_entrypoints=False, environ={})
    host.register(_Broken(), name="broken")
    router = Router(Settings(base_url=sandbox.base_url), host=host)
    with AppServer(create_service_app(router), lifespan=True) as server:
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert not router.started  # closed by the lifespan
    assert "no keepalives: a plugin failed to register them: RuntimeError" in caplog.text
