"""``sds-plugins doctor``: the effective configuration, what loaded, and live checks.

Each check is one line, ``ok`` or ``FAIL``, naming what it checked; the command exits 1 when
any failed. The directory is asked once (one ``/Device`` query for Spine's own systems in this
environment, no retries): that answer says whether it is reachable, whether the API key was
accepted and, from its ``Date`` header, how far this machine's clock is from the directory's (a
skewed clock makes signed JWTs fail). When signed-JWT credentials are configured (for PDS), one
token is obtained with them.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from .._environments import default_token_url, is_live_platform
from .._exceptions import SdsPluginsError
from .._query import DeviceQuery
from .._service._health import PROBE_INTERACTION
from .._upstream import safe_url
from .._validation import normalise_correlation_id

if TYPE_CHECKING:
    from .._settings import Settings

__all__ = ["Check", "run_doctor"]

#: Beyond this, signed JWT client assertions (valid for at most 5 minutes) start to fail.
MAX_CLOCK_SKEW_S = 30.0
_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


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


def _plugins() -> Check:
    from .._plugins import PluginHost

    try:
        host = PluginHost()
    except SdsPluginsError as exc:
        return Check("plugins", False, str(exc))
    listed = host.plugins()
    names = ", ".join(f"{p['name']} ({p['distribution']} {p['version']})" for p in listed)
    return Check("plugins", True, f"{len(listed)} loaded: {names}")


async def _adapters(settings: Settings) -> Check:
    from .._engine import Router

    router = Router(settings)
    try:
        await router.start()
        names = sorted(router.adapters)
    except SdsPluginsError as exc:
        return Check("adapters", False, str(exc))
    finally:
        await router.aclose()
    if not names:
        return Check("adapters", False, "none installed (pip install an adapter distribution)")
    return Check("adapters", True, ", ".join(names))


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
        return Check(
            "pds",
            True,
            f"{safe_url(base_url)} needs signed-JWT credentials and none are set: routes to a "
            "patient are refused (set SDS_CLIENT_ID or SDS_API_KEY, SDS_PRIVATE_KEY_FILE, "
            "SDS_KID)",
        )
    return Check("pds", True, f"{safe_url(base_url)}, without credentials (an open sandbox)")


async def _signed_jwt(settings: Settings) -> list[Check]:
    """One token from the platform's token endpoint, when signed-JWT credentials are set."""
    if not settings.configured_auth():
        return []
    try:
        base_url = settings.resolved_pds_base_url()
    except SdsPluginsError:
        base_url = settings.resolved_base_url()
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
    return [
        Check(
            "signed-JWT token",
            True,
            f"obtained from {safe_url(token_url)}, valid for {max(expires - time.time(), 0):.0f}s",
        )
    ]


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


async def run_doctor(
    settings: Settings, *, clock: Callable[[], float] = time.time
) -> tuple[list[str], list[Check]]:
    """``(configuration lines, checks)``."""
    checks = [_plugins()]
    checks.append(await _adapters(settings))
    checks += await _directory(settings, clock)
    checks.append(_pds(settings))
    checks += await _signed_jwt(settings)
    checks.append(await _redis(settings))
    return configuration(settings), checks
