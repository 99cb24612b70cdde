"""The SDS FHIR API: ``/Device`` and ``/Endpoint`` searches, answered as NHS's server does, its
health checks and unknown paths, and the proxy's own ``/_ping``, ``/_status`` and CORS preflight
answers. Reading the request (query string, Accept, correlation id) is ``_fhir_query.py``'s."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any
from urllib.parse import unquote, unquote_plus

from starlette.requests import Request
from starlette.responses import Response

# One list, shared with the ebXML builder: the interactions SDS answers with Spine's intermediary
# address are exactly those the builder routes as forward-reliable/express.
from .._forwarding import FORWARD_EXPRESS_ACTIONS, FORWARD_RELIABLE_ACTIONS, FORWARDED_SERVICES
from ._common import (
    EXPRESS_INTERMEDIARY,
    FHIR_BASE,
    FHIR_PREFIX,
    IDENTIFIER_PARAM,
    MANUFACTURER_PARAM,
    ORG_PARAM,
    PAGE_PARAM,
    PLAIN_JSON,
    RELIABLE_INTERMEDIARY,
    UUID_PATTERN,
    _BadRequest,
    _error_response,
    _HttpError,
    _tracking_headers,
    etag,
    etag_matches,
    joined_header,
    operation_outcome,
    server_json,
    spine_uuid,
)
from ._fhir_query import (
    _correlation_id,
    _Criteria,
    _device_criteria,
    _endpoint_criteria,
    _negotiate,
    _no_cache,
    _Query,
    _query_items,
)
from ._gateway import ACCEPT_HEADERS, GatewayGuard
from ._mapping import DirectoryDataError, device_resource, endpoint_resources, new_id
from ._records import Directory, Record, value_matcher
from ._state import _State

#: A status for the stats when the caller hung up during a simulated LDAP wait (nginx's
#: "client closed request"); nothing is sent.
CLIENT_CLOSED = 499


async def _ldap_wait(request: Request, seconds: float) -> bool:
    """Wait ``seconds`` as NHS's server waits for an LDAP answer that never comes.

    Returns False if the caller hangs up first (nothing is then answered or cached). The wait
    is an ``asyncio`` timer: it blocks nothing else and ends at once when the task is cancelled
    (for instance when the sandbox stops).
    """

    async def hung_up() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(hung_up(), timeout=seconds)
        return False
    return True


#: ``AssignMessage.AddCors.xml`` of the live proxy: the headers of its CORS preflight answer.
_CORS_HEADERS = {
    "Access-Control-Allow-Headers": "origin, x-requested-with, accept, content-type, if-match",
    "Access-Control-Max-Age": "3628800",
    "Access-Control-Allow-Methods": "GET, PUT, POST, PATCH, DELETE",
}
#: ``AssignMessage.AddPayloadToPing.xml``'s fields; the live values name the deployed release.
_PING = {"version": "sandbox", "revision": "1", "releaseId": "sandbox", "commitId": "sandbox"}
#: Tornado's own error page, which the server's health-check handlers (plain
#: ``RequestHandler``s, ``sds/request/healthcheck_handler.py``) answer other methods with.
_TORNADO_405 = (
    b"<html><title>405: Method Not Allowed</title><body>405: Method Not Allowed</body></html>"
)
_TORNADO_HTML = "text/html; charset=UTF-8"


def _preflight(request: Request) -> Response | None:
    """The live proxy's ``OptionsPreFlight`` flow (``proxies/default.xml``): an ``OPTIONS``
    with ``Origin`` and ``Access-Control-Request-Method`` never reaches the target (its route
    rule has no target) and gets ``AssignMessage.AddCors``'s headers. Apigee's answer without a
    target is taken to be an empty 200 (an inference)."""
    headers = request.headers
    if (
        request.method != "OPTIONS"
        or "origin" not in headers
        or "access-control-request-method" not in headers
    ):
        return None
    return Response(
        status_code=200,
        headers={"Access-Control-Allow-Origin": headers["origin"], **_CORS_HEADERS},
    )


class FhirSearch:
    """``/Device``, ``/Endpoint``, the health checks and unknown FHIR paths, behind the gateway;
    and the proxy's own ``/_ping``, ``/_status`` and CORS preflight answers."""

    def __init__(self, state: _State, guard: GatewayGuard) -> None:
        self.state = state
        self.guard = guard

    async def device(self, request: Request) -> Response:
        return await self._search(request, "Device")

    async def endpoint(self, request: Request) -> Response:
        return await self._search(request, "Endpoint")

    async def _gateway(
        self, request: Request, correlation_id: str
    ) -> tuple[Response | None, tuple[str, ...], bool]:
        """The target PreFlow (key, quota, spike arrest, then the cache lookup), then the faults
        injected behind it: a response that ends the request there, the request's cache key,
        and whether it skips the cache."""
        cache_key = self.state.gateway.cache_key(
            request.method,
            request.url.path,
            request.url.query,
            [joined_header(request, name) for name in ACCEPT_HEADERS],
        )
        no_cache = _no_cache(request)
        blocked = await self.guard.check(request, correlation_id)
        if blocked is not None:
            return blocked, cache_key, no_cache
        cached = self.state.gateway.lookup(cache_key, no_cache, time.monotonic())
        if cached is not None:
            # Apigee replays the stored response; whether its X-Correlation-ID is the caller's
            # that filled the cache is not documented: the sandbox stamps the current one.
            headers = _tracking_headers(request, correlation_id)
            if cached.status == 200:
                headers["Etag"] = etag(cached.body)
            return (
                Response(
                    cached.body,
                    status_code=cached.status,
                    headers=headers,
                    media_type=cached.media_type,
                ),
                cache_key,
                no_cache,
            )
        return self.guard.injected_fault(request, correlation_id), cache_key, no_cache

    async def _search(self, request: Request, kind: str) -> Response:
        preflight = _preflight(request)
        if preflight is not None:
            return preflight
        correlation_id, bad_id = _correlation_id(request)
        ended, cache_key, no_cache = await self._gateway(request, correlation_id)
        if ended is not None:
            return ended
        # The server's checks, in its handlers' order (sds/request/base_handler.py prepare,
        # then accredited_system_handler.py / routing_reliability_handler.py get): method,
        # correlation id, query parameters, required parameters or combination, Accept.
        try:
            if request.method != "GET":
                raise _HttpError(405)
            if bad_id:
                raise _BadRequest(
                    f"Invalid X-Correlation-ID header. Should be an UUIDv4 matching regex "
                    f"'{UUID_PATTERN}'"
                )
            allowed = [ORG_PARAM, IDENTIFIER_PARAM]
            if kind == "Device":
                allowed.append(MANUFACTURER_PARAM)
            if self.state.config.page_size is not None:
                allowed.append(PAGE_PARAM)
            query = _Query(_query_items(request.url.query), allowed)
            criteria = _device_criteria(query) if kind == "Device" else _endpoint_criteria(query)
            page = query.page()
            media_type = _negotiate(joined_header(request, "accept"))
            faults = self.state.faults
            if faults.ldap_timeout:
                # Where the server queries LDAP: its client gives up after 3 s and returns no
                # records (sds/lookup/sds_client.py _get_query_result), so the answer is an
                # ordinary empty searchset, only late.
                self.state.ldap_timeouts += 1
                if not await _ldap_wait(request, faults.ldap_timeout_ms / 1000):
                    return Response(status_code=CLIENT_CLOSED)
                resources: list[dict[str, Any]] = []
            elif kind == "Device":
                resources = self._devices(criteria)
            else:
                resources = self._endpoints(criteria)
        except _HttpError as error:
            return _error_response(request, error.status, error.diagnostics, correlation_id)
        except DirectoryDataError as error:
            return _error_response(request, 500, str(error), correlation_id)
        body = server_json(self._bundle(request, resources, page), indent=2)
        tag = etag(body)
        headers = {**_tracking_headers(request, correlation_id), "Etag": tag}
        if etag_matches(joined_header(request, "if-none-match"), tag):
            return Response(status_code=304, headers=headers)  # Tornado's finish()
        self.state.gateway.populate(cache_key, no_cache, 200, body, media_type, time.monotonic())
        return Response(body, headers=headers, media_type=media_type)

    async def healthcheck(self, request: Request) -> Response:
        """``/healthcheck`` (an empty 200) and ``/healthcheck/deep`` (the LDAP check's JSON).

        The server's ``sds/main.py`` routes them to ``sds/request/healthcheck_handler.py``; the
        live proxy sends them to the target like any other path, so the API key, limits and
        response cache apply. (The cache's skip conditions name ``/healthcheck``, but Apigee's
        ``request.path`` holds the base path too, so they are taken never to match: an
        inference.) No correlation id is set on their answers.
        """
        preflight = _preflight(request)
        if preflight is not None:
            return preflight
        correlation_id, _ = _correlation_id(request)
        ended, cache_key, no_cache = await self._gateway(request, correlation_id)
        if ended is not None:
            return ended
        if request.method != "GET":
            return Response(_TORNADO_405, status_code=405, media_type=_TORNADO_HTML)
        if request.url.path.endswith("/deep"):
            faults = self.state.faults
            if faults.ldap_timeout and not await _ldap_wait(request, faults.ldap_timeout_ms / 1000):
                return Response(status_code=CLIENT_CLOSED)
            # A timed-out LDAP query is no error to the check either: it passes.
            body = server_json(
                {
                    "status": "pass",
                    "details": {
                        "ldap": {"status": "pass", "links": {"ldap": "sandbox"}, "output": ""}
                    },
                },
                indent=4,
            )
            media_type = PLAIN_JSON
        else:
            body, media_type = b"", _TORNADO_HTML
        tag = etag(body)
        if etag_matches(joined_header(request, "if-none-match"), tag):
            return Response(status_code=304, headers={"Etag": tag})
        self.state.gateway.populate(cache_key, no_cache, 200, body, media_type, time.monotonic())
        return Response(body, headers={"Etag": tag}, media_type=media_type)

    async def ping(self, request: Request) -> Response:
        """``/_ping``: answered by the proxy itself for GET and HEAD, before any key check
        (``proxies/default.xml`` flow ``AddPayloadToPing``); other methods go to the target."""
        preflight = _preflight(request)
        if preflight is not None:
            return preflight
        if request.method not in ("GET", "HEAD"):
            return await self.not_found(request)
        return Response(json.dumps(_PING).encode(), media_type=PLAIN_JSON)

    async def status(self, request: Request) -> Response:
        """``/_status``: the proxy's own check of the target's deep health check.

        ``proxies/default.xml`` flow ``StatusEndpoint``: an ``apikey`` other than the platform's
        private status key gets ``RaiseFault.401Unauthorized`` (an empty ``text/plain`` 401);
        otherwise ``javascript.SetStatusResponse`` reports the health check. The sandbox's
        status key is its ``--api-key`` (none configured: any request passes).
        """
        preflight = _preflight(request)
        if preflight is not None:
            return preflight
        if request.method not in ("GET", "HEAD"):
            return await self.not_found(request)
        config = self.state.config
        if config.api_key is not None and request.headers.get("apikey") != config.api_key:
            return Response(status_code=401, media_type="text/plain")
        faults = self.state.faults
        if faults.outage:
            code: int = faults.error_status
            outcome = server_json(operation_outcome(code, None, spine_uuid()), indent=4).decode()
        else:
            if faults.ldap_timeout and not await _ldap_wait(request, faults.ldap_timeout_ms / 1000):
                return Response(status_code=CLIENT_CLOSED)
            code, outcome = 200, ""
        passed = 200 <= code < 300
        deep = f"{FHIR_BASE}/healthcheck/deep"
        report = {
            "status": "pass" if passed else "fail",
            "version": _PING["version"],
            "revision": _PING["revision"],
            "releaseId": _PING["releaseId"],
            "commitId": _PING["commitId"],
            "checks": {
                "healthcheckService:status": [
                    {
                        "status": "pass" if passed else "fail",
                        "timeout": "false",
                        "responseCode": code,
                        "outcome": outcome,
                        "links": {"self": str(request.url.replace(path=deep, query=""))},
                    }
                ]
            },
        }
        return Response(json.dumps(report, separators=(",", ":")).encode(), media_type=PLAIN_JSON)

    def _devices(self, criteria: _Criteria) -> list[dict[str, Any]]:
        records = self.state.directory.find_as(
            criteria.ods, criteria.interaction, criteria.manufacturer, criteria.party_key
        )
        return [device_resource(record) for record in records]

    def _endpoints(self, criteria: _Criteria) -> list[dict[str, Any]]:
        resources: list[dict[str, Any]] = []
        records = self.state.directory.find_mhs(
            criteria.ods, criteria.interaction, criteria.party_key
        )
        for record in records:
            addresses = self._forwarded(record, criteria.interaction)
            resources.extend(endpoint_resources(record, addresses))
        return resources

    def _forwarded(self, record: Record, requested: str | None) -> list[str] | None:
        """Spine's intermediary address when ``record`` is reached through it, else None."""
        interactions = record.values("nhsMhsSvcIA")
        chosen: str | None = None
        if requested:
            test = value_matcher(requested.lower())
            chosen = next((i for i in interactions if test(i.lower())), None)
        if chosen is None and len(interactions) == 1:
            chosen = interactions[0]
        if chosen is None:
            return None
        parts = chosen.split(":")
        if len(parts) < 2 or parts[-2] not in FORWARDED_SERVICES:
            return None
        if parts[-1] in FORWARD_RELIABLE_ACTIONS:
            urn = RELIABLE_INTERMEDIARY
        elif parts[-1] in FORWARD_EXPRESS_ACTIONS:
            urn = EXPRESS_INTERMEDIARY
        else:
            return None
        address, problem = self.state.intermediaries[urn]
        if address is None:
            raise _HttpError(500, problem)
        return [address]

    def _bundle(
        self, request: Request, resources: list[dict[str, Any]], page: int
    ) -> dict[str, Any]:
        base = str(request.url.replace(query=""))
        links = [{"relation": "self", "url": unquote(str(request.url))}]
        page_size = self.state.config.page_size
        shown = resources
        if page_size is not None:
            start = (page - 1) * page_size
            shown = resources[start : start + page_size]
            if start + page_size < len(resources):
                links.append({"relation": "next", "url": _page_url(request, base, page + 1)})
        return {
            "resourceType": "Bundle",
            "id": new_id(),
            "type": "searchset",
            "total": len(resources),
            "link": links,
            "entry": [
                {
                    "fullUrl": f"{base}/{resource['id']}",
                    "resource": resource,
                    "search": {"mode": "match"},
                }
                for resource in shown
            ],
        }

    async def not_found(self, request: Request) -> Response:
        """Any other path: the server's ``ErrorHandler`` 404, for every method
        (``sds/request/error_handler.py``); under the API's base path, behind the gateway."""
        correlation_id, _ = _correlation_id(request)
        if request.url.path.startswith(FHIR_PREFIX):
            preflight = _preflight(request)
            if preflight is not None:
                return preflight
            blocked = await self.guard.check(request, correlation_id) or self.guard.injected_fault(
                request, correlation_id
            )
            if blocked is not None:
                return blocked
        return _error_response(request, 404, None, correlation_id)


def _page_url(request: Request, base: str, page: int) -> str:
    kept = [
        part
        for part in request.url.query.split("&")
        if part and unquote_plus(part.partition("=")[0]) != PAGE_PARAM
    ]
    kept.append(f"{PAGE_PARAM}={page}")
    return f"{base}?{'&'.join(kept)}"


def _intermediary(directory: Directory, ods: str, urn: str) -> tuple[str | None, str | None]:
    """Spine's own address for ``urn`` at ``ods``, or why there is not exactly one."""
    records = directory.find_mhs(ods, urn, None)
    if len(records) != 1:
        return None, (
            "Expected 1 result for forward reliable/express routing and reliability "
            f"but got {len(records)}"
        )
    addresses = records[0].values("nhsMHSEndPoint")
    if len(addresses) != 1:
        return None, (
            "Expected 1 address for forward reliable/express routing and reliability "
            f"but got {len(addresses)}"
        )
    return addresses[0], None
