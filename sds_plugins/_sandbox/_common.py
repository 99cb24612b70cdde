"""What every part of the sandbox shares: paths, media types, Spine's error documents."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

FHIR_PREFIX = "/spine-directory/"
FHIR_BASE = "/spine-directory/FHIR/R4"
PDS_PREFIX = "/personal-demographics/"
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

SPINE_CODES = "https://fhir.nhs.uk/STU3/ValueSet/Spine-ErrorOrWarningCode-1"
GATEWAY_CODES = "https://fhir.nhs.uk/R4/CodeSystem/Spine-ErrorOrWarningCode"

# NHS's server checks X-Correlation-ID against exactly this pattern (any UUID version passes):
# NHSDigital/spine-directory-service-api, sds/request/tracking_ids_headers_reader.py.
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
        "Invalid API Key",
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


# --------------------------------------------------------------------------- responses


def spine_uuid() -> str:
    """A fresh id as NHS's SDS server makes them: ``str(uuid4()).upper()``.

    ``sds/utilities/message_utilities.py`` ``get_uuid()``, used for generated correlation ids,
    bundle ids and resource ids (``sds/request/fhir_json_mapper.py``).
    """
    return str(uuid.uuid4()).upper()


def _json_bytes(body: object) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


def server_json(body: object, indent: int) -> bytes:
    """``body`` serialised as NHS's server writes it: ``json.dumps(..., indent=...)`` (ASCII).

    Bundles use ``indent=2`` (the handlers), OperationOutcomes ``indent=4``
    (``sds/request/error_handler.py`` ``OperationOutcome.to_json``).
    """
    return json.dumps(body, indent=indent).encode("utf-8")


def etag(body: bytes) -> str:
    """Tornado's default ``Etag`` for a 200 GET: the SHA-1 of the body, quoted.

    ``tornado/web.py`` ``RequestHandler.compute_etag`` (tornado 6.4.2, the version in the
    server's ``Pipfile.lock``).
    """
    return '"' + hashlib.sha1(body, usedforsecurity=False).hexdigest() + '"'


_ETAGS_RE = re.compile(r'\*|(?:W/)?"[^"]*"')


def etag_matches(if_none_match: str | None, current: str) -> bool:
    """Whether Tornado answers 304: ``If-None-Match`` is ``*`` or names ``current`` (weakly).

    ``tornado/web.py`` ``RequestHandler.check_etag_header``.
    """
    sent = _ETAGS_RE.findall(if_none_match or "")
    if not sent:
        return False
    if sent[0] == "*":
        return True
    return any(tag.removeprefix("W/") == current.removeprefix("W/") for tag in sent)


def joined_header(request: Request, name: str) -> str | None:
    """A request header as Tornado reads it: repeated headers joined with ``,``.

    ``tornado/httputil.py`` ``HTTPHeaders.add``; ``None`` when the header is absent.
    """
    values = request.headers.getlist(name)
    return ",".join(values) if values else None


def operation_outcome(status: int, diagnostics: str | None, correlation_id: str) -> dict[str, Any]:
    """The OperationOutcome NHS's server (or, for 401/403/429, the API gateway) sends.

    The server's (``sds/request/error_handler.py``): ``resourceType``, ``id`` (the correlation
    id) and one issue whose coding has ``system``, ``code`` and ``display`` only, with no
    ``meta`` and no coding ``version``. The gateway's are in the platform's R4 code system
    with ``version: "1"``, the form of its ``AssignMessage.CatchallErrorMessage``.
    """
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
    coding: dict[str, str] = {"system": GATEWAY_CODES if gateway else SPINE_CODES}
    if gateway:
        coding["version"] = "1"
    coding.update(code=code, display=display)
    return {
        "resourceType": "OperationOutcome",
        "id": correlation_id,
        "issue": [
            {
                "severity": "error",
                "code": issue_code,
                "details": {"coding": [coding]},
                "diagnostics": diagnostics if diagnostics is not None else default,
            }
        ],
    }


def _tracking_headers(request: Request, correlation_id: str) -> dict[str, str]:
    """``X-Correlation-ID``, and for PDS the ``X-Request-ID`` sent.

    NHS's SDS server reads ``X-Request-ID`` but never sets it on a response
    (``sds/request/tracking_ids_headers_reader.py``: it only goes to the CPM call); PDS echoes it.
    """
    headers = {"X-Correlation-ID": correlation_id}
    request_id = request.headers.get("x-request-id")
    if request_id and request.url.path.startswith(PDS_PREFIX):
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
    outcome = operation_outcome(status, diagnostics, correlation_id)
    gateway = _OUTCOMES.get(status, ("", "", "", "", False))[4]
    return Response(
        _json_bytes(outcome) if gateway else server_json(outcome, indent=4),
        status_code=status,
        headers=headers,
        media_type=FHIR_JSON,
    )


def _control_json(body: object, status: int = 200) -> Response:
    return Response(_json_bytes(body), status_code=status, media_type=PLAIN_JSON)


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
