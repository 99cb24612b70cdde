"""Access Record HTML (GP Connect 0.7.x, FHIR DSTU2) against the SDS sandbox and its PDS.

Rules from ``nhsconnect/gpconnect``, branch ``release/0.7.4``:
``pages/accessrecord/accessrecord_use_case_retrieve_a_care_record_section.md`` (the operation,
headers, body), ``pages/integration/integration_cross_organisation_audit_and_provenance.md``
(the token), ``pages/development/development_fhir_api_guidance.md`` (media types, charset).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, date, datetime
from typing import Any

import jwt
import pytest
from gpconnect_cases import (
    CONSUMER_OPTIONS,
    GPC,
    PRACTICE,
    PRACTICE_07_ADDRESS,
    PRACTICE_07_ASID,
    PRACTICE_1X_ADDRESS,
    PRACTICE_1X_ASID,
    SINGLE,
)
from sds_plugins_gpconnect import (
    CARE_RECORD,
    DSTU2_AUDIENCE,
    INTERACTIONS,
    RECORD_SECTIONS,
    GpConnectAdapter,
    GpConnectOptions,
    care_record_claims,
    care_record_parameters,
)

from sds_plugins import (
    InvalidInputError,
    InvalidNhsNumberError,
    Router,
    RoutingEnvelope,
)
from sds_plugins.sandbox import SANDBOX_PATIENTS

PATIENT = SANDBOX_PATIENTS["gpconnect"]  # registered at B82617 in the sandbox's PDS
SSP = CONSUMER_OPTIONS["ssp_url"]


def _claims(envelope: RoutingEnvelope) -> dict[str, Any]:
    token = envelope.request.headers["Authorization"].removeprefix("Bearer ")
    assert token.endswith(".")  # unsigned: empty signature
    assert jwt.get_unverified_header(token) == {"alg": "none", "typ": "JWT"}
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


async def _care_record(router: Router, **options: Any) -> RoutingEnvelope:
    return await router.route(
        "gpconnect",
        patient=PATIENT,
        interaction=CARE_RECORD,
        encounter="ed-visit-1",
        **{**CONSUMER_OPTIONS, "nhs_number": PATIENT, **options},
    )


async def test_an_access_record_html_envelope_for_a_sandbox_patient(router: Router) -> None:
    envelope = await _care_record(
        router, practitioner_name_prefix="Dr", practitioner_sds_job_role="R8000"
    )
    # Endpoint and ASID from SDS for the 0.7 interaction (the practice's 0.7 record, not its
    # 1.x one), the practice from PDS.
    assert envelope.target.ods_code == PRACTICE
    assert envelope.target.address == PRACTICE_07_ADDRESS
    assert envelope.request.method == "POST"
    assert envelope.request.url == f"{SSP}/{PRACTICE_07_ADDRESS}Patient/$gpc.getcarerecord"
    headers = envelope.request.headers
    assert headers["Ssp-InteractionID"] == CARE_RECORD
    assert CARE_RECORD == "urn:nhs:names:services:gpconnect:fhir:operation:gpc.getcarerecord"
    assert headers["Ssp-To"] == PRACTICE_07_ASID
    assert headers["Ssp-From"] == CONSUMER_OPTIONS["consumer_asid"]
    # DSTU2 media types; charset in Content-Type (the 0.7 "MUST"), Accept as in the example.
    assert headers["Accept"] == "application/json+fhir"
    assert headers["Content-Type"] == "application/json+fhir;charset=utf-8"
    assert envelope.extensions["gpconnect_version"] == "0.7"

    claims = _claims(envelope)
    assert set(claims) == {
        "iss",
        "sub",
        "aud",
        "exp",
        "iat",
        "reason_for_request",
        "requested_record",
        "requested_scope",
        "requesting_device",
        "requesting_organization",
        "requesting_practitioner",
    }
    assert claims["aud"] == DSTU2_AUDIENCE == "https://authorize.fhir.nhs.net/token"
    assert claims["exp"] - claims["iat"] == 300
    assert claims["reason_for_request"] == "directcare"
    assert claims["requested_scope"] == "patient/*.read"
    assert claims["requested_record"] == {
        "resourceType": "Patient",
        "identifier": [{"system": "http://fhir.nhs.net/Id/nhs-number", "value": PATIENT}],
    }
    device = claims["requesting_device"]
    assert device["resourceType"] == "Device"
    assert device["id"]
    assert device["identifier"] == [
        {
            "system": "https://consumer.example.org/Id/device-identifier",
            "value": CONSUMER_OPTIONS["system_name"],
        }
    ]
    assert (device["model"], device["version"]) == ("Example Consumer", "2.1")
    organization = claims["requesting_organization"]
    assert organization["id"]
    assert organization["identifier"] == [
        {"system": "http://fhir.nhs.net/Id/ods-organization-code", "value": "Y12345"}
    ]
    assert organization["name"] == "Example Surgery"
    practitioner = claims["requesting_practitioner"]
    assert practitioner["id"] == claims["sub"] == "10019"
    assert practitioner["name"] == {"family": ["Jones"], "given": ["Ann"], "prefix": ["Dr"]}
    assert practitioner["identifier"][0] == {
        "system": "http://fhir.nhs.net/sds-user-id",  # not .../Id/sds-user-id: the 0.7 rule
        "value": "111222333444",
    }
    assert (
        practitioner["identifier"][1]["system"] == "https://consumer.example.org/Id/local-user-id"
    )
    assert practitioner["practitionerRole"] == [
        {
            "role": {
                "coding": [
                    {"system": "http://fhir.nhs.net/ValueSet/sds-job-role-name-1", "code": "R8000"}
                ]
            }
        }
    ]
    # The same device and organisation ids on every token (stable logical ids).
    again = _claims(await _care_record(router))
    assert again["requesting_device"]["id"] == device["id"]
    assert again["requesting_practitioner"]["practitionerRole"][0]["role"]["coding"][0]["code"] == (
        "UNK"
    )


async def test_the_body_names_the_patient_of_the_token(router: Router) -> None:
    envelope = await _care_record(router)
    body = care_record_parameters(envelope, "sum")
    assert body == {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "patientNHSNumber",
                "valueIdentifier": {
                    "system": "http://fhir.nhs.net/Id/nhs-number",
                    "value": PATIENT,
                },
            },
            {
                "name": "recordSection",
                "valueCodeableConcept": {
                    "coding": [
                        {
                            "system": "http://fhir.nhs.net/ValueSet/gpconnect-record-section-1",
                            "code": "SUM",
                        }
                    ]
                },
            },
        ],
    }
    timed = care_record_parameters(envelope, "MED", start=date(2024, 1, 1), end="2024-12-31")
    assert timed["parameter"][2] == {
        "name": "timePeriod",
        "valuePeriod": {"start": "2024-01-01", "end": "2024-12-31"},
    }
    assert care_record_parameters(envelope, "ENC", start="2020-05-01")["parameter"][2] == {
        "name": "timePeriod",
        "valuePeriod": {"start": "2020-05-01"},
    }
    for section in ("ALL", "IMM", "SUM"):  # "N/A" time frames in the 0.7.4 table
        with pytest.raises(InvalidInputError, match="takes no time period"):
            care_record_parameters(envelope, section, start="2020-01-01")
    with pytest.raises(InvalidInputError, match="end is before start"):
        care_record_parameters(envelope, "MED", start="2024-02-01", end="2024-01-01")
    with pytest.raises(InvalidInputError, match="record_section must be one of"):
        care_record_parameters(envelope, "XYZ")
    assert set(RECORD_SECTIONS) == {
        "ADM", "ALL", "CLI", "ENC", "IMM", "MED", "OBS", "PRB", "REF", "SUM"
    }  # fmt: skip
    # A dumped (masked) envelope has no readable token; the one for the sender does.
    masked = RoutingEnvelope.model_validate(json.loads(envelope.model_dump_json()))
    with pytest.raises(InvalidInputError, match="masked Authorization"):
        care_record_parameters(masked, "SUM")
    sent = RoutingEnvelope.model_validate(envelope.to_message())
    assert care_record_parameters(sent, "SUM") == body
    other = await router.route("gpconnect", org=SINGLE, interaction=GPC, **CONSUMER_OPTIONS)
    with pytest.raises(InvalidInputError, match="not a"):
        care_record_parameters(other, "SUM")


async def test_the_nhs_number_option_is_checked_and_kept_out_of_prints(
    router: Router, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(InvalidInputError, match="nhs_number is required") as caught:
        await router.route("gpconnect", org=PRACTICE, interaction=CARE_RECORD, **CONSUMER_OPTIONS)
    assert caught.value.field == "nhs_number"
    with pytest.raises(InvalidNhsNumberError) as invalid:
        await _care_record(router, nhs_number="9990001015")
    assert "9990001015" not in str(invalid.value)
    with pytest.raises(InvalidInputError, match=r"only applies to Access Record HTML 0\.7"):
        await router.route(
            "gpconnect", org=SINGLE, interaction=GPC, nhs_number=PATIENT, **CONSUMER_OPTIONS
        )
    with pytest.raises(InvalidInputError, match=r"patient/\*\.read") as scope:
        await _care_record(router, requested_scope="patient/*.read conf/N")
    assert scope.value.field == "requested_scope"
    with pytest.raises(InvalidInputError, match="MUST be directcare"):
        await _care_record(router, reason_for_request="migration")
    envelope = await _care_record(router)
    parsed = GpConnectAdapter().parse_options({**CONSUMER_OPTIONS, "nhs_number": PATIENT})
    for text in (str(envelope), repr(envelope), repr(parsed), caplog.text):
        assert PATIENT not in text


async def test_the_1x_interactions_are_unchanged(router: Router) -> None:
    # The same practice's 1.x system, by its own record: 1.x token and media types.
    envelope = await router.route(
        "gpconnect", org=PRACTICE, interaction=GPC, encounter="e2", **CONSUMER_OPTIONS
    )
    assert envelope.request.url == (f"{SSP}/{PRACTICE_1X_ADDRESS}Patient/$gpc.getstructuredrecord")
    assert envelope.request.headers["Ssp-To"] == PRACTICE_1X_ASID
    assert envelope.request.headers["Accept"] == "application/fhir+json;charset=utf-8"
    claims = _claims(envelope)
    assert claims["aud"] == PRACTICE_1X_ADDRESS
    assert "requested_record" not in claims
    assert "jti" in claims
    assert claims["requesting_organization"]["identifier"][0]["system"] == (
        "https://fhir.nhs.uk/Id/ods-organization-code"
    )
    assert "gpconnect_version" not in envelope.extensions
    assert INTERACTIONS[CARE_RECORD].major_version == 0
    assert {spec.major_version for i, spec in INTERACTIONS.items() if i != CARE_RECORD} == {1}


def test_the_claims_follow_the_0_7_payload_example() -> None:
    # The payload example of the 0.7.4 audit and provenance page, in shape.
    options = GpConnectOptions.model_validate(
        {
            **CONSUMER_OPTIONS,
            "system_url": "http://consumersupplier.thirdparty.nhs.uk/",
            "device_identifier": "CONS-APP-4",
            "practitioner_given_name": "Claire",
            "practitioner_family_name": "Jones",
            "practitioner_name_prefix": "Dr",
        }
    )
    issued = datetime(2016, 7, 25, 9, 24, 47, tzinfo=UTC)
    claims = care_record_claims(options, nhs_number="9658218873", issued_at=issued)
    assert claims["iat"] == int(issued.timestamp())
    assert claims["iss"] == "http://consumersupplier.thirdparty.nhs.uk/"
    assert claims["exp"] - claims["iat"] == 300
    assert claims["requesting_device"]["identifier"][0] == {
        "system": "http://consumersupplier.thirdparty.nhs.uk/Id/device-identifier",
        "value": "CONS-APP-4",
    }
    assert claims["requesting_practitioner"]["name"] == {
        "family": ["Jones"],
        "given": ["Claire"],
        "prefix": ["Dr"],
    }


async def test_a_route_to_a_patient_refuses_another_patients_number(router: Router) -> None:
    # The token and body name nhs_number; on a route to a patient it must be PDS's number
    # for that patient (asked afresh, kept in no cache), never another patient's.
    other = SANDBOX_PATIENTS["mesh"]
    with pytest.raises(InvalidInputError, match="not the NHS number PDS holds") as caught:
        await _care_record(router, nhs_number=other)
    assert caught.value.field == "nhs_number"
    assert other not in str(caught.value) and PATIENT not in str(caught.value)
    # The superseded number's record is the gpconnect patient's: its number is the current one.
    with pytest.raises(InvalidInputError, match="superseded"):
        await router.route(
            "gpconnect",
            patient=SANDBOX_PATIENTS["superseded"],
            interaction=CARE_RECORD,
            encounter="ed-visit-1",
            **{**CONSUMER_OPTIONS, "nhs_number": SANDBOX_PATIENTS["superseded"]},
        )
    envelope = await router.route(
        "gpconnect",
        patient=SANDBOX_PATIENTS["superseded"],
        interaction=CARE_RECORD,
        encounter="ed-visit-1",
        **{**CONSUMER_OPTIONS, "nhs_number": PATIENT},
    )
    assert _claims(envelope)["requested_record"]["identifier"][0]["value"] == PATIENT
