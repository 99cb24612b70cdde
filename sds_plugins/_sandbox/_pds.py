"""PDS FHIR API (``GET /Patient/{id}``), from the sandbox's own patients.

The patients are invented (numbers in the ``999`` test range, valid check digits) and
registered at the reference data's practices, one per case a router must handle: registered
(GP Connect's B82617, MESH's X26, Spine's YES), superseded by another record, invalidated,
restricted, registration ended, no practice. Any other valid number is unknown; an invalid one
is refused as PDS refuses it. ``X-Request-ID`` is required (a UUID) and echoed; with
``pds_rate_per_s`` set, requests closer together than the rate allows get PDS's 429.

Started with credentials (``api_key`` or ``jwks``), PDS takes a bearer token from the sandbox's
own ``/oauth2/token`` and nothing else, checked first: the live proxy's target flow opens with
``OauthV2.VerifyAccessToken`` (``proxies/live/apiproxy/targets/ig3.xml`` of
``NHSDigital/personal-demographics-service-api``), and a missing or unknown token is a 401
OperationOutcome (``ACCESS_DENIED``, ``AssignMessage.Errors.OAuthPolicyResponse.xml``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ._common import _UUID_RE, FHIR_JSON, _json_bytes
from ._gateway import GatewayGuard
from ._state import _State

__all__ = ["PDS_BASE", "SANDBOX_PATIENTS", "PdsEndpoint"]

PDS_BASE = "/personal-demographics/FHIR/R4"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
_CODES = "https://fhir.nhs.uk/R4/CodeSystem/Spine-ErrorOrWarningCode"

#: The sandbox's patients by case: the NHS number to ask for.
SANDBOX_PATIENTS: dict[str, str] = {
    "gpconnect": "9990001006",  # registered at B82617 (GP Connect's reference practice)
    "mesh": "9990001014",  # registered at X26 (MESH's TEST_WORKFLOW mailbox)
    "spine": "9990001022",  # registered at YES (Spine's own PSIS system)
    "superseded": "9990001030",  # merged into the "gpconnect" record
    "invalidated": "9990001049",
    "restricted": "9990001057",
    "ended": "9990001065",  # its registration at B82617 ended in 2024
    "unregistered": "9990001073",  # no registered practice at all
    "unknown": "9990001081",  # valid, but PDS has no such patient
}

_REGISTRATIONS: dict[str, tuple[str, str, str | None]] = {
    # number: (practice, start, end)
    SANDBOX_PATIENTS["gpconnect"]: ("B82617", "2019-04-01", None),
    SANDBOX_PATIENTS["mesh"]: ("X26", "2021-09-13", None),
    SANDBOX_PATIENTS["spine"]: ("YES", "2015-01-20", None),
    SANDBOX_PATIENTS["ended"]: ("B82617", "2012-05-01", "2024-02-29"),
}
_SUPERSEDED = {SANDBOX_PATIENTS["superseded"]: SANDBOX_PATIENTS["gpconnect"]}
_NAMES = ["ALDER", "BIRCH", "CEDAR", "DAMSON", "ELDER", "FIR", "GORSE", "HAZEL", "IVY"]


def _valid(number: str) -> bool:
    if len(number) != 10 or not number.isascii() or not number.isdigit():
        return False
    total = sum(
        int(digit) * weight for digit, weight in zip(number[:9], range(10, 1, -1), strict=True)
    )
    check = (11 - total % 11) % 11
    return check != 10 and check == int(number[9])


def _patient(number: str) -> dict[str, Any] | None:
    """The sandbox's record for ``number`` (the surviving record for a superseded one)."""
    number = _SUPERSEDED.get(number, number)
    known = set(SANDBOX_PATIENTS.values()) - {
        SANDBOX_PATIENTS["unknown"],
        SANDBOX_PATIENTS["invalidated"],
        SANDBOX_PATIENTS["superseded"],
    }
    if number not in known:
        return None
    index = list(SANDBOX_PATIENTS.values()).index(number)
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": number,
        "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": number}],
        "meta": {
            "versionId": "2",
            "security": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                    "code": "U",
                    "display": "unrestricted",
                }
            ],
        },
        "name": [{"use": "usual", "family": _NAMES[index], "given": ["SAM"]}],
        "birthDate": f"19{50 + index}-0{1 + index % 9}-1{index % 9}",
    }
    if number == SANDBOX_PATIENTS["restricted"]:
        # What PDS does for a restricted record: no practice, address or telecom, security R.
        resource["meta"]["security"][0].update(code="R", display="restricted")
        return resource
    registration = _REGISTRATIONS.get(number)
    if registration is not None:
        practice, start, end = registration
        period = {"start": start} if end is None else {"start": start, "end": end}
        resource["generalPractitioner"] = [
            {
                "id": f"{index:08X}",
                "type": "Organization",
                "identifier": {"system": ODS_SYSTEM, "value": practice, "period": period},
            }
        ]
        resource["address"] = [{"use": "home", "line": [f"{index + 1} SANDBOX ROAD"]}]
    return resource


def _outcome(status: int, code: str, display: str, severity: str = "error") -> dict[str, Any]:
    if status == 401:
        # The proxy's own answer: "Access Denied - Unauthorised", the reason as diagnostics.
        return {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "error",
                    "code": "forbidden",
                    "details": {
                        "coding": [
                            {
                                "system": _CODES,
                                "version": "1",
                                "code": code,
                                "display": "Access Denied - Unauthorised",
                            }
                        ]
                    },
                    "diagnostics": display,
                }
            ],
        }
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": severity,
                "code": {400: "value", 401: "forbidden", 404: "not-found"}.get(status, "throttled"),
                "details": {
                    "coding": [{"system": _CODES, "version": "1", "code": code, "display": display}]
                },
            }
        ],
    }


class PdsEndpoint:
    """``GET /personal-demographics/FHIR/R4/Patient/{id}``."""

    def __init__(self, state: _State, guard: GatewayGuard) -> None:
        self.state = state
        self.guard = guard
        self._last = 0.0  # when the last request was accepted (PDS's smoothed limit)

    async def patient(self, request: Request) -> Response:
        request_id = request.headers.get("x-request-id")
        correlation_id = request.headers.get("x-correlation-id") or str(uuid.uuid4())
        headers = {"X-Correlation-ID": correlation_id[:100]}
        if request_id:
            headers["X-Request-ID"] = request_id[:100]
        refusal = self._token_refusal(request)
        if refusal is not None:
            return self._answer(401, _outcome(401, "ACCESS_DENIED", refusal), headers)
        if request.method != "GET":
            return self._answer(
                405, _outcome(405, "METHOD_NOT_ALLOWED", "Method not allowed"), headers
            )
        if not request_id:
            return self._answer(
                400,
                _outcome(400, "MISSING_VALUE", "Required header X-Request-ID is missing"),
                headers,
            )
        if not _UUID_RE.fullmatch(request_id):
            return self._answer(
                400, _outcome(400, "INVALID_VALUE", "X-Request-ID is not a UUID"), headers
            )
        if self.state.faults.latency_ms > 0:  # the same network round trip as SDS's
            await asyncio.sleep(self.state.faults.latency_ms / 1000)
        fault = self.guard.injected_fault(request, correlation_id)
        if fault is not None:
            return fault
        rate = self.state.config.pds_rate_per_s
        now = time.monotonic()
        if rate is not None and now - self._last < 1.0 / rate:
            return self._answer(
                429,
                _outcome(
                    429, "TOO_MANY_REQUESTS", "You have exceeded your application's rate limit"
                ),
                headers,
            )
        self._last = now
        number = request.path_params["id"]
        if not _valid(number):
            return self._answer(
                400, _outcome(400, "INVALID_RESOURCE_ID", "Resource Id is invalid"), headers
            )
        if number == SANDBOX_PATIENTS["invalidated"]:
            return self._answer(
                404,
                _outcome(
                    404,
                    "INVALIDATED_RESOURCE",
                    "Resource that has been marked as invalid was "
                    "requested - invalid resources cannot be retrieved",
                ),
                headers,
            )
        resource = _patient(number)
        if resource is None:
            return self._answer(
                404,
                _outcome(404, "RESOURCE_NOT_FOUND", "Resource not found", severity="information"),
                headers,
            )
        headers["ETag"] = f'W/"{resource["meta"]["versionId"]}"'
        return self._answer(200, resource, headers)

    def _token_refusal(self, request: Request) -> str | None:
        """Why the request's bearer token is refused (``None``: accepted, or none needed)."""
        config = self.state.config
        if config.api_key is None and config.jwks is None:
            return None  # an open sandbox, as NHS's public one
        authorization = request.headers.get("authorization")
        if authorization is None:
            return "Missing Authorization header"
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return f"Invalid token type '{scheme[:20]}', must be 'Bearer'"
        expires = self.state.tokens.get(token.strip())
        if expires is None or expires <= time.time():
            return "Invalid Access Token"
        return None

    @staticmethod
    def _answer(status: int, body: dict[str, Any], headers: dict[str, str]) -> Response:
        return Response(
            _json_bytes(body), status_code=status, headers=headers, media_type=FHIR_JSON
        )
