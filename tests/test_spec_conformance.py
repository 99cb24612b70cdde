"""The local sandbox against NHS England's published SDS OpenAPI spec, property-based.

One sandbox (the packaged reference data, an API key required) is served over real sockets for
the module, and three runs send requests to it:

* ``test_generated_requests`` - schemathesis generates requests from the unchanged spec file
  (its examples, coverage and fuzzing phases; valid and invalid data; other methods);
* ``test_sds_shaped_queries`` - hypothesis draws searches in the API's ``system|value`` form
  from the reference data (wrong and missing systems, repeats, padding, unknown parameters,
  Accept and X-Correlation-ID headers), predicts 200/400/406 from the API's rules, checks that
  every resource found meets the search, and that the plain form of the search (just the values
  that count) finds the same resources;
* ``test_hand_picked`` - explicit searches with known answers, so 200s with data are certain.

Every response passes the same checks: no 5xx; a documented status; the spec's media type and
schema where it documents content; JSON; every error an OperationOutcome whose id is the
correlation id (each 400 with Spine code BAD_REQUEST and non-empty diagnostics, each 405 with
``Allow: GET``); every 200 a ``searchset`` Bundle whose ``total`` equals its entries (the sandbox
does not page by default); the X-Correlation-ID echoed. The spec documents 400 without content,
so its body is held to the API's rules (domain notes, section 1) instead.

A failure prints the whole exchange; schemathesis adds a curl command to reproduce it.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from requests.structures import CaseInsensitiveDict
from schemathesis import Case, CheckContext, Response
from schemathesis.checks import not_a_server_error
from schemathesis.core.transport import HttpMethod
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from sds_plugins.sandbox import Sandbox, SandboxConfig

SPEC = (
    Path(__file__).resolve().parent / "reference" / "sds" / "spec" / "spine-directory-service.yaml"
)
API_KEY = "spec-conformance-key"

ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
INTERACTION = "https://fhir.nhs.uk/Id/nhsServiceInteractionId"
PARTY_KEY = "https://fhir.nhs.uk/Id/nhsMhsPartyKey"
ASID = "https://fhir.nhs.uk/Id/nhsSpineASID"
INTERACTION_EXTENSION = (
    "https://fhir.nhs.uk/StructureDefinition/Extension-SDS-NhsServiceInteractionId"
)
MANUFACTURER_EXTENSION = (
    "https://fhir.nhs.uk/StructureDefinition/Extension-SDS-ManufacturingOrganisation"
)
FHIR_JSON = "application/fhir+json"
PLAIN_JSON = "application/json"
UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

# Values from the packaged reference data (sds_plugins/_sandbox/data).
PSIS = "urn:nhs:names:services:psis:REPC_IN150016UK05"
PDS_QUERY = "urn:nhs:names:services:pdsquery:QUPA_IN040000UK32"
GP2GP = "urn:nhs:names:services:gp2gp:COPC_IN000001UK01"
EBS_EXPRESS = "urn:nhs:names:services:ebs:PRSC_IN080000UK03"
GPC_STRUCTURED = "urn:nhs:names:services:gpconnect:fhir:operation:gpc.getstructuredrecord-1"
ORGS = ("YES", "X26", "B82617", "yes", "ZZZ99")
INTERACTIONS = (PSIS, PDS_QUERY, GP2GP, EBS_EXPRESS, GPC_STRUCTURED, "urn:nhs:names:services:x:Y")
PARTY_KEYS = ("YES-0000806", "X26-820918", "X26-200150", "B82617-0000806", "ZZZ99-000001")
MANUFACTURERS = ("X09001", "X26", "YES")

# Hypothesis settings of every run: the same examples each time, no deadline (real sockets).
FAST = settings(
    max_examples=100,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# Loaded from the unchanged spec file; its `$ref`s to components/ resolve relative to it.
# An explicit Config keeps any schemathesis.toml lying around from changing the run.
schema = schemathesis.openapi.from_path(SPEC, config=schemathesis.Config())


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def conformance_sandbox() -> Iterator[Sandbox]:
    """The reference data behind an API key, as the spec's required ``apikey`` header implies."""
    with Sandbox(SandboxConfig(api_key=API_KEY)) as running:
        yield running


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    """One keep-alive connection pool for every request of the module.

    Without default headers: schemathesis gives a session's headers priority over the case's,
    so the session's ``Accept: */*`` would replace the Accept a case sends.
    """
    with requests.Session() as shared:
        shared.headers.clear()
        yield shared


# --------------------------------------------------------------------------- checks


def _body(response: Response) -> Any:
    return json.loads(response.content) if response.content else None


def _text(value: str | bytes | None) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else (value or "")


def _sent_method(response: Response) -> str:
    return _text(response.request.method).upper()


def _sent_header(response: Response, name: str) -> str | None:
    value = response.request.headers.get(name)
    return None if value is None else _text(value)


def _header(response: Response, name: str) -> str | None:
    values = response.headers.get(name.lower())
    return values[0] if values else None


def json_content_type(ctx: CheckContext, response: Response, case: Case[Any]) -> None:
    """Every answer is JSON (FHIR JSON, or plain JSON when that is what the client accepts)."""
    content_type = _header(response, "content-type")
    assert content_type is not None, "response has no Content-Type"
    media_type = content_type.split(";", 1)[0].strip().lower()
    assert media_type in {FHIR_JSON, PLAIN_JSON}, f"Content-Type {content_type!r} is not JSON"
    if _sent_method(response) != "HEAD":
        try:
            _body(response)
        except ValueError as error:
            raise AssertionError(f"body is not JSON: {error}") from None


def errors_are_operation_outcomes(ctx: CheckContext, response: Response, case: Case[Any]) -> None:
    """4xx: an OperationOutcome whose id is the correlation id; 400 BAD_REQUEST; 405 Allow."""
    status = response.status_code
    if status < 400:
        return
    if status == 405:
        assert _header(response, "allow") == "GET", "405 without 'Allow: GET'"
    if _sent_method(response) == "HEAD":
        return
    outcome = _body(response)
    assert isinstance(outcome, dict), f"{status} body is not a JSON object"
    assert outcome.get("resourceType") == "OperationOutcome", f"{status} is not an OperationOutcome"
    assert outcome.get("id") == _header(response, "x-correlation-id"), (
        "OperationOutcome.id is not the X-Correlation-ID"
    )
    issues = outcome.get("issue")
    assert isinstance(issues, list), "OperationOutcome has no issue list"
    assert issues, "OperationOutcome has no issue"
    for issue in issues:
        assert issue.get("severity") == "error", f"issue severity {issue.get('severity')!r}"
        coding = issue.get("details", {}).get("coding") or [{}]
        assert coding[0].get("code"), "issue without details.coding[0].code"
        diagnostics = issue.get("diagnostics")
        assert isinstance(diagnostics, str), "issue without diagnostics"
        assert diagnostics.strip(), "issue with empty diagnostics"
    if status == 400:
        codes = [issue["details"]["coding"][0]["code"] for issue in issues]
        assert "BAD_REQUEST" in codes, f"400 with Spine codes {codes}, not BAD_REQUEST"


def successes_are_searchset_bundles(ctx: CheckContext, response: Response, case: Case[Any]) -> None:
    """200: a searchset Bundle of the searched type; total == entries; one self link, no next."""
    if response.status_code != 200 or _sent_method(response) == "HEAD":
        return
    bundle = _body(response)
    assert isinstance(bundle, dict), "200 body is not a JSON object"
    assert bundle.get("resourceType") == "Bundle", "200 body is not a Bundle"
    assert bundle.get("type") == "searchset", f"Bundle.type is {bundle.get('type')!r}"
    entries = bundle.get("entry")
    assert isinstance(entries, list), "Bundle has no entry list"
    assert bundle.get("total") == len(entries), (
        f"Bundle.total {bundle.get('total')!r} but {len(entries)} entries"
    )
    relations = [link.get("relation") for link in bundle.get("link", [])]
    assert relations == ["self"], f"Bundle links {relations}, expected one self link"
    kind = case.operation.path.strip("/")
    for entry in entries:
        resource = entry.get("resource", {})
        assert resource.get("resourceType") == kind, f"{resource.get('resourceType')} in /{kind}"
        assert entry.get("search") == {"mode": "match"}, f"entry.search {entry.get('search')}"
        assert entry.get("fullUrl", "").endswith("/" + str(resource.get("id"))), "odd fullUrl"


def correlation_id_echoed(ctx: CheckContext, response: Response, case: Case[Any]) -> None:
    """Every answer carries an X-Correlation-ID: the one sent when it is a UUID, else a new one."""
    received = _header(response, "x-correlation-id")
    assert received is not None, "no X-Correlation-ID in the response"
    assert UUID_RE.fullmatch(received), f"X-Correlation-ID {received!r} is not a UUID"
    sent = _sent_header(response, "X-Correlation-ID")
    if sent and UUID_RE.fullmatch(sent):
        assert received == sent, f"sent X-Correlation-ID {sent!r}, got back {received!r}"


def documented_content_type(ctx: CheckContext, response: Response, case: Case[Any]) -> None:
    """The spec's media type, unless the client asked for plain JSON only.

    The spec documents only application/fhir+json for 200, but the service answers
    ``Accept: application/json`` with application/json (domain notes, section 1).
    """
    accept = (_sent_header(response, "Accept") or "").strip().lower()
    if accept == PLAIN_JSON:
        content_type = (_header(response, "content-type") or "").split(";")[0].strip()
        if response.status_code == 200:
            assert content_type == PLAIN_JSON, f"Accept: {accept} answered with {content_type}"
        return
    content_type_conformance(ctx, response, case)


CHECKS: list[Callable[[CheckContext, Response, Case[Any]], Any]] = [
    not_a_server_error,
    status_code_conformance,
    documented_content_type,
    response_schema_conformance,
    json_content_type,
    errors_are_operation_outcomes,
    successes_are_searchset_bundles,
    correlation_id_echoed,
]


def _describe(response: Response, limit: int = 8000) -> str:
    """The request and the response as sent and received, the body pretty-printed."""
    request = response.request
    lines = [f">>> {_text(request.method)} {_text(request.url)}"]
    lines += [f">>> {name}: {_text(value)}" for name, value in request.headers.items()]
    lines.append(f"<<< {response.status_code}")
    lines += [f"<<< {name}: {', '.join(values)}" for name, values in response.headers.items()]
    try:
        body = json.dumps(_body(response), indent=2, ensure_ascii=False)
    except ValueError:
        body = response.content.decode("utf-8", "replace")
    if len(body) > limit:
        body = body[:limit] + f"\n... ({len(body) - limit} more characters)"
    lines.append(body)
    return "\n".join(lines)


def send(
    case: Case[Any], sandbox: Sandbox, session: requests.Session, *, with_api_key: bool = True
) -> Response:
    """Send ``case`` to the local sandbox, never to the spec's server, with the API key set.

    The key goes into the case rather than the call: schemathesis drops a required header
    that a negative case leaves out even when the call supplies it.
    """
    if with_api_key:
        headers: CaseInsensitiveDict[Any] = CaseInsensitiveDict(case.headers or {})
        headers["apikey"] = API_KEY
        case.headers = headers
    response = case.call(base_url=sandbox.base_url, session=session, timeout=10)
    assert _text(response.request.url).startswith(sandbox.base_url)  # never the spec's server
    return response


def check(case: Case[Any], response: Response) -> None:
    """Run every check; on failure print the whole exchange (pytest shows it) and fail."""
    try:
        case.validate_response(response, checks=CHECKS)
    except AssertionError:
        print(_describe(response))
        raise


# --------------------------------------------------------------------------- 1. schemathesis


@pytest.mark.slow
@schema.parametrize()
@FAST
def test_generated_requests(
    case: Case[Any], conformance_sandbox: Sandbox, session: requests.Session
) -> None:
    """Whatever schemathesis makes of the spec passes every check."""
    check(case, send(case, conformance_sandbox, session))


# --------------------------------------------------------------------------- 2. SDS-shaped


@dataclass
class Request:
    """A search as sent: ordered query pairs (repeats allowed) and optional headers."""

    kind: str
    query: list[tuple[str, str]] = field(default_factory=list)
    correlation_id: str | None = None
    accept: str | None = None

    def case(self, method: HttpMethod = "GET") -> Case[Any]:
        grouped: dict[str, list[str]] = {}
        for key, value in self.query:
            grouped.setdefault(key, []).append(value)
        headers = {}
        if self.correlation_id is not None:
            headers["X-Correlation-Id"] = self.correlation_id
        if self.accept is not None:
            headers["Accept"] = self.accept
        operation = schema[f"/{self.kind}"]["GET"]
        return operation.Case(method=method, query=dict(grouped), headers=headers)


def _padded(value: str) -> st.SearchStrategy[str]:
    """``value`` as sent, or with blanks around it (the server strips values)."""
    return st.sampled_from([value, value, f" {value}", f"{value}  ", f"\t{value} "])


def _maybe(percent: int) -> st.SearchStrategy[bool]:
    return st.sampled_from(range(100)).map(lambda roll: roll < percent)


def _weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of ``choices``, each picked in proportion to its weight."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(table).flatmap(lambda strategy: strategy)


# Wrong, missing and misplaced systems, bare values, arbitrary text (most of them 400s).
INVALID_VALUES = st.sampled_from(
    [
        "YES",
        "|YES",
        ODS,
        f"{ASID}|928942012545",
        f"{ODS.upper()}|YES",
        f"{INTERACTION}|{PSIS}",  # an interaction where an ODS code belongs
        f"{ODS}|YES",  # an ODS code where an identifier belongs
        PSIS,
    ]
) | st.text(max_size=12)
EXTRA_PARAMS = st.sampled_from(["page", "_format", "name", "Organization", "identifier:of-type"])
CORRELATION_IDS: st.SearchStrategy[str | None] = _weighted(
    (4, st.none()),
    (3, st.uuids(version=4).map(str)),
    (2, st.uuids(version=1).map(lambda value: str(value).upper())),  # any UUID version passes
    (1, st.sampled_from(["not-a-uuid", "6d3d3674-7ce5-11ec-90d6", "{6d3d3674}"])),
)
ACCEPTS: st.SearchStrategy[str | None] = _weighted(
    (3, st.none()),
    (4, st.sampled_from(["*/*", FHIR_JSON, f"{FHIR_JSON}, */*;q=0.1"])),
    (2, st.just(PLAIN_JSON)),
    (1, st.sampled_from(["application/xml", "text/html"])),
    # Media-type parameters: the server compares each comma-separated part exactly
    # (sds/request/content_type_validator.py in NHSDigital/spine-directory-service-api), so
    # these are 406s although the types they name are served.
    (1, st.sampled_from([f"{FHIR_JSON};charset=utf-8", "*/*;q=0.8", f"{PLAIN_JSON};q=1"])),
)
# (ODS code, interaction, party key) that belong together in the reference data.
KNOWN: dict[str, list[tuple[str, str, str]]] = {
    "Device": [("YES", PSIS, "YES-0000806"), ("YES", PDS_QUERY, "YES-0000806"),
               ("X26", GP2GP, "X26-822084")],
    "Endpoint": [("YES", PSIS, "YES-0000806"), ("YES", PDS_QUERY, "YES-0000806"),
                 ("X26", GP2GP, "X26-820918"), ("X26", EBS_EXPRESS, "X26-200150"),
                 ("B82617", GPC_STRUCTURED, "B82617-0000806")],
}  # fmt: skip
# Which of organization / interaction / party key a search sends, and how often.
PRESENCE: dict[str, st.SearchStrategy[tuple[bool, bool, bool]]] = {
    "Device": _weighted(
        (6, st.sampled_from([(True, True, False), (True, True, True)])),
        (1, st.sampled_from([(True, False, True), (False, True, False)])),  # each one a 400
    ),
    "Endpoint": _weighted(
        (6, st.sampled_from([(True, True, True), (True, False, True), (True, True, False)])),
        (2, st.just((False, True, True))),
        (1, st.sampled_from([(True, False, False), (False, True, False), (False, False, True)])),
    ),
}


@st.composite
def sds_requests(draw: st.DrawFn, kind: str) -> Request:
    """A search built the way clients build them, then sometimes spoilt.

    Mostly an organization, interaction and party key that belong together (so many searches
    find data), sometimes unrelated ones; values may be padded, repeated (the last one of a
    system wins), replaced with an invalid one, or joined by an unknown parameter.
    """
    ods, interaction, party_key = draw(
        _weighted(
            (3, st.sampled_from(KNOWN[kind])),
            (1, st.tuples(*map(st.sampled_from, (ORGS, INTERACTIONS, PARTY_KEYS)))),
        )
    )
    with_org, with_interaction, with_party_key = draw(PRESENCE[kind])
    wanted: list[tuple[str, str, str]] = []
    if with_org:
        wanted.append(("organization", ODS, ods))
    if with_interaction:
        wanted.append(("identifier", INTERACTION, interaction))
    if with_party_key:
        wanted.append(("identifier", PARTY_KEY, party_key))
    if draw(_maybe(40 if kind == "Device" else 5)):  # /Endpoint has no such parameter
        wanted.append(("manufacturing-organization", ODS, draw(st.sampled_from(MANUFACTURERS))))
    query: list[tuple[str, str]] = []
    for key, system, value in wanted:
        if draw(_maybe(15)):  # an earlier value of the same system, overridden by the last
            query.append((key, f"{system}|{draw(st.sampled_from(ORGS + PARTY_KEYS))}"))
        if draw(_maybe(8)):
            query.append((key, draw(INVALID_VALUES)))
        else:
            query.append((key, f"{system}|{draw(_padded(value))}"))
    if draw(_maybe(8)):
        query.append((draw(EXTRA_PARAMS), "1"))
    # Parameters may come in any order; values of one parameter keep theirs.
    order = draw(st.permutations(range(len(query))))
    keys = [query[i][0] for i in order]
    shuffled = [pair for key in dict.fromkeys(keys) for pair in query if pair[0] == key]
    return Request(kind, shuffled, draw(CORRELATION_IDS), draw(ACCEPTS))


@dataclass(frozen=True)
class Expected:
    """What the API's rules say about a request: its status and, for a 200, what it searches.

    ``criteria`` maps (parameter, system) to the value that counts: the last one, stripped.
    """

    statuses: frozenset[int]
    criteria: Mapping[tuple[str, str], str] = field(default_factory=dict)

    def get(self, param: str, system: str) -> str:
        return self.criteria.get((param, system), "")

    def plain(self, kind: str) -> Request:
        """The same search with just the values that count: no padding, repeats or headers."""
        return Request(kind, [(key, f"{system}|{v}") for (key, system), v in self.criteria.items()])


def expected(request: Request) -> Expected:
    """The API's query, header and Accept rules (domain notes, section 1) applied to a request."""
    allowed = {"organization", "identifier"}
    if request.kind == "Device":
        allowed.add("manufacturing-organization")
    valid_systems = {
        "organization": (ODS,),
        "manufacturing-organization": (ODS,),
        "identifier": (INTERACTION, PARTY_KEY),
    }
    bad_query = False
    criteria: dict[tuple[str, str], str] = {}
    for key, value in request.query:
        if key not in allowed:
            bad_query = True
            continue
        system, sep, rest = value.partition("|")
        if not sep or system not in valid_systems[key]:
            bad_query = True
            continue
        if rest.strip():
            criteria[(key, system)] = rest.strip()  # the last value of a system wins
    org = criteria.get(("organization", ODS))
    interaction = criteria.get(("identifier", INTERACTION))
    party_key = criteria.get(("identifier", PARTY_KEY))
    if request.kind == "Device":
        bad_query |= not (org and interaction)
    else:
        bad_query |= not ((org and (interaction or party_key)) or (interaction and party_key))
    sent_id = request.correlation_id
    bad_header = bool(sent_id) and not UUID_RE.fullmatch(sent_id or "")
    # Whole comma-separated parts, lower-cased and stripped, compared exactly: a part with
    # parameters matches nothing (sds/request/content_type_validator.py).
    accept = FHIR_JSON if request.accept is None else request.accept
    offered = {part.strip() for part in accept.lower().split(",")}
    acceptable = bool(offered & {"*/*", FHIR_JSON, PLAIN_JSON})
    if bad_query or bad_header:
        # The handlers check the correlation id, the query and the required parameters before
        # Accept (sds/request/accredited_system_handler.py and routing_reliability_handler.py
        # get()), so a bad request is a 400 whatever its Accept.
        return Expected(frozenset({400}))
    if not acceptable:
        return Expected(frozenset({406}))
    return Expected(frozenset({200}), criteria)


def _identifiers(resource: Mapping[str, Any], system: str) -> list[str]:
    return [
        item.get("value", "").lower()
        for item in resource.get("identifier", [])
        if item.get("system") == system
    ]


def _extension_values(resource: Mapping[str, Any], url: str) -> list[str]:
    return [
        extension["valueReference"]["identifier"]["value"].lower()
        for extension in resource.get("extension", [])
        if extension.get("url") == url
    ]


def assert_matches(kind: str, resources: list[dict[str, Any]], wanted: Expected) -> None:
    """Every resource returned meets every criterion (directory matching ignores case)."""
    org = wanted.get("organization", ODS).lower()
    interaction = wanted.get("identifier", INTERACTION).lower()
    party_key = wanted.get("identifier", PARTY_KEY).lower()
    maker = wanted.get("manufacturing-organization", ODS).lower()
    for resource in resources:
        if interaction:
            assert interaction in _extension_values(resource, INTERACTION_EXTENSION), resource
        if party_key:
            assert _identifiers(resource, PARTY_KEY) == [party_key], resource
        if kind == "Endpoint" and org:
            managing = resource["managingOrganization"]["identifier"]["value"]
            assert managing.lower() == org, resource
        if kind == "Device" and maker:
            assert _extension_values(resource, MANUFACTURER_EXTENSION) == [maker], resource


def without_ids(value: Any) -> Any:
    """``value`` minus what differs on every call: ids and the URLs built from them."""
    if isinstance(value, dict):
        return {k: without_ids(v) for k, v in value.items() if k not in {"id", "fullUrl"}}
    if isinstance(value, list):
        return [without_ids(item) for item in value]
    return value


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["Device", "Endpoint"])
def test_sds_shaped_queries(
    kind: str, conformance_sandbox: Sandbox, session: requests.Session
) -> None:
    @settings(FAST, max_examples=100)
    @given(request=sds_requests(kind))
    def run(request: Request) -> None:
        case = request.case()
        response = send(case, conformance_sandbox, session)
        check(case, response)
        wanted = expected(request)
        assert response.status_code in wanted.statuses, (
            f"{request} -> {response.status_code}, expected {sorted(wanted.statuses)}\n"
            + _describe(response)
        )
        if response.status_code != 200:
            return
        resources = [entry["resource"] for entry in _body(response)["entry"]]
        assert_matches(kind, resources, wanted)
        # Padding, overridden repeats and headers change nothing: the plain search that sends
        # just the values that count finds the same resources.
        plain = wanted.plain(kind)
        if plain.query != request.query:
            again = send(plain.case(), conformance_sandbox, session)
            assert again.status_code == 200, _describe(again)
            assert without_ids(_body(again)["entry"]) == without_ids(_body(response)["entry"]), (
                f"{request} and {plain} found different resources\n"
                + _describe(response)
                + "\n"
                + _describe(again)
            )

    run()


# --------------------------------------------------------------------------- 3. hand-picked


def _org(code: str) -> tuple[str, str]:
    return ("organization", f"{ODS}|{code}")


def _interaction(value: str) -> tuple[str, str]:
    return ("identifier", f"{INTERACTION}|{value}")


def _party_key(value: str) -> tuple[str, str]:
    return ("identifier", f"{PARTY_KEY}|{value}")


def _maker(code: str) -> tuple[str, str]:
    return ("manufacturing-organization", f"{ODS}|{code}")


YES_PSIS = [_org("YES"), _interaction(PSIS)]

# (request, expected status, number of resources a 200 holds)
HAND_PICKED: list[tuple[Request, int, int]] = [
    (Request("Device", YES_PSIS), 200, 1),
    (Request("Device", [*YES_PSIS, _party_key("YES-0000806")]), 200, 1),
    (Request("Device", [*YES_PSIS, _maker("X09001")]), 200, 1),
    (Request("Device", [_org("X26"), _interaction(GP2GP)]), 200, 1),
    (Request("Device", [*YES_PSIS, _maker("X26")]), 200, 0),
    (Request("Device", [_org("ZZZ99"), _interaction(PSIS)]), 200, 0),
    (Request("Device", [_org("YES"), _party_key("YES-0000806")]), 400, 0),
    (Request("Device", [_interaction(PSIS)]), 400, 0),
    # The four /Endpoint combinations the API allows.
    (Request("Endpoint", [*YES_PSIS, _party_key("YES-0000806")]), 200, 1),
    (Request("Endpoint", [_org("YES"), _party_key("YES-0000806")]), 200, 5),
    (Request("Endpoint", YES_PSIS), 200, 1),
    (Request("Endpoint", [_interaction(PSIS), _party_key("YES-0000806")]), 200, 1),
    # Forward-reliable and forward-express: rewritten to Spine's intermediary, still 200s.
    (Request("Endpoint", [_org("X26"), _interaction(GP2GP)]), 200, 2),
    (Request("Endpoint", [_org("X26"), _interaction(EBS_EXPRESS)]), 200, 1),
    (Request("Endpoint", [_org("B82617"), _interaction(GPC_STRUCTURED)]), 200, 1),
    (Request("Endpoint", [_org("ZZZ99"), _interaction(PSIS)]), 200, 0),
    # Repeats: the last value of a system wins; values are stripped.
    (Request("Endpoint", [_org("ZZZ99"), *YES_PSIS]), 200, 1),
    (Request("Endpoint", [_org(" YES "), _interaction(f"{PSIS} ")]), 200, 1),
    # Searches the API refuses.
    (Request("Endpoint", [_org("YES")]), 400, 0),
    (Request("Endpoint", [_interaction(PSIS)]), 400, 0),
    (Request("Endpoint", [_party_key("YES-0000806")]), 400, 0),
    (Request("Endpoint", [*YES_PSIS, _maker("X09001")]), 400, 0),
    (Request("Endpoint", [("organization", "YES"), _interaction(PSIS)]), 400, 0),
    (Request("Endpoint", [_org("YES"), ("identifier", f"{ASID}|928942012545")]), 400, 0),
    (Request("Endpoint", YES_PSIS, correlation_id="not-a-uuid"), 400, 0),
    # Accept: FHIR JSON, plain JSON, or 406.
    (Request("Device", YES_PSIS, accept=FHIR_JSON), 200, 1),
    (Request("Device", YES_PSIS, accept=PLAIN_JSON), 200, 1),
    (Request("Endpoint", YES_PSIS, accept="application/xml"), 406, 0),
    (Request("Device", YES_PSIS, accept="text/html"), 406, 0),
    # ...compared exactly: parameters make a type unacceptable (content_type_validator.py).
    (Request("Device", YES_PSIS, accept=f"{FHIR_JSON};charset=utf-8"), 406, 0),
    (Request("Endpoint", YES_PSIS, accept="*/*;q=0.8"), 406, 0),
    # A bad query is reported before a bad Accept (the handlers' order).
    (Request("Endpoint", [_org("YES")], accept="application/xml"), 400, 0),
    (Request("Device", YES_PSIS, correlation_id="not-a-uuid", accept="text/html"), 400, 0),
]


@pytest.mark.parametrize(
    ("request_", "status", "count"),
    HAND_PICKED,
    ids=[f"{request.kind}-{i}" for i, (request, *_) in enumerate(HAND_PICKED)],
)
def test_hand_picked(
    request_: Request,
    status: int,
    count: int,
    conformance_sandbox: Sandbox,
    session: requests.Session,
) -> None:
    if request_.correlation_id is None:
        request_ = replace(request_, correlation_id=str(uuid.uuid4()))
    case = request_.case()
    response = send(case, conformance_sandbox, session)
    check(case, response)
    assert response.status_code == status, _describe(response)
    assert response.status_code in expected(request_).statuses
    if status == 406:
        outcome = _body(response)
        assert outcome["issue"][0]["details"]["coding"][0]["code"] == "MISSING_OR_INVALID_HEADER"
    if status == 200:
        resources = [entry["resource"] for entry in _body(response)["entry"]]
        assert len(resources) == count, _describe(response)
        assert_matches(request_.kind, resources, expected(request_))


def test_missing_api_key_is_refused(
    conformance_sandbox: Sandbox, session: requests.Session
) -> None:
    """The spec's required ``apikey``: without it the gateway answers 401 (undocumented there)."""
    case = Request("Device", [_org("YES"), _interaction(PSIS)]).case()
    response = send(case, conformance_sandbox, session, with_api_key=False)
    assert response.status_code == 401, _describe(response)
    outcome = _body(response)
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["details"]["coding"][0]["code"] == "ACCESS_DENIED"


@pytest.mark.parametrize("method", ["TRACE", "QUERY"])
def test_unrouted_method_is_an_operation_outcome(
    method: HttpMethod, conformance_sandbox: Sandbox, session: requests.Session
) -> None:
    """Every method but GET is a 405 OperationOutcome with ``Allow: GET`` (domain notes, 1)."""
    case = Request("Device", [_org("YES"), _interaction(PSIS)]).case(method)
    check(case, send(case, conformance_sandbox, session))
