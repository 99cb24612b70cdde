"""MESH mailbox lookup as a directory source of the shared engine.

``GET {mesh_url}/messageexchange/endpointlookup/{ods}/{workflow}`` answers which mailboxes receive
``workflow`` for organisation ``ods``. Registering it as a :class:`~sds_plugins.DirectorySource`
(named ``mesh``) gives it what SDS lookups get: the shared cache (mailboxes change rarely),
single-flight (a burst of sends to one practice makes one lookup), stale-if-error and
``sds_lookup_completed`` events. Retries live here, as the engine expects: the lookup is an
idempotent GET, so 429/502/503/504, timeouts and connection errors are retried with backoff.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict
from sds_plugins import (
    AuthenticationError,
    ConfigurationError,
    DirectoryError,
    DirectorySource,
    DirectoryUnavailableError,
    FetchResult,
    MalformedResponseError,
    RateLimitedError,
    RequestRejectedError,
    RetryPolicy,
    get_with_retries,
    load_json,
    parse_retry_after,
)

from ._config import MeshSettings, MeshTls

__all__ = [
    "MESH_V1_JSON",
    "MESH_V2_JSON",
    "MailboxQuery",
    "MeshLookupSource",
    "MeshMailbox",
    "parse_lookup_response",
]

logger = logging.getLogger("sds_plugins_mesh.lookup")

#: ``Accept`` values for the two response versions (v1 is plain JSON, as the service defaults).
MESH_V1_JSON = "application/json"
MESH_V2_JSON = "application/vnd.mesh.v2+json"

_USER_AGENT = "sds-plugins-mesh/0.1"


class MailboxQuery(BaseModel):
    """One mailbox lookup: organisation and workflow, on one MESH host."""

    model_config = ConfigDict(frozen=True)

    mesh_url: str
    ods_code: str
    workflow_id: str

    def key(self) -> str:
        # The host is part of the key as well as of the source's namespace: a route may name
        # another environment (the mesh_url option), and INT answers must never serve PROD.
        return f"{self.ods_code}/{self.workflow_id}@{self.mesh_url}"

    @property
    def path(self) -> str:
        ods, workflow = quote(self.ods_code, safe=""), quote(self.workflow_id, safe="")
        return f"/messageexchange/endpointlookup/{ods}/{workflow}"


class MeshMailbox(BaseModel):
    """A mailbox that receives ``workflow_id`` for ``ods_code``, as the lookup returned it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["mesh_mailbox"] = "mesh_mailbox"
    mailbox_id: str
    mailbox_name: str | None = None
    ods_code: str
    workflow_id: str

    def describe(self) -> dict[str, Any]:
        """Mailbox id and name, for messages and ``AmbiguousError.candidates``."""
        return {"mailbox_id": self.mailbox_id, "mailbox_name": self.mailbox_name}


_MAILBOX_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def parse_lookup_response(
    body: object, *, ods_code: str, workflow_id: str
) -> tuple[MeshMailbox, ...]:
    """Mailboxes from a lookup answer in either version.

    v2 (``Accept: application/vnd.mesh.v2+json``): ``{"results": [{"mailbox_id",
    "mailbox_name"}]}``; v1 (plain JSON): ``{"query_id", "results": [{"address",
    "description", "endpoint_type": "MESH"}]}``. Anything else is a
    :class:`~sds_plugins.MalformedResponseError` naming the offending field.
    """
    if not isinstance(body, dict) or not isinstance(body.get("results"), list):
        raise MalformedResponseError("MESH lookup answer has no 'results' list", field="results")
    mailboxes: list[MeshMailbox] = []
    seen: set[str] = set()
    for index, item in enumerate(body["results"]):
        if not isinstance(item, dict):
            raise MalformedResponseError(
                f"MESH lookup result {index} is not an object", field=f"results[{index}]"
            )
        if "mailbox_id" in item:  # v2
            mailbox_id, name = item.get("mailbox_id"), item.get("mailbox_name")
            field = f"results[{index}].mailbox_id"
        else:  # v1
            endpoint_type = item.get("endpoint_type", "MESH")
            if str(endpoint_type).upper() != "MESH":
                continue  # not a MESH mailbox: nothing this adapter could send to
            mailbox_id, name = item.get("address"), item.get("description")
            field = f"results[{index}].address"
        if not isinstance(mailbox_id, str) or not mailbox_id.strip():
            raise MalformedResponseError(f"MESH lookup {field} is missing", field=field)
        # It becomes a header (mex-to) and a path: checked as it came, before any case mapping.
        if not _MAILBOX_ID.fullmatch(mailbox_id.strip()):
            raise MalformedResponseError(
                f"MESH lookup {field} is not a mailbox id (letters, digits, '-' and '_')",
                field=field,
            )
        if name is not None and (not isinstance(name, str) or len(name) > 500):
            raise MalformedResponseError(
                f"MESH lookup result {index} has a name that is not short text",
                field=f"results[{index}]",
            )
        mailbox_id = mailbox_id.strip().upper()
        if mailbox_id in seen:
            continue  # the same mailbox twice says nothing more, and must not look ambiguous
        seen.add(mailbox_id)
        mailboxes.append(
            MeshMailbox(
                mailbox_id=mailbox_id,
                mailbox_name=name,
                ods_code=ods_code,
                workflow_id=workflow_id,
            )
        )
    return tuple(mailboxes)


class MeshLookupSource(DirectorySource):
    """The ``mesh`` directory source: mailbox lookups, one connection pool per MESH host.

    ``namespace`` is ``mesh:<default host>`` so caches never mix environments (queries carry
    their host too). Lookups are signed with ``auth`` (an NHSMESH token per request) when it is
    set: real MESH wants client authentication on every endpoint, while mesh-sandbox ignores
    it. They do not wait on the router's rate limiter: that budget is the SDS API gateway's, and
    MESH lookups do not spend it.
    """

    name = "mesh"
    record_type = MeshMailbox

    def __init__(
        self,
        settings: MeshSettings | None = None,
        *,
        auth: httpx.Auth | None = None,
        retry: RetryPolicy | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings if settings is not None else MeshSettings()
        self.namespace = f"mesh:{_default_host(self.settings)}"
        self.auth = auth
        self.retry = retry or RetryPolicy()
        self.accept = MESH_V2_JSON if self.settings.lookup_api_version >= 2 else MESH_V1_JSON
        self._timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s)
        self._transport = transport
        # Clients are created on first use (no I/O while plugins register), one per host because
        # each MESH environment has its own client certificate.
        self._clients: dict[str, httpx.AsyncClient] = {}
        #: Requests sent, retries included (tests and the demo read it).
        self.requests_sent = 0

    def _client(self, mesh_url: str) -> httpx.AsyncClient:
        client = self._clients.get(mesh_url)
        if client is None:
            tls: MeshTls = self.settings.tls_for(mesh_url)
            client = httpx.AsyncClient(
                base_url=mesh_url,
                auth=self.auth,
                cert=tls.httpx_cert(),
                verify=tls.httpx_verify(),
                timeout=self._timeout,
                headers={"Accept": self.accept, "User-Agent": _USER_AGENT},
                transport=self._transport,
                follow_redirects=False,
            )
            self._clients[mesh_url] = client
        return client

    async def fetch(
        self, query: Any, *, correlation_id: str, no_cache: bool = False
    ) -> FetchResult:
        if not isinstance(query, MailboxQuery):
            raise TypeError(f"the mesh source takes a MailboxQuery, not {query!r}")
        client = self._client(query.mesh_url)
        url = query.mesh_url + query.path

        async def count() -> None:
            self.requests_sent += 1

        attempts = 0
        try:
            content, attempts = await get_with_retries(
                client,
                url,
                policy=self.retry,
                correlation_id=correlation_id,
                error_for=lambda response, cid: lookup_error(response, correlation_id=cid),
                before_attempt=count,
                service="MESH lookup",
            )
            body = load_json(content, what="MESH lookup answer")
            records = parse_lookup_response(
                body, ods_code=query.ods_code, workflow_id=query.workflow_id
            )
        except DirectoryError as exc:
            if isinstance(exc, MalformedResponseError) and exc.status_code is None:
                exc.status_code = 200  # the body of a successful answer was the problem
            if attempts:  # raised while parsing a 200: get_with_retries set nothing
                exc.attempts = attempts
            exc.correlation_id = exc.correlation_id or correlation_id
            exc.method, exc.url = "GET", url
            raise
        return FetchResult(records=records, attempts=attempts)

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()


def _default_host(settings: MeshSettings) -> str:
    # A bad MESH_URL must not stop a router that never routes to MESH: the adapter reports it
    # (ConfigurationError) when a MESH route is asked for.
    try:
        return settings.resolved_url() or "unconfigured"
    except ConfigurationError:
        return "invalid"


def lookup_error(response: httpx.Response, *, correlation_id: str | None = None) -> DirectoryError:
    """The typed error for a failed lookup (the URL, never the headers: they hold the token)."""
    status = response.status_code
    context: dict[str, Any] = {
        "correlation_id": correlation_id,
        "status_code": status,
        "method": "GET",
        "url": str(response.request.url),
        "diagnostics": _diagnostics(response),
    }
    if status in (401, 403):
        return AuthenticationError(
            "MESH refused the mailbox lookup's credentials (mailbox, password, shared key or "
            "client certificate)",
            **context,
        )
    if status == 429:
        return RateLimitedError(
            "MESH is throttling lookups",
            retry_after_s=parse_retry_after(response.headers.get("Retry-After")),
            **context,
        )
    if status >= 500:
        return DirectoryUnavailableError(
            "MESH lookup failed on the server side",
            retry_after_s=parse_retry_after(response.headers.get("Retry-After")),
            **context,
        )
    return RequestRejectedError("MESH refused the mailbox lookup", **context)


def _diagnostics(response: httpx.Response) -> str | None:
    text = response.text[:500].strip()
    return text or None
