"""The sandbox as a Starlette application: SDS FHIR API, API-platform gateway, OAuth, controls."""

from __future__ import annotations

import asyncio
import json
import random
import re
import secrets
import string
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, unquote_plus

import jwt
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# One list, shared with the ebXML builder: the interactions SDS answers with Spine's intermediary
# address are exactly those the builder routes as forward-reliable/express.
from .._ebxml import FORWARD_EXPRESS_ACTIONS, FORWARD_RELIABLE_ACTIONS, FORWARDED_SERVICES
from .._models import INTERACTION_SYSTEM, ODS_SYSTEM, PARTY_KEY_SYSTEM
from ._gateway import Gateway, GatewayConfig
from ._mapping import device_resource, endpoint_resources, new_id
from ._records import Directory, Record, load_directory

FHIR_PREFIX = "/spine-directory/"
FHIR_BASE = "/spine-directory/FHIR/R4"
TOKEN_PATH = "/oauth2/token"  # noqa: S105 - a URL path, not a secret
CONTROL_PREFIX = "/_sandbox/"


class _AnyMethodRoute(Route):
    """A route for every HTTP method, TRACE and QUERY included.

    Starlette answers methods outside a route's list with its own plain-text 405; the real API
    answers an OperationOutcome with ``Allow: GET``, which the handlers produce themselves.
    """

    def __init__(self, path: str, endpoint: Any) -> None:
        super().__init__(path, endpoint)
        # No method list: Starlette then neither filters in matches() nor in handle().
        self.methods = None


FHIR_JSON = "application/fhir+json"
PLAIN_JSON = "application/json"
FORM = "application/x-www-form-urlencoded"

SPINE_PROFILE = "https://fhir.nhs.uk/STU3/StructureDefinition/Spine-OperationOutcome-1"
SPINE_CODES = "https://fhir.nhs.uk/STU3/ValueSet/Spine-ErrorOrWarningCode-1"
GATEWAY_CODES = "https://fhir.nhs.uk/R4/CodeSystem/Spine-ErrorOrWarningCode"

# NHS's server checks X-Correlation-ID against exactly this pattern (any UUID version passes).
UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_UUID_RE = re.compile(UUID_PATTERN)

ORG_PARAM = "organization"
IDENTIFIER_PARAM = "identifier"
MANUFACTURER_PARAM = "manufacturing-organization"
PAGE_PARAM = "page"

RELIABLE_INTERMEDIARY = "urn:nhs:names:services:tms:ReliableIntermediary"
EXPRESS_INTERMEDIARY = "urn:nhs:names:services:tms:ExpressIntermediary"

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_LIFETIME_S = 300

# status -> (issue code, Spine code, display, default diagnostics, raised by the API gateway?)
_OUTCOMES: dict[int, tuple[str, str, str, str, bool]] = {
    400: ("required", "BAD_REQUEST", "Bad request", "Bad request", False),
    401: (
        "forbidden",
        "ACCESS_DENIED",
        "Access Denied - Unauthorised",
        "Invalid API Key or access token",
        True,
    ),
    403: (
        "forbidden",
        "ACCESS_DENIED",
        "Access has been denied to process this request",
        "Access denied",
        True,
    ),
    404: ("not-found", "NO_RECORD_FOUND", "No record found", "HTTP endpoint not found", False),
    405: (
        "not-supported",
        "NOT_IMPLEMENTED",
        "Not implemented",
        "HTTP operation not supported",
        False,
    ),
    406: (
        "not-supported",
        "MISSING_OR_INVALID_HEADER",
        "There is a required header missing or invalid",
        "Accept type not supported",
        False,
    ),
    429: (
        "throttled",
        "TOO_MANY_REQUESTS",
        "Too Many Requests",
        "You have exceeded your application's rate limit",
        True,
    ),
    500: (
        "exception",
        "INTERNAL_SERVER_ERROR",
        "Unexpected internal server error",
        "Unexpected internal server error",
        False,
    ),
    502: (
        "exception",
        "INTERNAL_SERVER_ERROR",
        "Unexpected internal server error",
        "Invalid LDAP response received",
        False,
    ),
    503: (
        "exception",
        "INTERNAL_SERVER_ERROR",
        "Unexpected internal server error",
        "Service unavailable",
        False,
    ),
    504: (
        "timeout",
        "INTERNAL_SERVER_ERROR",
        "Unexpected internal server error",
        "LDAP request timed out",
        False,
    ),
}


#: Bounds on injected latency and control bodies, and on how many distinct paths the stats
#: count one by one: a sandbox left running (as a demo or a shared mock) must not be hung for
#: ever by one request, nor fill its memory with whatever callers send.
MAX_LATENCY_MS = 60_000
MAX_CONTROL_BODY = 64 * 1024
MAX_STATS_PATHS = 1000
OTHER_PATHS = "(other paths)"

#: NHS's live gateway values (``proxies/live/apiproxy/policies``).
LIVE_SPIKE_ARREST_PER_S = 40.0
LIVE_QUOTA_PER_MIN = 2400
LIVE_RESPONSE_CACHE_S = 1800.0


@dataclass(frozen=True)
class SandboxConfig:
    """How a sandbox behaves. Every field has a default matching NHS's public sandbox."""

    data_dir: Path | None = None
    spine_core_ods: str = "YES"
    latency_ms: float = 0
    error_rate: float = 0
    error_status: int = 503
    #: The API gateway's policies (see ``_gateway.py``); ``None`` turns one off.
    #: ``SandboxConfig.gateway()`` gives NHS's live values (40/s, 2,400/min, 1,800 s).
    spike_arrest_per_s: float | None = None
    quota_per_min: int | None = None
    response_cache_s: float | None = None
    page_size: int | None = None
    api_key: str | None = None
    jwks: dict[str, Any] | None = None
    synthetic: int = 0
    token_ttl_s: int = 599
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.latency_ms <= MAX_LATENCY_MS:
            raise ValueError(f"latency_ms must be between 0 and {MAX_LATENCY_MS}")
        if not 0 <= self.error_rate <= 1:
            raise ValueError("error_rate must be between 0 and 1")
        if not 400 <= self.error_status <= 599:
            raise ValueError("error_status must be an HTTP error status (400-599)")
        self.gateway_config()  # validates the gateway's values
        if self.page_size is not None and self.page_size < 1:
            raise ValueError("page_size must be at least 1")
        if self.synthetic < 0:
            raise ValueError("synthetic must not be negative")
        if self.token_ttl_s < 1:
            raise ValueError("token_ttl_s must be at least 1")

    def gateway_config(self) -> GatewayConfig:
        return GatewayConfig(self.spike_arrest_per_s, self.quota_per_min, self.response_cache_s)

    @classmethod
    def gateway(cls, **fields: Any) -> SandboxConfig:
        """A sandbox behind a gateway like NHS's live one: spike arrest at 40/s (one request
        per 25 ms), 2,400 requests per calendar minute, a 1,800 s response cache."""
        defaults: dict[str, Any] = {
            "spike_arrest_per_s": LIVE_SPIKE_ARREST_PER_S,
            "quota_per_min": LIVE_QUOTA_PER_MIN,
            "response_cache_s": LIVE_RESPONSE_CACHE_S,
        }
        return cls(**{**defaults, **fields})


@dataclass
class _Faults:
    latency_ms: float
    error_rate: float
    error_status: int
    outage: bool = False
    retry_after: int | None = None

    @classmethod
    def from_config(cls, config: SandboxConfig) -> _Faults:
        return cls(config.latency_ms, config.error_rate, config.error_status)


class _HttpError(Exception):
    """Ends a FHIR request with an OperationOutcome."""

    def __init__(self, status: int, diagnostics: str | None = None) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.diagnostics = diagnostics


class _BadRequest(_HttpError):
    def __init__(self, message: str) -> None:
        # NHS's server puts str(tornado.web.HTTPError) in diagnostics, hence the prefix.
        super().__init__(400, f"HTTP 400: Bad Request ({message})")


class _TokenError(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


@dataclass
class _State:
    config: SandboxConfig
    directory: Directory
    keys: dict[str, jwt.PyJWK]
    intermediaries: dict[str, tuple[str | None, str | None]]
    faults: _Faults
    rng: random.Random
    gateway: Gateway
    requests: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    tokens: dict[str, float] = field(default_factory=dict)
    seen_jti: dict[str, float] = field(default_factory=dict)
    message_counter: int = 0

    def reset(self) -> None:
        self.faults = _Faults.from_config(self.config)
        self.rng = random.Random(self.config.seed)  # noqa: S311 - repeatable faults, not crypto
        self.requests.clear()
        self.statuses.clear()
        self.gateway.reset()


# --------------------------------------------------------------------------- responses


def _json_bytes(body: object) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


def operation_outcome(status: int, diagnostics: str | None, correlation_id: str) -> dict[str, Any]:
    """The OperationOutcome NHS's server (or, for 401/403/429, the API gateway) sends."""
    issue_code, code, display, default, gateway = _OUTCOMES.get(
        status,
        ("exception", "BAD_REQUEST", "Bad request", "Bad request", False)
        if status < 500
        else (
            "exception",
            "INTERNAL_SERVER_ERROR",
            "Unexpected internal server error",
            "Unexpected internal server error",
            False,
        ),
    )
    outcome: dict[str, Any] = {"resourceType": "OperationOutcome", "id": correlation_id}
    if not gateway:
        outcome["meta"] = {"profile": [SPINE_PROFILE]}
    outcome["issue"] = [
        {
            "severity": "error",
            "code": issue_code,
            "details": {
                "coding": [
                    {
                        "system": GATEWAY_CODES if gateway else SPINE_CODES,
                        "version": "1",
                        "code": code,
                        "display": display,
                    }
                ]
            },
            "diagnostics": diagnostics if diagnostics is not None else default,
        }
    ]
    return outcome


def _tracking_headers(request: Request, correlation_id: str) -> dict[str, str]:
    headers = {"X-Correlation-ID": correlation_id}
    request_id = request.headers.get("x-request-id")
    if request_id:
        headers["X-Request-ID"] = request_id
    return headers


def _error_response(
    request: Request,
    status: int,
    diagnostics: str | None,
    correlation_id: str,
    extra_headers: Mapping[str, str] | None = None,
) -> Response:
    headers = _tracking_headers(request, correlation_id)
    if status == 405:
        headers["Allow"] = "GET"
    if extra_headers:
        headers.update(extra_headers)
    return Response(
        _json_bytes(operation_outcome(status, diagnostics, correlation_id)),
        status_code=status,
        headers=headers,
        media_type=FHIR_JSON,
    )


def _control_json(body: object, status: int = 200) -> Response:
    return Response(_json_bytes(body), status_code=status, media_type=PLAIN_JSON)


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


# --------------------------------------------------------------------------- the app


class _Sandbox:
    def __init__(self, config: SandboxConfig) -> None:
        directory = load_directory(config.data_dir, config.synthetic, config.seed)
        self.state = _State(
            config=config,
            directory=directory,
            keys=_load_keys(config.jwks),
            intermediaries={
                urn: _intermediary(directory, config.spine_core_ods, urn)
                for urn in (RELIABLE_INTERMEDIARY, EXPRESS_INTERMEDIARY)
            },
            faults=_Faults.from_config(config),
            rng=random.Random(config.seed),  # noqa: S311 - repeatable faults, not crypto
            gateway=Gateway(config.gateway_config()),
        )

    # ----------------------------------------------------------------- API gateway

    async def _gateway(self, request: Request, correlation_id: str) -> Response | None:
        """What the API platform does before a request reaches SDS; a response ends it there.

        In the live proxy's order: key check, quota, spike arrest (see ``_gateway.py``); the
        response cache and injected faults come after (``_search``). Limits are judged at
        arrival, before the injected latency, which stands for the network round trip.
        """
        state = self.state
        arrival = time.monotonic()
        blocked: Response | None = None
        if not self._authorised(request):
            blocked = _error_response(request, 401, _auth_diagnostics(request), correlation_id)
        else:
            fault = state.gateway.limit(arrival, time.time())
            if fault is not None:
                blocked = Response(_json_bytes(fault), status_code=429, media_type=PLAIN_JSON)
        if state.faults.latency_ms > 0:
            await asyncio.sleep(state.faults.latency_ms / 1000)
        return blocked

    def _injected_fault(self, request: Request, correlation_id: str) -> Response | None:
        faults = self.state.faults
        if faults.outage or (faults.error_rate > 0 and self.state.rng.random() < faults.error_rate):
            extra = {}
            if faults.retry_after is not None:
                extra["Retry-After"] = str(faults.retry_after)
            return _error_response(request, faults.error_status, None, correlation_id, extra)
        return None

    def _authorised(self, request: Request) -> bool:
        config = self.state.config
        if config.api_key is None:
            return True
        if request.headers.get("apikey") == config.api_key:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        expires = self.state.tokens.get(token.strip())
        if expires is None:
            return False
        if expires <= time.time():
            del self.state.tokens[token.strip()]
            return False
        return True

    # ----------------------------------------------------------------- FHIR

    async def device(self, request: Request) -> Response:
        return await self._search(request, "Device")

    async def endpoint(self, request: Request) -> Response:
        return await self._search(request, "Endpoint")

    async def _search(self, request: Request, kind: str) -> Response:
        sent_id = request.headers.get("x-correlation-id")
        valid_id = bool(sent_id) and _UUID_RE.fullmatch(sent_id or "") is not None
        correlation_id = sent_id if valid_id and sent_id else str(uuid.uuid4())
        blocked = await self._gateway(request, correlation_id)
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
        fault = self._injected_fault(request, correlation_id)
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
            blocked = await self._gateway(request, correlation_id) or self._injected_fault(
                request, correlation_id
            )
            if blocked is not None:
                return blocked
        return _error_response(request, 404, None, correlation_id)

    # ----------------------------------------------------------------- OAuth

    async def token(self, request: Request) -> Response:
        try:
            if request.method != "POST":
                raise _TokenError(405, "invalid_request", "Method not allowed - use POST")
            content_type = request.headers.get("content-type", "")
            if content_type.split(";", 1)[0].strip().lower() != FORM:
                raise _TokenError(
                    415, "invalid_request", f"Unsupported Content-Type - must be '{FORM}'"
                )
            raw = await _bounded_body(request, MAX_CONTROL_BODY)
            if raw is None:
                raise _TokenError(413, "invalid_request", "Request body too large")
            form = dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
            body = self._issue_token(request, form)
        except _TokenError as error:
            return Response(
                _json_bytes(
                    {
                        "error": error.error,
                        "error_description": error.description,
                        "message_id": self._message_id(),
                    }
                ),
                status_code=error.status,
                headers={"Allow": "POST"} if error.status == 405 else None,
                media_type=PLAIN_JSON,
            )
        return Response(
            _json_bytes(body),
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
            media_type=PLAIN_JSON,
        )

    def _message_id(self) -> str:
        self.state.message_counter += 1
        return f"rrt-{secrets.randbelow(10**19):019d}-a-sbx-{self.state.message_counter}"

    def _issue_token(self, request: Request, form: Mapping[str, str]) -> dict[str, str]:
        state = self.state
        grant_type = form.get("grant_type")
        if not grant_type:
            raise _TokenError(400, "invalid_request", "grant_type is missing")
        if grant_type != "client_credentials":
            raise _TokenError(400, "unsupported_grant_type", "grant_type is invalid")
        if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
            # The platform's message really does lack the closing quote.
            raise _TokenError(
                400,
                "invalid_request",
                f"Missing or invalid client_assertion_type - must be '{CLIENT_ASSERTION_TYPE}",
            )
        assertion = form.get("client_assertion")
        if not assertion:
            raise _TokenError(400, "invalid_request", "Missing client_assertion")
        if not state.keys:
            raise _TokenError(
                401,
                "invalid_client",
                "You need to register a public key to use this authentication method",
            )
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            raise _TokenError(400, "invalid_request", "Malformed JWT in client_assertion") from None
        if header.get("alg") != "RS512":
            raise _TokenError(
                400,
                "invalid_request",
                "Invalid 'alg' header in JWT - unsupported JWT algorithm - must be 'RS512'",
            )
        kid = header.get("kid")
        if not kid:
            raise _TokenError(400, "invalid_request", "Missing 'kid' header in JWT")
        if "typ" in header and str(header["typ"]).upper() != "JWT":
            raise _TokenError(400, "invalid_request", "Invalid 'typ' header in JWT - must be 'JWT'")
        key = state.keys.get(str(kid))
        if key is None:
            raise _TokenError(
                401, "invalid_request", "Invalid 'kid' header in JWT - no matching public key"
            )
        try:
            payload = jwt.PyJWS().decode(assertion, key=key.key, algorithms=["RS512"])
        except jwt.InvalidSignatureError:
            raise _TokenError(401, "invalid_request", "JWT signature verification failed") from None
        except jwt.PyJWTError:
            raise _TokenError(400, "invalid_request", "Malformed JWT in client_assertion") from None
        claims = _claims(payload)
        self._check_claims(request, claims)
        return self._new_token()

    def _check_claims(self, request: Request, claims: Mapping[str, Any]) -> None:
        state = self.state
        iss, sub = claims.get("iss"), claims.get("sub")
        if not iss or not isinstance(iss, str) or iss != sub:
            raise _TokenError(
                400, "invalid_request", "Missing or non-matching iss/sub claims in JWT"
            )
        if state.config.api_key is not None and iss != state.config.api_key:
            raise _TokenError(401, "invalid_request", "Invalid iss/sub claims in JWT")
        jti = claims.get("jti")
        if not jti:
            raise _TokenError(400, "invalid_request", "Missing jti claim in JWT")
        # The audience is the token URL exactly as this client reached it.
        token_url = f"{request.url.scheme}://{request.url.netloc}{TOKEN_PATH}"
        if claims.get("aud") != token_url:
            raise _TokenError(401, "invalid_request", "Missing or invalid aud claim in JWT")
        exp = claims.get("exp")
        if exp is None:
            raise _TokenError(400, "invalid_request", "Missing exp claim in JWT")
        now = time.time()
        if exp < now:
            raise _TokenError(400, "invalid_request", "Invalid exp claim in JWT - JWT has expired")
        if exp > now + MAX_ASSERTION_LIFETIME_S:
            raise _TokenError(
                400, "invalid_request", "Invalid exp claim in JWT - more than 5 minutes in future"
            )
        for seen, seen_exp in list(state.seen_jti.items()):
            if seen_exp < now:
                del state.seen_jti[seen]
        if jti in state.seen_jti:
            raise _TokenError(400, "invalid_request", "Non-unique jti claim in JWT")
        # An assertion reused after its exp fails on exp anyway, so jtis can be forgotten then.
        state.seen_jti[jti] = float(exp)

    def _new_token(self) -> dict[str, str]:
        ttl = self.state.config.token_ttl_s
        alphabet = string.ascii_letters + string.digits
        token = "".join(secrets.choice(alphabet) for _ in range(28))
        issued = time.time()
        tokens = self.state.tokens
        for expired in [t for t, expires in tokens.items() if expires <= issued]:
            del tokens[expired]
        tokens[token] = issued + ttl
        return {
            "access_token": token,
            "expires_in": str(ttl),
            "token_type": "Bearer",
            "issued_at": str(int(issued * 1000)),
        }

    # ----------------------------------------------------------------- controls

    async def stats(self, request: Request) -> Response:
        if request.method != "GET":
            return _control_json({"error": "use GET"}, 405)
        state = self.state
        return _control_json(
            {
                "requests": dict(state.requests),
                "statuses": dict(state.statuses),
                "gateway": state.gateway.stats(),
            }
        )

    async def faults(self, request: Request) -> Response:
        if request.method == "GET":
            return _control_json(asdict(self.state.faults))
        if request.method != "POST":
            return _control_json({"error": "use GET or POST"}, 405)
        raw = await _bounded_body(request, MAX_CONTROL_BODY)
        if raw is None:
            return _control_json({"error": f"body larger than {MAX_CONTROL_BODY} bytes"}, 413)
        try:
            body = json.loads(raw or b"null")
        except (ValueError, RecursionError):
            return _control_json({"error": "body must be a JSON object"}, 400)
        try:
            updated = _updated_faults(self.state.faults, body)
        except ValueError as error:
            return _control_json({"error": str(error)}, 400)
        self.state.faults = updated
        return _control_json(asdict(updated))

    async def reset(self, request: Request) -> Response:
        if request.method != "POST":
            return _control_json({"error": "use POST"}, 405)
        self.state.reset()
        return _control_json({"reset": True, "faults": asdict(self.state.faults)})


async def _bounded_body(request: Request, limit: int) -> bytes | None:
    """The request body, or ``None`` when it is larger than ``limit`` (read no further)."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and (len(declared) > 12 or int(declared) > limit):
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _page_url(request: Request, base: str, page: int) -> str:
    kept = [
        part
        for part in request.url.query.split("&")
        if part and unquote_plus(part.partition("=")[0]) != PAGE_PARAM
    ]
    kept.append(f"{PAGE_PARAM}={page}")
    return f"{base}?{'&'.join(kept)}"


def _auth_diagnostics(request: Request) -> str:
    if request.headers.get("authorization"):
        return "Invalid access token"
    if request.headers.get("apikey"):
        return "Invalid API Key"
    return "Missing API Key or access token"


def _claims(payload: bytes) -> dict[str, Any]:
    try:
        claims = json.loads(payload)
    except ValueError:
        claims = None
    # The platform reports wrongly typed claims as a decoding failure, not as a bad claim.
    if (
        not isinstance(claims, dict)
        or ("jti" in claims and not isinstance(claims["jti"], str))
        or (
            "exp" in claims
            and (not isinstance(claims["exp"], int) or isinstance(claims["exp"], bool))
        )
    ):
        raise _TokenError(400, "invalid_request", "Failed to decode JWT")
    return claims


def _load_keys(jwks: Mapping[str, Any] | None) -> dict[str, jwt.PyJWK]:
    if jwks is None:
        return {}
    try:
        keyset = jwt.PyJWKSet.from_dict(dict(jwks))
    except jwt.PyJWTError as error:
        raise ValueError(f"unusable jwks: {error}") from error
    keys = {key.key_id: key for key in keyset.keys if key.key_id}
    if not keys:
        raise ValueError("jwks holds no key with a 'kid'")
    return keys


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


def _updated_faults(current: _Faults, body: object) -> _Faults:
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    values = asdict(current)
    for key, value in body.items():
        if key not in values:
            raise ValueError(f"unknown fault setting '{key}'")
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key == "latency_ms" and not (number and 0 <= value <= MAX_LATENCY_MS):
            raise ValueError(f"latency_ms must be a number from 0 to {MAX_LATENCY_MS}")
        if key == "error_rate" and not (number and 0 <= value <= 1):
            raise ValueError("error_rate must be a number between 0 and 1")
        if key == "error_status" and not (
            isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599
        ):
            raise ValueError("error_status must be an integer between 400 and 599")
        if key == "outage" and not isinstance(value, bool):
            raise ValueError("outage must be true or false")
        if (
            key == "retry_after"
            and value is not None
            and not (
                isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 86_400
            )
        ):
            raise ValueError("retry_after must be an integer from 0 to 86400, or null")
        values[key] = value
    return _Faults(**values)


class _StatsMiddleware:
    """Counts every request outside the control endpoints by path and response status."""

    def __init__(self, app: ASGIApp, state: _State) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(CONTROL_PREFIX):
            await self.app(scope, receive, send)
            return
        state = self.state

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                path = scope["path"]
                if path not in state.requests and len(state.requests) >= MAX_STATS_PATHS:
                    path = OTHER_PATHS  # bounded: one entry per unique path would grow for ever
                state.requests[path] += 1
                state.statuses[str(message["status"])] += 1
            await send(message)

        await self.app(scope, receive, counting_send)


async def _unexpected(request: Request, error: Exception) -> Response:
    """A bug still answers like NHS's server does: a 500 OperationOutcome, not plain text."""
    return _error_response(request, 500, str(error) or type(error).__name__, str(uuid.uuid4()))


def create_app(config: SandboxConfig | None = None) -> Starlette:
    """A Starlette app serving the SDS FHIR API, the token endpoint and the sandbox controls.

    The directory is loaded and indexed here, once; requests never scan it.
    """
    sandbox = _Sandbox(config or SandboxConfig())
    routes = [
        _AnyMethodRoute(f"{FHIR_BASE}/Device", sandbox.device),
        _AnyMethodRoute(f"{FHIR_BASE}/Endpoint", sandbox.endpoint),
        _AnyMethodRoute(TOKEN_PATH, sandbox.token),
        _AnyMethodRoute(f"{CONTROL_PREFIX}stats", sandbox.stats),
        _AnyMethodRoute(f"{CONTROL_PREFIX}faults", sandbox.faults),
        _AnyMethodRoute(f"{CONTROL_PREFIX}reset", sandbox.reset),
        _AnyMethodRoute("/{path:path}", sandbox.not_found),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(_StatsMiddleware, state=sandbox.state)],
        exception_handlers={Exception: _unexpected},
    )
    app.state.sandbox = sandbox
    return app
