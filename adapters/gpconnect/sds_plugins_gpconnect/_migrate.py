"""The body of ``$gpc.migratestructuredrecord``, consistent with the envelope's token.

The migrate page of ``nhsconnect/gpconnect``
(``pages/accessrecord_structured/accessrecord_structured_development_migrate_patient_record.md``)
defines a ``Parameters`` resource with ``patientNHSNumber`` and ``includeFullRecord``, whose part
``includeSensitiveInformation`` must agree with the JWT's ``requested_scope``. The envelope says
which value its token allows (``extensions["include_sensitive_information"]``); building the body
from the envelope keeps the two in step.
"""

from __future__ import annotations

import re
from typing import Any

from sds_plugins import InvalidInputError, RoutingEnvelope

__all__ = ["NHS_NUMBER_SYSTEM", "migrate_parameters"]

NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
_NHS_NUMBER = re.compile(r"[0-9]{10}")


def _check_nhs_number(value: object) -> str:
    if not isinstance(value, str) or not _NHS_NUMBER.fullmatch(value):
        raise InvalidInputError("nhs_number must be 10 ASCII digits", field="nhs_number")
    # Modulus 11: weights 10..2 on the first nine digits; 10 is never a valid check digit.
    total = sum(
        int(digit) * weight for digit, weight in zip(value[:9], range(10, 1, -1), strict=True)
    )
    check = (11 - total % 11) % 11
    if check == 10 or check != int(value[9]):
        raise InvalidInputError(
            "nhs_number fails the NHS number check digit (modulus 11)", field="nhs_number"
        )
    return value


def migrate_parameters(envelope: RoutingEnvelope, nhs_number: str) -> dict[str, Any]:
    """The ``Parameters`` body for the migrate-structured-record ``envelope``, as JSON data.

    ``includeSensitiveInformation`` is the value the envelope's token was issued for, so the
    provider never sees a body and a ``requested_scope`` that disagree.
    """
    sensitive = envelope.extensions.get("include_sensitive_information")
    if not envelope.interaction.endswith("gpc.migratestructuredrecord-1") or not isinstance(
        sensitive, bool
    ):
        raise InvalidInputError(
            "not a gpc.migratestructuredrecord-1 envelope from the gpconnect adapter",
            field="envelope",
        )
    return {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "patientNHSNumber",
                "valueIdentifier": {
                    "system": NHS_NUMBER_SYSTEM,
                    "value": _check_nhs_number(nhs_number),
                },
            },
            {
                "name": "includeFullRecord",
                "part": [{"name": "includeSensitiveInformation", "valueBoolean": sensitive}],
            },
        ],
    }
