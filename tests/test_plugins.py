"""The plugin host: discovery, restriction, blocking, tracing, validation, introspection."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import types
from collections.abc import Callable
from typing import Any

import pytest

from sds_plugins import PluginError, PluginHost, hookimpl, hookspecs


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


def test_broken_entry_point_names_the_plugin(entry_points: list[FakeEntryPoint]) -> None:
    entry_points.append(
        FakeEntryPoint("broken", ImportError("no module named x"), FakeDist("bad-dist", "0"))
    )
    with pytest.raises(
        PluginError, match=r"cannot load plugin 'broken'.*bad-dist.*no module named x"
    ) as info:
        PluginHost(environ={})
    assert info.value.plugin == "broken"


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


def test_the_pass_through_finalizer_alone_is_not_called_and_any_other_is() -> None:
    host = PluginHost(load_entrypoints=False)
    called: list[str] = []
    host.pm.add_hookcall_monitoring(lambda name, *_: called.append(name), lambda *_: None)
    envelope, request = object(), object()
    # Alone, the built-in pass-through's answer is known: the envelope itself, uncalled.
    assert host.finalize_envelope(envelope, request) is envelope  # type: ignore[arg-type]
    assert called == []

    class Replacing:
        @hookimpl
        def sds_finalize_envelope(self, envelope: Any, request: Any) -> str:
            return "replaced"

    host.register(Replacing())
    assert host.finalize_envelope(envelope, request) == "replaced"  # type: ignore[arg-type,comparison-overlap]
    assert called == ["sds_finalize_envelope"]

    # A subclass of the built-in that overrides the hook is called like any other.
    from sds_plugins._defaults import PassThroughEnvelope

    class Stamping(PassThroughEnvelope):
        @hookimpl(trylast=True)
        def sds_finalize_envelope(self, envelope: Any, request: Any) -> Any:
            return "stamped"

    alone = PluginHost(
        load_entrypoints=False, environ={"SDS_PLUGINS_DISABLE": "sds_plugins.finalize"}
    )
    alone.register(Stamping())
    assert alone.finalize_envelope(envelope, request) == "stamped"  # type: ignore[arg-type,comparison-overlap]
