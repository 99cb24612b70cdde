"""A patient's demographics from PDS, for the adapters that must name the patient.

Most routes need a patient's practice and nothing more (:class:`PatientRegistration`). A few
address the patient: MESH's automated (demographic) routing writes ``mex-to`` from the NHS
number, date of birth and surname (GP Connect Messaging, Send Document). An adapter asks for
them (:meth:`Adapter.needs_demographics <sds_plugins.Adapter.needs_demographics>`); the router
then asks PDS afresh, keeps the answer in no cache, and the demographics travel on the
registration only in memory: excluded from every dump (the cache's, the provenance's), masked in
every repr.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

__all__ = ["PatientDemographics", "parse_demographics"]

_MASK = "**********"


@dataclass(frozen=True, slots=True)
class PatientDemographics:
    """The patient as PDS holds them: ``nhs_number`` (the record's, the current one),
    ``birth_date`` (``None`` when PDS gives no whole date), ``family_name`` (the current usual
    name's ``family``, exactly as PDS holds it; ``None`` when there is none).

    Personal data: never printed (the repr masks every field).
    """

    nhs_number: str
    birth_date: date | None
    family_name: str | None

    def __repr__(self) -> str:
        return f"PatientDemographics(nhs_number={_MASK}, birth_date={_MASK}, family_name={_MASK})"

    __str__ = __repr__


def parse_demographics(
    patient: dict[str, Any], nhs_number: str, today: date
) -> PatientDemographics:
    """The demographics in a PDS ``Patient`` resource (already checked to be one, with
    ``nhs_number`` its id). Names are judged on ``today``: a usual name whose period has ended
    is a former name."""
    return PatientDemographics(
        nhs_number=nhs_number,
        birth_date=_whole_date(patient.get("birthDate")),
        family_name=_usual_family(patient.get("name"), today),
    )


def _whole_date(value: object) -> date | None:
    # FHIR allows YYYY and YYYY-MM; only a whole date can be written as ddmmyyyy.
    if not isinstance(value, str) or len(value) != 10:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def _usual_family(names: object, today: date) -> str | None:
    """The ``family`` of the first current ``usual`` name (PDS: "the patient's usual name",
    one at a time; earlier ones stay with an ended period)."""
    for name in names if isinstance(names, list) else ():
        if not isinstance(name, dict) or name.get("use") != "usual":
            continue
        period = name.get("period")
        end = _whole_date(period.get("end")) if isinstance(period, dict) else None
        if end is not None and end < today:
            continue
        family = name.get("family")
        if isinstance(family, str) and family.strip() and len(family) <= 200:
            return family
    return None
