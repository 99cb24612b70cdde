"""Routing to a patient: what the router asks PDS, and what it makes of the answer.

A route to a patient asks PDS for the registered practice before the route's own lookups
(:meth:`Router.route <sds_plugins.Router.route>` with ``patient=``). Everything here is
pure: the request before the organisation is known, PDS's end-user organisation, the checks
on PDS's answer, and the envelope's provenance. The router does the I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import date
from typing import TYPE_CHECKING, Any

from ._adapter import Lookup, RouteRequest
from ._envelope import ForeignRecord, RoutingEnvelope
from ._exceptions import ConfigurationError, InvalidInputError, PatientNotFoundError
from ._lookups import run_lookup
from ._patients import (
    PDS_SOURCE,
    REMOVAL_REASONS,
    PatientQuery,
    PatientRegistration,
    check_nhs_number,
    london_today,
)
from ._validation import normalise_ods_code

if TYPE_CHECKING:
    from ._adapter import Adapter
    from ._engine import Router
    from ._settings import Settings

__all__ = [
    "checked_registration",
    "early_request",
    "end_user_org",
    "patient_registration",
    "registration_for_route",
    "with_patient",
]

logger = logging.getLogger("sds_plugins.engine")  # the router's: where it always was


def early_request(
    chosen: Adapter,
    interaction: str,
    encounter: str | None,
    bypass_cache: bool,
    options: Mapping[str, Any],
) -> RouteRequest:
    """A route's request before its organisation is known (a route to a patient, before
    PDS names the practice): interaction and options checked (InvalidInputError)."""
    return RouteRequest.model_construct(
        adapter=chosen.name,
        org="",
        interaction=chosen.normalise_interaction(interaction),
        options=chosen.parse_options(options),
        correlation_id="",
        correlation_id_given=False,
        encounter=encounter,
        bypass_cache=bypass_cache,
    )


def end_user_org(
    settings: Settings, requesting_org: str | None, adapters: str | None
) -> str | None:
    """PDS's ``NHSD-End-User-Organisation-ODS`` for a route: the route's requesting
    organisation, the adapter's, the setting; refused when the application serves several
    organisations and there is none (PDS: "mandatory for client applications which
    service multiple end user organisations")."""
    chosen = requesting_org or adapters or settings.pds_end_user_org
    if chosen is None:
        if settings.pds_several_orgs:
            raise InvalidInputError(
                "requesting_org is needed: this application serves several organisations "
                "(SDS_PDS_SEVERAL_ORGS), and PDS must be told which one a patient route is "
                "made for (NHSD-End-User-Organisation-ODS); or set SDS_PDS_END_USER_ORG",
                field="requesting_org",
            )
        return None
    return normalise_ods_code(chosen, "requesting_org")


def checked_registration(
    records: tuple[Any, ...], ref: str, today: date, correlation_id: str
) -> PatientRegistration:
    """PDS's answer for patient ``ref`` as a registration a route can go by, or the
    :class:`PatientNotFoundError` that says why not (unknown, no practice, a registration
    not started or ended on ``today``: dates in England, both ends included)."""
    if not records:
        raise PatientNotFoundError(
            f"PDS knows no patient {ref}", reason="unknown", correlation_id=correlation_id
        )
    registration = records[0]
    assert isinstance(registration, PatientRegistration)  # the pds source's record type
    if registration.practice is None:
        raise PatientNotFoundError(
            f"patient {ref} has no registered GP practice in PDS",
            reason="no_registration",
            correlation_id=correlation_id,
        )
    if registration.current_practice(today) is None:
        start, end = registration.registration_start, registration.registration_end
        if start is not None and start > today:
            raise PatientNotFoundError(
                f"patient {ref}'s registration with {registration.practice} starts on "
                f"{start}; PDS gives no current practice until then",
                reason="registration_not_started",
                correlation_id=correlation_id,
            )
        removal = registration.removal_reason
        why = f" (removed from registration: {REMOVAL_REASONS[removal]})" if removal else ""
        raise PatientNotFoundError(
            f"patient {ref}'s registration with {registration.practice} ended on "
            f"{end}{why}; PDS gives no current practice",
            reason="registration_ended",
            correlation_id=correlation_id,
        )
    if registration.superseded:
        logger.info(
            "patient %s: PDS answered with record %s (the number was superseded); routing "
            "to that record's practice (correlation_id=%r)",
            ref,
            registration.record,
            correlation_id,
        )
    return registration


def with_patient(
    envelope: RoutingEnvelope, registration: PatientRegistration, key: str, number: str
) -> RoutingEnvelope:
    """The envelope with the PDS record it was routed by first in its provenance (the
    patient's and the record's references, the practice and the life events; never a number),
    and, for its sender only, the patient's current NHS number when PDS answered for a
    superseded one."""
    provenance = envelope.provenance
    record = ForeignRecord(**registration.model_dump(mode="json", exclude={"current_nhs_number"}))
    current = registration.current_nhs_number
    return envelope.model_copy(
        update={
            "provenance": provenance.model_copy(
                update={
                    "records": (record, *provenance.records),
                    "lookups": (key, *provenance.lookups),
                }
            ),
            "current_nhs_number": current if current is not None and current != number else None,
        }
    )


async def registration_for_route(
    router: Router,
    adapter: str,
    patient: str,
    interaction: str,
    encounter: str | None,
    bypass_cache: bool,
    options: Mapping[str, Any],
    correlation_id: str,
    requesting_org: str | None,
    request_id: str | None,
) -> tuple[PatientRegistration, str, str]:
    """The registration a route to ``patient`` goes by, its lookup's key and the number."""
    number = check_nhs_number(patient)
    chosen = router._adapter(adapter)
    early = early_request(chosen, interaction, encounter, bypass_cache, options)
    # The PDS answer is reused exactly as far as the route's own lookups are (GP Connect:
    # within the encounter), so a patient's practice is never remembered beyond that.
    scope = chosen.cache_scope(early)
    demographics = chosen.needs_demographics(early)
    if demographics:
        scope = None  # asked afresh, kept nowhere: demographics are never cached
    eu_org = end_user_org(router.settings, requesting_org, chosen.end_user_org(early))
    registration, key = await patient_registration(
        router, number, correlation_id, scope, bypass_cache, eu_org, request_id, demographics
    )
    return registration, key, number


async def patient_registration(
    router: Router,
    number: str,
    correlation_id: str,
    scope: str | None,
    bypass_cache: bool,
    end_user_org: str | None,
    request_id: str | None,
    demographics: bool = False,
) -> tuple[PatientRegistration, str]:
    """Patient ``number``'s registration from PDS through the router's cache (checked as by
    :func:`checked_registration`), and its lookup's key."""
    if PDS_SOURCE not in router.sources:
        raise ConfigurationError(
            "routing to a patient needs the pds directory source (PDS FHIR API): set "
            "SDS_PDS_BASE_URL, or check SDS_PLUGINS_DISABLE"
        )
    ref = router.patient_refs.ref(number)
    query = PatientQuery(
        nhs_number=number,
        ref=ref,
        end_user_org=end_user_org,
        request_id=request_id,
        demographics=demographics,
    )
    lookup = Lookup(source=PDS_SOURCE, query=query)
    planned = router._plan_lookup("patient", lookup, scope)
    outcome = await run_lookup(
        planned, router.cache, router.host, correlation_id, scope, bypass_cache
    )
    registration = checked_registration(
        outcome.records, ref, london_today(router.clock()), correlation_id
    )
    return registration, lookup.key()
