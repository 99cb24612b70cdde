"""Two sandbox practices that take part in GP2GP: their SDS records, for the demo and tests.

The SDS sandbox's reference data has GP2GP records (X26's, for ``COPC_IN000001UK01``) but no
accredited system that joins them on party key, and no practice with all four interactions.
These are the records of the sandbox's additions (``sds_plugins/_sandbox/data/additions``;
the tests check they agree): one MHS record per interaction (each with its
CPA id, as SDS holds them) and one accredited system per practice, on the same party key.

Reliability is that of NHS England's reference GP2GP records in the sandbox data (X26's:
ackRequested and duplicateElimination ``always``, syncReplyMode ``None``, 2 retries, PT2H
apart, persisted PT7H); SDS answers with Spine's reliable intermediary for every one of them.
"""

from __future__ import annotations

from typing import Any

from ._adapter import GP2GP_INTERACTIONS, GP2GP_SERVICE
from ._conversation import Practice

__all__ = [
    "DEMO_MANUFACTURER",
    "NEW_PRACTICE",
    "PREVIOUS_PRACTICE",
    "accredited_system_records",
    "mhs_records",
    "sandbox_records",
]

#: The practice the patient registers with (B82617: the sandbox's GP Connect practice, where
#: its ``gpconnect`` patient, 9990001006, is registered: ``--patient`` finds it through PDS).
NEW_PRACTICE = Practice("B82617", party_key="B82617-9199201", asid="918999198801")
#: The practice the patient leaves (an invented code no other sandbox record uses).
PREVIOUS_PRACTICE = Practice("P83010", party_key="P83010-9199202", asid="918999198802")
#: The supplier of both systems (``nhsMhsManufacturerOrg``).
DEMO_MANUFACTURER = "YGM24"
#: SDS's reliability settings for each record, in LDAP form.
RELIABILITY: dict[str, str] = {
    "nhsMHSRetries": "2",
    "nhsMHSRetryInterval": "PT2H",
    "nhsMHSPersistDuration": "PT7H",
    "nhsMHSDuplicateElimination": "always",
    "nhsMHSAckRequested": "always",
    "nhsMHSSyncReplyMode": "None",
}


def _practices() -> tuple[Practice, Practice]:
    return NEW_PRACTICE, PREVIOUS_PRACTICE


def cpa_id(practice: Practice, index: int) -> str:
    """The CPA id of ``practice``'s MHS record for the ``index``-th interaction."""
    return f"S{practice.asid}{index:02d}"


def address(practice: Practice) -> str:
    """The practice's own MHS address (SDS answers with Spine's intermediary instead)."""
    return f"https://mhs.{practice.ods.lower()}.example.nhs.uk/reliablemessaging"


def mhs_records() -> list[dict[str, Any]]:
    """The practices' MHS records (served as ``/Endpoint``), in LDAP-attribute form."""
    records = []
    for practice in _practices():
        for index, interaction in enumerate(GP2GP_INTERACTIONS, start=1):
            fqdn = f"mhs.{practice.ods.lower()}.example.nhs.uk"
            cpa = cpa_id(practice, index)
            record: dict[str, Any] = {
                "nhsIDCode": practice.ods,
                "nhsMHSPartyKey": practice.party_key,
                "nhsMhsSvcIA": [interaction],
                "nhsMHSEndPoint": [address(practice)],
                "nhsMhsFQDN": fqdn,
                "nhsMhsCPAId": cpa,
                "uniqueIdentifier": [cpa],
                **RELIABILITY,
                "nhsMHsSN": GP2GP_SERVICE,
                "nhsMHsIN": interaction.rpartition(":")[2],
            }
            records.append(record)
    return records


def accredited_system_records() -> list[dict[str, Any]]:
    """The practices' accredited systems (served as ``/Device``), on the MHS's party key."""
    return [
        {
            "nhsIDCode": practice.ods,
            "nhsMHSPartyKey": practice.party_key,
            "nhsAsSvcIA": list(GP2GP_INTERACTIONS),
            "uniqueIdentifier": [practice.asid],
            "nhsAsClient": [practice.ods],
            "nhsMhsManufacturerOrg": DEMO_MANUFACTURER,
        }
        for practice in _practices()
    ]


def sandbox_records() -> dict[str, list[dict[str, Any]]]:
    """Both lists by the sandbox data file each belongs in."""
    return {
        "mhs-records.json": mhs_records(),
        "accredited-system-records.json": accredited_system_records(),
    }
