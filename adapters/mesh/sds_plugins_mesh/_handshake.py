"""The MESH handshake ("Validate a mailbox"): MESH reachable, credentials accepted, mailbox alive.

``NHSDigital/mesh-api-specification`` (``master``, ``specification/mesh-api.yaml``, operation
``handshake_messageexchange__mailbox_id__post``): ``POST /messageexchange/{mailbox_id}`` with
``authorization`` and the required headers ``mex-clientversion``, ``mex-osname`` and
``mex-osversion`` (``user-agent`` optional; ``mex-osarchitecture`` appears in its example).
"Use this endpoint to check that MESH can be reached and that the authentication you are using
is correct. This endpoint only needs to be called once every 24 hours"; the overview asks
clients to "validate your mailbox every 24 hours to let Spine know it's still active". It
answers ``200`` (no body with ``Accept: application/vnd.mesh.v2+json``), ``400`` for a
missing header and ``403`` when authentication fails. NHS England's mesh-client
(``MeshClient.handshake``) sends the same headers; mesh-sandbox (``routers/handshake.py``)
requires the three.

One request, no retries: a caller that validates daily (a worker) simply tries again later,
and one that checks configuration (``doctor``) wants the first answer.
"""

from __future__ import annotations

import importlib.metadata
import platform
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict
from sds_plugins import (
    AuthenticationError,
    ConfigurationError,
    DirectoryError,
    DirectoryUnavailableError,
    RateLimitedError,
    parse_retry_after,
)

from ._auth import nhsmesh_authorization
from ._config import MeshCredentials, MeshSettings, MeshTls
from ._errors import MeshRejectedError
from ._lookup import MESH_V2_JSON

__all__ = [
    "HANDSHAKE_INTERVAL",
    "MailboxValidation",
    "client_version",
    "handshake_request",
    "validate_mailbox",
]

#: How often to validate each mailbox: "This endpoint only needs to be called once every 24
#: hours" (and at least that often: it keeps the mailbox known to be active).
HANDSHAKE_INTERVAL = timedelta(hours=24)

_PRINTABLE = re.compile(r"[^\x20-\x7e]+")


class MailboxValidation(BaseModel):
    """A successful handshake: which mailbox, on which MESH host, when."""

    model_config = ConfigDict(frozen=True)

    mailbox: str
    mesh_url: str
    validated_at: datetime
    status_code: int

    @property
    def due_at(self) -> datetime:
        """When the next handshake is due (:data:`HANDSHAKE_INTERVAL` later)."""
        return self.validated_at + HANDSHAKE_INTERVAL


def client_version() -> str:
    """``mex-clientversion``: ``sds-plugins-mesh==<version>`` (mesh-client writes
    ``mesh_client==<version>``, the specification's example ``ApiDocs==0.0.1``)."""
    try:
        version = importlib.metadata.version("sds-plugins-mesh")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout
        version = "0"
    return f"sds-plugins-mesh=={version}"


def _header(value: str, fallback: str) -> str:
    # Platform strings become header values: printable ASCII, short, never empty.
    text = _PRINTABLE.sub(" ", value).strip()[:200]
    return text or fallback


def handshake_request(
    credentials: MeshCredentials,
    *,
    mesh_url: str,
    os_name: str | None = None,
    os_version: str | None = None,
    os_architecture: str | None = None,
    version: str | None = None,
    now: datetime | None = None,
) -> httpx.Request:
    """The handshake request for ``credentials.mailbox`` on ``mesh_url`` (a fresh token).

    ``mex-osname``, ``mex-osversion`` and ``mex-osarchitecture`` default to this machine's
    (``platform.system()``, ``platform.release()``, ``platform.machine()``);
    ``mex-clientversion`` to :func:`client_version`.
    """
    mailbox = credentials.mailbox
    headers = {
        "Authorization": nhsmesh_authorization(credentials, now=now),
        "Accept": MESH_V2_JSON,
        "mex-clientversion": _header(version or client_version(), "sds-plugins-mesh"),
        "mex-osname": _header(os_name or platform.system(), "unknown"),
        "mex-osversion": _header(os_version or platform.release(), "unknown"),
        "mex-osarchitecture": _header(os_architecture or platform.machine(), "unknown"),
        "User-Agent": _header(version or client_version(), "sds-plugins-mesh"),
    }
    url = f"{mesh_url.rstrip('/')}/messageexchange/{mailbox}"
    return httpx.Request("POST", url, headers=headers)


async def validate_mailbox(
    settings: MeshSettings | None = None,
    *,
    credentials: MeshCredentials | None = None,
    mesh_url: str | None = None,
    client: httpx.AsyncClient | None = None,
    timeout_s: float = 10.0,
    **request: Any,
) -> MailboxValidation:
    """Validate the sender mailbox (the handshake) once; raise a typed error if MESH refuses.

    Credentials and host come from ``settings`` (default: ``MESH_*``) unless given. Without a
    ``client``, one is made for the call with the host's client TLS (``MESH_CERT``... or
    ``MESH_TLS__<ENV>__*``). ``request`` goes to :func:`handshake_request` (``os_name``...).

    Raises :class:`~sds_plugins.ConfigurationError` (nothing configured),
    :class:`~sds_plugins.AuthenticationError` (401/403: mailbox, password, shared key, client
    certificate or clock), :class:`MeshRejectedError` (400: a header MESH wants is missing),
    :class:`~sds_plugins.RateLimitedError` (429) or :class:`~sds_plugins.DirectoryUnavailableError`
    (5xx, or MESH not reachable). Messages carry the URL, never a header.
    """
    settings = settings if settings is not None else MeshSettings()
    credentials = credentials or settings.credentials()
    url = mesh_url or settings.resolved_url()
    if credentials is None or url is None:
        raise ConfigurationError(
            "the MESH handshake needs a host and the sender's credentials: set MESH_URL, "
            "MESH_MAILBOX, MESH_PASSWORD and MESH_SHARED_KEY"
        )
    built = handshake_request(credentials, mesh_url=url, **request)
    try:
        if client is not None:
            response = await client.send(built)
        else:
            async with _client(settings.tls_for(url), timeout_s) as own:
                response = await own.send(built)
    except httpx.TransportError as exc:
        raise DirectoryUnavailableError(
            f"MESH did not answer the handshake ({type(exc).__name__})",
            method="POST",
            url=str(built.url),
        ) from None
    if response.status_code == 200:
        return MailboxValidation(
            mailbox=credentials.mailbox,
            mesh_url=url,
            validated_at=datetime.now(UTC),
            status_code=response.status_code,
        )
    raise _handshake_error(response)


def _client(tls: MeshTls, timeout_s: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        cert=tls.httpx_cert(), verify=tls.httpx_verify(), timeout=httpx.Timeout(timeout_s)
    )


def _handshake_error(response: httpx.Response) -> DirectoryError:
    status = response.status_code
    context: dict[str, Any] = {
        "status_code": status,
        "method": "POST",
        "url": str(response.request.url),
        "diagnostics": response.text[:500].strip() or None,
    }
    if status in (401, 403):
        return AuthenticationError(
            "MESH refused the handshake's credentials (mailbox, password, shared key, client "
            "certificate or clock)",
            **context,
        )
    if status == 429:
        return RateLimitedError(
            "MESH is throttling this mailbox",
            retry_after_s=parse_retry_after(response.headers.get("Retry-After")),
            **context,
        )
    if status >= 500:
        return DirectoryUnavailableError("MESH failed to answer the handshake", **context)
    return MeshRejectedError("MESH refused the handshake", **context)
