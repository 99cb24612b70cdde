"""Every GP Connect interaction the adapter knows: HTTP method, default scope, default path."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from sds_plugins import InvalidInputError

__all__ = ["CARE_RECORD", "INTERACTIONS", "PREFIX", "Interaction", "interaction"]

PREFIX = "urn:nhs:names:services:gpconnect:"

#: Access Record HTML (GP Connect 0.7.x, FHIR DSTU2): "Get Care Record". ``nhsconnect/gpconnect``
#: (branch ``release/0.7.4``), ``pages/accessrecord/accessrecord_use_case_retrieve_a_care_record_
#: section.md`` and ``pages/integration/integration_interaction_ids.md``: the id has no ``-1``
#: suffix; the operation is the type-level ``POST /Patient/$gpc.getcarerecord``.
CARE_RECORD = PREFIX + "fhir:operation:gpc.getcarerecord"


@dataclass(frozen=True)
class Interaction:
    """One GP Connect interaction.

    ``path`` is the FHIR path appended to the provider's service root when the caller gives no
    ``fhir_path``; ``None`` where the path names a resource id the caller must supply.
    ``requires_if_match``: the request must carry ``If-Match`` with the resource's current ETag
    (amend and cancel appointment, a version-aware ``PUT /Appointment/[id]``).
    ``major_version``: the GP Connect API it belongs to, ``1`` (FHIR STU3) or ``0`` (0.7.x, FHIR
    DSTU2, whose token and media types differ).
    """

    id: str
    method: str
    scope: str
    path: str | None
    reason: str = "directcare"
    requires_if_match: bool = False
    major_version: int = 1

    @property
    def migration(self) -> bool:
        """A record-migration interaction (GP2GP over GP Connect): sensitive data by default."""
        return self.reason == "migration"


#: Amend and cancel appointment. ``nhsconnect/gpconnect`` (branch ``feature/1.6.2``),
#: ``pages/appointments/appointments_use_case_amend_an_appointment.md`` and
#: ``..._cancel_an_appointment.md``: both are ``PUT /Appointment/[id]``, and "Consumers SHALL
#: include" an ``If-Match`` header holding the Appointment's current ETag, e.g. ``W/"23"``.
_IF_MATCH = frozenset({"fhir:rest:update:appointment-1", "fhir:rest:cancel:appointment-1"})


def _catalogue(*entries: tuple[str, str, str, str | None]) -> dict[str, Interaction]:
    found = {}
    for suffix, method, scope, path in entries:
        identifier = PREFIX + suffix
        # Migration interactions are only for moving a record between practices.
        reason = (
            "migration" if ":migrate" in suffix or "migratestructured" in suffix else "directcare"
        )
        found[identifier] = Interaction(
            identifier, method, scope, path, reason, requires_if_match=suffix in _IF_MATCH
        )
    return found


_ORG_READ = "organization/*.read"
_PATIENT_READ = "patient/*.read"
_PATIENT_WRITE = "patient/*.write"

#: GP Connect interaction ids (the specification's, as listed in SDS) by id.
INTERACTIONS: dict[str, Interaction] = _catalogue(
    # Foundations
    ("fhir:rest:read:metadata-1", "GET", _ORG_READ, "metadata"),
    ("fhir:rest:read:patient-1", "GET", _PATIENT_READ, None),
    ("fhir:rest:search:patient-1", "GET", _PATIENT_READ, "Patient"),
    ("fhir:rest:read:practitioner-1", "GET", _ORG_READ, None),
    ("fhir:rest:search:practitioner-1", "GET", _ORG_READ, "Practitioner"),
    ("fhir:rest:read:organization-1", "GET", _ORG_READ, None),
    ("fhir:rest:search:organization-1", "GET", _ORG_READ, "Organization"),
    ("fhir:rest:read:location-1", "GET", _ORG_READ, None),
    (
        "fhir:operation:gpc.registerpatient-1",
        "POST",
        _PATIENT_WRITE,
        "Patient/$gpc.registerpatient",
    ),
    # Appointments
    ("fhir:rest:search:slot-1", "GET", _ORG_READ, "Slot"),
    ("fhir:rest:read:appointment-1", "GET", _PATIENT_READ, None),
    ("fhir:rest:create:appointment-1", "POST", _PATIENT_WRITE, "Appointment"),
    ("fhir:rest:update:appointment-1", "PUT", _PATIENT_WRITE, None),
    ("fhir:rest:cancel:appointment-1", "PUT", _PATIENT_WRITE, None),
    ("fhir:rest:search:patient_appointments-1", "GET", _PATIENT_READ, None),
    # Access Record: Structured
    (
        "fhir:operation:gpc.getstructuredrecord-1",
        "POST",
        _PATIENT_READ,
        "Patient/$gpc.getstructuredrecord",
    ),
    (
        "fhir:operation:gpc.migratestructuredrecord-1",
        "POST",
        _PATIENT_READ,
        "Patient/$gpc.migratestructuredrecord",
    ),
    ("structured:fhir:rest:read:metadata-1", "GET", _ORG_READ, "metadata"),
    # Access Document
    ("documents:fhir:rest:read:metadata-1", "GET", _ORG_READ, "metadata"),
    ("documents:fhir:rest:search:patient-1", "GET", _PATIENT_READ, "Patient"),
    ("documents:fhir:rest:search:documentreference-1", "GET", _PATIENT_READ, None),
    ("documents:fhir:rest:read:binary-1", "GET", _PATIENT_READ, None),
    ("documents:fhir:rest:migrate:binary-1", "GET", _PATIENT_READ, None),
)
#: Access Record HTML 0.7: its token asks for ``patient/*.read`` (the 0.7.4 audit and
#: provenance page, ``requested_scope`` claim: "Get patient's record").
INTERACTIONS[CARE_RECORD] = Interaction(
    CARE_RECORD, "POST", _PATIENT_READ, "Patient/$gpc.getcarerecord", major_version=0
)


def interaction(identifier: str) -> Interaction:
    """The catalogue entry for ``identifier``; unknown ids are refused with close matches."""
    known = INTERACTIONS.get(identifier)
    if known is not None:
        return known
    close = difflib.get_close_matches(identifier, INTERACTIONS, n=3, cutoff=0.6)
    hint = (
        f"; did you mean {' or '.join(close)}?"
        if close
        else f" (known: {len(INTERACTIONS)} ids, see the README)"
    )
    raise InvalidInputError(
        f"interaction: {identifier!r} is not a GP Connect interaction{hint}", field="interaction"
    )
