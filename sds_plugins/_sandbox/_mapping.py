"""Directory records to FHIR R4 resources, element for element as NHS's SDS server builds them."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from .._models import (
    ASID_SYSTEM,
    CPA_ID_SYSTEM,
    FQDN_SYSTEM,
    INTERACTION_SYSTEM,
    MHS_ID_SYSTEM,
    ODS_SYSTEM,
    PARTY_KEY_SYSTEM,
)
from .._models import INTERACTION_EXT as INTERACTION_EXTENSION
from .._models import MANUFACTURER_EXT as MANUFACTURER_EXTENSION
from .._models import RELIABILITY_EXT as RELIABILITY_EXTENSION
from ._common import spine_uuid
from ._records import Record

# The identifier systems and extension URLs are the API's, shared with the client's parser, so
# the NHS mapping vectors check the very constants the client reads.
CONNECTION_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
PAYLOAD_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/endpoint-payload-type"

# (LDAP attribute, FHIR value key) in the order NHS's server emits them.
_RELIABILITY_FIELDS: tuple[tuple[str, str], ...] = (
    ("nhsMHSSyncReplyMode", "valueString"),
    ("nhsMHSRetryInterval", "valueString"),
    ("nhsMHSRetries", "valueInteger"),
    ("nhsMHSPersistDuration", "valueString"),
    ("nhsMHSDuplicateElimination", "valueString"),
    ("nhsMHSAckRequested", "valueString"),
    ("nhsMHSActor", "valueString"),
)


class DirectoryDataError(ValueError):
    """A record NHS's mapper refuses; its server answers 500 with this text as diagnostics.

    ``sds/request/fhir_json_mapper.py`` raises ``ValueError`` for more than one
    ``uniqueIdentifier``, ``nhsAsClient`` or ``nhsMHSActor`` value, and ``int()`` fails on a
    non-integer ``nhsMHSRetries``; the handler turns either into a 500 OperationOutcome.
    """


def new_id() -> str:
    """Bundle and resource ids: fresh, upper-case UUIDs (``message_utilities.get_uuid``)."""
    return spine_uuid()


def _single(record: Record, attribute: str) -> str | None:
    values = record.values(attribute)
    if len(values) > 1:
        raise DirectoryDataError(f"LDAP returned more than 1 '{attribute}' attribute")
    return values[0] if values else None


def _identifier(system: str, value: str) -> dict[str, Any]:
    return {"system": system, "value": value}


def _reference_extension(url: str, system: str, value: str) -> dict[str, Any]:
    return {"url": url, "valueReference": {"identifier": _identifier(system, value)}}


def _as_int(text: str) -> int:
    try:
        return int(text)  # Python's int(), as the server's mapper: surrounding blanks allowed
    except ValueError as error:
        raise DirectoryDataError(str(error)) from None


def device_resource(record: Record) -> dict[str, Any]:
    """One accredited-system record as a FHIR Device."""
    device: dict[str, Any] = {"resourceType": "Device", "id": new_id()}

    identifiers = []
    asid = _single(record, "uniqueIdentifier")
    if asid:
        identifiers.append(_identifier(ASID_SYSTEM, asid))
    party_key = record.first("nhsMhsPartyKey")
    if party_key:
        identifiers.append(_identifier(PARTY_KEY_SYSTEM, party_key))
    if identifiers:
        device["identifier"] = identifiers

    extensions = []
    manufacturer = record.first("nhsMhsManufacturerOrg")
    if manufacturer:
        extensions.append(_reference_extension(MANUFACTURER_EXTENSION, ODS_SYSTEM, manufacturer))
    extensions.extend(
        _reference_extension(INTERACTION_EXTENSION, INTERACTION_SYSTEM, interaction)
        for interaction in record.values("nhsAsSvcIA")
    )
    if extensions:
        device["extension"] = extensions

    # The owner is the organisation the system serves (nhsAsClient), not the record's nhsIDCode.
    owner = _single(record, "nhsAsClient")
    if owner:
        device["owner"] = {"identifier": _identifier(ODS_SYSTEM, owner)}
    return device


def _reliability(record: Record) -> list[dict[str, Any]]:
    _single(record, "nhsMHSActor")  # checked before any value is mapped, as NHS's mapper does
    out: list[dict[str, Any]] = []
    for attribute, value_key in _RELIABILITY_FIELDS:
        text = record.first(attribute)
        if not text:
            continue
        if value_key == "valueInteger":
            out.append({"url": attribute, value_key: _as_int(text)})
        else:
            out.append({"url": attribute, value_key: text})
    return out


def endpoint_resources(
    record: Record, addresses: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """One MHS record as FHIR Endpoints: one per address, or one without ``address`` if none.

    ``addresses`` replaces the record's own addresses (the forward-reliable rewrite).
    """
    if addresses is None:
        addresses = record.values("nhsMHSEndPoint")

    identifiers = [
        _identifier(system, value)
        for system, value in (
            (FQDN_SYSTEM, record.first("nhsMhsFQDN")),
            (PARTY_KEY_SYSTEM, record.first("nhsMHSPartyKey")),
            (CPA_ID_SYSTEM, record.first("nhsMhsCPAId")),
            (MHS_ID_SYSTEM, _single(record, "uniqueIdentifier")),
        )
        if value
    ]
    extensions: list[dict[str, Any]] = []
    reliability = _reliability(record)
    if reliability:
        extensions.append({"url": RELIABILITY_EXTENSION, "extension": reliability})
    extensions.extend(
        _reference_extension(INTERACTION_EXTENSION, INTERACTION_SYSTEM, interaction)
        for interaction in record.values("nhsMhsSvcIA")
    )
    ods = record.first("nhsIDCode")

    resources = []
    for address in addresses or (None,):
        endpoint: dict[str, Any] = {
            "resourceType": "Endpoint",
            "id": new_id(),
            "status": "active",
            "connectionType": {
                "system": CONNECTION_TYPE_SYSTEM,
                "code": "hl7-fhir-msg",
                "display": "HL7 FHIR Messaging",
            },
            "payloadType": [
                {"coding": [{"system": PAYLOAD_TYPE_SYSTEM, "code": "any", "display": "Any"}]}
            ],
        }
        if address:
            endpoint["address"] = address
        if ods:
            endpoint["managingOrganization"] = {"identifier": _identifier(ODS_SYSTEM, ods)}
        if identifiers:
            endpoint["identifier"] = [dict(item) for item in identifiers]
        if extensions:
            endpoint["extension"] = copy.deepcopy(extensions)
        resources.append(endpoint)
    return resources
