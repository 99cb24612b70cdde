"""Input validation and query building: everything is refused before a request exists."""

from __future__ import annotations

import uuid

import pytest

from sds_plugins import DeviceQuery, EndpointQuery, InvalidInputError
from sds_plugins._validation import (
    check_header_value,
    normalise_correlation_id,
    normalise_interaction,
    normalise_ods_code,
    normalise_party_key,
)

from ._reference import GPC_STRUCTURED

ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
IID = "https://fhir.nhs.uk/Id/nhsServiceInteractionId"
PK = "https://fhir.nhs.uk/Id/nhsMhsPartyKey"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(" b82617 ", "B82617"), ("yes", "YES"), ("X26", "X26"), ("8hk52", "8HK52")],
)
def test_ods_codes_are_stripped_and_upper_cased(raw: str, expected: str) -> None:
    assert normalise_ods_code(raw) == expected


@pytest.mark.parametrize(
    "raw", ["", "  ", "AB", "B8261?", "B 82617", "ABCDEFGHIJK", "X26\n", "X\r26"]
)
def test_bad_ods_codes_are_refused(raw: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        normalise_ods_code(raw)
    assert info.value.field == "org"


def test_non_strings_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="must be a string"):
        normalise_ods_code(123)


@pytest.mark.parametrize("raw", ["x26-820918", " X26-820918 ", "YES-0000806"])
def test_party_keys(raw: str) -> None:
    assert normalise_party_key(raw) == raw.strip().upper()


@pytest.mark.parametrize("raw", ["X26", "X26-", "X26-abc", "-123", "X26_123", "X26-1\n"])
def test_bad_party_keys(raw: str) -> None:
    with pytest.raises(InvalidInputError, match="party_key"):
        normalise_party_key(raw)


@pytest.mark.parametrize(
    "raw",
    [
        GPC_STRUCTURED,
        "urn:nhs:names:services:psis:REPC_IN150016UK05",
        "urn:nhs:names:services:gpconnect:fhir:rest:search:patient_appointments-1",
        "urn:nhs:names:services:tms:ReliableIntermediary",
    ],
)
def test_interactions_keep_their_case(raw: str) -> None:
    assert normalise_interaction(f"  {raw} ") == raw


@pytest.mark.parametrize(
    "raw",
    [
        "gpconnect:fhir:rest:read:metadata-1",
        "urn:nhs:names:services:",
        "urn:nhs:names:services:psis",
        "urn:oasis:names:tc:ebxml-msg:service:Ping",
        "urn:nhs:names:services:psis:REPC IN150016UK05",
        "urn:nhs:names:services:psis:REPC_IN150016UK05\r\nX-Evil: 1",
    ],
)
def test_bad_interactions(raw: str) -> None:
    with pytest.raises(InvalidInputError, match="interaction"):
        normalise_interaction(raw)


def test_correlation_ids() -> None:
    generated = normalise_correlation_id(None)
    assert uuid.UUID(generated)
    given = str(uuid.uuid4()).upper()
    assert normalise_correlation_id(given) == given.lower()
    with pytest.raises(InvalidInputError, match="not a UUID"):
        normalise_correlation_id("abc")


def test_header_values_refuse_crlf() -> None:
    assert check_header_value("fine value", "x") == "fine value"
    with pytest.raises(InvalidInputError, match="control character"):
        check_header_value("a\r\nSet-Cookie: x", "x")


def test_device_query_params_and_key() -> None:
    query = DeviceQuery.build(
        org=" b82617", interaction=GPC_STRUCTURED, party_key="b82617-0000806", manufacturer="ygm24"
    )
    assert query.params() == [
        ("organization", f"{ODS}|B82617"),
        ("identifier", f"{IID}|{GPC_STRUCTURED}"),
        ("identifier", f"{PK}|B82617-0000806"),
        ("manufacturing-organization", f"{ODS}|YGM24"),
    ]
    same = DeviceQuery.build(
        org="B82617", interaction=GPC_STRUCTURED, party_key="B82617-0000806", manufacturer="YGM24"
    )
    assert query == same
    assert hash(query) == hash(same)
    assert query.key() == same.key()
    assert query.key().startswith("Device?organization=")


def test_device_query_needs_org_and_interaction() -> None:
    with pytest.raises(InvalidInputError, match="org \\+ interaction") as info:
        DeviceQuery.build(org="B82617")
    assert info.value.field == "interaction"


def test_unknown_query_fields_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="colour: is not a Device query parameter"):
        DeviceQuery.build(org="B82617", interaction=GPC_STRUCTURED, colour="red")


@pytest.mark.parametrize(
    "fields",
    [
        {"org": "B82617", "interaction": GPC_STRUCTURED, "party_key": "B82617-1"},
        {"org": "B82617", "party_key": "B82617-1"},
        {"org": "B82617", "interaction": GPC_STRUCTURED},
        {"interaction": GPC_STRUCTURED, "party_key": "B82617-1"},
    ],
)
def test_the_four_endpoint_combinations(fields: dict[str, str]) -> None:
    query = EndpointQuery.build(**fields)
    names = [name for name, _ in query.params()]
    assert names.count("organization") == ("org" in fields)
    assert names.count("identifier") == ("interaction" in fields) + ("party_key" in fields)


@pytest.mark.parametrize(
    "fields",
    [{}, {"org": "B82617"}, {"interaction": GPC_STRUCTURED}, {"party_key": "B82617-1"}],
)
def test_other_endpoint_combinations_are_refused_listing_the_allowed_ones(
    fields: dict[str, str],
) -> None:
    with pytest.raises(InvalidInputError) as info:
        EndpointQuery.build(**fields)
    message = str(info.value)
    for combination in (
        "org + interaction + party_key",
        "org + party_key",
        "interaction + party_key",
    ):
        assert combination in message


def test_validation_comes_before_the_combination_check() -> None:
    with pytest.raises(InvalidInputError, match="not an ODS code"):
        EndpointQuery.build(org="??", interaction=GPC_STRUCTURED)
