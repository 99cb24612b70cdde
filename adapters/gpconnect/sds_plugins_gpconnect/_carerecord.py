"""The body of ``$gpc.getcarerecord`` (Access Record HTML, GP Connect 0.7.x), consistent with the
envelope's token.

``nhsconnect/gpconnect`` (branch ``release/0.7.4``),
``pages/accessrecord/accessrecord_use_case_retrieve_a_care_record_section.md``: a
``Parameters`` resource (OperationDefinition ``gpc.getcarerecord``, version 0.7.2) with
``patientNHSNumber`` (Identifier, 1..1), ``recordSection`` (CodeableConcept, 1..1) and
``timePeriod`` (Period, 0..1); the provider "MUST return an error if ... an invalid
``timePeriod`` is requested (i.e. end date > start date)" or "a ``timePeriod`` is specified for a
``recordSection`` that is time period agnostic". The section codes and which sections take a time
period: ``pages/accessrecord/accessrecord_html_layout.md``, "Per section default time frames".

The NHS number is read from the envelope's own token (its ``requested_record``), so the body
and the token always name the same patient, and the envelope needs to carry the number nowhere
else.
"""

from __future__ import annotations

import base64
import json
from datetime import date, datetime
from typing import Any

from sds_plugins import InvalidInputError, RoutingEnvelope

from ._interactions import CARE_RECORD
from ._jwt import DSTU2_NHS_NUMBER_SYSTEM

__all__ = ["RECORD_SECTIONS", "RECORD_SECTION_SYSTEM", "care_record_parameters"]

RECORD_SECTION_SYSTEM = "http://fhir.nhs.net/ValueSet/gpconnect-record-section-1"

#: The care record sections (code → name) and whether each accepts a ``timePeriod``: the
#: sections whose time frame is "N/A" in the 0.7.4 table take none.
RECORD_SECTIONS: dict[str, tuple[str, bool]] = {
    "ADM": ("Administrative items", True),
    "ALL": ("Allergies and adverse reactions", False),
    "CLI": ("Clinical items", True),
    "ENC": ("Encounters", True),
    "IMM": ("Immunisations", False),
    "MED": ("Medications", True),
    "OBS": ("Observations", True),
    "PRB": ("Problems and issues", True),
    "REF": ("Referrals", True),
    "SUM": ("Summary", False),
}


def _requested_nhs_number(envelope: RoutingEnvelope) -> str:
    """The NHS number the envelope's 0.7 token names (``requested_record``)."""
    authorization = envelope.request.headers.get("Authorization", "")
    token = authorization.removeprefix("Bearer ")
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        [identifier] = claims["requested_record"]["identifier"]
        if identifier["system"] != DSTU2_NHS_NUMBER_SYSTEM:
            raise ValueError(identifier["system"])
        number = identifier["value"]
    except (IndexError, KeyError, TypeError, ValueError):
        raise InvalidInputError(
            "the envelope's token is not readable (an envelope printed or dumped without its "
            "secrets has a masked Authorization header: use the envelope itself, or "
            "RoutingEnvelope.model_validate(envelope.to_message()))",
            field="envelope",
        ) from None
    if not isinstance(number, str):
        raise InvalidInputError("the envelope's token names no NHS number", field="envelope")
    return number


def _day(value: date | str, field: str) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{field} must be a date (YYYY-MM-DD)", field=field) from None


def care_record_parameters(
    envelope: RoutingEnvelope,
    record_section: str,
    *,
    start: date | str | None = None,
    end: date | str | None = None,
) -> dict[str, Any]:
    """The ``Parameters`` body for the Access Record HTML ``envelope``, as JSON data.

    ``record_section`` is a section code (``SUM``, ``MED``... see :data:`RECORD_SECTIONS`);
    ``start``/``end`` (dates, either or both) become ``timePeriod``, refused for the sections
    that take none (``ALL``, ``IMM``, ``SUM``) and when ``end`` is before ``start``.
    """
    if envelope.interaction != CARE_RECORD:
        raise InvalidInputError(
            f"not a {CARE_RECORD} envelope from the gpconnect adapter", field="envelope"
        )
    code = record_section.strip().upper() if isinstance(record_section, str) else ""
    if code not in RECORD_SECTIONS:
        raise InvalidInputError(
            f"record_section must be one of {', '.join(RECORD_SECTIONS)}",
            field="record_section",
        )
    parameters: list[dict[str, Any]] = [
        {
            "name": "patientNHSNumber",
            "valueIdentifier": {
                "system": DSTU2_NHS_NUMBER_SYSTEM,
                "value": _requested_nhs_number(envelope),
            },
        },
        {
            "name": "recordSection",
            "valueCodeableConcept": {"coding": [{"system": RECORD_SECTION_SYSTEM, "code": code}]},
        },
    ]
    if start is not None or end is not None:
        name, timed = RECORD_SECTIONS[code]
        if not timed:
            raise InvalidInputError(
                f"{name} ({code}) takes no time period: the provider answers an error",
                field="record_section",
            )
        period: dict[str, str] = {}
        first = _day(start, "start") if start is not None else None
        last = _day(end, "end") if end is not None else None
        if first is not None and last is not None and last < first:
            raise InvalidInputError("end is before start", field="end")
        if first is not None:
            period["start"] = first.isoformat()
        if last is not None:
            period["end"] = last.isoformat()
        parameters.append({"name": "timePeriod", "valuePeriod": period})
    return {"resourceType": "Parameters", "parameter": parameters}
