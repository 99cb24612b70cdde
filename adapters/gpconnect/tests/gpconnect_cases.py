"""The GP Connect cases the adapter must handle, as directory records for the sandbox."""

from __future__ import annotations

from typing import Any

from sds_plugins_gpconnect import CARE_RECORD, EXAMPLE_CONSUMER

from sds_plugins.testing import accredited_system_record, mhs_record

GPC = "urn:nhs:names:services:gpconnect:fhir:operation:gpc.getstructuredrecord-1"
META = "urn:nhs:names:services:gpconnect:fhir:rest:read:metadata-1"
READ_PATIENT = "urn:nhs:names:services:gpconnect:fhir:rest:read:patient-1"
MIGRATE = "urn:nhs:names:services:gpconnect:fhir:operation:gpc.migratestructuredrecord-1"
MIGRATE_DOCUMENT = "urn:nhs:names:services:gpconnect:documents:fhir:rest:migrate:binary-1"
AMEND_APPOINTMENT = "urn:nhs:names:services:gpconnect:fhir:rest:update:appointment-1"
CANCEL_APPOINTMENT = "urn:nhs:names:services:gpconnect:fhir:rest:cancel:appointment-1"
ALL = [GPC, META, READ_PATIENT, MIGRATE, MIGRATE_DOCUMENT, AMEND_APPOINTMENT, CANCEL_APPOINTMENT]

SINGLE = "A11111"  # one provider record (and a stale system of another supplier, listed first)
TWO_RECORDS = "B22222"  # two provider records with different party keys
TWO_ADDRESSES = "C33333"  # one record with two addresses
NO_ADDRESS = "D44444"  # a record without an address
CONSUMER = "E55555"  # a consumer organisation running two consumer systems
UNKNOWN = "F66666"
#: The SDS sandbox's GP Connect patient's practice (sds_plugins.sandbox.SANDBOX_PATIENTS
#: ["gpconnect"]): a 0.7 Access Record HTML system and a 1.x system, each its own MHS record.
PRACTICE = "B82617"
PRACTICE_07_ADDRESS = "https://provider.seven.nhs.uk/B82617/DSTU2/1/gpconnect/"
PRACTICE_07_ASID = "918999170007"
PRACTICE_1X_ADDRESS = "https://orange.testlab.nhs.uk/B82617/STU3/1/gpconnect/"
PRACTICE_1X_ASID = "918999170001"

SINGLE_ADDRESS = "https://provider.one.nhs.uk/A11111/STU3/1/GPConnect/"
SINGLE_ASID = "918999100001"

MHS_RECORDS = [
    mhs_record(SINGLE, ALL, party_key="A11111-100001", address=SINGLE_ADDRESS),
    mhs_record(TWO_RECORDS, ALL, party_key="B22222-200001", address="https://old.example/B22222/"),
    mhs_record(TWO_RECORDS, ALL, party_key="B22222-200002", address="https://new.example/B22222/"),
    mhs_record(
        TWO_ADDRESSES,
        ALL,
        party_key="C33333-300001",
        address=["https://a.example/C33333/", "https://b.example/C33333/"],
    ),
    mhs_record(NO_ADDRESS, ALL, party_key="D44444-400001", address=[]),
    mhs_record(PRACTICE, [CARE_RECORD], party_key="B82617-0000707", address=PRACTICE_07_ADDRESS),
    mhs_record(PRACTICE, ALL, party_key="B82617-0000806", address=PRACTICE_1X_ADDRESS),
]
AS_RECORDS = [
    # Listed first on purpose: a lookup that takes the first device gets the wrong ASID.
    accredited_system_record(SINGLE, ALL, party_key="A11111-100009", asid="918999100009"),
    accredited_system_record(SINGLE, ALL, party_key="A11111-100001", asid=SINGLE_ASID),
    accredited_system_record(TWO_RECORDS, ALL, party_key="B22222-200001", asid="918999200001"),
    accredited_system_record(TWO_RECORDS, ALL, party_key="B22222-200002", asid="918999200002"),
    accredited_system_record(TWO_ADDRESSES, ALL, party_key="C33333-300001", asid="918999300001"),
    accredited_system_record(NO_ADDRESS, ALL, party_key="D44444-400001", asid="918999400001"),
    accredited_system_record(
        PRACTICE, [CARE_RECORD], party_key="B82617-0000707", asid=PRACTICE_07_ASID
    ),
    accredited_system_record(PRACTICE, ALL, party_key="B82617-0000806", asid=PRACTICE_1X_ASID),
    accredited_system_record(
        CONSUMER, ALL, party_key="E55555-500001", asid="200000000501", manufacturer="YGA"
    ),
    accredited_system_record(
        CONSUMER, ALL, party_key="E55555-500002", asid="200000000502", manufacturer="YGM24"
    ),
]

#: The example consumer with a practitioner of these tests' own, and no role profile (optional).
CONSUMER_OPTIONS: dict[str, Any] = {
    **{k: v for k, v in EXAMPLE_CONSUMER.items() if k != "practitioner_sds_role_profile_id"},
    "practitioner_id": "10019",
    "practitioner_sds_user_id": "111222333444",
}
