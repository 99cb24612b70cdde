"""Parsing SDS answers: every reference response, unknown fields, and named structural errors."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from sds_plugins import (
    AccreditedSystem,
    MalformedResponseError,
    MessageHandlingEndpoint,
    parse_devices,
    parse_endpoints,
)

from ._reference import SDS_REFERENCE, load_json

OBSERVED = SDS_REFERENCE / "observed-responses"
EXAMPLES = SDS_REFERENCE / "spec" / "components" / "examples"


def _resolve_refs(node: Any, base: Path) -> Any:
    """The spec's examples point at each other with $ref; inline them as the API would."""
    if isinstance(node, dict):
        if set(node) == {"$ref"}:
            return _resolve_refs(load_json(base / node["$ref"]), base)
        return {key: _resolve_refs(value, base) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve_refs(item, base) for item in node]
    return node


def _responses() -> list[tuple[str, Any]]:
    cases = []
    for path in sorted(OBSERVED.glob("*.json")) + sorted(EXAMPLES.glob("*.json")):
        body = _resolve_refs(load_json(path), path.parent)
        if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
            continue  # an error body: the client's error tests use it
        if isinstance(body, list):  # a list of bare resources, as one server's fixture keeps them
            cases.extend((f"{path.name}[{i}]", item) for i, item in enumerate(body))
        else:
            cases.append((path.name, body))
    return cases


def _kind(body: dict[str, Any]) -> str | None:
    if body["resourceType"] in ("Device", "Endpoint"):
        return str(body["resourceType"])
    entries = body.get("entry") or []
    if entries:
        return str(entries[0]["resource"]["resourceType"])
    return None


@pytest.mark.parametrize(("name", "body"), _responses(), ids=[name for name, _ in _responses()])
def test_every_reference_response_parses(name: str, body: dict[str, Any]) -> None:
    kind = _kind(body)
    if kind is None:  # an empty searchset parses as either kind
        assert parse_devices(body).records == ()
        assert parse_endpoints(body).records == ()
        return
    parsed = parse_devices(body) if kind == "Device" else parse_endpoints(body)
    expected = len(body.get("entry", [])) if body["resourceType"] == "Bundle" else 1
    assert len(parsed.records) == expected
    for record in parsed.records:
        assert record.party_key
        if isinstance(record, AccreditedSystem):
            assert record.asid
            assert record.interactions
        else:
            assert record.interaction


def test_device_fields() -> None:
    [device] = parse_devices(load_json(OBSERVED / "integration-device.json")).records
    assert device.asid == "928942012545"
    assert device.party_key == "YES-0000806"
    assert device.ods_code == "YES"
    assert device.manufacturer_ods == "YES"
    assert "urn:nhs:names:services:psis:REPC_IN150016UK05" in device.interactions
    assert len(device.interactions) > 100


def test_endpoint_fields_and_reliability() -> None:
    [endpoint] = parse_endpoints(
        load_json(OBSERVED / "integration-endpoint_forward_reliable.json")
    ).records
    assert endpoint == MessageHandlingEndpoint(
        address="https://msg.int.spine2.ncrs.nhs.uk/reliablemessaging/intermediary",
        party_key="X26-820918",
        ods_code="X26",
        fqdn="INT.EPR.Smoke.Tests.77.nhs.uk",
        cpa_id="cb238429762210af860b",
        mhs_id="cb238429762210af860b",
        interaction="urn:nhs:names:services:gp2gp:COPC_IN000001UK01",
        reliability=endpoint.reliability,
    )
    reliability = endpoint.reliability
    assert reliability is not None
    assert reliability.retries == 2
    assert reliability.retry_interval == "PT2H"
    assert reliability.retry_interval_s == 7200
    assert reliability.persist_duration == "PT7H"
    assert reliability.persist_duration_s == 7 * 3600
    assert reliability.retry_interval_td is not None
    assert reliability.retry_interval_td.total_seconds() == 7200
    assert reliability.duplicate_elimination == "always"
    assert reliability.ack_requested == "always"
    assert reliability.sync_reply_mode == "None"


def test_empty_address_means_no_address() -> None:
    body = load_json(OBSERVED / "gpc-consumer-sds_endpoint_no_address_response.json")
    [endpoint] = parse_endpoints(body).records
    assert endpoint.address is None
    assert endpoint.party_key == "ABC123-822104"


def test_non_duration_text_is_kept_raw() -> None:
    body = load_json(OBSERVED / "integration-endpoint.json")
    reliability = body["entry"][0]["resource"]["extension"][0]["extension"]
    reliability[1]["valueString"] = "some_retry_interval"
    [endpoint] = parse_endpoints(body).records
    assert endpoint.reliability is not None
    assert endpoint.reliability.retry_interval == "some_retry_interval"
    assert endpoint.reliability.retry_interval_s is None


def test_unknown_fields_are_tolerated() -> None:
    body = load_json(OBSERVED / "sds-server-single_device.json")
    body["meta"] = {"lastUpdated": "2026-01-01"}
    body["entry"][0]["resource"]["somethingNew"] = {"x": [1, 2]}
    body["entry"][0]["resource"]["identifier"][0]["use"] = "official"
    [device] = parse_devices(body).records
    assert device.asid == "928942012545"


def test_records_are_frozen() -> None:
    [device] = parse_devices(load_json(OBSERVED / "sds-server-single_device.json")).records
    with pytest.raises(ValueError, match="frozen"):
        device.asid = "1"  # type: ignore[misc]


def _broken(mutate: Any) -> dict[str, Any]:
    body = copy.deepcopy(load_json(OBSERVED / "sds-server-multiple_endpoints.json"))
    mutate(body)
    return body


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda b: b.update(entry="nope"), "entry"),
        (lambda b: b["entry"][1].pop("resource"), "entry[1].resource"),
        (
            lambda b: b["entry"][2]["resource"].update(identifier={"a": 1}),
            "entry[2].resource.identifier",
        ),
        (
            lambda b: b["entry"][0]["resource"]["identifier"][1].update(value=42),
            "entry[0].resource.identifier[1].value",
        ),
        (
            lambda b: b["entry"][0]["resource"].update(resourceType="Device"),
            "entry[0].resource.resourceType",
        ),
        (lambda b: b.update(resourceType="Patient"), "resourceType"),
        (lambda b: b.update(total="many"), "total"),
    ],
)
def test_structural_errors_name_the_field(mutate: Any, field: str) -> None:
    with pytest.raises(MalformedResponseError) as info:
        parse_endpoints(_broken(mutate))
    assert info.value.field == field
    assert field in str(info.value)


def test_a_body_that_is_not_an_object() -> None:
    with pytest.raises(MalformedResponseError, match="expected a JSON object"):
        parse_devices(["not", "a", "bundle"])


def test_next_link_is_exposed() -> None:
    body = load_json(OBSERVED / "sds-server-single_device.json")
    body["link"].append({"relation": "next", "url": "http://127.0.0.1:61191/Device?page=2"})
    assert parse_devices(body).next_url == "http://127.0.0.1:61191/Device?page=2"
