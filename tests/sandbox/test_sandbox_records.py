"""Records and mapping: LDAP attribute records to FHIR, against NHS's own mapping vectors."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from sds_plugins._sandbox._mapping import DirectoryDataError, device_resource, endpoint_resources
from sds_plugins._sandbox._records import (
    GPCONNECT_INTERACTIONS,
    Directory,
    Record,
    load_directory,
    normalise,
    synthetic_records,
)
from sds_plugins.sandbox import Sandbox, SandboxConfig

from .conftest import GP2GP, GPC_STRUCTURED, VECTORS, interaction, load_json, org, party_key


def _vectors(kind: str) -> list[Path]:
    return sorted((VECTORS / kind).glob("*.in.json"))


def _ordered_without_ids(value: Any) -> str:
    """JSON text without ids; comparing text also checks element order."""

    def strip(item: Any) -> Any:
        if isinstance(item, dict):
            return {k: strip(v) for k, v in item.items() if k != "id"}
        if isinstance(item, list):
            return [strip(v) for v in item]
        return item

    return json.dumps(strip(value))


def test_every_vector_kind_is_present() -> None:
    assert len(_vectors("device")) == 5
    assert len(_vectors("endpoint")) == 6


@pytest.mark.parametrize("vector", _vectors("device"), ids=lambda p: p.name.split(".")[0])
def test_device_mapping_vectors(vector: Path) -> None:
    expected = load_json(vector.with_name(vector.name.replace(".in.", ".out.")))
    actual = device_resource(normalise(load_json(vector)))
    assert _ordered_without_ids(actual) == _ordered_without_ids(expected)


@pytest.mark.parametrize("vector", _vectors("endpoint"), ids=lambda p: p.name.split(".")[0])
def test_endpoint_mapping_vectors(vector: Path) -> None:
    expected = load_json(vector.with_name(vector.name.replace(".in.", ".out.")))
    actual = endpoint_resources(normalise(load_json(vector)))
    assert _ordered_without_ids(actual) == _ordered_without_ids(expected)


@pytest.mark.parametrize("kind", ["device", "endpoint"])
def test_mapped_vectors_served_end_to_end(
    kind: str, tmp_path: Path, start_sandbox: Any, http: httpx.Client
) -> None:
    """Each vector record, given just enough attributes to be found, comes back as mapped."""
    records = []
    for number, vector in enumerate(_vectors(kind)):
        record = load_json(vector)
        record["nhsIDCode" if kind == "endpoint" else "nhsIdCode"] = f"V{number:05d}"
        record["nhsMhsSvcIA" if kind == "endpoint" else "nhsAsSvcIA"] = [f"svc:{number}"]
        records.append(record)
    name = "mhs-records.json" if kind == "endpoint" else "accredited-system-records.json"
    (tmp_path / name).write_text(json.dumps(records))
    sandbox = start_sandbox(data_dir=tmp_path)
    path = "/Endpoint" if kind == "endpoint" else "/Device"
    for number, record in enumerate(records):
        response = http.get(
            sandbox.base_url + path, params=[org(f"V{number:05d}"), interaction(f"svc:{number}")]
        )
        assert response.status_code == 200
        served = [entry["resource"] for entry in response.json()["entry"]]
        local = (
            endpoint_resources(normalise(record))
            if kind == "endpoint"
            else [device_resource(normalise(record))]
        )
        assert _ordered_without_ids(served) == _ordered_without_ids(local)


def test_fresh_uuid_ids() -> None:
    record = normalise(load_json(VECTORS / "endpoint" / "everything.in.json"))
    ids = [resource["id"] for resource in endpoint_resources(record)]
    ids += [resource["id"] for resource in endpoint_resources(record)]
    assert len(set(ids)) == 4
    # Upper case, as NHS's server makes them (sds/utilities/message_utilities.py get_uuid).
    assert all(re.fullmatch(r"[0-9A-F]{8}(-[0-9A-F]{4}){3}-[0-9A-F]{12}", i) for i in ids)


def test_attribute_names_are_case_insensitive_and_values_normalised() -> None:
    record = normalise(
        {
            "nhsMHSPartyKey": "A-1",
            "NHSMHSPARTYKEY": ["A-2", None],
            "nhsMHSRetries": 3,
            "nhsMHSActor": [None],
            "nhsMhsFQDN": "",
            "uniqueIdentifier": None,
        }
    )
    assert record.values("nhsmhspartykey") == ("A-1", "A-2")
    assert record.first("nhsMhsPartyKey") == "A-1"
    assert record.first("nhsMHSRetries") == "3"
    assert record.values("nhsMHSActor") == ()
    assert record.first("nhsMhsFQDN") is None
    assert record.first("uniqueIdentifier") is None


def test_retries_string_becomes_integer_and_junk_is_refused() -> None:
    [endpoint] = endpoint_resources(normalise({"nhsMHSRetries": "2"}))
    assert endpoint["extension"][0]["extension"] == [{"url": "nhsMHSRetries", "valueInteger": 2}]
    [endpoint] = endpoint_resources(normalise({"nhsMHSRetries": " 3 "}))  # int() allows blanks
    assert endpoint["extension"][0]["extension"] == [{"url": "nhsMHSRetries", "valueInteger": 3}]
    # NHS's mapper calls int() on it (sds/request/fhir_json_mapper.py): junk fails the search.
    with pytest.raises(DirectoryDataError, match="invalid literal for int"):
        endpoint_resources(normalise({"nhsMHSRetries": "often"}))


@pytest.mark.parametrize(
    ("build", "attribute"),
    [
        (lambda: device_resource(normalise({"uniqueIdentifier": ["1", "2"]})), "uniqueIdentifier"),
        (lambda: device_resource(normalise({"nhsAsClient": ["A", "B"]})), "nhsAsClient"),
        (
            lambda: endpoint_resources(normalise({"uniqueIdentifier": ["1", "2"]})),
            "uniqueIdentifier",
        ),
        (lambda: endpoint_resources(normalise({"nhsMHSActor": ["a", "b"]})), "nhsMHSActor"),
    ],
    ids=["device-asid", "device-client", "endpoint-id", "endpoint-actor"],
)
def test_more_than_one_value_of_a_single_attribute_is_refused(build: Any, attribute: str) -> None:
    """sds/request/fhir_json_mapper.py raises ValueError for these; the server answers 500."""
    with pytest.raises(DirectoryDataError) as info:
        build()
    assert str(info.value) == f"LDAP returned more than 1 '{attribute}' attribute"


def test_device_owner_and_manufacturer_come_from_their_own_attributes() -> None:
    device = device_resource(
        normalise(
            {
                "nhsIDCode": "AAA",
                "nhsAsClient": ["OWNER"],
                "nhsMhsManufacturerOrg": "MAKER",
                "uniqueIdentifier": ["123456789012"],
            }
        )
    )
    assert device["owner"]["identifier"]["value"] == "OWNER"
    assert device["extension"][0]["valueReference"]["identifier"]["value"] == "MAKER"
    assert device["identifier"] == [
        {"system": "https://fhir.nhs.uk/Id/nhsSpineASID", "value": "123456789012"}
    ]


def test_directory_lookup_is_case_insensitive_and_indexed() -> None:
    directory = Directory.from_raw(
        [
            {"nhsIDCode": "ABC", "nhsMhsSvcIA": ["svc:a"], "nhsMHSPartyKey": "ABC-1"},
            {"nhsIdCode": "abc", "nhsMhsSvcIA": "svc:b", "nhsMhsPartyKey": "ABC-2"},
        ],
        [{"nhsIDCode": "ABC", "nhsAsSvcIA": ["svc:a"], "nhsMhsManufacturerOrg": "YGA"}],
    )
    assert len(directory.find_mhs("abc", None, None)) == 2
    assert len(directory.find_mhs("abc", "svc:a", None)) == 1
    assert len(directory.find_mhs("ABC", None, "abc-2")) == 1
    assert len(directory.find_mhs(None, "SVC:B", "ABC-2")) == 1
    assert directory.find_as("abc", "svc:a", manufacturer="yga")
    assert not directory.find_as("abc", "svc:a", manufacturer="X26")


def test_synthetic_records_are_deterministic_unique_and_realistic() -> None:
    mhs, accredited = synthetic_records(500, seed=7)
    assert (mhs, accredited) == synthetic_records(500, seed=7)
    assert synthetic_records(50, seed=8)[0] != mhs[:50]
    codes = [record["nhsIDCode"] for record in mhs]
    assert len(set(codes)) == 500
    assert all(re.fullmatch(r"[A-Z]\d{5}", code) for code in codes)
    asids = [record["uniqueIdentifier"][0] for record in accredited]
    assert len(set(asids)) == 500
    assert all(re.fullmatch(r"\d{12}", asid) for asid in asids)
    for mhs_record, as_record in zip(mhs, accredited, strict=True):
        ods = mhs_record["nhsIDCode"]
        assert re.fullmatch(rf"{ods}-\d{{6}}", mhs_record["nhsMHSPartyKey"])
        assert as_record["nhsMHSPartyKey"] == mhs_record["nhsMHSPartyKey"]
        assert as_record["nhsAsClient"] == [ods]
        assert as_record["nhsMhsManufacturerOrg"] in {"YGA", "YGM24", "X26", "YGMA1"}
        assert mhs_record["nhsMhsSvcIA"] == list(GPCONNECT_INTERACTIONS)
        assert as_record["nhsAsSvcIA"] == list(GPCONNECT_INTERACTIONS)
        [address] = mhs_record["nhsMHSEndPoint"]
        assert re.fullmatch(rf"https://[a-z0-9.-]+\.nhs\.uk/{ods}/STU3/1/gpconnect/", address)
        assert mhs_record["nhsMhsFQDN"] == address.split("/")[2]
        assert mhs_record["nhsMhsCPAId"]


def test_synthetic_avoids_excluded_codes() -> None:
    first = synthetic_records(20, seed=3)[0][0]["nhsIDCode"]
    again = synthetic_records(20, seed=3, exclude=[first])[0]
    assert first not in {record["nhsIDCode"] for record in again}


def test_data_dir_with_missing_files_is_empty(tmp_path: Path) -> None:
    directory = load_directory(tmp_path)
    assert (directory.mhs_count, directory.as_count) == (0, 0)
    directory = load_directory(tmp_path, synthetic=3)
    assert (directory.mhs_count, directory.as_count) == (3, 3)


def test_default_data_is_the_packaged_reference_and_the_projects_additions() -> None:
    directory = load_directory(None)
    # 9 reference MHS records and 2 systems; the additions: B82617's GP Connect system, and two
    # GP2GP practices (B82617, P83010) with an MHS record per interaction and a system each.
    assert (directory.mhs_count, directory.as_count) == (9 + 8, 2 + 1 + 2)
    [added] = directory.find_as("B82617", GPC_STRUCTURED)
    assert added.first("uniqueIdentifier") == "918999198993"
    assert added.first("nhsMHSPartyKey") == "B82617-0000806"


def test_the_packaged_reference_files_are_nhs_englands_unchanged() -> None:
    # The additions live in their own folder: the reference copies stay as NHS published them.
    from sds_plugins._sandbox._records import AS_FILE, MHS_FILE, packaged_raw

    ldap = Path(__file__).resolve().parents[1] / "reference" / "sds" / "ldap-records"
    for name in (MHS_FILE, AS_FILE):
        assert packaged_raw(name) == json.loads((ldap / name).read_text())


def test_a_data_folder_adds_to_the_default_data_when_its_manifest_says_so(
    tmp_path: Path,
) -> None:
    from sds_plugins._sandbox._records import DATA_MANIFEST

    (tmp_path / "mhs-records.json").write_text(
        json.dumps([{"nhsIDCode": "A12345", "nhsMhsSvcIA": GP2GP, "nhsMHSPartyKey": "A12345-1"}])
    )
    assert (load_directory(tmp_path).mhs_count, load_directory(tmp_path).as_count) == (1, 0)
    (tmp_path / DATA_MANIFEST).write_text('{"mode": "add"}')
    added = load_directory(tmp_path)
    assert (added.mhs_count, added.as_count) == (9 + 8 + 1, 2 + 1 + 2)
    assert added.find_mhs("YES", "urn:nhs:names:services:tms:ReliableIntermediary", None)
    (tmp_path / DATA_MANIFEST).write_text('{"mode": "replace"}')
    assert load_directory(tmp_path).mhs_count == 1
    (tmp_path / DATA_MANIFEST).write_text('{"mode": "merge"}')
    with pytest.raises(ValueError, match="add"):
        load_directory(tmp_path)


def test_fifty_thousand_practices_are_served_from_the_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mhs, _ = synthetic_records(50_000, seed=11)
    probes = [mhs[i] for i in range(0, 50_000, 5_000)]
    directory = load_directory(None, synthetic=50_000, seed=11)
    examined = 0
    real_values = Record.values

    def counting(record: Record, key: str) -> tuple[str, ...]:
        nonlocal examined
        examined += 1
        return real_values(record, key)

    monkeypatch.setattr(Record, "values", counting)
    for probe in probes:
        [found] = directory.find_mhs(probe["nhsIDCode"], GPC_STRUCTURED, None)
        assert found.values("nhsMHSPartyKey") == (probe["nhsMHSPartyKey"],)
    # A lookup checks the records of its index bucket (one practice), never the directory:
    # a scan would examine 50,000 records per lookup. (Speed itself is measured in bench/.)
    assert examined < 10 * len(probes)
    monkeypatch.undo()
    with (
        Sandbox(SandboxConfig(synthetic=50_000, seed=11)) as sandbox,
        httpx.Client(base_url=sandbox.base_url) as http,
    ):
        for probe in probes:
            response = http.get(
                "/Device",
                params=[
                    org(probe["nhsIDCode"]),
                    interaction(GPC_STRUCTURED),
                    party_key(probe["nhsMHSPartyKey"]),
                ],
            )
            assert response.json()["total"] == 1


def test_a_query_with_many_wildcards_is_matched_in_linear_time() -> None:
    # A regex of many ".*" backtracks exponentially on a value that does not match: one such
    # query held the whole sandbox. (Without the fix this test runs into the suite's timeout.)
    from sds_plugins._sandbox._records import value_matcher

    assert value_matcher("a*" * 40 + "b")("a" * 20_000) is False
    assert value_matcher("a*" * 40 + "b")("a" * 20_000 + "b") is True
    for pattern, value, expected in [
        ("a*c", "abc", True),
        ("a*c", "ac", True),
        ("*", "", True),
        ("ab*ba", "aba", False),
        ("a**a", "a", False),
        ("*x*y", "xyxy", True),
    ]:
        assert value_matcher(pattern)(value) is expected, (pattern, value)
