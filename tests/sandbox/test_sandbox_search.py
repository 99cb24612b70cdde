"""/Device and /Endpoint over real sockets: query syntax, matching, bundles, headers, errors."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from .conftest import (
    ALERTS,
    EBS_EXPRESS,
    GP2GP,
    GPC_STRUCTURED,
    INTERACTION,
    OBSERVED,
    ODS,
    PARTY_KEY,
    PSIS,
    Param,
    interaction,
    issue,
    load_json,
    manufacturer,
    org,
    party_key,
    spine_code,
    without_ids,
)

UUID_RE = r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}"
SPINE_SYSTEM = "https://fhir.nhs.uk/STU3/ValueSet/Spine-ErrorOrWarningCode-1"


def _resources(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    return [entry["resource"] for entry in response.json()["entry"]]


# ----------------------------------------------------------------------- observed responses


def test_endpoint_matches_observed_integration_response(client: httpx.Client) -> None:
    response = client.get("/Endpoint", params=[org("YES"), interaction(PSIS)])
    assert without_ids(response.json()) == without_ids(
        load_json(OBSERVED / "integration-endpoint.json")
    )


def test_forward_reliable_matches_observed_response(client: httpx.Client) -> None:
    response = client.get(
        "/Endpoint", params=[org("X26"), interaction(GP2GP), party_key("X26-820918")]
    )
    assert without_ids(response.json()) == without_ids(
        load_json(OBSERVED / "integration-endpoint_forward_reliable.json")
    )


def test_forward_express_matches_observed_response(client: httpx.Client) -> None:
    response = client.get("/Endpoint", params=[org("X26"), interaction(EBS_EXPRESS)])
    assert without_ids(response.json()) == without_ids(
        load_json(OBSERVED / "integration-endpoint_forward_express.json")
    )


def test_device_matches_observed_integration_response(client: httpx.Client) -> None:
    """Everything matches except the manufacturer: NHS's published mock record says X09001
    where the environment the integration response came from said YES."""
    response = client.get("/Device", params=[org("YES"), interaction(PSIS)])
    expected = without_ids(load_json(OBSERVED / "integration-device.json"))
    actual = without_ids(response.json())
    actual_maker = actual["entry"][0]["resource"]["extension"].pop(0)
    expected_maker = expected["entry"][0]["resource"]["extension"].pop(0)
    assert actual_maker["valueReference"]["identifier"]["value"] == "X09001"
    assert expected_maker["valueReference"]["identifier"]["value"] == "YES"
    assert actual == expected


# ----------------------------------------------------------------------- bundles


def test_bundle_shape(client: httpx.Client, default_sandbox: Any) -> None:
    response = client.get("/Endpoint", params=[org("X26"), interaction(GP2GP)])
    bundle = response.json()
    assert list(bundle) == ["resourceType", "id", "type", "total", "link", "entry"]
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "searchset"
    assert bundle["total"] == 2 == len(bundle["entry"])
    assert bundle["link"] == [{"relation": "self", "url": unquote(str(response.url))}]
    base = default_sandbox.base_url + "/Endpoint"
    for entry in bundle["entry"]:
        assert list(entry) == ["fullUrl", "resource", "search"]
        assert entry["fullUrl"] == f"{base}/{entry['resource']['id']}"
        assert entry["search"] == {"mode": "match"}
    ids = [bundle["id"]] + [entry["resource"]["id"] for entry in bundle["entry"]]
    again = client.get("/Endpoint", params=[org("X26"), interaction(GP2GP)]).json()
    assert not set(ids) & ({again["id"]} | {e["resource"]["id"] for e in again["entry"]})


def test_no_match_is_an_empty_bundle(client: httpx.Client) -> None:
    for path, params in [
        ("/Device", [org("ZZZ99"), interaction(PSIS)]),
        ("/Endpoint", [org("ZZZ99"), interaction(PSIS)]),
    ]:
        response = client.get(path, params=params)
        assert response.status_code == 200
        body = response.json()
        assert body["total"] == 0
        assert body["entry"] == []


def test_record_without_address_gives_endpoint_without_address(
    tmp_path: Path, start_sandbox: Any, http: httpx.Client
) -> None:
    records = [
        {"nhsIDCode": "A1", "nhsMhsSvcIA": "svc:x", "nhsMHSEndPoint": []},
        {"nhsIDCode": "A1", "nhsMhsSvcIA": "svc:x", "nhsMHSEndPoint": ["https://a/", "https://b/"]},
    ]
    (tmp_path / "mhs-records.json").write_text(json.dumps(records))
    sandbox = start_sandbox(data_dir=tmp_path)
    response = http.get(sandbox.base_url + "/Endpoint", params=[org("A1"), interaction("svc:x")])
    resources = _resources(response)
    assert response.json()["total"] == 3
    assert [r.get("address") for r in resources] == [None, "https://a/", "https://b/"]


# ----------------------------------------------------------------------- matching


def test_device_matching(client: httpx.Client) -> None:
    def asids(*params: Param) -> list[str]:
        return [
            r["identifier"][0]["value"] for r in _resources(client.get("/Device", params=params))
        ]

    assert asids(org("X26"), interaction(GP2GP)) == ["918999199246"]
    assert asids(org("x26"), interaction(GP2GP)) == ["918999199246"]
    assert asids(org("X26"), interaction(GP2GP), party_key("X26-822084")) == ["918999199246"]
    assert asids(org("X26"), interaction(GP2GP), party_key("X26-000000")) == []
    assert asids(org("X26"), interaction(GP2GP), manufacturer("X26")) == ["918999199246"]
    assert asids(org("X26"), interaction(GP2GP), manufacturer("x26")) == ["918999199246"]
    assert asids(org("X26"), interaction(GP2GP), manufacturer("YGA")) == []
    assert asids(org("YES"), interaction(ALERTS), manufacturer("X09001")) == ["928942012545"]
    assert asids(org("YES"), interaction(GP2GP)) == []
    # The additions give B82617 GP2GP (the gp2gp adapter's new practice), on its own party key.
    assert asids(org("B82617"), interaction(GP2GP)) == ["918999198801"]
    assert asids(org("P83010"), interaction(GP2GP)) == ["918999198802"]


def test_device_owner_is_the_client_organisation(client: httpx.Client) -> None:
    [device] = _resources(client.get("/Device", params=[org("X26"), interaction(GP2GP)]))
    assert device["owner"]["identifier"] == {"system": ODS, "value": "X26"}
    assert device["identifier"][1] == {"system": PARTY_KEY, "value": "X26-822084"}


@pytest.mark.parametrize(
    ("params", "party_keys"),
    [
        ([org("X26"), interaction(GP2GP), party_key("X26-820918")], ["X26-820918"]),
        ([org("X26"), party_key("X26-820918")], ["X26-820918"]),
        ([org("X26"), interaction(GP2GP)], ["X26-9199246", "X26-820918"]),
        ([interaction(GP2GP), party_key("X26-9199246")], ["X26-9199246"]),
        ([org("b82617"), interaction(GPC_STRUCTURED)], ["B82617-0000806"]),
        ([org("B82617"), interaction(GPC_STRUCTURED.upper())], ["B82617-0000806"]),
        ([org("YES"), interaction(GP2GP)], []),
    ],
)
def test_endpoint_matching(
    client: httpx.Client, params: list[Param], party_keys: list[str]
) -> None:
    resources = _resources(client.get("/Endpoint", params=params))
    found = [
        next(i["value"] for i in r["identifier"] if i["system"] == PARTY_KEY) for r in resources
    ]
    assert found == party_keys


def test_forward_reliable_keeps_recipient_party_key_and_cpa(client: httpx.Client) -> None:
    resources = _resources(client.get("/Endpoint", params=[org("X26"), interaction(GP2GP)]))
    intermediary = "https://msg.int.spine2.ncrs.nhs.uk/reliablemessaging/intermediary"
    assert [r["address"] for r in resources] == [intermediary, intermediary]
    identifiers = [{i["system"]: i["value"] for i in r["identifier"]} for r in resources]
    cpa = "https://fhir.nhs.uk/Id/nhsMhsCPAId"
    assert [i[cpa] for i in identifiers] == ["S918999508766", "cb238429762210af860b"]


def test_other_interactions_keep_their_address(client: httpx.Client) -> None:
    [endpoint] = _resources(
        client.get("/Endpoint", params=[org("B82617"), party_key("B82617-0000806")])
    )
    assert endpoint["address"] == "https://orange.testlab.nhs.uk/B82617/STU3/1/gpconnect/"


@pytest.mark.parametrize(
    ("intermediaries", "diagnostics"),
    [
        (0, "Expected 1 result for forward reliable/express routing and reliability but got 0"),
        (2, "Expected 1 result for forward reliable/express routing and reliability but got 2"),
        (-1, "Expected 1 address for forward reliable/express routing and reliability but got 2"),
    ],
)
def test_forward_reliable_without_exactly_one_intermediary_fails(
    tmp_path: Path, start_sandbox: Any, intermediaries: int, diagnostics: str, http: httpx.Client
) -> None:
    recipient = {
        "nhsIDCode": "R1",
        "nhsMhsSvcIA": GP2GP,
        "nhsMHSPartyKey": "R1-1",
        "nhsMHSEndPoint": ["https://r1/"],
    }
    hub = {
        "nhsIDCode": "HUB",
        "nhsMhsSvcIA": "urn:nhs:names:services:tms:ReliableIntermediary",
        "nhsMHSEndPoint": ["https://hub/"],
    }
    if intermediaries == -1:
        records = [recipient, {**hub, "nhsMHSEndPoint": ["https://hub/1", "https://hub/2"]}]
    else:
        records = [recipient] + [hub] * intermediaries
    (tmp_path / "mhs-records.json").write_text(json.dumps(records))
    sandbox = start_sandbox(data_dir=tmp_path, spine_core_ods="HUB")
    response = http.get(sandbox.base_url + "/Endpoint", params=[org("R1"), interaction(GP2GP)])
    assert response.status_code == 500
    assert issue(response)["code"] == "exception"
    assert spine_code(response) == "INTERNAL_SERVER_ERROR"
    assert issue(response)["diagnostics"] == diagnostics
    # Found by party key alone, the record's one interaction still routes through the hub.
    by_key = http.get(sandbox.base_url + "/Endpoint", params=[org("R1"), party_key("R1-1")])
    assert by_key.status_code == 500


def test_spine_core_ods_is_configurable(
    tmp_path: Path, start_sandbox: Any, http: httpx.Client
) -> None:
    records = [
        {"nhsIDCode": "R1", "nhsMhsSvcIA": GP2GP, "nhsMHSEndPoint": ["https://r1/"]},
        {
            "nhsIDCode": "HUB",
            "nhsMhsSvcIA": "urn:nhs:names:services:tms:ReliableIntermediary",
            "nhsMHSEndPoint": ["https://hub/"],
        },
    ]
    (tmp_path / "mhs-records.json").write_text(json.dumps(records))
    sandbox = start_sandbox(data_dir=tmp_path, spine_core_ods="HUB")
    [endpoint] = _resources(
        http.get(sandbox.base_url + "/Endpoint", params=[org("R1"), interaction(GP2GP)])
    )
    assert endpoint["address"] == "https://hub/"


# ----------------------------------------------------------------------- query syntax


def _diagnostics(response: httpx.Response) -> str:
    assert response.status_code == 400, response.text
    assert issue(response)["code"] == "required"
    assert spine_code(response) == "BAD_REQUEST"
    text: str = issue(response)["diagnostics"]
    return text


@pytest.mark.parametrize("path", ["/Device", "/Endpoint"])
def test_unknown_parameter_is_named(client: httpx.Client, path: str) -> None:
    params = [org("X26"), interaction(GP2GP), ("_format", "json")]
    assert "Illegal query parameter '_format'" in _diagnostics(client.get(path, params=params))


def test_manufacturer_is_illegal_on_endpoint_and_page_without_paging(client: httpx.Client) -> None:
    params = [org("X26"), interaction(GP2GP), manufacturer("X26")]
    text = _diagnostics(client.get("/Endpoint", params=params))
    assert "Illegal query parameter 'manufacturing-organization'" in text
    params = [org("X26"), interaction(GP2GP), ("page", "2")]
    assert "Illegal query parameter 'page'" in _diagnostics(client.get("/Device", params=params))


@pytest.mark.parametrize(
    ("param", "expected"),
    [
        (("organization", "X26"), f"Should be 'organization={ODS}|value'"),
        (("organization", "https://example.org/ods|X26"), f"Should be 'organization={ODS}|value'"),
        (
            ("identifier", GP2GP),
            f"'identifier={INTERACTION}|value', 'identifier={PARTY_KEY}|value'",
        ),
        (("identifier", f"{INTERACTION}:{GP2GP}"), f"'identifier={INTERACTION}|value'"),
        (
            ("manufacturing-organization", "X26"),
            f"Should be 'manufacturing-organization={ODS}|value'",
        ),
    ],
)
def test_wrong_system_or_missing_bar_says_the_expected_form(
    client: httpx.Client, param: Param, expected: str
) -> None:
    params = [org("X26"), interaction(GP2GP), param]
    assert expected in _diagnostics(client.get("/Device", params=params))


@pytest.mark.parametrize(
    ("params", "missing"),
    [
        ([interaction(GP2GP)], "organization"),
        ([org("X26")], "identifier"),
        ([org("X26"), party_key("X26-822084")], "identifier"),
        ([org("  "), interaction(GP2GP)], "organization"),
        ([], "organization"),
    ],
)
def test_device_requires_organization_and_interaction(
    client: httpx.Client, params: list[Param], missing: str
) -> None:
    text = _diagnostics(client.get("/Device", params=params))
    assert f"Missing or invalid '{missing}' query parameter" in text


@pytest.mark.parametrize(
    "params",
    [
        [org("X26")],
        [interaction(GP2GP)],
        [party_key("X26-820918")],
        [],
        [org("X26"), ("identifier", f"{INTERACTION}| ")],
    ],
    ids=["org", "interaction", "party-key", "nothing", "blank-interaction"],
)
def test_endpoint_refuses_other_combinations_and_lists_the_allowed_ones(
    client: httpx.Client, params: list[Param]
) -> None:
    text = _diagnostics(client.get("/Endpoint", params=params))
    org_form = f"organization={ODS}|value"
    interaction_form = f"identifier={INTERACTION}|value"
    party_form = f"identifier={PARTY_KEY}|value"
    # Exactly the server's text, whose items run together without separators
    # (sds/request/routing_reliability_handler.py _raise_invalid_query_params_error).
    assert text == (
        "HTTP 400: Bad Request (Missing or invalid query parameters. "
        "Should one of following combinations: ["
        f"'{org_form}&{interaction_form}&{party_form}'"
        f"'{org_form}&{interaction_form}'"
        f"'{org_form}&{party_form}'"
        f"'{interaction_form}&{party_form}']"
        ")"
    )


def test_last_value_wins_and_values_are_stripped(client: httpx.Client) -> None:
    response = client.get(
        "/Device",
        params=[org("YES"), org("  X26 "), interaction("nothing"), interaction(f" {GP2GP}  ")],
    )
    assert response.json()["total"] == 1
    response = client.get(
        "/Endpoint",
        params=[org("X26"), party_key("X26-9199246"), party_key("X26-820918")],
    )
    [endpoint] = _resources(response)
    assert {"system": PARTY_KEY, "value": "X26-820918"} in endpoint["identifier"]


def test_encoded_and_unencoded_bars_are_the_same(client: httpx.Client) -> None:
    raw = f"/Device?organization={ODS}|X26&identifier={INTERACTION}|{GP2GP}"
    encoded = f"/Device?organization={ODS}%7CX26&identifier={INTERACTION}%7C{GP2GP}"
    assert client.get(raw).json()["total"] == client.get(encoded).json()["total"] == 1


# ----------------------------------------------------------------------- paging


def test_paging_follows_next_links(tmp_path: Path, start_sandbox: Any) -> None:
    records = [
        {"nhsIDCode": "P1", "nhsMhsSvcIA": "svc:p", "nhsMHSEndPoint": [f"https://h/{i}"]}
        for i in range(5)
    ]
    (tmp_path / "mhs-records.json").write_text(json.dumps(records))
    sandbox = start_sandbox(data_dir=tmp_path, page_size=2)
    url: str | None = sandbox.base_url + "/Endpoint"
    params: Any = [org("P1"), interaction("svc:p")]
    addresses, totals, pages = [], set(), 0
    with httpx.Client() as http:
        while url:
            response = http.get(url, params=params)
            params = None
            bundle = response.json()
            pages += 1
            totals.add(bundle["total"])
            addresses += [entry["resource"]["address"] for entry in bundle["entry"]]
            assert len(bundle["entry"]) <= 2
            links = {link["relation"]: link["url"] for link in bundle["link"]}
            url = links.get("next")
            if url:
                assert url.startswith(sandbox.base_url + "/Endpoint?")
                assert url.count("page=") == 1
        beyond = http.get(
            sandbox.base_url + "/Endpoint",
            params=[org("P1"), interaction("svc:p"), ("page", "9")],
        ).json()
        bad = http.get(
            sandbox.base_url + "/Endpoint",
            params=[org("P1"), interaction("svc:p"), ("page", "0")],
        )
    assert pages == 3
    assert totals == {5}
    assert addresses == [f"https://h/{i}" for i in range(5)]
    assert beyond["total"] == 5
    assert beyond["entry"] == []
    assert "'page'" in _diagnostics(bad)


# ----------------------------------------------------------------------- headers


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        (None, "application/fhir+json"),
        ("*/*", "application/fhir+json"),
        ("application/fhir+json", "application/fhir+json"),
        ("application/json", "application/json"),
        ("APPLICATION/FHIR+JSON", "application/fhir+json"),
        ("text/html, application/json", "application/json"),
        # A part with parameters matches nothing (the server compares exactly), so here only
        # application/json is acceptable.
        ("application/json, application/fhir+json;q=0.9", "application/json"),
        ("application/fhir+json;charset=utf-8, */*", "application/fhir+json"),
        ("application/json  ,text/html", "application/json"),
    ],
)
def test_accept_negotiation(client: httpx.Client, accept: str | None, media_type: str) -> None:
    headers = {"Accept": accept} if accept else {}
    request = client.build_request(
        "GET", "/Device", params=[org("X26"), interaction(GP2GP)], headers=headers
    )
    if accept is None:
        del request.headers["Accept"]
    response = client.send(request)
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type


@pytest.mark.parametrize(
    "accept",
    [
        "application/xml",
        "text/html",
        "application/fhir+json+xml",
        # sds/request/content_type_validator.py compares whole parts: parameters fail.
        "application/fhir+json;charset=utf-8",
        "application/fhir+json; charset=utf-8",
        "application/json;q=1",
        "*/*;q=0.8",
        "application/*",
        "",
    ],
)
def test_unacceptable_accept_is_406(client: httpx.Client, accept: str) -> None:
    response = client.get(
        "/Endpoint", params=[org("X26"), interaction(GP2GP)], headers={"Accept": accept}
    )
    assert response.status_code == 406
    assert response.headers["content-type"] == "application/fhir+json"
    assert spine_code(response) == "MISSING_OR_INVALID_HEADER"
    assert issue(response)["code"] == "not-supported"
    assert issue(response)["diagnostics"] == "Accept type not supported"


def test_correlation_id_is_echoed_or_generated(client: httpx.Client) -> None:
    sent = str(uuid.uuid4())
    params = [org("X26"), interaction(GP2GP)]
    response = client.get("/Device", params=params, headers={"X-Correlation-ID": sent})
    assert response.headers["x-correlation-id"] == sent
    generated = client.get("/Device", params=params).headers["x-correlation-id"]
    assert uuid.UUID(generated)
    assert generated == generated.upper()  # message_utilities.get_uuid()
    error = client.get("/Device", params=[org("X26")], headers={"X-Correlation-ID": sent})
    assert error.headers["x-correlation-id"] == sent
    assert error.json()["id"] == sent


def test_invalid_correlation_id_is_400(client: httpx.Client) -> None:
    response = client.get(
        "/Device",
        params=[org("X26"), interaction(GP2GP)],
        headers={"X-Correlation-ID": "not-a-uuid"},
    )
    text = _diagnostics(response)
    assert "Invalid X-Correlation-ID header" in text
    replacement = response.headers["x-correlation-id"]
    assert replacement != "not-a-uuid"
    assert response.json()["id"] == replacement


def test_request_id_is_not_echoed(client: httpx.Client) -> None:
    """NHS's server reads X-Request-ID but sets only X-Correlation-ID on its answers
    (sds/request/tracking_ids_headers_reader.py and the handlers)."""
    params = [org("X26"), interaction(GP2GP)]
    for path, query in [("/Device", params), ("/Device", []), ("/Nowhere", [])]:
        response = client.get(path, params=query, headers={"X-Request-ID": str(uuid.uuid4())})
        assert "x-request-id" not in response.headers
        assert response.headers["x-correlation-id"]


# ----------------------------------------------------------------------- errors


def _assert_spine_outcome(response: httpx.Response, status: int, code: str, spine: str) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/fhir+json"
    body = response.json()
    # The server's OperationOutcome (sds/request/error_handler.py): no meta, and codings of
    # system, code and display only.
    assert list(body) == ["resourceType", "id", "issue"]
    assert body["id"] == response.headers["x-correlation-id"]
    [only] = body["issue"]
    assert list(only) == ["severity", "code", "details", "diagnostics"]
    assert only["severity"] == "error"
    assert only["code"] == code
    [coding] = only["details"]["coding"]
    assert list(coding) == ["system", "code", "display"]
    assert coding["system"] == SPINE_SYSTEM
    assert coding["code"] == spine
    assert coding["display"]
    assert only["diagnostics"]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])
@pytest.mark.parametrize("path", ["/Device", "/Endpoint"])
def test_other_methods_are_405(client: httpx.Client, method: str, path: str) -> None:
    response = client.request(method, path, params=[org("X26"), interaction(GP2GP)])
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
    if method != "HEAD":
        _assert_spine_outcome(response, 405, "not-supported", "NOT_IMPLEMENTED")


@pytest.mark.parametrize(
    "path",
    [
        "/spine-directory/FHIR/R4/Organization",
        "/spine-directory/FHIR/R4/device",
        "/spine-directory/FHIR/R4/Device/123",
        "/spine-directory/FHIR/R4/",
        "/",
        "/elsewhere",
    ],
)
def test_unknown_paths_are_404(client: httpx.Client, default_sandbox: Any, path: str) -> None:
    response = client.get(default_sandbox.url + path)
    _assert_spine_outcome(response, 404, "not-found", "NO_RECORD_FOUND")


def test_bad_request_outcome_shape(client: httpx.Client) -> None:
    _assert_spine_outcome(client.get("/Device"), 400, "required", "BAD_REQUEST")


def test_empty_data_dir_answers_empty_bundles(
    tmp_path: Path, start_sandbox: Any, http: httpx.Client
) -> None:
    sandbox = start_sandbox(data_dir=tmp_path)
    response = http.get(sandbox.base_url + "/Device", params=[org("X26"), interaction(GP2GP)])
    assert response.json()["total"] == 0


def test_synthetic_practices_are_served(start_sandbox: Any) -> None:
    from sds_plugins._sandbox._records import synthetic_records

    mhs, accredited = synthetic_records(10, seed=5)
    sandbox = start_sandbox(synthetic=10, seed=5)
    ods, key = mhs[3]["nhsIDCode"], mhs[3]["nhsMHSPartyKey"]
    with httpx.Client(base_url=sandbox.base_url) as http:
        [endpoint] = _resources(
            http.get("/Endpoint", params=[org(ods), interaction(GPC_STRUCTURED)])
        )
        [device] = _resources(
            http.get("/Device", params=[org(ods), interaction(GPC_STRUCTURED), party_key(key)])
        )
        # The reference data is still there too.
        assert http.get("/Device", params=[org("X26"), interaction(GP2GP)]).json()["total"] == 1
    assert endpoint["address"] == mhs[3]["nhsMHSEndPoint"][0]
    assert device["identifier"][0]["value"] == accredited[3]["uniqueIdentifier"][0]
