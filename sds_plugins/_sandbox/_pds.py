"""PDS FHIR API (``GET /Patient/{id}``), from the sandbox's own patients.

The patients are invented (numbers in the ``999`` test range, valid check digits) and
registered at the reference data's practices, one per case a router must handle: registered
(GP Connect's B82617, MESH's X26, Spine's YES), superseded by another record, invalidated,
restricted, registration ended, no practice; the life events PDS reports (deceased with a formal
or an informal death notice, a death notice removed, removed from registration on transfer to
Scotland); and registrations whose dates move with the calendar (ending today, starting tomorrow,
ended yesterday, all in Europe/London). Any other valid number is unknown; an invalid one is
refused as PDS refuses it.

The checks run in the live platform's order (``NHSDigital/personal-demographics-service-api``:
``proxies/live/apiproxy/targets/ig3.xml``, then Spine behind it):

1. the access token, when the sandbox was started with credentials (``api_key`` or ``jwks``):
   a bearer token from the sandbox's own ``/oauth2/token`` and nothing else
   (``OauthV2.VerifyAccessToken`` opens the target's PreFlow); 401 ``ACCESS_DENIED``
   (``AssignMessage.Errors.OAuthPolicyResponse.xml``, reasons from
   ``resources/jsc/UpdateInvalidAccessTokenFaultString.js``);
2. the application's rate limit, with ``pds_rate_per_s`` set (``FlowCallout.ApplyRateLimiting``;
   smoothed, like a spike arrest): 429 ``TOO_MANY_REQUESTS``
   (``AssignMessage.Errors.AppSpikeArrestExceeded.xml``);
3. an ``X-Request-ID`` that is sent but not a UUID: 400 ``INVALID_VALUE``
   (``AssignMessage.Errors.InvalidRequestID.xml``);
4. methods an application-restricted token may not use (the target's ``application_restricted``
   flow): PATCH and POST, and here every other method but GET, get 403 ``INVALID_METHOD``
   (``RaiseFault.PatchMethodNotAllowedAppRestricted.xml``, ``RaiseFault.PostMethodNotAllowed.xml``);
5. injected faults (the service behind the proxy failing), after the injected latency;
6. Spine's own: a missing ``X-Request-ID`` (400 ``MISSING_VALUE``), then the NHS number.

The proxy's bodies are its ``AssignMessage.Errors.CatchAllMessage`` form; Spine's are those of
NHS's Karate stubs (``karate-tests/src/test/java/mocks/stubs/errorResponses/``, kept in
``tests/reference/pds/``). ``X-Request-ID`` and ``X-Correlation-ID`` are mirrored only when sent
and not empty (``AssignMessage.Mirror.*``, condition ``~~ ".+"``), on errors too.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from starlette.requests import Request
from starlette.responses import Response

from ._common import _UUID_RE, FHIR_JSON, _json_bytes
from ._gateway import GatewayGuard
from ._state import _State

__all__ = ["PDS_BASE", "SANDBOX_PATIENTS", "PdsEndpoint", "london_today"]

PDS_BASE = "/personal-demographics/FHIR/R4"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
_CODES = "https://fhir.nhs.uk/R4/CodeSystem/Spine-ErrorOrWarningCode"

# The life-event extensions, as PDS's OAS defines them (specification/components/schemas/
# extensions/DeathNotificationStatus.yaml, RemovalFromRegistration.yaml and codeable/).
DEATH_NOTIFICATION_URL = (
    "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-DeathNotificationStatus"
)
DEATH_NOTIFICATION_SYSTEM = "https://fhir.hl7.org.uk/CodeSystem/UKCore-DeathNotificationStatus"
REMOVAL_URL = "https://fhir.nhs.uk/StructureDefinition/Extension-PDS-RemovalFromRegistration"
REMOVAL_SYSTEM = "https://fhir.nhs.uk/CodeSystem/PDS-RemovalReasonExitCode"
_DEATH_NOTIFICATION_DISPLAYS = {
    "1": "Informal - death notice received via an update from a local NHS Organisation such as "
    "GP or Trust",
    "2": "Formal - death notice received from Registrar of Deaths",
    "U": "Removed",
}
_REMOVAL_DISPLAYS = {
    "DEA": "Death",
    "EMB": "Embarkation",
    "SCT": "Transferred to Scotland",
    "NIT": "Transferred to Northern Ireland",
    "TRA": "Temporary resident not returned",
    "ORR": "Other reason",
}

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
    # Life events: registered at B82617 with no end date, yet...
    "deceased": "9990001103",  # ...dead: formal death notice (status "2")
    "deceased_informal": "9990001111",  # ...dead: informal death notice (status "1")
    "death_notice_removed": "9990001138",  # ...a death date whose notice was removed ("U")
    # De-registered: transferred to Scotland ("SCT"), practice period ended, managingOrganization
    "removed": "9990001146",
    # Dates relative to today in Europe/London, computed per request:
    "ends_today": "9990001154",  # B82617 until today (inclusive: still registered)
    "starts_tomorrow": "9990001162",  # X26 from tomorrow (not registered yet)
    "ended_yesterday": "9990001170",  # B82617 until yesterday
}

_REGISTRATIONS: dict[str, tuple[str, str, str | None]] = {
    # number: (practice, start, end)
    SANDBOX_PATIENTS["gpconnect"]: ("B82617", "2019-04-01", None),
    SANDBOX_PATIENTS["mesh"]: ("X26", "2021-09-13", None),
    SANDBOX_PATIENTS["spine"]: ("YES", "2015-01-20", None),
    SANDBOX_PATIENTS["ended"]: ("B82617", "2012-05-01", "2024-02-29"),
    SANDBOX_PATIENTS["deceased"]: ("B82617", "2009-06-15", None),
    SANDBOX_PATIENTS["deceased_informal"]: ("B82617", "2016-11-07", None),
    SANDBOX_PATIENTS["death_notice_removed"]: ("B82617", "2013-03-25", None),
    SANDBOX_PATIENTS["removed"]: ("B82617", "2011-02-14", "2023-08-31"),
}
_DEATHS: dict[str, tuple[str, str, str]] = {
    # number: (deceasedDateTime, death notification status, its systemEffectiveDate)
    SANDBOX_PATIENTS["deceased"]: ("2024-11-02T14:30:00+00:00", "2", "2024-11-04T09:12:44+00:00"),
    # The OAS's other form, a date alone.
    SANDBOX_PATIENTS["deceased_informal"]: ("2024-01-18", "1", "2024-01-19T16:40:05+00:00"),
    SANDBOX_PATIENTS["death_notice_removed"]: (
        "2023-03-09T00:00:00+00:00",
        "U",
        "2023-03-20T11:05:00+00:00",
    ),
}
#: Removed from registration: the reason (RemovalReasonExitCode); its effective period and the
#: managing organization are the ended registration's, as in NHS's ``patient_9000000009.json``.
_REMOVALS: dict[str, str] = {SANDBOX_PATIENTS["removed"]: "SCT"}
_SUPERSEDED = {SANDBOX_PATIENTS["superseded"]: SANDBOX_PATIENTS["gpconnect"]}
_ABSENT = {SANDBOX_PATIENTS["unknown"], SANDBOX_PATIENTS["invalidated"]}
_NAMES = ["ALDER", "BIRCH", "CEDAR", "DAMSON", "ELDER", "FIR", "GORSE", "HAZEL", "IVY"]
_NAMES += ["JUNIPER", "LARCH", "MAPLE", "OAK", "PINE", "ROWAN", "WILLOW"]

#: The application name the 429's diagnostics quote (the live proxy's ``developer.app.name``).
SANDBOX_APP_NAME = "sds-plugins-sandbox"
_RATE_LIMIT_GUIDE = (
    "https://digital.nhs.uk/developer/guides-and-documentation/reference-guide#rate-limits"
)


def london_today(now: datetime | None = None) -> date:
    """The date in Europe/London (PDS's registration dates are UK dates) at ``now`` (aware;
    default: now).

    With no time-zone database (Windows without ``tzdata``), the UK's rule: summer time from
    01:00 UTC on the last Sunday of March to 01:00 UTC on the last Sunday of October.
    """
    now = datetime.now(UTC) if now is None else now.astimezone(UTC)
    try:
        return now.astimezone(ZoneInfo("Europe/London")).date()
    except ZoneInfoNotFoundError:
        return _uk_date_by_rule(now)


def _uk_date_by_rule(now: datetime) -> date:
    """The UK's date at ``now`` (UTC), from the summer-time rule alone."""
    starts, ends = _last_sunday_1am(now.year, 3), _last_sunday_1am(now.year, 10)
    return (now + timedelta(hours=1 if starts <= now < ends else 0)).date()


def _last_sunday_1am(year: int, month: int) -> datetime:
    last = date(year, month + 1, 1) - timedelta(days=1)
    sunday = last - timedelta(days=(last.weekday() + 1) % 7)
    return datetime(sunday.year, sunday.month, sunday.day, 1, tzinfo=UTC)


def _valid(number: str) -> bool:
    if len(number) != 10 or not number.isascii() or not number.isdigit():
        return False
    total = sum(
        int(digit) * weight for digit, weight in zip(number[:9], range(10, 1, -1), strict=True)
    )
    check = (11 - total % 11) % 11
    return check != 10 and check == int(number[9])


def _registration(number: str, today: date) -> tuple[str, str, str | None] | None:
    """``(practice, start, end)`` of ``number``'s registration (``None``: none) on ``today``."""
    tomorrow, yesterday = today + timedelta(days=1), today - timedelta(days=1)
    relative = {
        SANDBOX_PATIENTS["ends_today"]: ("B82617", "2017-10-02", today.isoformat()),
        SANDBOX_PATIENTS["starts_tomorrow"]: ("X26", tomorrow.isoformat(), None),
        SANDBOX_PATIENTS["ended_yesterday"]: ("B82617", "2014-07-21", yesterday.isoformat()),
    }
    return relative.get(number, _REGISTRATIONS.get(number))


def _ods_reference(practice: str, period: dict[str, str]) -> dict[str, Any]:
    return {"system": ODS_SYSTEM, "value": practice, "period": period}


def _patient(number: str, today: date | None = None) -> dict[str, Any] | None:
    """The sandbox's record for ``number`` (the surviving record for a superseded one)."""
    number = _SUPERSEDED.get(number, number)
    if number not in SANDBOX_PATIENTS.values() or number in _ABSENT | _SUPERSEDED.keys():
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
    extensions: list[dict[str, Any]] = []
    death = _DEATHS.get(number)
    if death is not None:
        deceased, status, effective = death
        resource["deceasedDateTime"] = deceased
        extensions.append(_death_notification(status, effective))
    registration = _registration(number, london_today() if today is None else today)
    if registration is not None:
        practice, start, end = registration
        period = {"start": start} if end is None else {"start": start, "end": end}
        resource["generalPractitioner"] = [
            {
                "id": f"{index:08X}",
                "type": "Organization",
                "identifier": _ods_reference(practice, period),
            }
        ]
        removal = _REMOVALS.get(number)
        if removal is not None:
            resource["managingOrganization"] = {
                "type": "Organization",
                "identifier": _ods_reference(practice, dict(period)),
            }
            extensions.append(_removal(removal, period))
    if extensions:
        resource["extension"] = extensions
    if registration is not None:
        resource["address"] = [{"use": "home", "line": [f"{index + 1} SANDBOX ROAD"]}]
    return resource


def _death_notification(status: str, effective: str) -> dict[str, Any]:
    coding = {
        "system": DEATH_NOTIFICATION_SYSTEM,
        "version": "1.0.0",
        "code": status,
        "display": _DEATH_NOTIFICATION_DISPLAYS[status],
    }
    return {
        "url": DEATH_NOTIFICATION_URL,
        "extension": [
            {"url": "deathNotificationStatus", "valueCodeableConcept": {"coding": [coding]}},
            {"url": "systemEffectiveDate", "valueDateTime": effective},
        ],
    }


def _removal(code: str, registration: dict[str, str]) -> dict[str, Any]:
    coding = {"system": REMOVAL_SYSTEM, "code": code, "display": _REMOVAL_DISPLAYS[code]}
    effective = {key: f"{value}T00:00:00+00:00" for key, value in registration.items()}
    return {
        "url": REMOVAL_URL,
        "extension": [
            {"url": "removalFromRegistrationCode", "valueCodeableConcept": {"coding": [coding]}},
            {"url": "effectiveTime", "valuePeriod": effective},
        ],
    }


def _outcome(
    code: str,
    issue_code: str,
    display: str,
    diagnostics: str | None = None,
    severity: str = "error",
) -> dict[str, Any]:
    """An OperationOutcome as PDS's proxy (``AssignMessage.Errors.CatchAllMessage``, always
    with ``diagnostics``) or Spine (NHS's Karate stubs, ``diagnostics`` for some codes) sends."""
    issue: dict[str, Any] = {
        "severity": severity,
        "code": issue_code,
        "details": {
            "coding": [{"system": _CODES, "version": "1", "code": code, "display": display}]
        },
    }
    if diagnostics is not None:
        issue["diagnostics"] = diagnostics
    return {"resourceType": "OperationOutcome", "issue": [issue]}


class PdsEndpoint:
    """``GET /personal-demographics/FHIR/R4/Patient/{id}``."""

    def __init__(self, state: _State, guard: GatewayGuard) -> None:
        self.state = state
        self.guard = guard
        self._last = 0.0  # when the last request was accepted (PDS's smoothed limit)

    async def patient(self, request: Request) -> Response:
        arrival = time.monotonic()
        request_id = request.headers.get("x-request-id") or None  # empty: not sent
        correlation_id = request.headers.get("x-correlation-id") or None
        headers: dict[str, str] = {}
        if correlation_id is not None:
            headers["X-Correlation-ID"] = correlation_id
        if request_id is not None:
            headers["X-Request-ID"] = request_id
        # 1-2: the token, then the rate limit, judged on arrival; the injected latency (the
        # network round trip) delays every answer, refusals included.
        refusal = self._token_refusal(request)
        limited = refusal is None and self._rate_limited(arrival)
        if self.state.faults.latency_ms > 0:
            await asyncio.sleep(self.state.faults.latency_ms / 1000)
        if refusal is not None:
            return self._answer(
                401,
                _outcome("ACCESS_DENIED", "forbidden", "Access Denied - Unauthorised", refusal),
                headers,
            )
        if limited:
            diagnostics = (
                f"Your application, {SANDBOX_APP_NAME}, has created a spike in traffic and is "
                "being rate limited. Please reduce the frequency of your requests. Please see: "
                f"{_RATE_LIMIT_GUIDE} for more details."
            )
            return self._answer(
                429,
                _outcome("TOO_MANY_REQUESTS", "value", "Too many requests", diagnostics),
                headers,
            )
        # 3: the proxy checks the format of an X-Request-ID that was sent.
        if request_id is not None and not _UUID_RE.fullmatch(request_id):
            return self._answer(
                400,
                _outcome(
                    "INVALID_VALUE",
                    "value",
                    "Provided value is invalid",
                    f"Invalid value - '{request_id}' in header 'X-Request-ID'",
                ),
                headers,
            )
        # 4: an application-restricted token reads only.
        if request.method != "GET":
            action = "create" if request.method == "POST" else "update"
            return self._answer(
                403,
                _outcome(
                    "INVALID_METHOD",
                    "forbidden",
                    f"Cannot {action} resource with application-restricted access token",
                    "Your app has insufficient permissions to use this method. "
                    "Please contact support.",
                ),
                headers,
            )
        # 5: the service behind the proxy failing.
        fault = self.guard.injected_fault(request, correlation_id or str(uuid.uuid4()))
        if fault is not None:
            if correlation_id is None:
                del fault.headers["x-correlation-id"]
            return fault
        # 6: Spine's own checks.
        if request_id is None:
            return self._answer(
                400,
                _outcome(
                    "MISSING_VALUE",
                    "required",
                    "Required value is missing",
                    "Invalid request with error - X-Request-ID header must be supplied to "
                    "access this resource",
                ),
                headers,
            )
        number = request.path_params["id"]
        if not _valid(number):
            return self._answer(
                400, _outcome("INVALID_RESOURCE_ID", "value", "Resource Id is invalid"), headers
            )
        if number == SANDBOX_PATIENTS["invalidated"]:
            return self._answer(
                404,
                _outcome(
                    "INVALIDATED_RESOURCE",
                    "processing",
                    "Resource that has been marked as invalid was "
                    "requested - invalid resources cannot be retrieved",
                ),
                headers,
            )
        resource = _patient(number, london_today())
        if resource is None:
            return self._answer(
                404,
                _outcome(
                    "RESOURCE_NOT_FOUND", "not-found", "Resource not found", severity="information"
                ),
                headers,
            )
        headers["ETag"] = f'W/"{resource["meta"]["versionId"]}"'
        return self._answer(200, resource, headers)

    def _rate_limited(self, arrival: float) -> bool:
        """Whether ``arrival`` is too soon after the last accepted request (which it becomes
        when not)."""
        rate = self.state.config.pds_rate_per_s
        if rate is not None and arrival - self._last < 1.0 / rate:
            return True
        self._last = arrival
        return False

    def _token_refusal(self, request: Request) -> str | None:
        """Why the request's bearer token is refused (``None``: accepted, or none needed), in
        the words of the live proxy's ``UpdateInvalidAccessTokenFaultString.js``."""
        config = self.state.config
        if config.api_key is None and config.jwks is None:
            return None  # an open sandbox, as NHS's public one
        authorization = request.headers.get("authorization")
        if not authorization:  # NHS's tests: an empty header reads as a missing one
            return "Missing Authorization header"
        words = authorization.split(" ")
        if len(words) == 1:
            return "Missing access token"
        scheme, token = words[0], " ".join(words[1:])
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
