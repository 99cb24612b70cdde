"""pytest fixtures and record builders for people writing sds-plugins adapters and plugins.

Installing sds-plugins registers this module as a pytest plugin (the ``pytest11`` entry point),
so the fixtures below are available in any test suite without a ``conftest.py`` import:

``sds_sandbox``
    A running SDS sandbox with the reference data (shared by the session, reset per test).
``sds_sandbox_factory``
    ``(mhs_records=None, accredited_systems=None, *, mode="replace", **SandboxConfig fields)
    -> Sandbox``: a sandbox serving your own directory records (build them with
    :func:`mhs_record` and :func:`accredited_system_record`), instead of the reference data or,
    with ``mode="add"``, in addition to it.
``sds_plugin_host`` and ``sds_register_plugin``
    A fresh :class:`~sds_plugins.PluginHost` per test (no entry points loaded), and
    ``register(plugin, name=None) -> name``, undone when the test ends.
``sds_router`` and ``sds_router_factory``
    A started :class:`~sds_plugins.Router` bound to ``sds_sandbox`` and ``sds_plugin_host``;
    ``await sds_router_factory(sandbox=None, *, clock=None, **settings)`` for other sandboxes,
    a clock, or any :class:`~sds_plugins.Settings` field by name (``cache_ttl_s=0``...).
``sds_clock``
    A :class:`ManualClock`: pass it as ``clock=`` and ``advance()`` it to test TTLs and the
    breaker without sleeping.

For destinations that need client TLS, :func:`make_tls_files` writes a throwaway CA, server
and client certificate, and :func:`mtls_server` runs an HTTPS server that requires the client
certificate, so a test can prove an envelope's ``tls`` really connects.

A typical adapter test::

    @pytest.fixture(autouse=True)
    def _my_adapter(sds_register_plugin):
        sds_register_plugin(my_plugin_module)

    async def test_routes(sds_router):
        envelope = await sds_router.route("my-adapter", org="B82617", interaction=...)

pytest imports this module in every session of every project that has sds-plugins installed
(``-p no:sds_plugins`` turns it off), so importing it has no side effects, and the sandbox and
the router are only imported by the fixtures that use them.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest

# The builders and TLS helpers live apart so this module holds what pytest needs to see (the
# fixtures); they are public from here.
from sds_plugins._testing._records import accredited_system_record, default_party_key, mhs_record
from sds_plugins._testing._tls import MtlsServer, TlsFiles, make_tls_files, mtls_server

if TYPE_CHECKING:
    from sds_plugins import PluginHost, Router
    from sds_plugins.sandbox import Sandbox

# The fixtures reach tests through pytest, not imports, so only the helpers are listed here.
__all__ = [
    "ManualClock",
    "MtlsServer",
    "RegisterPlugin",
    "RouterFactory",
    "SandboxFactory",
    "TlsFiles",
    "accredited_system_record",
    "default_party_key",
    "make_tls_files",
    "mhs_record",
    "mtls_server",
]

# The only SDS_PLUGINS_* variable a test host honours: tracing helps debug a failing test, while
# SDS_PLUGINS_DISABLE/LOAD in a developer's shell would make results depend on who runs them.
_HOST_ENV_PASSTHROUGH = ("SDS_PLUGINS_TRACE",)


def _async_fixture(function: Callable[..., Any]) -> Any:
    """``pytest_asyncio.fixture`` when installed, so async fixtures also work in strict mode.

    pytest-asyncio is a test extra, not a dependency: without it this module must still import,
    because pytest loads it in every session of every project that has sds-plugins installed.
    """
    try:
        import pytest_asyncio
    except ImportError:  # pragma: no cover - the async fixtures then need another async plugin
        return pytest.fixture(function)
    return pytest_asyncio.fixture(function)


# --------------------------------------------------------------------------- sandboxes


class SandboxFactory(Protocol):
    """The type of the ``sds_sandbox_factory`` fixture, for annotating tests."""

    def __call__(
        self,
        mhs_records: Iterable[Mapping[str, Any]] | None = None,
        accredited_systems: Iterable[Mapping[str, Any]] | None = None,
        *,
        mode: str = "replace",
        **config: Any,
    ) -> Sandbox: ...


@pytest.fixture(scope="session")
def _sds_shared_sandbox() -> Iterator[Sandbox]:
    # Starting and stopping a server costs ~0.2 s, so the reference-data sandbox is shared; its
    # data never changes and ``sds_sandbox`` resets everything a test can change.
    from sds_plugins.sandbox import Sandbox, SandboxConfig

    with Sandbox(SandboxConfig()) as running:
        yield running


@pytest.fixture
def sds_sandbox(_sds_shared_sandbox: Sandbox) -> Sandbox:
    """A running SDS sandbox serving the reference data, with zeroed stats and no faults.

    One server is shared by the whole session and reset (stats, faults, rate-limit counters)
    before each test, so a test may call ``set_faults()`` and read ``stats()`` freely. Use
    ``sds_sandbox_factory`` for other data or configuration.
    """
    _sds_shared_sandbox.reset()
    return _sds_shared_sandbox


@pytest.fixture
def sds_sandbox_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxFactory]:
    """Start sandboxes on your own records or configuration; all stop when the test ends.

    ``factory(mhs_records=None, accredited_systems=None, *, mode="replace", **config) ->
    Sandbox``: the records are lists of LDAP-attribute dicts (see :func:`mhs_record`,
    :func:`accredited_system_record`), and ``config`` is any
    :class:`sds_plugins.sandbox.SandboxConfig` field (``latency_ms``, ``api_key``,
    ``synthetic``...). With ``mode="replace"`` (the default) passing either list replaces the
    whole directory (the other kind is then empty); with ``mode="add"`` the records are added to
    the default data, so Spine's own intermediary records stay and forward-reliable and
    forward-express interactions are answered. Passing neither serves the default data.
    """
    from sds_plugins._sandbox._records import AS_FILE, DATA_MANIFEST, DATA_MODES, MHS_FILE
    from sds_plugins.sandbox import Sandbox, SandboxConfig

    started: list[Sandbox] = []

    def factory(
        mhs_records: Iterable[Mapping[str, Any]] | None = None,
        accredited_systems: Iterable[Mapping[str, Any]] | None = None,
        *,
        mode: str = "replace",
        **config: Any,
    ) -> Sandbox:
        if mode not in DATA_MODES:
            raise ValueError(f"mode must be one of {', '.join(DATA_MODES)}, not {mode!r}")
        if mhs_records is not None or accredited_systems is not None:
            if "data_dir" in config:
                raise TypeError("pass records or data_dir, not both")
            data_dir = tmp_path_factory.mktemp("sds-sandbox-data")
            for name, records in ((MHS_FILE, mhs_records), (AS_FILE, accredited_systems)):
                _write_records(data_dir / name, records or ())
            (data_dir / DATA_MANIFEST).write_text(json.dumps({"mode": mode}), encoding="utf-8")
            config["data_dir"] = data_dir
        running = Sandbox(SandboxConfig(**config)).start()
        started.append(running)
        return running

    yield factory
    for running in started:
        running.stop()


def _write_records(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    path.write_text(json.dumps([dict(record) for record in records], indent=1), encoding="utf-8")


# --------------------------------------------------------------------------- plugins


class RegisterPlugin(Protocol):
    """The type of the ``sds_register_plugin`` fixture, for annotating tests."""

    def __call__(self, plugin: object, name: str | None = None) -> str: ...


class _TestRouters:
    """The routers one test started, so late plugin registrations can be caught."""

    def __init__(self) -> None:
        self.started: list[Router] = []


@pytest.fixture
def _sds_test_routers() -> _TestRouters:
    return _TestRouters()


@pytest.fixture
def sds_plugin_host() -> PluginHost:
    """A fresh :class:`sds_plugins.PluginHost` for this test: built-in defaults, no entry points.

    Installed plugins (entry points) are not loaded, so only what the test registers takes
    part; ``SDS_PLUGINS_DISABLE`` and ``SDS_PLUGINS_LOAD`` are ignored for the same reason, while
    ``SDS_PLUGINS_TRACE`` is honoured to help debugging.
    """
    import os

    from sds_plugins import PluginHost

    environ = {name: os.environ[name] for name in _HOST_ENV_PASSTHROUGH if name in os.environ}
    return PluginHost(load_entrypoints=False, environ=environ)


@pytest.fixture
def sds_register_plugin(
    sds_plugin_host: PluginHost, _sds_test_routers: _TestRouters
) -> Iterator[RegisterPlugin]:
    """``register(plugin, name=None) -> name``: register a plugin on ``sds_plugin_host``.

    Everything registered is unregistered when the test ends, so no plugin leaks into another
    test. Register before the router starts (in a fixture, e.g. ``autouse=True``, rather than in
    the test body when the test also uses ``sds_router``): adapters, sources, auth, cache and
    rate limiter are collected once, at start; registering such a plugin while the router runs
    raises :class:`sds_plugins.PluginError` (the host refuses it).
    """
    host = sds_plugin_host
    names: list[str] = []

    def register(plugin: object, name: str | None = None) -> str:
        registered = host.register(plugin, name=name)
        if registered is None:
            raise ValueError(f"plugin name {name!r} is blocked on this host")
        names.append(registered)
        return registered

    yield register
    for name in reversed(names):
        if host.pm.has_plugin(name):  # the test may have unregistered it itself
            host.unregister(name)


# --------------------------------------------------------------------------- routers


class ManualClock:
    """A clock that moves only when told, for ``Router(clock=...)`` (and ``sds_router_factory``).

    Cache freshness, stale-if-error and the breaker go by the router's clock, so a test of a
    TTL advances this instead of sleeping: ``clock.advance(61)`` and the entry is stale.
    It starts at the real time, so envelopes' ``expires_at`` still make sense.
    """

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (never back: caches assume it only grows)."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self.now += seconds

    def __repr__(self) -> str:
        return f"ManualClock({self.now:.3f})"


@pytest.fixture
def sds_clock() -> ManualClock:
    """A :class:`ManualClock` for this test; pass it to ``sds_router_factory(clock=...)``."""
    return ManualClock()


class RouterFactory(Protocol):
    """The type of the ``sds_router_factory`` fixture, for annotating tests."""

    async def __call__(
        self,
        sandbox: Sandbox | None = None,
        *,
        host: PluginHost | None = None,
        clock: Callable[[], float] | None = None,
        **settings: Any,
    ) -> Router: ...


@_async_fixture
async def sds_router_factory(
    sds_sandbox: Sandbox, sds_plugin_host: PluginHost, _sds_test_routers: _TestRouters
) -> AsyncIterator[RouterFactory]:
    """``await factory(sandbox=None, *, host=None, clock=None, **settings) -> Router``.

    Each router is started and talks to ``sandbox`` (default ``sds_sandbox``) through the
    plugins of ``host`` (default ``sds_plugin_host``), with :class:`sds_plugins.Settings` built
    from ``settings`` alone (any field: ``cache_ttl_s=0``, ``retry_attempts=1``...): ``SDS_*``
    environment variables are ignored so a developer's shell cannot change a test. ``clock``
    (e.g. ``sds_clock``) replaces the real time for cache freshness and the breaker. All
    routers are closed when the test ends.
    """
    from sds_plugins import Router, Settings

    routers = _sds_test_routers.started

    async def factory(
        sandbox: Sandbox | None = None,
        *,
        host: PluginHost | None = None,
        clock: Callable[[], float] | None = None,
        **settings: Any,
    ) -> Router:
        values = {
            name: field.get_default(call_default_factory=True)
            for name, field in Settings.model_fields.items()
        }
        values["base_url"] = (sandbox or sds_sandbox).base_url
        values.update(settings)
        router = Router(Settings(**values), host=host or sds_plugin_host, clock=clock or time.time)
        await router.start()
        routers.append(router)
        return router

    yield factory
    for router in reversed(routers):
        await router.aclose()
    routers.clear()


@_async_fixture
async def sds_router(sds_router_factory: RouterFactory) -> Router:
    """A started :class:`sds_plugins.Router` on ``sds_sandbox`` with ``sds_plugin_host``'s plugins.

    Settings are the defaults with ``base_url=sds_sandbox.base_url``. Plugins must be registered
    (``sds_register_plugin``) before it starts: see that fixture.
    """
    return await sds_router_factory()
