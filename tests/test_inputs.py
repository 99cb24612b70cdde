"""Input validation and query building: everything is refused before a request exists."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from sds_plugins import DeviceQuery, EndpointQuery, InvalidInputError
from sds_plugins._validation import (
    check_header_value,
    has_control_characters,
    new_uuid,
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


@pytest.mark.parametrize(
    "given",
    [
        "0f0e0d0c-aaaa-4bbb-8ccc-123456789012",
        "0F0E0D0C-AAAA-4BBB-8CCC-123456789012",
        " 0f0e0d0c-aaaa-4bbb-8ccc-123456789012 ",
        "{0f0e0d0c-aaaa-4bbb-8ccc-123456789012}",
        "0f0e0d0caaaa4bbb8ccc123456789012",
        "urn:uuid:0f0e0d0c-aaaa-4bbb-8ccc-123456789012",
    ],
)
def test_correlation_ids_come_out_canonical_whatever_form_they_came_in(given: str) -> None:
    assert normalise_correlation_id(given) == "0f0e0d0c-aaaa-4bbb-8ccc-123456789012"


@pytest.mark.parametrize(
    "given", ["0f0e0d0c-aaaa-4bbb-8ccc-123456789012\n", "0f0e0d0c-aaaa-4bbb-8ccc-12345678901g"]
)
def test_near_canonical_correlation_ids_are_still_checked(given: str) -> None:
    with pytest.raises(InvalidInputError):
        normalise_correlation_id(given)


def test_generated_ids_differ_across_threads_and_a_fork() -> None:
    import os
    import threading

    ids: list[str] = []

    def make() -> None:
        ids.extend(new_uuid() for _ in range(3000))

    threads = [threading.Thread(target=make) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == len(ids) == 12_000
    # A forked child draws its own random bytes, not the rest of its parent's.
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, " ".join(new_uuid() for _ in range(50)).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = set(os.read(read, 65536).decode().split())
    os.close(read)
    os.close(write)
    assert len(child) == 50
    assert not child & {new_uuid() for _ in range(50)}


def test_generated_ids_are_random_version_4_uuids_in_canonical_form() -> None:
    ids = [new_uuid() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed) == text  # lower case, dashed: what str(uuid.uuid4()) gives
    # Every variant digit appears: the two variant bits are set, the other two stay random.
    assert {text[19] for text in ids} == set("89ab")


@pytest.mark.parametrize("length", [1, 63, 64, 1500])
@pytest.mark.parametrize("control", [*map(chr, range(0x20)), "\x7f"])
def test_every_control_character_is_found_in_short_and_long_values(
    length: int, control: str
) -> None:
    clean = "e" * length
    assert not has_control_characters(clean)
    for at in (0, length // 2, length):
        assert has_control_characters(clean[:at] + control + clean[at:])
    # Outside ASCII too (the text may carry non-ASCII elsewhere).
    assert has_control_characters("é" + clean + control)
    assert not has_control_characters("é" + clean)


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


# --------------------------------------------------------------------------- URL paths

HOSTILE_SEGMENTS = [
    "",
    ".",
    "..",
    "%2e%2e",
    "%2E%2E",
    "%2e.",
    ".%2E",
    "%2e",
    "..;",
    "a;b",
    "a/b",
    "a%2fb",
    "a%2Fb",
    "a%5cb",
    "a\\b",
    "a%252e",
    "a%00b",
    "a%",
    "a%zz",
    "a\nb",
    "a\x00",
    "a b",
    "a?b",
    "a#b",
    "ünï",
    "a" * 257,
]


@pytest.mark.parametrize("value", HOSTILE_SEGMENTS)
def test_hostile_path_segments_are_refused(value: str) -> None:
    from sds_plugins import check_path_segment

    with pytest.raises(InvalidInputError) as info:
        check_path_segment(value, "attachment_id")
    assert info.value.field == "attachment_id"
    assert "attachment_id" in str(info.value)


@pytest.mark.parametrize(
    "value", ["c5d2d200-7613-4a69-9c5f-1bb68e04b8d8", "att-70000-70001", "a.b"]
)
def test_plain_segments_pass_unchanged(value: str) -> None:
    from sds_plugins import check_path_segment

    assert check_path_segment(value, "id") == value


@pytest.mark.parametrize(
    "value",
    [
        "%2e%2e/%2e%2e/admin",
        "..;/admin",
        "../admin",
        "Patient/..",
        "Patient/%2E%2e",
        "Patient%2f..",
        "Patient\\..",
        "Patient//1",
        "Patient/",
        "//evil.example/x",
        "https://elsewhere/",
        "Patient/1#frag",
        "Patient/1?x=1",
        "Pätient/1",
        "Patient/1\r\n",
        "P" * 2049,
    ],
)
def test_hostile_relative_paths_are_refused(value: str) -> None:
    from sds_plugins import check_relative_path

    with pytest.raises(InvalidInputError) as info:
        check_relative_path(value, "fhir_path")
    assert info.value.field == "fhir_path"


@pytest.mark.parametrize(
    "value",
    ["Patient/123", "/Patient/$gpc.getstructuredrecord", "metadata", "Binary/att-1.pdf"],
)
def test_relative_paths_pass_unchanged(value: str) -> None:
    from sds_plugins import check_relative_path

    assert check_relative_path(value, "fhir_path") == value


def test_a_query_only_where_allowed() -> None:
    from sds_plugins import check_relative_path

    search = "Patient?identifier=https://fhir.nhs.uk/Id/nhs-number%7C9000000009"
    assert check_relative_path(search, "fhir_path", allow_query=True) == search
    with pytest.raises(InvalidInputError):
        check_relative_path(search, "fhir_path")
    with pytest.raises(InvalidInputError, match="fragment"):
        check_relative_path("Patient?x=1#y", "fhir_path", allow_query=True)
    with pytest.raises(InvalidInputError, match="dot segment"):
        check_relative_path("../Patient?x=1", "fhir_path", allow_query=True)


# -- hostile input: checked as given, before any normalisation ---------------------------------


@pytest.mark.parametrize(
    ("normalise", "raw", "field"),
    [
        (normalise_ods_code, "ß1234", "org"),  # "ß".upper() == "SS": would query SS1234
        (normalise_ods_code, "ﬀ123", "org"),  # the ligature upper-cases to "FF"
        (normalise_ods_code, "B\uff182617", "org"),  # a full-width digit
        (normalise_party_key, "ßES-0000806", "party_key"),
        (
            normalise_interaction,
            "urn:nhs:names:services:psis:REPC_IN150016UK05\u200b",
            "interaction",
        ),
        (normalise_correlation_id, "\uff16b1a2c3d-0000-4000-8000-000000000000", "correlation_id"),
    ],
)
def test_non_ascii_input_is_refused_before_case_mapping(
    normalise: Any, raw: str, field: str
) -> None:
    with pytest.raises(InvalidInputError, match="not ASCII") as info:
        normalise(raw)
    assert info.value.field == field


def test_absurdly_long_input_is_refused_before_anything_is_built() -> None:
    with pytest.raises(InvalidInputError, match="too long"):
        normalise_interaction("urn:nhs:names:services:psis:" + "x" * 100_000)
    with pytest.raises(InvalidInputError, match="too long"):
        normalise_ods_code("B" * 100_000)


@pytest.mark.parametrize("raw", ["B82617\n", "X26-820918\n"])
def test_a_trailing_newline_is_never_accepted(raw: str) -> None:
    # "$" would match before a final newline; fullmatch does not.
    with pytest.raises(InvalidInputError):
        (normalise_party_key if "-" in raw else normalise_ods_code)(raw)


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1",
        "https://user:s3cret@example.org/spine-directory/FHIR/R4",
        "https://example.org/x\r\nX-Evil: 1",
        "https://exa mple.org/",
        "https://example.org/x?apikey=1",
        "ftp://example.org/",
        "https://éxample.org/",
        "https://" + "x" * 3000 + ".org/",
    ],
)
def test_bad_base_urls_are_refused_when_settings_load(url: str) -> None:
    from sds_plugins import ConfigurationError, Settings

    with pytest.raises(ConfigurationError) as info:
        Settings(base_url=url)
    assert "s3cret" not in str(info.value)
