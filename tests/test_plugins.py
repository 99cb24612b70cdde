"""The plugin host: discovery, restriction, blocking, tracing, validation, introspection."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from sds_plugins import PluginError, PluginHost, hookimpl, hookspecs
from sds_plugins.sandbox import Sandbox

from ._reference import PSIS


class FakeDist:
    def __init__(self, name: str, version: str) -> None:
        self.name = name
        self.version = version


class FakeEntryPoint:
    def __init__(self, name: str, plugin: object, dist: FakeDist) -> None:
        self.name = name
        self.value = f"{name}_module"
        self.group = hookspecs.PROJECT
        self.dist = dist
        self._plugin = plugin

    def load(self) -> object:
        if isinstance(self._plugin, Exception):
            raise self._plugin
        return self._plugin


def _plugin(name: str) -> types.SimpleNamespace:
    class Plugin:
        @hookimpl
        def sds_register_adapters(self, register: Any) -> None:
            pass

    plugin = Plugin()
    plugin.__name__ = name  # type: ignore[attr-defined]
    return plugin  # type: ignore[return-value]


@pytest.fixture
def entry_points(monkeypatch: pytest.MonkeyPatch) -> list[FakeEntryPoint]:
    points: list[FakeEntryPoint] = []

    def fake(*, group: str) -> list[FakeEntryPoint]:
        return [p for p in points if p.group == group]

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)
    return points


def test_entry_points_are_loaded_with_their_distribution(
    entry_points: list[FakeEntryPoint],
) -> None:
    entry_points.append(
        FakeEntryPoint("alpha", _plugin("alpha"), FakeDist("sds-plugins-alpha", "1.2.3"))
    )
    host = PluginHost(environ={})
    info = {p["name"]: p for p in host.plugins()}
    assert info["alpha"] == {
        "name": "alpha",
        "distribution": "sds-plugins-alpha",
        "version": "1.2.3",
        "hooks": ["sds_register_adapters"],
    }
    assert info["sds_plugins.selection"]["hooks"] == ["sds_select_candidate"]


def test_load_restricts_to_named_distributions(entry_points: list[FakeEntryPoint]) -> None:
    entry_points.append(
        FakeEntryPoint("alpha", _plugin("alpha"), FakeDist("sds-plugins-alpha", "1"))
    )
    entry_points.append(FakeEntryPoint("beta", _plugin("beta"), FakeDist("sds_plugins_beta", "1")))
    host = PluginHost(environ={"SDS_PLUGINS_LOAD": "sds-plugins-beta"})
    names = {p["name"] for p in host.plugins()}
    assert "beta" in names
    assert "alpha" not in names
    assert "sds_plugins.cache" in names  # built-ins are not entry points: always there


def test_disable_blocks_plugins_and_defaults(entry_points: list[FakeEntryPoint]) -> None:
    entry_points.append(FakeEntryPoint("alpha", _plugin("alpha"), FakeDist("a", "1")))
    host = PluginHost(environ={"SDS_PLUGINS_DISABLE": "alpha, sds_plugins.finalize"})
    names = {p["name"] for p in host.plugins()}
    assert "alpha" not in names
    assert "sds_plugins.finalize" not in names


def test_a_broken_entry_point_is_skipped_named_with_the_line_that_disables_it(
    entry_points: list[FakeEntryPoint], caplog: pytest.LogCaptureFixture
) -> None:
    entry_points.append(
        FakeEntryPoint("broken", ImportError("no module named x"), FakeDist("bad-dist", "0.3"))
    )
    entry_points.append(FakeEntryPoint("alpha", _plugin("alpha"), FakeDist("a", "1")))
    with caplog.at_level(logging.ERROR, logger="sds_plugins.plugins"):
        host = PluginHost(environ={})
    # The others load without it.
    names = {p["name"] for p in host.plugins()}
    assert "alpha" in names and "broken" not in names
    failure = host.failed["broken"]
    assert failure.distribution == "bad-dist" and failure.version == "0.3"
    assert failure.error == "ImportError: no module named x"
    assert failure.disable == "SDS_PLUGINS_DISABLE=broken"
    [record] = [r for r in caplog.records if r.name == "sds_plugins.plugins"]
    assert record.levelno == logging.ERROR
    assert "cannot load plugin 'broken'" in record.getMessage()
    assert "bad-dist" in record.getMessage() and "no module named x" in record.getMessage()
    assert "SDS_PLUGINS_DISABLE=broken" in record.getMessage()


def test_the_disable_line_keeps_the_operators_list(entry_points: list[FakeEntryPoint]) -> None:
    entry_points.append(FakeEntryPoint("broken", RuntimeError("boom"), FakeDist("bad", "1")))
    host = PluginHost(environ={"SDS_PLUGINS_DISABLE": "mesh, sds_plugins.selection"})
    assert host.failed["broken"].disable == (
        "SDS_PLUGINS_DISABLE=mesh,sds_plugins.selection,broken"
    )
    # With that line set, it is neither loaded nor failed.
    quiet = PluginHost(environ={"SDS_PLUGINS_DISABLE": host.failed["broken"].disable.split("=")[1]})
    assert "broken" not in quiet.failed
    assert "broken" not in {p["name"] for p in quiet.plugins()}


def test_an_entry_point_that_fails_registration_is_skipped_and_leaves_nothing_behind(
    entry_points: list[FakeEntryPoint],
) -> None:
    class Typo:
        @hookimpl
        def sds_register_adapters(self, register: Any) -> None:
            raise AssertionError("a half-registered plugin was called")

        @hookimpl
        def sds_register_adaptors(self, register: Any) -> None:
            pass

    class Async:
        @hookimpl
        async def sds_lookup_completed(self, event: Any) -> None:
            pass

    entry_points.append(FakeEntryPoint("typo", Typo(), FakeDist("typo-dist", "1")))
    entry_points.append(FakeEntryPoint("async", Async(), FakeDist("async-dist", "1")))
    host = PluginHost(environ={})
    assert set(host.failed) == {"typo", "async"}
    assert "unknown hooks" in host.failed["typo"].error
    assert "synchronous" in host.failed["async"].error
    assert not host.pm.has_plugin("typo") and not host.pm.has_plugin("async")
    host.register_adapters(lambda adapter: None)  # the typo plugin's real hook is gone too


def test_a_plugin_registered_in_code_still_fails_loudly() -> None:
    # Skipping is for installed plugins an operator can disable; code that registers a broken
    # plugin itself gets the error.
    class Async:
        @hookimpl
        async def sds_lookup_completed(self, event: Any) -> None:
            pass

    with pytest.raises(PluginError):
        PluginHost(load_entrypoints=False).register(Async(), name="async")


def test_misspelt_hooks_fail_loudly() -> None:
    class Typo:
        @hookimpl
        def sds_register_adaptors(self, register: Any) -> None:
            pass

    host = PluginHost(load_entrypoints=False)
    with pytest.raises(PluginError, match="unknown hooks"):
        host.register(Typo(), name="typo")
    assert not host.pm.has_plugin("typo")


def test_async_notification_hooks_are_refused_too() -> None:
    class AsyncObserver:
        @hookimpl
        async def sds_lookup_completed(self, event: Any) -> None:
            pass

    with pytest.raises(PluginError, match="pluggy cannot await it"):
        PluginHost(load_entrypoints=False).register(AsyncObserver(), name="observer")


def test_tracing_writes_hook_calls(capsys: pytest.CaptureFixture[str]) -> None:
    host = PluginHost(load_entrypoints=False, environ={"SDS_PLUGINS_TRACE": "1"})
    host.hook.sds_register_adapters(register=lambda adapter: None)
    assert "sds_register_adapters" in capsys.readouterr().err


def test_register_and_unregister() -> None:
    host = PluginHost(load_entrypoints=False)
    name = host.register(_plugin("x"), name="x")
    assert name == "x"
    assert "x" in {p["name"] for p in host.plugins()}
    host.unregister("x")
    assert "x" not in {p["name"] for p in host.plugins()}
    with pytest.raises(PluginError):
        host.register(_plugin("y"), name="sds_plugins.cache")  # name taken


def test_importing_has_no_side_effects() -> None:
    code = (
        "import importlib.metadata as m, sys\n"
        "original = m.entry_points\n"
        "def guarded(**kw):\n"
        "    if kw.get('group') == 'sds_plugins':\n"
        "        raise SystemExit('sds_plugins entry points read at import time')\n"
        "    return original(**kw)\n"
        "m.entry_points = guarded\n"
        "import sds_plugins, sds_plugins.hookspecs\n"
        "print(sorted(n for n in ('uvicorn', 'starlette', 'redis') if n in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


async def test_a_start_time_plugin_is_refused_while_a_router_runs_and_accepted_after() -> None:
    from sds_plugins import Adapter, Router, Settings
    from sds_plugins.hookspecs import START_HOOKS

    class Late:
        @hookimpl
        def sds_register_adapters(self, register: Callable[[Adapter], None]) -> None:
            pass

    class Observer:
        @hookimpl
        def sds_route_completed(self, event: object) -> None:
            pass

    assert "sds_register_adapters" in START_HOOKS
    host = PluginHost(load_entrypoints=False, environ={})
    router = Router(Settings(base_url="http://127.0.0.1:9"), host=host)
    async with router:
        assert host.running
        with pytest.raises(PluginError, match="a router on this host is running") as refused:
            host.register(Late(), name="late")
        assert refused.value.plugin == "late" and not host.pm.has_plugin("late")
        host.register(Observer(), name="observer")  # per-route hooks may come at any time
    assert not host.running
    assert host.register(Late(), name="late") == "late"  # before the next start: fine


def test_an_observer_whose_wants_events_fails_gets_its_events(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[object] = []

    class Confused:
        def wants_events(self) -> bool:
            raise RuntimeError("no idea")

        @hookimpl
        def sds_route_completed(self, event: Any) -> None:
            seen.append(event)

    host = PluginHost(load_entrypoints=False)
    assert not host.has_listeners("sds_route_completed")
    host.register(Confused())
    assert host.has_listeners("sds_route_completed")
    assert "wants_events failed" in caplog.text
    host.route_completed("event")  # type: ignore[arg-type]
    assert seen == ["event"]


async def test_hook_call_monitoring_sees_every_hook_a_route_calls(
    sds_sandbox: Any, sds_router_factory: Any, sds_plugin_host: PluginHost
) -> None:
    # pluggy's own monitoring, which datasette-style plugin tracing builds on: the finalizer
    # and the notifications included, as a route calls them.
    from sds_plugins import LookupEvent, RouteEvent

    from ._adapters import JoinPlugin

    class Observer:
        def __init__(self) -> None:
            self.events: list[object] = []

        @hookimpl
        def sds_lookup_completed(self, event: LookupEvent) -> None:
            self.events.append(event)

        @hookimpl
        def sds_route_completed(self, event: RouteEvent) -> None:
            self.events.append(event)

    first, second = Observer(), Observer()
    for plugin in (JoinPlugin(), first, second):
        sds_plugin_host.register(plugin)
    called: list[str] = []
    sds_plugin_host.pm.add_hookcall_monitoring(
        lambda name, *_: called.append(name), lambda *_: None
    )
    router = await sds_router_factory()
    await router.route("join", org="YES", interaction=PSIS)
    assert "sds_finalize_envelope" in called
    assert called.count("sds_lookup_completed") == 2 * 2  # two lookups, two observers
    assert called.count("sds_route_completed") == 2
    assert len(first.events) == len(second.events) == 3


def test_one_observer_that_raises_does_not_hide_the_event_from_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    host = PluginHost(load_entrypoints=False)
    seen: list[str] = []

    class Failing:
        @hookimpl
        def sds_route_completed(self, event: Any) -> None:
            raise RuntimeError("observer bug")

    class Seeing:
        @hookimpl
        def sds_route_completed(self, event: Any) -> None:
            seen.append(event)

    host.register(Seeing())
    host.register(Failing())  # called first (pluggy's order: the last registered first)
    host.route_completed("event")  # type: ignore[arg-type]
    assert seen == ["event"]
    assert "observer bug" in caplog.text


@pytest.mark.parametrize(
    ("plugin_source", "message"),
    [
        ("def want_events(self): return True", "'want_events', which nothing calls"),
        ("def wants_event(self): return True", "'wants_event', which nothing calls"),
        ("wants_events = True", "must be a method taking no arguments"),
        ("def wants_events(self, kind): return True", "must be a method taking no arguments"),
    ],
)
def test_side_protocols_are_checked_when_a_plugin_registers(
    plugin_source: str, message: str
) -> None:
    namespace: dict[str, Any] = {"hookimpl": hookimpl}
    exec(
        "class Observer:\n"
        f"    {plugin_source}\n"
        "    @hookimpl\n"
        "    def sds_lookup_completed(self, event): pass\n",
        namespace,
    )
    with pytest.raises(PluginError, match=message):
        PluginHost(load_entrypoints=False).register(namespace["Observer"]())


def test_wants_events_on_a_plugin_that_observes_nothing_fails_loudly() -> None:
    class Misplaced:
        def wants_events(self) -> bool:
            return True

        @hookimpl
        def sds_finalize_envelope(self, envelope: Any, request: Any) -> Any:
            return envelope

    with pytest.raises(PluginError, match="would never be asked"):
        PluginHost(load_entrypoints=False).register(Misplaced())


# -- an installed plugin that raises on import, in real processes --------------------------------

BROKEN_MODULE = """
raise ImportError("No module named 'lxml' (the broken plugin's own dependency)")
"""


@pytest.fixture
def broken_site(tmp_path: Path) -> Path:
    """A distribution ``sds-plugins-broken`` whose ``sds_plugins`` entry point raises on
    import, installed as any is: a ``.dist-info`` folder on the path (see test_isolation.py)."""
    site = tmp_path / "site"
    info = site / "sds_plugins_broken-1.0.dist-info"
    info.mkdir(parents=True)
    (site / "sds_plugins_broken.py").write_text(BROKEN_MODULE)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: sds-plugins-broken\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text("[sds_plugins]\nbroken = sds_plugins_broken\n")
    return site


def _environ(site: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDS_")}
    # The suite's own SDS_PLUGINS_LOAD, with the broken distribution let in.
    load = os.environ.get("SDS_PLUGINS_LOAD", "")
    env.update(PYTHONPATH=site.as_posix(), SDS_PLUGINS_LOAD=f"{load},sds-plugins-broken", **extra)
    return env


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sds_plugins", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_one_broken_installed_plugin_does_not_stop_the_commands(
    broken_site: Path, sandbox: Sandbox
) -> None:
    env = _environ(broken_site, SDS_BASE_URL=sandbox.base_url)
    disable = "SDS_PLUGINS_DISABLE=broken"

    listed = _cli(env, "plugins")
    assert listed.returncode == 0, listed.stderr
    plugins = {p["name"]: p for p in json.loads(listed.stdout)}
    assert plugins["broken"]["status"] == "failed"
    assert plugins["broken"]["disable"] == disable
    assert "No module named 'lxml'" in plugins["broken"]["error"]
    assert plugins["example_ebxml"]["status"] == "loaded"
    assert disable in listed.stderr  # the logged error names the line

    routed = _cli(
        env, "route", "example-ebxml", "--org", "YES", "--interaction", PSIS,
        "-o", "from_asid=200000000359",
    )  # fmt: skip
    assert routed.returncode == 0, routed.stderr
    assert json.loads(routed.stdout)["target"]["asid"] == "928942012545"
    assert disable in routed.stderr

    doctor = _cli(env, "doctor")
    assert doctor.returncode == 1, doctor.stdout + doctor.stderr
    [line] = [line for line in doctor.stdout.splitlines() if line.startswith("FAIL plugins")]
    assert "'broken' (sds-plugins-broken 1.0) failed to load" in line and disable in line
    assert "ok   adapters:" in doctor.stdout

    # The line it names works: with it, nothing fails and nothing is logged.
    quiet = _cli({**env, "SDS_PLUGINS_DISABLE": "broken"}, "plugins")
    assert quiet.returncode == 0 and "broken" not in quiet.stdout + quiet.stderr


def test_serve_starts_and_routes_without_the_broken_plugin(
    broken_site: Path, sandbox: Sandbox
) -> None:
    env = _environ(broken_site, SDS_BASE_URL=sandbox.base_url)
    process = subprocess.Popen(
        [sys.executable, "-m", "sds_plugins", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("serving on "), process.stderr.read() if process.stderr else line
        url = line.removeprefix("serving on ")
        routed = httpx.post(
            f"{url}/route/example-ebxml",
            json={"org": "YES", "interaction": PSIS, "options": {"from_asid": 200000000359}},
            timeout=30,
        )
        assert routed.status_code == 200, routed.text
        assert routed.json()["source"]["asid"] == "200000000359"  # a number, as engines send it
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        stderr = process.stderr.read() if process.stderr else ""
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    assert "SDS_PLUGINS_DISABLE=broken" in stderr
