"""The SDS FHIR API: ``/Device`` and ``/Endpoint`` searches, answered as NHS's server does."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, unquote_plus

from starlette.requests import Request
from starlette.responses import Response

# One list, shared with the ebXML builder: the interactions SDS answers with Spine's intermediary
# address are exactly those the builder routes as forward-reliable/express.
from .._forwarding import FORWARD_EXPRESS_ACTIONS, FORWARD_RELIABLE_ACTIONS, FORWARDED_SERVICES
from .._models import INTERACTION_SYSTEM, ODS_SYSTEM, PARTY_KEY_SYSTEM
from ._common import (
    _UUID_RE,
    EXPRESS_INTERMEDIARY,
    FHIR_JSON,
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
    _json_bytes,
    _tracking_headers,
)
from ._gateway import GatewayGuard
from ._mapping import device_resource, endpoint_resources, new_id
from ._records import Directory, Record
from ._state import _State

# --------------------------------------------------------------------------- query handling


def _negotiate(accept: str | None) -> str:
    """The response media type for an Accept header, as NHS's server picks it."""
    if accept is None:
        return FHIR_JSON
    # Media-type parameters (q-values, charset) carry no meaning for a JSON-only API.
    offered = {part.split(";", 1)[0].strip().lower() for part in accept.split(",")}
    if "*/*" in offered or FHIR_JSON in offered:
        return FHIR_JSON
    if PLAIN_JSON in offered:
        return PLAIN_JSON
    raise _HttpError(406)


def _form(param: str, system: str) -> str:
    return f"'{param}={system}|value'"


def _invalid_param(param: str, system: str) -> _BadRequest:
    return _BadRequest(
        f"Missing or invalid '{param}' query parameter. Should be {_form(param, system)}"
    )


def _invalid_identifier() -> _BadRequest:
    return _BadRequest(
        f"Missing or invalid '{IDENTIFIER_PARAM}' query parameter. Should be one or both of: ["
        f"{_form(IDENTIFIER_PARAM, INTERACTION_SYSTEM)}, "
        f"{_form(IDENTIFIER_PARAM, PARTY_KEY_SYSTEM)}"
    )


def _invalid_endpoint_combination() -> _BadRequest:
    org = f"{ORG_PARAM}={ODS_SYSTEM}|value"
    interaction = f"{IDENTIFIER_PARAM}={INTERACTION_SYSTEM}|value"
    party_key = f"{IDENTIFIER_PARAM}={PARTY_KEY_SYSTEM}|value"
    combinations = ", ".join(
        f"'{combination}'"
        for combination in (
            f"{org}&{interaction}&{party_key}",
            f"{org}&{interaction}",
            f"{org}&{party_key}",
            f"{interaction}&{party_key}",
        )
    )
    return _BadRequest(
        "Missing or invalid query parameters. "
        f"Should one of following combinations: [{combinations}]"
    )


@dataclass(frozen=True)
class _Criteria:
    ods: str | None
    interaction: str | None
    party_key: str | None
    manufacturer: str | None = None


def _device_criteria(query: _Query) -> _Criteria:
    ods = query.get(ORG_PARAM, ODS_SYSTEM)
    if not ods:
        raise _invalid_param(ORG_PARAM, ODS_SYSTEM)
    interaction = query.get(IDENTIFIER_PARAM, INTERACTION_SYSTEM)
    if not interaction:
        raise _invalid_param(IDENTIFIER_PARAM, INTERACTION_SYSTEM)
    return _Criteria(
        ods,
        interaction,
        party_key=query.get(IDENTIFIER_PARAM, PARTY_KEY_SYSTEM),
        manufacturer=query.get(MANUFACTURER_PARAM, ODS_SYSTEM),
    )


def _endpoint_criteria(query: _Query) -> _Criteria:
    ods = query.get(ORG_PARAM, ODS_SYSTEM)
    interaction = query.get(IDENTIFIER_PARAM, INTERACTION_SYSTEM)
    party_key = query.get(IDENTIFIER_PARAM, PARTY_KEY_SYSTEM)
    if (ods and not interaction and not party_key) or (
        not ods and (not interaction or not party_key)
    ):
        raise _invalid_endpoint_combination()
    return _Criteria(ods, interaction, party_key)


class _Query:
    """A search's query string, validated the way NHS's server validates it."""

    def __init__(self, items: Sequence[tuple[str, str]], allowed: Sequence[str]) -> None:
        grouped: dict[str, list[str]] = {}
        for key, value in items:
            grouped.setdefault(key, []).append(value)
        for key, values in grouped.items():
            if key not in allowed:
                raise _BadRequest(f"Illegal query parameter '{key}'")
            for value in values:
                if key == ORG_PARAM and not value.startswith(f"{ODS_SYSTEM}|"):
                    raise _invalid_param(ORG_PARAM, ODS_SYSTEM)
                if key == MANUFACTURER_PARAM and not value.startswith(f"{ODS_SYSTEM}|"):
                    raise _invalid_param(MANUFACTURER_PARAM, ODS_SYSTEM)
                if key == IDENTIFIER_PARAM and not (
                    value.startswith(f"{INTERACTION_SYSTEM}|")
                    or value.startswith(f"{PARTY_KEY_SYSTEM}|")
                ):
                    raise _invalid_identifier()
        self._grouped = grouped

    def get(self, param: str, system: str) -> str | None:
        """The last non-blank value of ``param`` with ``system``, stripped."""
        found: str | None = None
        for value in self._grouped.get(param, []):
            head, sep, rest = value.partition("|")
            if sep and head == system and rest.strip():
                found = rest.strip()
        return found

    def page(self) -> int:
        values = self._grouped.get(PAGE_PARAM)
        if not values:
            return 1
        text = values[-1].strip()
        if not (text.isascii() and text.isdigit()) or len(text) > 6 or int(text) < 1:
            raise _BadRequest(
                f"Invalid '{PAGE_PARAM}' query parameter. Should be a positive integer "
                "(at most 999999)"
            )
        return int(text)


class FhirSearch:
    """``/Device``, ``/Endpoint`` and unknown FHIR paths, behind the gateway."""

    def __init__(self, state: _State, guard: GatewayGuard) -> None:
        self.state = state
        self.guard = guard

    async def device(self, request: Request) -> Response:
        return await self._search(request, "Device")

    async def endpoint(self, request: Request) -> Response:
        return await self._search(request, "Endpoint")

    async def _search(self, request: Request, kind: str) -> Response:
        sent_id = request.headers.get("x-correlation-id")
        valid_id = bool(sent_id) and _UUID_RE.fullmatch(sent_id or "") is not None
        correlation_id = sent_id if valid_id and sent_id else str(uuid.uuid4())
        blocked = await self.guard.check(request, correlation_id)
        if blocked is not None:
            return blocked
        gateway = self.state.gateway
        no_cache = request.headers.get("cache-control") == "no-cache"
        cache_key = gateway.cache_key(
            request.method, request.url.path, request.url.query, request.headers.get("accept")
        )
        cached = gateway.lookup(cache_key, no_cache, time.monotonic())
        if cached is not None:
            return Response(
                cached.body,
                status_code=cached.status,
                headers=_tracking_headers(request, correlation_id),
                media_type=cached.media_type,
            )
        fault = self.guard.injected_fault(request, correlation_id)
        if fault is not None:
            return fault
        try:
            if request.method != "GET":
                raise _HttpError(405)
            if sent_id and not valid_id:
                raise _BadRequest(
                    f"Invalid X-Correlation-ID header. Should be an UUIDv4 matching regex "
                    f"'{UUID_PATTERN}'"
                )
            allowed = [ORG_PARAM, IDENTIFIER_PARAM]
            if kind == "Device":
                allowed.append(MANUFACTURER_PARAM)
            if self.state.config.page_size is not None:
                allowed.append(PAGE_PARAM)
            query = _Query(parse_qsl(request.url.query, keep_blank_values=True), allowed)
            criteria = _device_criteria(query) if kind == "Device" else _endpoint_criteria(query)
            page = query.page()
            media_type = _negotiate(request.headers.get("accept"))
            resources = self._devices(criteria) if kind == "Device" else self._endpoints(criteria)
        except _HttpError as error:
            return _error_response(request, error.status, error.diagnostics, correlation_id)
        body = _json_bytes(self._bundle(request, resources, page))
        gateway.populate(cache_key, no_cache, 200, body, media_type, time.monotonic())
        return Response(
            body, headers=_tracking_headers(request, correlation_id), media_type=media_type
        )

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
            chosen = next((i for i in interactions if i.lower() == requested.lower()), None)
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
        sent_id = request.headers.get("x-correlation-id") or ""
        correlation_id = sent_id if _UUID_RE.fullmatch(sent_id) else str(uuid.uuid4())
        if request.url.path.startswith(FHIR_PREFIX):
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
