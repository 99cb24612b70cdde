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

import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest

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


# --------------------------------------------------------------------------- record builders


def _digits(text: str, count: int) -> int:
    """A stable number of ``count`` digits derived from ``text`` (same input, same number)."""
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % int(10**count)


def _as_list(value: str | Iterable[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def default_party_key(ods: str) -> str:
    """The party key the builders give ``ods`` when none is passed: ``<ODS>-0000001``.

    Both builders use it, so an MHS record and an accredited system built for the same
    organisation without explicit keys join on party key, as one supplier's records would.
    """
    return f"{ods.strip().upper()}-0000001"


def mhs_record(
    ods: str,
    interactions: str | Iterable[str],
    *,
    party_key: str | None = None,
    address: str | Iterable[str] | None = None,
    fqdn: str | None = None,
    cpa_id: str | None = None,
    retries: int | None = None,
    retry_interval: str | None = None,
    persist_duration: str | None = None,
    duplicate_elimination: str | None = None,
    ack_requested: str | None = None,
    sync_reply_mode: str | None = None,
    actor: str | None = None,
    **attributes: Any,
) -> dict[str, Any]:
    """An MHS record (served as SDS ``/Endpoint``) in the LDAP-attribute form the sandbox loads.

    :param ods: the organisation's ODS code (``nhsIDCode``).
    :param interactions: one interaction id or several (``nhsMhsSvcIA``).
    :param party_key: defaults to :func:`default_party_key`.
    :param address: one address or several (each becomes one ``/Endpoint``); defaults to
        ``https://<fqdn>/``; pass ``[]`` for a record without an address.
    :param fqdn: defaults to ``mhs.<ods>.example.com``.
    :param cpa_id: defaults to a stable id derived from party key and interactions; it is also
        the record's ``uniqueIdentifier`` (the endpoint's ``mhs_id``).
    :param retries: and the other reliability keywords: ebXML reliability settings, omitted when
        ``None``. Durations are ISO-8601 (``"PT1M"``); flags are ``"always"``/``"never"``.
    :param attributes: any other LDAP attributes, added last (they override the above).

    A forward-reliable interaction (e.g. ``gp2gp:COPC_IN000001UK01``) is answered with Spine's
    intermediary address, so the sandbox needs Spine's own MHS records to answer it: add your
    records to the reference data (``sds_sandbox_factory(..., mode="add")``), which holds them.
    """
    ods = ods.strip().upper()
    interaction_list = _as_list(interactions)
    party_key = party_key or default_party_key(ods)
    fqdn = fqdn or f"mhs.{ods.lower()}.example.com"
    addresses = [f"https://{fqdn}/"] if address is None else _as_list(address)
    if cpa_id is None:
        cpa_id = f"S{_digits(party_key + ' '.join(interaction_list), 12):012d}"
    record: dict[str, Any] = {
        "nhsIDCode": ods,
        "nhsMHSPartyKey": party_key,
        "nhsMhsSvcIA": interaction_list,
        "nhsMHSEndPoint": addresses,
        "nhsMhsFQDN": fqdn,
        "nhsMhsCPAId": cpa_id,
        "uniqueIdentifier": [cpa_id],
    }
    reliability: dict[str, object | None] = {
        "nhsMHSRetries": None if retries is None else str(retries),
        "nhsMHSRetryInterval": retry_interval,
        "nhsMHSPersistDuration": persist_duration,
        "nhsMHSDuplicateElimination": duplicate_elimination,
        "nhsMHSAckRequested": ack_requested,
        "nhsMHSSyncReplyMode": sync_reply_mode,
        "nhsMHSActor": None if actor is None else [actor],
    }
    record.update({name: value for name, value in reliability.items() if value is not None})
    record.update(attributes)
    return record


def accredited_system_record(
    ods: str,
    interactions: str | Iterable[str],
    *,
    party_key: str | None = None,
    asid: str | None = None,
    manufacturer: str | None = "X26",
    client: str | None = None,
    **attributes: Any,
) -> dict[str, Any]:
    """An accredited-system record (served as SDS ``/Device``) in LDAP-attribute form.

    :param ods: the organisation's ODS code (``nhsIDCode``).
    :param interactions: one interaction id or several (``nhsAsSvcIA``).
    :param party_key: defaults to :func:`default_party_key`, so it joins the organisation's
        :func:`mhs_record` built without a key.
    :param asid: defaults to a stable 12-digit ASID derived from the party key.
    :param manufacturer: the supplier's ODS code (``nhsMhsManufacturerOrg``); ``None`` omits it.
    :param client: the organisation the system serves (the Device's ``owner``); defaults to
        ``ods``.
    :param attributes: any other LDAP attributes, added last (they override the above).
    """
    ods = ods.strip().upper()
    party_key = party_key or default_party_key(ods)
    record: dict[str, Any] = {
        "nhsIDCode": ods,
        "nhsMHSPartyKey": party_key,
        "nhsAsSvcIA": _as_list(interactions),
        # Real ASIDs are 12 digits and never start with 0.
        "uniqueIdentifier": [asid or str(10**11 + _digits(party_key, 11) % (9 * 10**11))],
        "nhsAsClient": [client or ods],
    }
    if manufacturer is not None:
        record["nhsMhsManufacturerOrg"] = manufacturer
    record.update(attributes)
    return record


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


# --------------------------------------------------------------------------- client TLS


@dataclass(frozen=True)
class TlsFiles:
    """Throwaway PEM files for mutual-TLS tests: a CA, a server certificate and a client one.

    The server certificate is for ``127.0.0.1`` and ``localhost``; both are signed by the CA,
    so ``ca`` verifies the server and the server verifies the client against ``ca``.
    """

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: Path, *, client_name: str = "sds-plugins-test-client") -> TlsFiles:
    """Generate a CA, a server certificate and a client certificate under ``directory``.

    For tests only: 2048-bit RSA keys, valid for a day, private keys unencrypted.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def key() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def write_key(path: Path, private: rsa.RSAPrivateKey) -> Path:
        path.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return path

    def write_cert(path: Path, certificate: x509.Certificate) -> Path:
        path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return path

    ca_key = key()
    ca_name = name("sds-plugins test CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        common_name: str, usage: x509.ObjectIdentifier, names: list[x509.GeneralName]
    ) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
        private = key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common_name))
            .issuer_name(ca_name)
            .public_key(private.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), private

    server, server_key = leaf(
        "localhost",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client, client_key = leaf(client_name, ExtendedKeyUsageOID.CLIENT_AUTH, [])
    directory.mkdir(parents=True, exist_ok=True)
    return TlsFiles(
        ca=write_cert(directory / "ca.pem", ca),
        server_cert=write_cert(directory / "server.pem", server),
        server_key=write_key(directory / "server-key.pem", server_key),
        client_cert=write_cert(directory / "client.pem", client),
        client_key=write_key(directory / "client-key.pem", client_key),
    )


@dataclass
class MtlsServer:
    """A running :func:`mtls_server`: its ``url`` and the requests it answered."""

    url: str
    #: ``{"method", "path", "client"}`` per answered request (``client``: the certificate's CN).
    requests: list[dict[str, str]] = field(default_factory=list)


@contextlib.contextmanager
def mtls_server(files: TlsFiles) -> Iterator[MtlsServer]:
    """An HTTPS server on ``127.0.0.1`` that **requires** a client certificate signed by the CA.

    Any method and path answers 200 with JSON ``{"method", "path", "client"}``; a client
    without an acceptable certificate fails the TLS handshake. Runs on a background thread
    until the ``with`` block ends.
    """
    import http.server
    import ssl
    import threading

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(files.ca))
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(str(files.server_cert), str(files.server_key))
    answered: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            peer = self.connection.getpeercert() or {}
            subject = dict(item[0] for item in peer.get("subject", ()))
            record = {
                "method": self.command,
                "path": self.path,
                "client": str(subject.get("commonName", "")),
            }
            answered.append(record)
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            body = json.dumps(record).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the test reads ``requests``

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def get_request(self) -> tuple[Any, Any]:
            sock, address = super().get_request()
            # The handshake runs in the handler's thread, so a refused client cannot stall
            # the accept loop.
            return context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            ), address

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # refused handshakes are the point of some tests

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="mtls-server", daemon=True)
    thread.start()
    try:
        yield MtlsServer(url=f"https://127.0.0.1:{server.server_address[1]}", requests=answered)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
