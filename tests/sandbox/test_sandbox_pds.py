"""The sandbox's PDS against what NHS's live PDS does, over real sockets.

Sources (``NHSDigital/personal-demographics-service-api`` at ``f57f5839``): the live proxy under
``proxies/live/apiproxy/`` (``P/`` below), the OpenAPI specification under ``specification/``
(``OAS/``), and the Karate stubs and mocks kept unchanged in ``tests/reference/pds/`` (MIT,
Crown Copyright; see its README). Every test names what it holds the sandbox to.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from sds_plugins.sandbox import SANDBOX_PATIENTS, Sandbox

PDS_REFERENCE = Path(__file__).resolve().parents[1] / "reference" / "pds"
ERROR_STUBS = PDS_REFERENCE / "stubs" / "errorResponses"
NHS_PATIENT = PDS_REFERENCE / "stubs" / "patientResponses" / "patient_9000000009.json"
PATIENT_FIXTURES = sorted(
    path for path in PDS_REFERENCE.rglob("*.json") if ERROR_STUBS not in path.parents
)

PATH = "/personal-demographics/FHIR/R4/Patient/"
CODES = "https://fhir.nhs.uk/R4/CodeSystem/Spine-ErrorOrWarningCode"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
DEATH_NOTIFICATION = (
    "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-DeathNotificationStatus"
)
REMOVAL = "https://fhir.nhs.uk/StructureDefinition/Extension-PDS-RemovalFromRegistration"
# OAS/components/schemas/DeceasedDateTime.yaml
DECEASED_PATTERN = re.compile(
    r"^([12]\d{3}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T\d{2}:\d{2}:\d{2}\+00:00)$"
    r"|^([12]\d{3}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T\d{2}:\d{2}:\d{2})$"
    r"|^([12]\d{3}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01]))$"
)
GOOD_NUMBER = SANDBOX_PATIENTS["gpconnect"]
INVALID_NUMBER = "9990001007"  # wrong check digit
API_KEY = "pds-test-app"
KID = "pds-test-1"


def load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def rid() -> str:
    return str(uuid.uuid4())


def get(
    http: httpx.Client, sandbox: Sandbox, number: str, method: str = "GET", **headers: str
) -> httpx.Response:
    return http.request(method, sandbox.url + PATH + number, headers=headers)


def fetch(http: httpx.Client, sandbox: Sandbox, case: str) -> dict[str, Any]:
    response = get(http, sandbox, SANDBOX_PATIENTS[case], **{"X-Request-ID": rid()})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["resourceType"] == "Patient"
    assert body["id"] == SANDBOX_PATIENTS[case]
    return body


def stub_filled(stub: Any, actual: Any) -> Any:
    """NHS's stub with each Karate placeholder (``"#(name)"``) replaced by the value ``actual``
    has in that place: compare the result with ``actual`` for "same shape, same fixed values"."""
    if isinstance(stub, str) and stub.startswith("#(") and stub.endswith(")"):
        return actual if isinstance(actual, str) else stub
    if isinstance(stub, dict):
        here = actual if isinstance(actual, dict) else {}
        return {key: stub_filled(value, here.get(key)) for key, value in stub.items()}
    if isinstance(stub, list):
        items = actual if isinstance(actual, list) else []
        return [
            stub_filled(value, items[i] if i < len(items) else None) for i, value in enumerate(stub)
        ]
    return stub


def assert_matches_stub(response: httpx.Response, stub_name: str) -> dict[str, Any]:
    """The body has exactly the shape and fixed values of NHS's stub ``stub_name``; the issue
    is returned for the values the stub leaves to the test."""
    body = response.json()
    assert body == stub_filled(load(ERROR_STUBS / f"{stub_name}.json"), body)
    found: dict[str, Any] = body["issue"][0]
    return found


def coding(issue: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = issue["details"]["coding"][0]
    return found


def skeleton(value: Any) -> Any:
    """``value``'s structure: keys, list lengths, and the URLs and code systems; other leaves
    become their type."""
    if isinstance(value, dict):
        return {
            key: inner if key in {"url", "system"} else skeleton(inner)
            for key, inner in value.items()
        }
    if isinstance(value, list):
        return [skeleton(item) for item in value]
    return type(value).__name__


def nhs_extension(url: str) -> dict[str, Any]:
    extensions: list[dict[str, Any]] = load(NHS_PATIENT)["extension"]
    [found] = [each for each in extensions if each["url"] == url]
    return found


def our_extension(patient: dict[str, Any], url: str) -> dict[str, Any]:
    extensions: list[dict[str, Any]] = patient.get("extension", [])
    [found] = [each for each in extensions if each["url"] == url]
    return found


def london_today() -> date:
    return datetime.now(ZoneInfo("Europe/London")).date()


def period(patient: dict[str, Any]) -> dict[str, str]:
    [practice] = patient["generalPractitioner"]
    found: dict[str, str] = practice["identifier"]["period"]
    return found


def practice(patient: dict[str, Any]) -> str:
    [found] = patient["generalPractitioner"]
    assert found["type"] == "Organization"
    assert found["identifier"]["system"] == ODS
    value: str = found["identifier"]["value"]
    return value


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


Secured = Callable[..., tuple[Sandbox, str]]


@pytest.fixture
def secured(make_sandbox: Any, signing_key: rsa.RSAPrivateKey, http: httpx.Client) -> Secured:
    """Starts a sandbox with credentials; returns it and a bearer token from its token URL."""

    def start(**config: Any) -> tuple[Sandbox, str]:
        public = jwt.algorithms.RSAAlgorithm.to_jwk(signing_key.public_key(), as_dict=True)
        jwks = {"keys": [{**public, "kid": KID, "use": "sig", "alg": "RS512"}]}
        sandbox: Sandbox = make_sandbox(api_key=API_KEY, jwks=jwks, **config)
        claims = {
            "iss": API_KEY,
            "sub": API_KEY,
            "aud": sandbox.token_url,
            "jti": rid(),
            "exp": int(time.time()) + 120,
        }
        assertion = jwt.encode(claims, signing_key, algorithm="RS512", headers={"kid": KID})
        answer = http.post(
            sandbox.token_url,
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": assertion,
            },
        )
        assert answer.status_code == 200, answer.text
        token: str = answer.json()["access_token"]
        return sandbox, token

    return start


# ------------------------------------------------------------ NHS's reference Patient fixtures


def test_the_pds_reference_data_is_complete_and_licensed() -> None:
    """Every fixture is listed in the README with its origin, beside NHS's MIT licence."""
    licence = (PDS_REFERENCE / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("MIT License\n\nCrown Copyright (c)\n")
    readme = (PDS_REFERENCE / "README.md").read_text(encoding="utf-8")
    assert "f57f5839b956fedb708555227ef2f9aefcc0cc37" in readme
    for path in PDS_REFERENCE.rglob("*.json"):
        assert f"`{path.relative_to(PDS_REFERENCE).as_posix()}`" in readme, path
    assert len(PATIENT_FIXTURES) >= 50  # mocks/, patientResponses/, searchResponses/...


@pytest.mark.parametrize(
    "path",
    PATIENT_FIXTURES,
    ids=[p.relative_to(PDS_REFERENCE).as_posix() for p in PATIENT_FIXTURES],
)
def test_every_nhs_reference_patient_fixture_is_a_patient(path: Path) -> None:
    """Valid JSON, and a Patient or a searchset Bundle of Patients, each with its NHS number as
    both ``id`` and identifier (OAS/components/schemas/Patient.yaml)."""
    body = load(path)
    if body["resourceType"] == "Bundle":
        assert body["type"] == "searchset"
        patients = [entry["resource"] for entry in body["entry"]]
        assert patients
    else:
        patients = [body]
    for patient in patients:
        assert patient["resourceType"] == "Patient"
        assert re.fullmatch(r"\d{10}", patient["id"])
        [identifier] = [
            each
            for each in patient["identifier"]
            if each["system"] == "https://fhir.nhs.uk/Id/nhs-number"
        ]
        assert identifier["value"] == patient["id"]
        for gp in patient.get("generalPractitioner", []):
            assert gp["identifier"]["system"] == ODS
            assert "start" in gp["identifier"]["period"]


@pytest.mark.parametrize("path", sorted(ERROR_STUBS.glob("*.json")), ids=lambda p: p.stem)
def test_every_nhs_error_stub_is_an_operation_outcome(path: Path) -> None:
    body = load(path)
    assert body["resourceType"] == "OperationOutcome"
    [issue] = body["issue"]
    if "details" in issue:  # NOT_SUPPORTED_SEARCH is the Karate mock's own, with none
        assert coding(issue)["system"] == CODES
        assert coding(issue)["code"] == path.stem


# --------------------------------------------------------------------- the sandbox's patients


def test_the_existing_cases_keep_their_numbers() -> None:
    """Other tests and adapters name these; their numbers and meanings do not move."""
    assert {key: SANDBOX_PATIENTS[key] for key in list(SANDBOX_PATIENTS)[:9]} == {
        "gpconnect": "9990001006",
        "mesh": "9990001014",
        "spine": "9990001022",
        "superseded": "9990001030",
        "invalidated": "9990001049",
        "restricted": "9990001057",
        "ended": "9990001065",
        "unregistered": "9990001073",
        "unknown": "9990001081",
    }


def test_every_sandbox_number_is_valid_and_in_the_test_range() -> None:
    """Modulus 11 (weights 10..2 on the first nine digits; 10 is no check digit)."""
    assert len(set(SANDBOX_PATIENTS.values())) == len(SANDBOX_PATIENTS)
    for number in SANDBOX_PATIENTS.values():
        assert number.startswith("999")
        total = sum(int(d) * w for d, w in zip(number[:9], range(10, 1, -1), strict=True))
        assert (11 - total % 11) % 11 == int(number[9]), number


def test_the_existing_cases_still_answer_as_before(sandbox: Sandbox, http: httpx.Client) -> None:
    assert practice(fetch(http, sandbox, "gpconnect")) == "B82617"
    assert "end" not in period(fetch(http, sandbox, "gpconnect"))
    assert practice(fetch(http, sandbox, "mesh")) == "X26"
    assert practice(fetch(http, sandbox, "spine")) == "YES"
    ended = fetch(http, sandbox, "ended")
    assert (practice(ended), period(ended)["end"]) == ("B82617", "2024-02-29")
    assert "generalPractitioner" not in fetch(http, sandbox, "unregistered")
    restricted = fetch(http, sandbox, "restricted")
    assert restricted["meta"]["security"][0]["code"] == "R"
    assert "generalPractitioner" not in restricted and "address" not in restricted
    superseded = get(http, sandbox, SANDBOX_PATIENTS["superseded"], **{"X-Request-ID": rid()})
    assert superseded.json()["id"] == SANDBOX_PATIENTS["gpconnect"]
    for case in ("gpconnect", "mesh", "spine", "ended", "unregistered", "restricted"):
        body = fetch(http, sandbox, case)
        assert "deceasedDateTime" not in body and "extension" not in body, case


@pytest.mark.parametrize(
    ("case", "status", "display"),
    [
        ("deceased", "2", "Formal - death notice received from Registrar of Deaths"),
        (
            "deceased_informal",
            "1",
            "Informal - death notice received via an update from a local NHS Organisation "
            "such as GP or Trust",
        ),
        ("death_notice_removed", "U", "Removed"),
    ],
)
def test_the_deceased_patients(
    sandbox: Sandbox, http: httpx.Client, case: str, status: str, display: str
) -> None:
    """Registered at B82617 with no end date, yet with a death date and a death notification
    status; the extension has NHS's URL, sub-extensions and code system
    (OAS/components/schemas/extensions/DeathNotificationStatus.yaml, codeable/ likewise), the
    same structure as NHS's patient_9000000009.json."""
    patient = fetch(http, sandbox, case)
    assert practice(patient) == "B82617"
    assert "end" not in period(patient)
    assert DECEASED_PATTERN.fullmatch(patient["deceasedDateTime"])
    assert patient["deceasedDateTime"] < london_today().isoformat()
    notification = our_extension(patient, DEATH_NOTIFICATION)
    assert skeleton(notification) == skeleton(nhs_extension(DEATH_NOTIFICATION))
    code, effective = notification["extension"]
    assert code["url"] == "deathNotificationStatus"
    assert code["valueCodeableConcept"]["coding"] == [
        {
            "system": "https://fhir.hl7.org.uk/CodeSystem/UKCore-DeathNotificationStatus",
            "version": "1.0.0",
            "code": status,
            "display": display,
        }
    ]
    assert effective["url"] == "systemEffectiveDate"
    assert DECEASED_PATTERN.fullmatch(effective["valueDateTime"])
    assert effective["valueDateTime"] >= patient["deceasedDateTime"][:10]
    assert "managingOrganization" not in patient  # not de-registered
    assert all(each["url"] != REMOVAL for each in patient["extension"])


def test_the_removed_patient(sandbox: Sandbox, http: httpx.Client) -> None:
    """Transferred to Scotland (``SCT``, OAS/.../codeable/RemovalReasonExitCode.yaml): the
    removal extension with an effective period, the practice's period ended, and a
    ``managingOrganization`` (ManagingOrganizationReference.yaml: "the managing organization of
    a de-registered patient"), shaped as NHS's patient_9000000009.json has them."""
    patient = fetch(http, sandbox, "removed")
    nhs = load(NHS_PATIENT)
    assert practice(patient) == "B82617"
    assert period(patient)["end"] < london_today().isoformat()
    assert skeleton(patient["generalPractitioner"]) == skeleton(nhs["generalPractitioner"])
    assert skeleton(patient["managingOrganization"]) == skeleton(nhs["managingOrganization"])
    assert patient["managingOrganization"]["identifier"]["value"] == "B82617"
    removal = our_extension(patient, REMOVAL)
    assert skeleton(removal) == skeleton(nhs_extension(REMOVAL))
    reason, effective = removal["extension"]
    assert reason["valueCodeableConcept"]["coding"] == [
        {
            "system": "https://fhir.nhs.uk/CodeSystem/PDS-RemovalReasonExitCode",
            "code": "SCT",
            "display": "Transferred to Scotland",
        }
    ]
    assert effective["url"] == "effectiveTime"
    window = effective["valuePeriod"]
    assert window == {
        "start": period(patient)["start"] + "T00:00:00+00:00",
        "end": period(patient)["end"] + "T00:00:00+00:00",
    }
    assert "deceasedDateTime" not in patient
    assert all(each["url"] != DEATH_NOTIFICATION for each in patient["extension"])


@pytest.mark.parametrize(
    ("case", "ods", "field", "days"),
    [
        ("ends_today", "B82617", "end", 0),
        ("starts_tomorrow", "X26", "start", 1),
        ("ended_yesterday", "B82617", "end", -1),
    ],
)
def test_registrations_relative_to_today_in_london(
    sandbox: Sandbox, http: httpx.Client, case: str, ods: str, field: str, days: int
) -> None:
    """Computed per request in Europe/London, so they hold on any day (FHIR periods are
    inclusive; OAS/components/schemas/Period.yaml: either date "can be a future date")."""
    before = london_today()
    patient = fetch(http, sandbox, case)
    after = london_today()  # the request may straddle midnight
    assert practice(patient) == ods
    expected = {(day + timedelta(days=days)).isoformat() for day in (before, after)}
    assert period(patient)[field] in expected
    if case == "starts_tomorrow":
        assert list(period(patient)) == ["start"]
    else:
        assert period(patient)["start"] < period(patient)["end"]
    assert "extension" not in patient and "deceasedDateTime" not in patient


def test_the_date_rule_without_a_time_zone_database_agrees_with_zoneinfo(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fallback for systems without tzdata (Windows): the UK's summer-time rule."""
    from sds_plugins._sandbox import _pds

    london = ZoneInfo("Europe/London")
    moments = []
    moment = datetime(2023, 1, 1, tzinfo=UTC)
    while moment < datetime(2029, 1, 1, tzinfo=UTC):
        moments.append(moment)
        moment += timedelta(minutes=30)
    for moment in moments:
        assert _pds.london_today(moment) == moment.astimezone(london).date()

    def no_database(key: str) -> ZoneInfo:
        raise ZoneInfoNotFoundError(key)

    monkeypatch.setattr(_pds, "ZoneInfo", no_database)
    for moment in moments:
        assert _pds.london_today(moment) == moment.astimezone(london).date(), moment


# ------------------------------------------------------------------ the order of the checks


def test_the_token_comes_first(secured: Secured, http: httpx.Client) -> None:
    """P/targets/ig3.xml: OauthV2.VerifyAccessToken opens the PreFlow, so a request without a
    valid token gets 401 whatever else is wrong with it."""
    sandbox, token = secured(pds_rate_per_s=0.5)
    for method in ("GET", "PATCH"):
        for _ in range(2):  # the refused ones are not counted by the rate limit
            refused = get(http, sandbox, INVALID_NUMBER, method, **{"X-Request-ID": "1234"})
            assert refused.status_code == 401
    accepted = get(
        http, sandbox, GOOD_NUMBER, Authorization=f"Bearer {token}", **{"X-Request-ID": rid()}
    )
    assert accepted.status_code == 200


@pytest.mark.parametrize(
    ("authorization", "diagnostics"),
    [
        (None, "Missing Authorization header"),
        ("", "Missing Authorization header"),
        ("Bearer", "Missing access token"),
        ("Bearer not-a-token", "Invalid Access Token"),
        ("Basic dXNlcjpwYXNz", "Invalid token type 'Basic', must be 'Bearer'"),
    ],
)
def test_401_without_a_valid_token(
    secured: Secured, http: httpx.Client, authorization: str | None, diagnostics: str
) -> None:
    """P/policies/AssignMessage.Errors.OAuthPolicyResponse.xml, its reasons from
    P/resources/jsc/UpdateInvalidAccessTokenFaultString.js (NHS's invalidHeaders.feature sends
    an empty header and expects "Missing Authorization header")."""
    sandbox, _ = secured()
    headers = {"X-Request-ID": rid()}
    if authorization is not None:
        headers["Authorization"] = authorization
    response = get(http, sandbox, GOOD_NUMBER, **headers)
    assert response.status_code == 401
    issue = assert_matches_stub(response, "ACCESS_DENIED")
    assert coding(issue)["display"] == "Access Denied - Unauthorised"
    assert issue["diagnostics"] == diagnostics


def test_the_rate_limit_comes_before_the_request_id(secured: Secured, http: httpx.Client) -> None:
    """P/targets/ig3.xml: FlowCallout.ApplyRateLimiting precedes the X-Request-ID check, and
    every request past the token counts (here one per 2 s); the 429 is
    P/policies/AssignMessage.Errors.AppSpikeArrestExceeded.xml in the CatchAllMessage form."""
    sandbox, token = secured(pds_rate_per_s=0.5)
    bearer = f"Bearer {token}"
    first = get(http, sandbox, GOOD_NUMBER, Authorization=bearer, **{"X-Request-ID": "1234"})
    assert first.status_code == 400  # counted, though refused
    second = get(http, sandbox, GOOD_NUMBER, Authorization=bearer, **{"X-Request-ID": "1234"})
    assert second.status_code == 429
    assert "retry-after" not in second.headers
    body = second.json()
    diagnostics = body["issue"][0]["diagnostics"]
    assert body == {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "value",
                "details": {
                    "coding": [
                        {
                            "system": CODES,
                            "version": "1",
                            "code": "TOO_MANY_REQUESTS",
                            "display": "Too many requests",
                        }
                    ]
                },
                "diagnostics": diagnostics,
            }
        ],
    }
    assert diagnostics.startswith("Your application, ")
    assert "has created a spike in traffic and is being rate limited" in diagnostics
    # The same shape as the proxy's other errors (INVALID_VALUE's stub, the CatchAllMessage).
    assert skeleton(body) == skeleton(load(ERROR_STUBS / "INVALID_VALUE.json"))


def test_the_request_id_format_comes_before_the_method(
    sandbox: Sandbox, http: httpx.Client
) -> None:
    """The format check is in the PreFlow; the method refusal in the application_restricted
    flow after it (P/targets/ig3.xml)."""
    response = get(http, sandbox, GOOD_NUMBER, "PATCH", **{"X-Request-ID": "1234"})
    assert (response.status_code, coding(response.json()["issue"][0])["code"]) == (
        400,
        "INVALID_VALUE",
    )


def test_the_method_comes_before_a_missing_request_id(sandbox: Sandbox, http: httpx.Client) -> None:
    """A missing X-Request-ID is Spine's check; the proxy refuses the method before Spine."""
    response = get(http, sandbox, INVALID_NUMBER, "POST")
    assert response.status_code == 403


def test_a_missing_request_id_comes_before_the_nhs_number(
    sandbox: Sandbox, http: httpx.Client
) -> None:
    for number in (INVALID_NUMBER, SANDBOX_PATIENTS["unknown"], SANDBOX_PATIENTS["invalidated"]):
        response = get(http, sandbox, number)
        assert response.status_code == 400
        assert coding(response.json()["issue"][0])["code"] == "MISSING_VALUE"


def test_injected_faults_sit_between_the_proxy_and_spine(
    sandbox: Sandbox, http: httpx.Client
) -> None:
    """An injected outage stands for the service behind the proxy: the proxy's refusals come
    first, Spine's own checks never run."""
    sandbox.set_faults(outage=True)
    assert get(http, sandbox, GOOD_NUMBER, **{"X-Request-ID": "1234"}).status_code == 400
    assert get(http, sandbox, GOOD_NUMBER, "PATCH").status_code == 403
    assert get(http, sandbox, INVALID_NUMBER).status_code == 503


# -------------------------------------------------------------- the error bodies, against NHS's


def test_missing_request_id(sandbox: Sandbox, http: httpx.Client) -> None:
    """NHS's invalidHeaders.feature (karate-tests/.../healthcareWorker/invalidHeaders/): an
    empty X-Request-ID is a missing one, MISSING_VALUE.json with this diagnostics."""
    for headers in ({}, {"X-Request-ID": ""}):
        response = get(http, sandbox, GOOD_NUMBER, **headers)
        assert response.status_code == 400
        issue = assert_matches_stub(response, "MISSING_VALUE")
        assert issue["diagnostics"] == (
            "Invalid request with error - X-Request-ID header must be supplied to access this "
            "resource"
        )


@pytest.mark.parametrize("value", ["1234", "not-a-uuid", "0f2b7c4e-1d2a-4c3b-9e8f-5a6b7c8d9e0"])
def test_invalid_request_id(sandbox: Sandbox, http: httpx.Client, value: str) -> None:
    """P/policies/AssignMessage.Errors.InvalidRequestID.xml; INVALID_VALUE.json."""
    response = get(http, sandbox, GOOD_NUMBER, **{"X-Request-ID": value})
    assert response.status_code == 400
    issue = assert_matches_stub(response, "INVALID_VALUE")
    assert issue["diagnostics"] == f"Invalid value - '{value}' in header 'X-Request-ID'"
    assert response.headers["x-request-id"] == value  # mirrored, though invalid


def test_any_uuid_is_a_valid_request_id(sandbox: Sandbox, http: httpx.Client) -> None:
    """The proxy's pattern takes any version and either case."""
    for value in (
        str(uuid.uuid4()).upper(),
        str(uuid.uuid1()),
        "00000000-0000-0000-0000-000000000000",
    ):
        assert get(http, sandbox, GOOD_NUMBER, **{"X-Request-ID": value}).status_code == 200


@pytest.mark.parametrize(
    ("number", "status", "stub"),
    [
        (INVALID_NUMBER, 400, "INVALID_RESOURCE_ID"),
        ("12345", 400, "INVALID_RESOURCE_ID"),
        (SANDBOX_PATIENTS["unknown"], 404, "RESOURCE_NOT_FOUND"),
        (SANDBOX_PATIENTS["invalidated"], 404, "INVALIDATED_RESOURCE"),
    ],
)
def test_spine_errors_are_nhs_stubs_exactly(
    sandbox: Sandbox, http: httpx.Client, number: str, status: int, stub: str
) -> None:
    """These stubs have no placeholders: the sandbox's body equals NHS's."""
    response = get(http, sandbox, number, **{"X-Request-ID": rid()})
    assert response.status_code == status
    assert response.json() == load(ERROR_STUBS / f"{stub}.json")
    assert response.headers["content-type"] == "application/fhir+json"


@pytest.mark.parametrize(
    ("method", "action"),
    [("PATCH", "update"), ("POST", "create"), ("PUT", "update"), ("DELETE", "update")],
)
def test_writes_are_refused_with_invalid_method(
    sandbox: Sandbox, http: httpx.Client, method: str, action: str
) -> None:
    """An application-restricted token may not write: P/targets/ig3.xml's application_restricted
    flow raises RaiseFault.PatchMethodNotAllowedAppRestricted.xml / PostMethodNotAllowed.xml
    (403, never 405); INVALID_METHOD.json. PUT and DELETE reach Spine live, whose answer is not
    published: the sandbox answers them as PATCH."""
    response = get(http, sandbox, GOOD_NUMBER, method, **{"X-Request-ID": rid()})
    assert response.status_code == 403
    issue = assert_matches_stub(response, "INVALID_METHOD")
    assert coding(issue)["display"] == (
        f"Cannot {action} resource with application-restricted access token"
    )
    assert issue["diagnostics"] == (
        "Your app has insufficient permissions to use this method. Please contact support."
    )


# ---------------------------------------------------------------------------- the echo rules


def test_tracking_headers_are_echoed_unchanged_when_sent(
    sandbox: Sandbox, http: httpx.Client
) -> None:
    """OAS: X-Correlation-ID "can take any value", X-Request-ID is "mirrored back"."""
    request_id, correlation_id = rid(), "caller.chosen-id 42"
    for number in (GOOD_NUMBER, INVALID_NUMBER, SANDBOX_PATIENTS["unknown"]):
        response = get(
            http,
            sandbox,
            number,
            **{"X-Request-ID": request_id, "X-Correlation-ID": correlation_id},
        )
        assert response.headers["x-request-id"] == request_id
        assert response.headers["x-correlation-id"] == correlation_id


def test_tracking_headers_are_not_invented(secured: Secured, http: httpx.Client) -> None:
    """P/targets/ig3.xml: AssignMessage.Mirror.* run only when the header was sent and not
    empty (``~~ ".+"``), on success and on every error."""
    sandbox, token = secured(pds_rate_per_s=2)
    bearer = {"Authorization": f"Bearer {token}"}
    answers = [
        get(http, sandbox, GOOD_NUMBER),  # 401
        get(http, sandbox, GOOD_NUMBER, **bearer, **{"X-Request-ID": rid()}),  # 200
        get(http, sandbox, GOOD_NUMBER, **bearer),  # 429: too soon after the 200
    ]
    time.sleep(0.6)
    answers.append(get(http, sandbox, GOOD_NUMBER, **bearer))  # 400 MISSING_VALUE
    time.sleep(0.6)
    answers.append(get(http, sandbox, GOOD_NUMBER, "PATCH", **bearer))  # 403
    time.sleep(0.6)
    answers.append(get(http, sandbox, GOOD_NUMBER, **bearer, **{"X-Correlation-ID": ""}))  # 400
    sandbox.set_faults(outage=True)
    time.sleep(0.6)
    answers.append(get(http, sandbox, GOOD_NUMBER, **bearer, **{"X-Request-ID": ""}))  # 503
    assert [a.status_code for a in answers] == [401, 200, 429, 400, 403, 400, 503]
    for index, answer in enumerate(answers):
        if index == 1:
            assert answer.headers["x-request-id"]  # the one it was sent
        else:
            assert "x-request-id" not in answer.headers, index
        assert "x-correlation-id" not in answer.headers, index


def test_found_patients_carry_their_version_as_etag(sandbox: Sandbox, http: httpx.Client) -> None:
    response = get(http, sandbox, GOOD_NUMBER, **{"X-Request-ID": rid()})
    assert response.headers["etag"] == f'W/"{response.json()["meta"]["versionId"]}"'
    assert response.headers["content-type"] == "application/fhir+json"
