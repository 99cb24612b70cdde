"""The GP Connect adapter against the sandbox: provider/consumer resolution, JWT, caching."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest
from gpconnect_cases import (
    ALL,
    AMEND_APPOINTMENT,
    CANCEL_APPOINTMENT,
    CONSUMER,
    CONSUMER_OPTIONS,
    GPC,
    META,
    MIGRATE,
    MIGRATE_DOCUMENT,
    NO_ADDRESS,
    READ_PATIENT,
    SINGLE,
    SINGLE_ADDRESS,
    SINGLE_ASID,
    TWO_ADDRESSES,
    TWO_RECORDS,
    UNKNOWN,
)
from sds_plugins_gpconnect import (
    CARE_RECORD,
    INTERACTIONS,
    GpConnectAdapter,
    GpConnectOptions,
    access_token,
    claims,
    migrate_parameters,
    ssp_url,
    token_issuer,
)

from sds_plugins import (
    AmbiguousError,
    Candidate,
    InvalidInputError,
    NotFoundError,
    PluginHost,
    Router,
    RoutingEnvelope,
    Settings,
    hookimpl,
)
from sds_plugins.sandbox import Sandbox
from sds_plugins.testing import ManualClock

DEVICE = "/spine-directory/FHIR/R4/Device"
ENDPOINT = "/spine-directory/FHIR/R4/Endpoint"
# nhsconnect/gpconnect (feature/1.6.2), pages/development/development_general_api_guidance.md:
# charset=utf-8 in Content-Type (SHALL) and Accept (MAY), no space, as every request example.
FHIR_JSON_UTF8 = "application/fhir+json;charset=utf-8"
READ_APPOINTMENT = "urn:nhs:names:services:gpconnect:fhir:rest:read:appointment-1"
CREATE_APPOINTMENT = "urn:nhs:names:services:gpconnect:fhir:rest:create:appointment-1"


async def _route(
    router: Router, org: str = SINGLE, interaction: str = GPC, **options: Any
) -> RoutingEnvelope:
    return await router.route(
        "gpconnect", org=org, interaction=interaction, **{**CONSUMER_OPTIONS, **options}
    )


def _claims(envelope: RoutingEnvelope) -> dict[str, Any]:
    token = envelope.request.headers["Authorization"].removeprefix("Bearer ")
    assert token.endswith(".")  # unsigned: empty signature
    assert jwt.get_unverified_header(token) == {"alg": "none", "typ": "JWT"}
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


async def test_single_provider_envelope(router: Router, gpc_sandbox: Sandbox) -> None:
    envelope = await _route(router)
    assert envelope.request.method == "POST"
    assert envelope.request.url == (
        "https://proxy.intspineservices.nhs.uk/"
        + SINGLE_ADDRESS
        + "Patient/$gpc.getstructuredrecord"
    )
    headers = envelope.request.headers
    assert headers["Ssp-To"] == SINGLE_ASID  # the device whose party key matches, not the first
    assert headers["Ssp-From"] == "200000000359"
    assert headers["Ssp-InteractionID"] == GPC
    assert headers["Accept"] == headers["Content-Type"] == FHIR_JSON_UTF8
    assert "If-Match" not in headers
    assert uuid.UUID(headers["Ssp-TraceID"])
    assert envelope.target.party_key == "A11111-100001"
    assert envelope.target.address == SINGLE_ADDRESS
    assert envelope.source.asid == "200000000359"
    assert envelope.reliability is None
    # One SDS round trip: the Endpoint and Device lookups, once each.
    assert gpc_sandbox.stats()["requests"] == {DEVICE: 1, ENDPOINT: 1}


async def test_every_jwt_claim(router: Router) -> None:
    envelope = await _route(router, requested_scope="patient/*.read conf/N")
    claims = _claims(envelope)
    assert claims["iss"] == "https://consumer.example.org"
    assert claims["sub"] == "10019"
    assert claims["aud"] == SINGLE_ADDRESS
    assert claims["exp"] - claims["iat"] == 300
    assert envelope.expires_at.timestamp() == claims["exp"]
    assert str(uuid.UUID(claims["jti"])) == claims["jti"]
    assert uuid.UUID(claims["jti"]).version == 4
    assert claims["reason_for_request"] == "directcare"
    assert claims["requested_scope"] == "patient/*.read conf/N"
    assert claims["requesting_device"] == {
        "resourceType": "Device",
        "identifier": [
            {
                "system": "https://consumer.example.org/Id/device-identifier",
                "value": "Example Consumer",
            }
        ],
        "model": "Example Consumer",
        "version": "2.1",
    }
    assert claims["requesting_organization"] == {
        "resourceType": "Organization",
        "identifier": [
            {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "Y12345"}
        ],
        "name": "Example Surgery",
    }
    assert claims["requesting_practitioner"] == {
        "resourceType": "Practitioner",
        "id": "10019",
        "identifier": [
            {"system": "https://fhir.nhs.uk/Id/sds-user-id", "value": "111222333444"},
            {"system": "https://fhir.nhs.uk/Id/sds-role-profile-id", "value": "UNK"},
            # The local user identifier the spec marks SHALL: the consumer's own system URL.
            {"system": "https://consumer.example.org/Id/local-user-id", "value": "10019"},
        ],
        "name": [{"family": "Jones", "given": ["Ann"]}],
    }


async def test_the_practitioners_local_identifier_and_title(router: Router) -> None:
    envelope = await _route(
        router,
        practitioner_local_user_id="98ed4f78-814d-4266-8d5b-cde742f3093c",
        practitioner_local_user_id_system="https://consumersupplier.com/Id/user-guid",
        practitioner_name_prefix="Dr",
    )
    practitioner = _claims(envelope)["requesting_practitioner"]
    assert practitioner["identifier"][2] == {
        "system": "https://consumersupplier.com/Id/user-guid",
        "value": "98ed4f78-814d-4266-8d5b-cde742f3093c",
    }
    assert practitioner["name"] == [{"family": "Jones", "given": ["Ann"], "prefix": ["Dr"]}]
    assert practitioner["id"] == _claims(envelope)["sub"] == "10019"


async def test_a_new_token_and_trace_id_per_envelope(router: Router) -> None:
    first, second = await _route(router), await _route(router)
    assert first.request.headers["Ssp-TraceID"] != second.request.headers["Ssp-TraceID"]
    assert first.request.headers["Authorization"] != second.request.headers["Authorization"]
    assert _claims(first)["jti"] != _claims(second)["jti"]
    assert _claims(first)["aud"] == _claims(second)["aud"]


async def test_a_new_token_per_envelope_even_within_one_second(gpc_sandbox: Sandbox) -> None:
    """ "Consumer system SHALL generate a new JWT for each API request" (nhsconnect/gpconnect,
    feature/1.6.2, pages/integration/integration_cross_organisation_audit_and_provenance.md):
    envelopes built in the same second (a fixed clock, and the same cached lookups) carry
    different tokens, told apart by their jti; iat and exp follow the clock, exp = iat + 300."""
    clock = ManualClock(start=1_800_000_000.25)
    host = PluginHost(environ={"SDS_PLUGINS_LOAD": "sds-plugins-gpconnect"})
    settings = Settings(base_url=gpc_sandbox.base_url)
    async with Router(settings, host=host, clock=clock) as router:
        first = await _route(router, encounter="e-1")
        second = await _route(router, encounter="e-1")
        clock.advance(1)
        third = await _route(router, encounter="e-1")
    assert second.provenance.cache == "hit"
    envelopes = (first, second, third)
    assert len({e.request.headers["Authorization"] for e in envelopes}) == 3
    assert len({_claims(e)["jti"] for e in envelopes}) == 3
    assert [(_claims(e)["iat"], _claims(e)["exp"]) for e in envelopes] == [
        (1_800_000_000, 1_800_000_300),
        (1_800_000_000, 1_800_000_300),
        (1_800_000_001, 1_800_000_301),
    ]
    # Apart from jti, the two tokens of one second say the same.
    assert {**_claims(first), "jti": ""} == {**_claims(second), "jti": ""}
    assert first.expires_at.timestamp() == second.expires_at.timestamp() == 1_800_000_300
    assert third.expires_at.timestamp() == 1_800_000_301
    assert len({e.request.headers["Ssp-TraceID"] for e in envelopes}) == 3


def test_the_issued_token_is_the_claims_token_byte_for_byte() -> None:
    """token_issuer serialises the fixed claims once: its tokens must still be exactly
    access_token(claims(...)) for the same iat and jti."""
    options = GpConnectOptions.model_validate(
        {**CONSUMER_OPTIONS, "practitioner_name_prefix": "Dr", "device_identifier": 'é"x'}
    )
    arguments: dict[str, Any] = {
        "audience": SINGLE_ADDRESS,
        "scope": "patient/*.read",
        "reason": "directcare",
    }
    issue = token_issuer(options, **arguments)
    jti = str(uuid.uuid4())
    expected = access_token(
        claims(options, **arguments, issued_at=datetime.fromtimestamp(1_800_000_000, UTC), jti=jti)
    )
    assert issue(1_800_000_000, jti) == expected
    payload = jwt.decode(expected, options={"verify_signature": False})
    assert (payload["iat"], payload["exp"], payload["jti"]) == (1_800_000_000, 1_800_000_300, jti)
    # Without a jti, claims() makes a fresh one each time.
    issued_at = datetime.fromtimestamp(1_800_000_000, UTC)
    assert (
        claims(options, **arguments, issued_at=issued_at)["jti"]
        != (claims(options, **arguments, issued_at=issued_at)["jti"])
    )


def test_the_token_is_what_pyjwt_writes_for_alg_none() -> None:
    payload = {"iss": "https://consumer.example.org", "iat": 1, "nested": {"a": ["b", "é"]}}
    assert access_token(payload) == jwt.encode(payload, "", algorithm="none")


async def test_trace_id_is_the_correlation_id_unless_the_caller_gives_one(router: Router) -> None:
    envelope = await _route(router)
    assert envelope.request.headers["Ssp-TraceID"] == envelope.provenance.correlation_id
    given = str(uuid.uuid4())
    chosen = await _route(router, correlation_id=given)
    assert chosen.provenance.correlation_id == given
    assert chosen.request.headers["Ssp-TraceID"] != given


async def test_scopes_methods_and_paths_follow_the_interaction(router: Router) -> None:
    metadata = await _route(router, interaction=META)
    assert metadata.request.method == "GET"
    assert metadata.request.headers["Accept"] == FHIR_JSON_UTF8
    assert "Content-Type" not in metadata.request.headers
    assert metadata.request.url.endswith(SINGLE_ADDRESS + "metadata")
    assert _claims(metadata)["requested_scope"] == "organization/*.read"
    patient = await _route(router, interaction=READ_PATIENT, fhir_path="Patient/42")
    assert patient.request.url.endswith("GPConnect/Patient/42")
    assert _claims(patient)["requested_scope"] == "patient/*.read"
    migrate = await _route(router, interaction=MIGRATE)
    assert _claims(migrate)["reason_for_request"] == "migration"
    assert _claims(migrate)["requested_scope"] == "patient/*.read conf/R"
    overridden = await _route(router, interaction=META, method="post")
    assert overridden.request.method == "POST"


async def test_two_provider_records_are_ambiguous_until_a_party_key_chooses(router: Router) -> None:
    with pytest.raises(AmbiguousError) as info:
        await _route(router, org=TWO_RECORDS)
    assert {(c["party_key"], c["asid"]) for c in info.value.candidates} == {
        ("B22222-200001", "918999200001"),
        ("B22222-200002", "918999200002"),
    }
    assert "party_key" in str(info.value)
    chosen = await _route(router, org=TWO_RECORDS, party_key="B22222-200002")
    assert chosen.request.headers["Ssp-To"] == "918999200002"
    assert chosen.target.address == "https://new.example/B22222/"


async def test_one_record_with_two_addresses_is_ambiguous(router: Router) -> None:
    with pytest.raises(AmbiguousError) as info:
        await _route(router, org=TWO_ADDRESSES)
    assert {c["address"] for c in info.value.candidates} == {
        "https://a.example/C33333/",
        "https://b.example/C33333/",
    }


async def test_a_record_without_address_is_not_found(router: Router) -> None:
    with pytest.raises(NotFoundError, match="no usable endpoint address"):
        await _route(router, org=NO_ADDRESS)


async def test_unknown_organisation(router: Router) -> None:
    with pytest.raises(NotFoundError):
        await _route(router, org=UNKNOWN)


async def test_consumer_lookup(router: Router, gpc_sandbox: Sandbox) -> None:
    options = {"consumer_asid": None, "consumer_ods": CONSUMER}
    with pytest.raises(AmbiguousError, match="consumer_supplier_ods") as info:
        await _route(router, **options)
    assert {c["asid"] for c in info.value.candidates} == {"200000000501", "200000000502"}
    gpc_sandbox.reset()
    envelope = await _route(router, **options, consumer_supplier_ods="ygm24", encounter="e1")
    assert envelope.request.headers["Ssp-From"] == "200000000502"
    assert envelope.source.ods_code == CONSUMER
    # Provider Endpoint, provider Device and consumer Device: issued together, once each.
    assert gpc_sandbox.stats()["requests"] == {DEVICE: 2, ENDPOINT: 1}
    with pytest.raises(NotFoundError, match="made by X26"):
        await _route(router, **options, consumer_supplier_ods="X26")


class PreferAsid:
    """A deployment's policy: among several consumer systems, the one with this ASID."""

    def __init__(self, asid: str) -> None:
        self.asid = asid
        self.seen: list[tuple[str, str | None, list[str | None]]] = []

    @hookimpl
    def sds_select_candidate(
        self, candidates: Sequence[Candidate], role: str, option: str | None
    ) -> Candidate | None:
        self.seen.append((role, option, [c.choice for c in candidates]))
        return next((c for c in candidates if c.asid == self.asid), None)


async def test_the_consumer_system_is_chosen_by_the_selection_policy(gpc_sandbox: Sandbox) -> None:
    policy = PreferAsid("200000000501")
    host = PluginHost(environ={"SDS_PLUGINS_LOAD": "sds-plugins-gpconnect"})
    host.register(policy)
    async with Router(Settings(base_url=gpc_sandbox.base_url), host=host) as router:
        envelope = await _route(router, consumer_asid=None, consumer_ods=CONSUMER)
    assert envelope.request.headers["Ssp-From"] == "200000000501"
    assert envelope.source.asid == "200000000501"
    # The consumer systems came through the hook, with no option to narrow them by (the
    # provider's party_key option is not theirs).
    assert ("consumer", None, ["200000000501", "200000000502"]) in [
        (role, option, sorted(choices, key=str)) for role, option, choices in policy.seen
    ]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"practitioner_id": None}, "practitioner_id"),
        ({"system_url": "not a url"}, "system_url"),
        ({"reason_for_request": "curiosity"}, "reason_for_request"),
        ({"requested_scope": "patient/*.everything"}, "requested_scope"),
        ({"consumer_asid": "12"}, "consumer_asid"),
        ({"consumer_ods": CONSUMER}, "consumer_asid"),
        ({"consumer_supplier_ods": "YGA"}, "consumer_supplier_ods"),
        ({"fhir_path": "https://elsewhere/"}, "fhir_path"),
        ({"ssp_url": "https://proxy.example/../admin"}, "ssp_url"),
        ({"ssp_url": "https://proxy.example/%2e%2e/admin"}, "ssp_url"),
        ({"ssp_url": "https://proxy.example/..;/admin"}, "ssp_url"),
        ({"organization_name": "Surgery\r\nX-Evil: 1"}, "organization_name"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_bad_options_are_refused_before_any_lookup(
    router: Router, gpc_sandbox: Sandbox, options: dict[str, Any], field: str
) -> None:
    merged = {**CONSUMER_OPTIONS, **options}
    merged = {k: v for k, v in merged.items() if v is not None}
    with pytest.raises(InvalidInputError) as info:
        await router.route("gpconnect", org=SINGLE, interaction=GPC, **merged)
    assert info.value.field == field
    assert field in str(info.value)
    assert gpc_sandbox.stats()["requests"] == {}


@pytest.mark.parametrize(
    "fhir_path",
    [
        "%2e%2e/%2e%2e/admin",
        "%2E%2e/admin",
        "..;/admin",
        "../admin",
        "Patient/..",
        "Patient/.",
        "Patient%2f..%2fadmin",
        "Patient\\..",
        "Patient//1",
        "Patient/1#fragment",
        "https://elsewhere/x",
        "//elsewhere/x",
        "Pätient/1",
        "Patient/1\n",
        "P" * 2049,
    ],
)
async def test_hostile_fhir_paths_are_refused_before_any_lookup(
    router: Router, gpc_sandbox: Sandbox, fhir_path: str
) -> None:
    with pytest.raises(InvalidInputError) as info:
        await _route(router, interaction=READ_PATIENT, fhir_path=fhir_path)
    assert info.value.field == "fhir_path"
    assert "fhir_path" in str(info.value)
    assert gpc_sandbox.stats()["requests"] == {}


async def test_a_search_path_may_carry_a_query(router: Router) -> None:
    search = "Patient?identifier=https://fhir.nhs.uk/Id/nhs-number%7C9000000009"
    envelope = await _route(router, interaction=READ_PATIENT, fhir_path=search)
    assert envelope.request.url.endswith(SINGLE_ADDRESS + search)


async def test_a_migration_asks_for_sensitive_information_with_conf_r_by_default(
    router: Router,
) -> None:
    envelope = await _route(router, interaction=MIGRATE)
    assert _claims(envelope)["requested_scope"] == "patient/*.read conf/R"
    assert envelope.extensions["include_sensitive_information"] is True
    body = migrate_parameters(envelope, "9690937286")
    assert body["parameter"][0]["valueIdentifier"] == {
        "system": "https://fhir.nhs.uk/Id/nhs-number",
        "value": "9690937286",
    }
    assert body["parameter"][1] == {
        "name": "includeFullRecord",
        "part": [{"name": "includeSensitiveInformation", "valueBoolean": True}],
    }
    document = await _route(router, interaction=MIGRATE_DOCUMENT, fhir_path="Binary/07a6483f")
    assert _claims(document)["requested_scope"] == "patient/*.read conf/R"
    assert _claims(document)["reason_for_request"] == "migration"


@pytest.mark.parametrize("flag", [False, "false"])
async def test_a_migration_without_sensitive_information_uses_conf_n(
    router: Router, flag: object
) -> None:
    envelope = await _route(router, interaction=MIGRATE, include_sensitive_information=flag)
    assert _claims(envelope)["requested_scope"] == "patient/*.read conf/N"
    assert envelope.extensions["include_sensitive_information"] is False
    body = migrate_parameters(envelope, "9690937286")
    assert body["parameter"][1]["part"][0]["valueBoolean"] is False
    agreeing = await _route(
        router,
        interaction=MIGRATE,
        include_sensitive_information=False,
        requested_scope="patient/*.read conf/N",
    )
    assert _claims(agreeing)["requested_scope"] == "patient/*.read conf/N"


@pytest.mark.parametrize(
    ("interaction", "options", "field"),
    [
        # The migrate default asks for sensitive information: conf/N (stated or implied by
        # no conf/*) would be answered CONFLICTING_VALUES / NOT_AUTHORISED.
        (MIGRATE, {"requested_scope": "patient/*.read conf/N"}, "requested_scope"),
        (MIGRATE, {"requested_scope": "patient/*.read"}, "requested_scope"),
        (MIGRATE_DOCUMENT, {"requested_scope": "patient/*.read conf/N"}, "requested_scope"),
        (
            MIGRATE,
            {"requested_scope": "patient/*.read conf/R", "include_sensitive_information": False},
            "requested_scope",
        ),
        (GPC, {"include_sensitive_information": True}, "include_sensitive_information"),
        (MIGRATE, {"include_sensitive_information": "perhaps"}, "include_sensitive_information"),
    ],
)
async def test_contradictory_migrate_scopes_are_refused_before_any_lookup(
    router: Router,
    gpc_sandbox: Sandbox,
    interaction: str,
    options: dict[str, Any],
    field: str,
) -> None:
    if interaction == MIGRATE_DOCUMENT:
        options = {**options, "fhir_path": "Binary/07a6483f"}
    with pytest.raises(InvalidInputError) as info:
        await _route(router, interaction=interaction, **options)
    assert info.value.field == field
    assert gpc_sandbox.stats()["requests"] == {}


@pytest.mark.parametrize("nhs_number", ["969093728", "9690937287", "969093728\uff16", 9690937286])
async def test_the_migrate_body_checks_the_nhs_number(router: Router, nhs_number: object) -> None:
    envelope = await _route(router, interaction=MIGRATE)
    with pytest.raises(InvalidInputError) as info:
        migrate_parameters(envelope, nhs_number)  # type: ignore[arg-type]
    assert info.value.field == "nhs_number"
    with pytest.raises(InvalidInputError, match="migratestructuredrecord"):
        migrate_parameters(await _route(router), "9690937286")


@pytest.mark.parametrize("interaction", [AMEND_APPOINTMENT, CANCEL_APPOINTMENT])
async def test_amend_and_cancel_appointment_send_if_match(router: Router, interaction: str) -> None:
    """nhsconnect/gpconnect (feature/1.6.2), pages/appointments/appointments_use_case_amend_an_
    appointment.md and ..._cancel_an_appointment.md: PUT /Appointment/[id] with If-Match, the
    Appointment's current ETag (e.g. W/"23")."""
    envelope = await _route(
        router, interaction=interaction, fhir_path="Appointment/148", if_match='W/"23"'
    )
    assert envelope.request.method == "PUT"
    assert envelope.request.url == (
        "https://proxy.intspineservices.nhs.uk/" + SINGLE_ADDRESS + "Appointment/148"
    )
    headers = envelope.request.headers
    assert headers["If-Match"] == 'W/"23"'
    assert headers["Content-Type"] == headers["Accept"] == FHIR_JSON_UTF8
    assert headers["Ssp-InteractionID"] == interaction
    assert _claims(envelope)["requested_scope"] == "patient/*.write"
    # The version id may be any FHIR id (letters, digits, '-', '.'), up to 64 characters.
    longest = 'W/"' + "a-Z.9" * 12 + "abcd" + '"'
    other = await _route(
        router, interaction=interaction, fhir_path="Appointment/148", if_match=longest
    )
    assert other.request.headers["If-Match"] == longest


@pytest.mark.parametrize("interaction", [AMEND_APPOINTMENT, CANCEL_APPOINTMENT])
async def test_amend_and_cancel_without_if_match_are_refused_before_any_lookup(
    router: Router, gpc_sandbox: Sandbox, interaction: str
) -> None:
    with pytest.raises(InvalidInputError) as info:
        await _route(router, interaction=interaction, fhir_path="Appointment/148")
    assert info.value.field == "if_match"
    assert "if_match is required" in str(info.value)
    assert interaction in str(info.value)
    # The Appointment id is a path the caller gives: without one, that is said first.
    with pytest.raises(InvalidInputError) as no_path:
        await _route(router, interaction=interaction, if_match='W/"23"')
    assert no_path.value.field == "fhir_path"
    assert gpc_sandbox.stats()["requests"] == {}


@pytest.mark.parametrize(
    ("interaction", "fhir_path"),
    [
        (GPC, None),
        (READ_APPOINTMENT, "Appointment/148"),
        (CREATE_APPOINTMENT, None),
        (META, None),
    ],
)
async def test_if_match_is_refused_where_the_interaction_does_not_take_it(
    router: Router, gpc_sandbox: Sandbox, interaction: str, fhir_path: str | None
) -> None:
    path = {"fhir_path": fhir_path} if fhir_path else {}
    with pytest.raises(InvalidInputError) as info:
        await _route(router, interaction=interaction, if_match='W/"23"', **path)
    assert info.value.field == "if_match"
    assert f"not {interaction}" in str(info.value)
    assert AMEND_APPOINTMENT in str(info.value)
    assert CANCEL_APPOINTMENT in str(info.value)
    assert gpc_sandbox.stats()["requests"] == {}


@pytest.mark.parametrize(
    "if_match",
    [
        "23",  # no W/, no quotes
        '"23"',  # a strong ETag: the specification's are weak
        "W/23",  # quotes required
        "W/'23'",
        'w/"23"',  # W/ is case-sensitive (RFC 9110)
        'W/""',
        'W/"2 3"',
        'W/"23',
        'W/"23"x',
        'W/"23", W/"24"',  # one ETag, not a list
        "*",
        'W/"\uff12\uff13"',  # full-width digits
        'W/"23"\r\nX-Evil: 1',  # header injection
        'W/"2\x003"',
        'W/"' + "9" * 65 + '"',  # longer than a FHIR id
        "W/" + '"' * 5000,
        "",
    ],
)
async def test_malformed_if_match_is_refused_before_any_lookup(
    router: Router, gpc_sandbox: Sandbox, if_match: str
) -> None:
    with pytest.raises(InvalidInputError) as info:
        await _route(
            router, interaction=AMEND_APPOINTMENT, fhir_path="Appointment/148", if_match=if_match
        )
    assert info.value.field == "if_match"
    assert "if_match" in str(info.value)
    assert len(str(info.value)) < 500
    assert gpc_sandbox.stats()["requests"] == {}


async def test_reads_by_id_need_a_path(router: Router) -> None:
    with pytest.raises(InvalidInputError, match="fhir_path is required"):
        await _route(router, interaction=READ_PATIENT)


async def test_unknown_interactions_are_refused_with_close_matches(router: Router) -> None:
    with pytest.raises(InvalidInputError, match=r"did you mean .*gpc.getstructuredrecord-1"):
        await _route(router, interaction=GPC.replace("structured", "structure"))
    with pytest.raises(InvalidInputError, match="not a GP Connect interaction"):
        await _route(router, interaction="urn:nhs:names:services:psis:REPC_IN150016UK05")


async def test_results_are_reused_only_within_an_encounter(
    router: Router, gpc_sandbox: Sandbox
) -> None:
    for _ in range(2):
        await _route(router)  # no encounter: fresh lookups each time
    assert gpc_sandbox.stats()["requests"] == {DEVICE: 2, ENDPOINT: 2}
    first = await _route(router, encounter="visit-1")
    again = await router.route(
        "gpconnect", org=SINGLE, interaction=GPC, encounter="visit-1", **CONSUMER_OPTIONS
    )
    other = await _route(router, encounter="visit-2")
    assert (first.provenance.cache, again.provenance.cache, other.provenance.cache) == (
        "miss",
        "hit",
        "miss",
    )
    assert gpc_sandbox.stats()["requests"] == {DEVICE: 4, ENDPOINT: 4}


async def test_operators_can_opt_into_shared_caching(
    gpc_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpc_sandbox.reset()
    monkeypatch.setenv("SDS_GPCONNECT_SHARED_CACHE", "1")
    host = PluginHost(environ={"SDS_PLUGINS_LOAD": "sds-plugins-gpconnect"})
    async with Router(Settings(base_url=gpc_sandbox.base_url), host=host) as router:
        assert isinstance(router.adapters["gpconnect"], GpConnectAdapter)
        assert router.adapters["gpconnect"].shared_cache
        envelopes = await asyncio.gather(*(_route(router) for _ in range(20)))
    assert {e.request.headers["Ssp-To"] for e in envelopes} == {SINGLE_ASID}
    assert gpc_sandbox.stats()["requests"] == {DEVICE: 1, ENDPOINT: 1}


async def test_token_is_masked_when_printed(router: Router) -> None:
    envelope = await _route(router)
    token = envelope.request.headers["Authorization"]
    assert token not in str(envelope)
    assert token not in repr(envelope)
    assert envelope.to_message()["request"]["headers"]["Authorization"] == token


#: The GP Connect 1.x interaction ids (domain notes section 3; nhsconnect/gpconnect, branch
#: feature/1.6.2, pages/integration/integration_interaction_ids.md and each capability's pages).
#: The SDS sandbox's synthetic practices list the same ids; it publishes no name for its list,
#: so the ids are written out here.
NOTES_1X = frozenset(
    "urn:nhs:names:services:gpconnect:" + suffix
    for suffix in (
        "fhir:rest:read:metadata-1",
        "fhir:rest:read:patient-1",
        "fhir:rest:search:patient-1",
        "fhir:rest:read:practitioner-1",
        "fhir:rest:search:practitioner-1",
        "fhir:rest:read:organization-1",
        "fhir:rest:search:organization-1",
        "fhir:rest:read:location-1",
        "fhir:operation:gpc.registerpatient-1",
        "fhir:rest:search:slot-1",
        "fhir:rest:read:appointment-1",
        "fhir:rest:create:appointment-1",
        "fhir:rest:update:appointment-1",
        "fhir:rest:cancel:appointment-1",
        "fhir:rest:search:patient_appointments-1",
        "fhir:operation:gpc.getstructuredrecord-1",
        "fhir:operation:gpc.migratestructuredrecord-1",
        "structured:fhir:rest:read:metadata-1",
        "documents:fhir:rest:read:metadata-1",
        "documents:fhir:rest:search:patient-1",
        "documents:fhir:rest:search:documentreference-1",
        "documents:fhir:rest:read:binary-1",
        "documents:fhir:rest:migrate:binary-1",
    )
)


def test_the_catalogue_knows_every_interaction_in_the_notes() -> None:
    # Every 1.x id of the notes, and Access Record HTML 0.7's one id (release/0.7.4,
    # pages/integration/integration_interaction_ids.md).
    assert set(INTERACTIONS) == NOTES_1X | {CARE_RECORD}
    assert set(ALL) <= set(INTERACTIONS)
    assert INTERACTIONS[GPC].method == "POST"
    assert all(spec.method in ("GET", "POST", "PUT") for spec in INTERACTIONS.values())


@pytest.mark.parametrize(
    ("root", "path", "url"),
    [
        (
            "https://p.example/A1/STU3/1/gpconnect/",
            "metadata",
            "https://ssp/https://p.example/A1/STU3/1/gpconnect/metadata",
        ),
        (
            "https://p.example:443/A1/GPConnect",
            "metadata",
            "https://ssp/https://p.example:443/A1/GPConnect/metadata",
        ),
        ("HTTPS://P.example/a1/", "/Patient", "https://ssp/HTTPS://P.example/a1//Patient"),
    ],
)
def test_the_service_root_is_never_normalised(root: str, path: str, url: str) -> None:
    assert ssp_url("https://ssp/", root, path) == url


async def test_the_readme_example_routes_on_the_sandboxs_default_data(
    sds_sandbox: Sandbox,
) -> None:
    # `sds-plugins sandbox` with no --data serves the same default data as this sandbox.
    host = PluginHost(environ={"SDS_PLUGINS_LOAD": "sds-plugins-gpconnect"})
    async with Router(Settings(base_url=sds_sandbox.base_url), host=host) as router:
        envelope = await router.route("gpconnect", **dict(GpConnectAdapter.example or {}))
    assert envelope.target.ods_code == "B82617"
    assert envelope.target.party_key == "B82617-0000806"
    assert envelope.request.headers["Ssp-To"] == "918999198993"
    assert envelope.request.url == (
        "https://proxy.intspineservices.nhs.uk/"
        "https://orange.testlab.nhs.uk/B82617/STU3/1/gpconnect/Patient/$gpc.getstructuredrecord"
    )
