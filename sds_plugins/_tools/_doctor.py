"""``sds-plugins doctor``: the effective configuration, what loaded, and live checks.

Each check is one line, ``ok`` or ``FAIL``, naming what it checked; the command exits 1 when
any failed. What fails:

- ``plugins``: an installed plugin that could not be loaded (the others still load; the line
  names the ``SDS_PLUGINS_DISABLE=...`` setting that stops loading it);
- ``adapters``: none installed, or an adapter that refuses every route because its plugin's
  settings are wrong (``SDS_GPCONNECT_*``, ``MESH_*``, ``ERS_*``...);
- ``files``: a file a plugin's settings name (client certificates and keys, CA bundles,
  private keys) that is missing, not a regular file, unreadable, not PEM, or an expired
  certificate;
- ``directory reachable``, ``credentials accepted``, ``clock skew``: from one ``/Device``
  query for Spine's own systems in this environment (no retries): whether the directory is
  reachable, whether the API key was accepted and, from its ``Date`` header, how far this
  machine's clock is from the directory's (a skewed clock makes signed JWTs fail);
- ``pds``, ``signed-JWT token``, ``pds accepts the token``: PDS configured explicitly on the
  live platform without credentials; with signed-JWT credentials, one token obtained with
  them, then one PDS request with it that reads no patient (an NHS number with a wrong check
  digit: PDS checks the token first, then answers 400);
- ``redis``: ``SDS_REDIS_URL`` set and no ``PING`` answer;
- ``broker``: ``SDS_WORKER_BROKER_URL`` set and the broker not reachable (a TCP connect with
  a short timeout, and the protocol's greeting where it is plain text), or the worker's
  ``SDS_WORKER_*`` settings or options file invalid. Passwords are never shown;
- one line per keepalive a plugin registers (``sds_register_keepalives``: the MESH handshake
  when MESH is configured), each made once: the error's class and message when it fails.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import stat
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from .._environments import default_token_url, is_live_platform
from .._exceptions import SdsPluginsError
from .._query import DeviceQuery
from .._service._health import PROBE_INTERACTION
from .._upstream import safe_url
from .._validation import normalise_correlation_id
from ._doctor_services import Check, broker_check, keepalive_checks

if TYPE_CHECKING:
    from .._auth import SignedJwtAuth
    from .._engine import Router
    from .._plugins import PluginHost
    from .._settings import Settings

__all__ = ["Check", "run_doctor"]

#: Beyond this, signed JWT client assertions (valid for at most 5 minutes) start to fail.
MAX_CLOCK_SKEW_S = 30.0
_TIMEOUT_S = 10.0
#: An NHS number whose check digit is wrong: PDS verifies the token, then refuses it (400)
#: without reading any patient.
_PDS_PROBE_NUMBER = "0000000001"
#: The most of a certificate, key or bundle file read (a CA bundle is some hundreds of KB).
_MAX_FILE_BYTES = 4 * 1024 * 1024


def configuration(settings: Settings) -> list[str]:
    """``name = value`` for every setting, secrets shown only as set or not set."""
    lines = []
    for name, value in settings.model_dump().items():
        if _is_secret(settings, name):
            shown = "(set, hidden)" if value is not None else "(not set)"
        else:
            shown = "(not set)" if value is None else str(value)
        lines.append(f"  SDS_{name.upper()} = {shown}")
    lines.append(f"  (directory: {safe_url(settings.resolved_base_url())})")
    return lines


def _is_secret(settings: Settings, name: str) -> bool:
    from pydantic import SecretStr

    return isinstance(getattr(settings, name), SecretStr) or name in ("private_key_file",)


def _host() -> tuple[PluginHost | None, Check]:
    from .._plugins import PluginHost

    try:
        host = PluginHost()
    except SdsPluginsError as exc:
        return None, Check("plugins", False, str(exc))
    return host, _plugins(host)


def _plugins(host: PluginHost) -> Check:
    listed = host.plugins()
    names = ", ".join(f"{p['name']} ({p['distribution']} {p['version']})" for p in listed)
    if host.failed:
        failed = "; ".join(
            f"{f.name!r} ({f.distribution} {f.version}) failed to load: {f.error}; "
            f"to run without it: {f.disable}"
            for f in host.failed.values()
        )
        return Check("plugins", False, f"{failed} ({len(listed)} loaded)")
    return Check("plugins", True, f"{len(listed)} loaded: {names}")


async def _with_router(
    settings: Settings, host: PluginHost | None
) -> tuple[Check, list[tuple[str, Any]]]:
    """The ``adapters`` check, from a router started on ``host`` (no network I/O beyond this
    machine), and the settings of the plugins that read their own (for the ``files`` check)."""
    from .._configured import UnconfiguredAdapter
    from .._engine import Router

    if host is None:
        return Check("adapters", False, "not checked: the plugins did not load"), []
    try:
        router = Router(settings, host=host)
    except SdsPluginsError as exc:
        return Check("adapters", False, str(exc)), []
    try:
        await router.start()
        adapters = dict(router.adapters)
        plugin_settings = list(_plugin_settings(router))
    except SdsPluginsError as exc:
        return Check("adapters", False, str(exc)), []
    finally:
        await router.aclose()
    if not adapters:
        return (
            Check("adapters", False, "none installed (pip install an adapter distribution)"),
            plugin_settings,
        )
    refusing = {
        name: adapter.error
        for name, adapter in adapters.items()
        if isinstance(adapter, UnconfiguredAdapter)
    }
    working = sorted(set(adapters) - set(refusing))
    if refusing:
        detail = "; ".join(
            f"{name} refuses every route: {error}" for name, error in sorted(refusing.items())
        )
        if working:
            detail += f" (working: {', '.join(working)})"
        return Check("adapters", False, detail), plugin_settings
    return Check("adapters", True, ", ".join(working)), plugin_settings


def _plugin_settings(router: Router) -> Iterator[tuple[str, Any]]:
    """``(plugin name, settings)`` of every plugin configured by settings that load (settings
    that do not load make its adapters refuse every route: the ``adapters`` check says so)."""
    from .._configured import ConfiguredPlugin

    for name, plugin in router.host.pm.list_name_plugin():
        if not isinstance(plugin, ConfiguredPlugin):
            continue
        try:
            yield name, plugin.settings
        except SdsPluginsError:
            continue


# -- files ----------------------------------------------------------------------------------


def _paths(settings: Any) -> Iterator[tuple[str, str, Path]]:
    """``(variable, field, path)`` for every file path in a plugin's settings, nested ones
    included (``MESH_TLS__INT__CERT``)."""
    from pydantic import BaseModel

    prefix = str(settings.model_config.get("env_prefix") or "")
    delimiter = str(settings.model_config.get("env_nested_delimiter") or "__")

    def walk(value: Any, variable: str, field: str) -> Iterator[tuple[str, str, Path]]:
        if isinstance(value, Path):
            yield variable.upper(), field, value
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                yield from walk(getattr(value, name), f"{variable}{delimiter}{name}", name)
        elif isinstance(value, Mapping):
            for key, item in value.items():
                yield from walk(item, f"{variable}{delimiter}{key}", field)

    for name in type(settings).model_fields:
        yield from walk(getattr(settings, name), f"{prefix}{name}", name)


def _file_problem(variable: str, field: str, path: Path, now: datetime) -> tuple[bool, str]:
    """``(ok, what)`` for one configured file: there, a regular file, readable, and for
    certificates and keys, PEM that parses (certificates not expired)."""
    # A private key file's path stays hidden, as the configuration shows SDS_PRIVATE_KEY_FILE;
    # TLS paths are not secrets (every envelope carries them).
    where = variable if field == "private_key_file" else f"{variable}={path}"
    try:
        info = path.stat()
    except FileNotFoundError:
        return False, f"{where}: no such file"
    except OSError as exc:
        return False, f"{where}: cannot be read: {exc.strerror or exc}"
    if not stat.S_ISREG(info.st_mode):  # never open a FIFO or a device: it could block
        return False, f"{where}: not a regular file"
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_FILE_BYTES)
    except OSError as exc:
        return False, f"{where}: cannot be read: {exc.strerror or exc}"
    name = field.lower()
    if name.endswith("bundle"):
        return _certificates(where, data, now, bundle=True)
    if name.endswith("cert"):
        return _certificates(where, data, now, bundle=False)
    if name.endswith("key") or name.endswith("key_file"):
        return _private_key(where, data)
    return True, f"{where}: readable"


def _certificates(where: str, data: bytes, now: datetime, *, bundle: bool) -> tuple[bool, str]:
    """A client certificate file (its first certificate is the client's: expired fails) or
    a CA bundle (expired roots are ignored by TLS, as system bundles carry some: fails only
    when none is valid)."""
    from cryptography import x509

    with warnings.catch_warnings():  # old roots' quirks (negative serials...) are not ours
        warnings.simplefilter("ignore")
        try:
            certificates = x509.load_pem_x509_certificates(data)
        except ValueError:
            return False, f"{where}: no PEM certificate in it"
    if not bundle:
        until = certificates[0].not_valid_after_utc
        if until <= now:
            return False, f"{where}: the certificate expired on {until.date().isoformat()}"
        return True, f"{where}: certificate valid until {until.date().isoformat()}"
    valid = [c for c in certificates if c.not_valid_after_utc > now]
    if not valid:
        return False, f"{where}: every certificate in it has expired"
    return True, f"{where}: {len(valid)} valid CA certificate(s)"


def _private_key(where: str, data: bytes) -> tuple[bool, str]:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        load_pem_private_key(data, password=None)
    except TypeError:  # encrypted: whoever uses it has the passphrase; we do not
        return True, f"{where}: an encrypted private key (not decrypted here)"
    except (ValueError, UnsupportedAlgorithm):  # not a key, or of a kind not known here
        return False, f"{where}: not a PEM private key"
    return True, f"{where}: private key"


def _files(
    plugin_settings: list[tuple[str, Any]], now: Callable[[], datetime] | None = None
) -> Check:
    when = (now or (lambda: datetime.now(UTC)))()
    results = [
        _file_problem(variable, field, path, when)
        for _, settings in plugin_settings
        for variable, field, path in _paths(settings)
    ]
    if not results:
        return Check("files", True, "no certificate, key or CA bundle configured")
    failed = [what for ok, what in results if not ok]
    if failed:
        return Check("files", False, "; ".join(failed))
    return Check("files", True, "; ".join(what for _, what in results))


async def _directory(settings: Settings, clock: Callable[[], float]) -> list[Check]:
    """Reachable, credentials accepted, clock skew: from one request."""
    base_url = settings.resolved_base_url()
    query = DeviceQuery.build(org=settings.spine_core_ods(), interaction=PROBE_INTERACTION)
    url = f"{base_url}/{query.resource}"
    try:
        auth = settings.build_auth()
    except SdsPluginsError as exc:
        return [Check("credentials", False, str(exc))]
    mode = settings.resolved_auth()
    async with httpx.AsyncClient(
        auth=auth, timeout=_TIMEOUT_S, headers={"Accept": "application/fhir+json"}
    ) as http:
        try:
            response = await http.get(
                url,
                params=httpx.QueryParams(tuple(query.params())),
                headers={"X-Correlation-ID": normalise_correlation_id(None)},
            )
        except httpx.HTTPError as exc:
            return [
                Check(
                    "directory reachable",
                    False,
                    f"cannot reach {safe_url(url)}: {type(exc).__name__}: "
                    f"{str(exc)[:200] or 'no detail'}",
                )
            ]
    status = response.status_code
    checks = []
    if status >= 500 or status == 429:
        checks.append(Check("directory reachable", False, f"{safe_url(url)} answered {status}"))
    else:
        checks.append(Check("directory reachable", True, f"{safe_url(url)} answered {status}"))
    if status in (401, 403):
        checks.append(
            Check(
                "credentials accepted",
                False,
                f"the directory refused the {mode} credentials ({status})",
            )
        )
    elif status < 400:
        what = "no credentials needed" if mode == "none" else "API key accepted"
        checks.append(Check("credentials accepted", True, what))
    date = response.headers.get("Date")
    skew = _skew(date, clock)
    if skew is None:
        checks.append(Check("clock skew", False, "the directory sent no usable Date header"))
    else:
        checks.append(
            Check(
                "clock skew",
                abs(skew) <= MAX_CLOCK_SKEW_S,
                f"{skew:+.1f}s against the directory's Date header (limit ±{MAX_CLOCK_SKEW_S:g}s)",
            )
        )
    return checks


def _skew(date: str | None, clock: Callable[[], float]) -> float | None:
    if not date:
        return None
    try:
        when = email.utils.parsedate_to_datetime(date)
    except (TypeError, ValueError):
        return None
    # The header has whole seconds: up to a second of "skew" is rounding.
    return clock() - when.timestamp()


def _pds(settings: Settings) -> Check:
    """Whether routes to a patient can work here (informational unless credentials are given:
    then the token check below decides)."""
    try:
        base_url = settings.resolved_pds_base_url()
    except SdsPluginsError as exc:
        return Check("pds", True, f"no PDS: routes to a patient are refused ({exc})")
    if settings.configured_auth():
        return Check("pds", True, f"{safe_url(base_url)}, with signed-JWT credentials")
    if is_live_platform(base_url):
        # Configured on purpose (SDS_PDS_BASE_URL) but unable to authenticate: a failure; PDS
        # merely derived from the SDS environment: information (organisation routes work).
        return Check(
            "pds",
            settings.pds_base_url is None,
            f"{safe_url(base_url)} needs signed-JWT credentials and none are set: routes to a "
            "patient are refused (set SDS_CLIENT_ID or SDS_API_KEY, SDS_PRIVATE_KEY_FILE, "
            "SDS_KID)",
        )
    return Check("pds", True, f"{safe_url(base_url)}, without credentials (an open sandbox)")


async def _signed_jwt(settings: Settings) -> list[Check]:
    """One token from the platform's token endpoint, when signed-JWT credentials are set; then
    one PDS request with it."""
    if not settings.configured_auth():
        return []
    pds_url: str | None
    try:
        pds_url = base_url = settings.resolved_pds_base_url()
    except SdsPluginsError:
        pds_url, base_url = None, settings.resolved_base_url()
    token_url = settings.pds_token_url or settings.token_url or default_token_url(base_url)
    try:
        auth = settings.signed_jwt_auth(token_url, purpose="signed-JWT auth (PDS)")
    except SdsPluginsError as exc:
        return [Check("signed-JWT token", False, str(exc))]
    async with httpx.AsyncClient(timeout=_TIMEOUT_S) as http:
        try:
            expires = await auth.obtain_token(http)
        except SdsPluginsError as exc:
            return [Check("signed-JWT token", False, f"{type(exc).__name__}: {exc}")]
        except httpx.HTTPError as exc:
            return [
                Check(
                    "signed-JWT token",
                    False,
                    f"cannot reach {safe_url(token_url)}: {type(exc).__name__}",
                )
            ]
        checks = [
            Check(
                "signed-JWT token",
                True,
                f"obtained from {safe_url(token_url)}, valid for "
                f"{max(expires - time.time(), 0):.0f}s",
            )
        ]
        if pds_url is not None:
            checks.append(await _pds_accepts(http, auth, pds_url))
    return checks


async def _pds_accepts(http: httpx.AsyncClient, auth: SignedJwtAuth, base_url: str) -> Check:
    """One ``GET /Patient/{an invalid NHS number}`` with the token: PDS's proxy checks the token
    first (401/403 when refused); past it, PDS refuses the number (400) without reading any
    patient."""
    url = f"{base_url}/Patient/{_PDS_PROBE_NUMBER}"
    try:
        response = await http.get(
            url,
            auth=auth,
            headers={
                "Accept": "application/fhir+json",
                "X-Request-ID": str(uuid.uuid4()),
                "X-Correlation-ID": normalise_correlation_id(None),
            },
        )
    except (httpx.HTTPError, SdsPluginsError) as exc:
        return Check(
            "pds accepts the token",
            False,
            f"cannot reach {safe_url(url)}: {type(exc).__name__}: {str(exc)[:200] or 'no detail'}",
        )
    status = response.status_code
    if status in (401, 403):
        return Check(
            "pds accepts the token",
            False,
            f"{safe_url(base_url)} refused the token ({status}): is the application subscribed "
            "to PDS in this environment, with this key?",
        )
    if status >= 500 or status == 429:
        return Check("pds accepts the token", False, f"{safe_url(url)} answered {status}")
    return Check(
        "pds accepts the token",
        True,
        f"{safe_url(base_url)} accepted it ({status} to a request that reads no patient)",
    )


async def _redis(settings: Settings) -> Check:
    if settings.redis_url is None:
        return Check(
            "redis", True, "not configured (in-process cache; each process paces on its own)"
        )
    from .._redis import RedisLink

    link = RedisLink(settings.redis_url.get_secret_value(), role="doctor")
    try:
        client = link.client()
        assert client is not None  # a new link is never "down"
        async with asyncio.timeout(5):
            await client.ping()
    except Exception as exc:  # any failure to ping is "not reachable"
        detail = link.scrub(f"{type(exc).__name__}: {exc}")[:300]
        return Check("redis", False, f"cannot reach {link.location}: {detail}")
    finally:
        await link.aclose()
    return Check("redis", True, f"{link.location} answers PING")


async def _pacing() -> Check:
    """Where the pacer counts its gaps from (see ``writes_at_gate``): informational."""
    from .._pacing import writes_at_gate

    if await writes_at_gate():
        return Check("pacing", True, "requests leave at the wire gate: spaced from it")
    return Check(
        "pacing",
        True,
        "requests leave a loop turn after the wire gate (anyio before 4.16), or it cannot tell: "
        "spaced from their writes' reported ends, a fleet about 7 % slower",
    )


async def run_doctor(
    settings: Settings,
    *,
    clock: Callable[[], float] = time.time,
    environ: Mapping[str, str] | None = None,
) -> tuple[list[str], list[Check]]:
    """``(configuration lines, checks)``."""
    env = os.environ if environ is None else environ
    host, plugins = _host()
    checks = [plugins]
    adapters, plugin_settings = await _with_router(settings, host)
    checks.append(adapters)
    checks.append(_files(plugin_settings))
    checks += await _directory(settings, clock)
    checks.append(_pds(settings))
    checks += await _signed_jwt(settings)
    checks.append(await _redis(settings))
    checks.append(await _pacing())
    checks.append(await broker_check(env))
    if host is not None:
        from .._keepalive import collect_keepalives

        try:
            checks += await keepalive_checks(collect_keepalives(host))
        except SdsPluginsError as exc:
            checks.append(Check("keepalives", False, str(exc)))
    return configuration(settings), checks
