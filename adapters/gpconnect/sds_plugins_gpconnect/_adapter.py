"""The GP Connect adapter: provider and consumer from SDS, an SSP-ready request."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, ClassVar
from urllib.parse import urlsplit

from sds_plugins import (
    AccreditedSystem,
    Adapter,
    AmbiguousError,
    Candidate,
    ClientTls,
    HttpRequestSpec,
    InvalidInputError,
    Lookup,
    NotFoundError,
    Party,
    PatientNotFoundError,
    PatientRegistration,
    Resolution,
    RouteRequest,
    RoutingEnvelope,
)

from ._interactions import CARE_RECORD, INTERACTIONS, Interaction, interaction
from ._jwt import JWT_LIFETIME_S, care_record_issuer, token_issuer
from ._options import GpConnectOptions

__all__ = ["GpConnectAdapter"]

# nhsconnect/gpconnect (branch feature/1.6.2), pages/development/development_general_api_
# guidance.md, "Character encoding": requests SHALL set charset UTF-8 in Content-Type and MAY set
# it in Accept, with no space before it; every request example of the specification writes both
# headers like this (e.g. pages/accessrecord_structured/accessrecord_structured_development_
# retrieve_patient_record.md). For the provider, through the SSP, only: SDS itself answers 406 to
# an Accept with parameters, and its requests are built elsewhere (sds_plugins._client).
_FHIR_JSON_UTF8 = "application/fhir+json;charset=utf-8"
# GP Connect 0.7.x is FHIR DSTU2: nhsconnect/gpconnect (branch release/0.7.4),
# pages/development/development_fhir_api_guidance.md, "Content types": application/json+fhir;
# "Character encoding": requests "MUST explicitly set the character encoding to UTF-8 using the
# charset parameter of the MIME-type in the Content-Type header" and MAY in Accept. The Get Care
# Record request example (pages/accessrecord/accessrecord_use_case_retrieve_a_care_record_
# section.md) sends "Accept: application/json+fhir".
_DSTU2_JSON = "application/json+fhir"
_DSTU2_JSON_UTF8 = "application/json+fhir;charset=utf-8"
#: The methods whose requests carry a body, hence a Content-Type.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_IF_MATCH_INTERACTIONS = tuple(spec for spec in INTERACTIONS.values() if spec.requires_if_match)


#: The consumer options of the examples, demos and benches (an invented consumer system and
#: practitioner): everything a route needs besides its target, interaction and encounter.
EXAMPLE_CONSUMER: Mapping[str, str] = MappingProxyType(
    {
        "consumer_asid": "200000000359",
        "ssp_url": "https://proxy.intspineservices.nhs.uk",
        "system_url": "https://consumer.example.org",
        "system_name": "Example Consumer",
        "system_version": "2.1",
        "organization_ods": "Y12345",
        "organization_name": "Example Surgery",
        "practitioner_id": "1",
        "practitioner_family_name": "Jones",
        "practitioner_given_name": "Ann",
        "practitioner_sds_user_id": "111111111111",
        "practitioner_sds_role_profile_id": "222222222222",
    }
)


class GpConnectAdapter(Adapter):
    """``router.route("gpconnect", org=<provider ODS>, interaction=<GP Connect id>, **options)``.

    One SDS round trip: the provider's ``/Endpoint`` and ``/Device`` (joined on party key) and,
    when no ``consumer_asid`` is given, the consumer's ``/Device`` are looked up together.

    Caching follows the specification: SDS answers are reused only within the caller's
    ``encounter`` (a patient encounter or session id). Without one, every envelope is built
    from fresh lookups, unless the operator chose ``shared_cache=True`` (environment
    ``SDS_GPCONNECT_SHARED_CACHE=1``): faster and kinder to SDS, at the cost of up to
    ``SDS_CACHE_TTL_S`` of staleness when a practice changes supplier.

    Every SSP call needs the consumer system's Spine client certificate: ``tls`` (from
    ``SDS_GPCONNECT_TLS_*``) goes into each envelope as paths, for
    :class:`~sds_plugins.EnvelopeClients`. A plain ``http://`` ``ssp_url`` is refused unless
    ``allow_insecure_ssp`` (``SDS_GPCONNECT_ALLOW_INSECURE_SSP=1``, for local mocks).
    """

    name = "gpconnect"
    description = "GP Connect: Spine Secure Proxy requests with SDS-resolved provider and consumer"
    options_model = GpConnectOptions
    options_help = "see the GP Connect adapter's README for every option"
    example = {
        "org": "B82617",
        "interaction": "urn:nhs:names:services:gpconnect:fhir:operation:gpc.getstructuredrecord-1",
        "encounter": "demo-encounter-1",
        **EXAMPLE_CONSUMER,
    }

    unstored_reason: ClassVar[str] = (
        "GP Connect reuses SDS answers only within one encounter (the specification's rule), "
        "so without one nothing is stored; an operator who accepts sharing them across "
        "encounters sets SDS_GPCONNECT_SHARED_CACHE=1"
    )

    def __init__(
        self,
        *,
        shared_cache: bool = False,
        tls: ClientTls | None = None,
        allow_insecure_ssp: bool = False,
    ) -> None:
        self.shared_cache = shared_cache
        self.tls = tls
        self.allow_insecure_ssp = allow_insecure_ssp

    def normalise_interaction(self, interaction_id: str) -> str:
        checked = super().normalise_interaction(interaction_id)
        return interaction(checked).id

    def end_user_org(self, request: RouteRequest) -> str | None:
        # The consumer organisation the request is made for (its JWT's requesting_organization).
        options: GpConnectOptions = request.options
        return options.organization_ods

    def check_patient(self, request: RouteRequest, patient: PatientRegistration) -> None:
        # Access Record Structured answers a deceased patient as not found (the provider
        # looks up only living, registered patients: nhsconnect/gpconnect, feature/1.6.2,
        # accessrecord_structured_development_retrieve_patient_record.md, PATIENT_NOT_FOUND):
        # refused here, before any lookup, rather than sent to fail at the provider. Other
        # interactions carry the fact (provenance) for the consumer to decide.
        spec = interaction(request.interaction)
        options: GpConnectOptions = request.options
        if spec.major_version == 0 and options.nhs_number is not None:
            pds = patient.demographics.nhs_number if patient.demographics is not None else None
            if options.nhs_number.get_secret_value() != pds:
                raise InvalidInputError(
                    f"gpconnect: nhs_number is not the NHS number PDS holds for patient "
                    f"{patient.patient}, the patient routed to"
                    + (
                        " (the number was superseded: use the current one)"
                        if patient.superseded
                        else ""
                    ),
                    field="nhs_number",
                )
        if patient.deceased and spec.id.endswith(":gpc.getstructuredrecord-1"):
            raise PatientNotFoundError(
                f"patient {patient.patient} is deceased (PDS); GP Connect Access Record "
                "Structured answers a deceased patient as not found",
                reason="deceased",
                correlation_id=request.correlation_id,
            )

    def needs_demographics(self, request: RouteRequest) -> bool:
        # Access Record HTML 0.7 names the patient in its token and body (nhs_number): on a
        # route to the patient, that number must be PDS's for the patient routed to.
        return interaction(request.interaction).major_version == 0

    def cache_scope(self, request: RouteRequest) -> str | None:
        encounter = request.encounter or request.option("encounter")
        if encounter:
            return f"encounter:{encounter}"
        return "" if self.shared_cache else None

    def plan(self, request: RouteRequest) -> Mapping[str, Lookup]:
        options: GpConnectOptions = request.options
        spec = interaction(request.interaction)
        self._check_path(spec, options)
        self._check_if_match(spec, options)
        self._check_nhs_number(spec, options)
        self._check_ssp(options)
        requested_scope(spec, options)
        lookups = {
            "provider_endpoints": Lookup.endpoints(
                org=request.org, interaction=request.interaction
            ),
            "provider_devices": Lookup.devices(org=request.org, interaction=request.interaction),
        }
        if options.consumer_ods is not None:
            lookups["consumer_devices"] = Lookup.devices(
                org=options.consumer_ods,
                interaction=request.interaction,
                manufacturer=options.consumer_supplier_ods,
            )
        return lookups

    def _check_ssp(self, options: GpConnectOptions) -> None:
        if urlsplit(options.ssp_url).scheme == "https" or self.allow_insecure_ssp:
            return
        raise InvalidInputError(
            "gpconnect: ssp_url: a plain http:// Spine Secure Proxy URL is refused (the SSP "
            "takes TLS with a Spine client certificate); set SDS_GPCONNECT_ALLOW_INSECURE_SSP=1 "
            "only for local mocks and tests",
            field="ssp_url",
        )

    @staticmethod
    def _check_path(spec: Interaction, options: GpConnectOptions) -> None:
        if spec.path is None and options.fhir_path is None:
            raise InvalidInputError(
                f"gpconnect: fhir_path is required for {spec.id} (it names a resource, "
                "e.g. Patient/123)",
                field="fhir_path",
            )

    @staticmethod
    def _check_if_match(spec: Interaction, options: GpConnectOptions) -> None:
        """``if_match``: required where the interaction takes ``If-Match``, refused elsewhere."""
        if spec.requires_if_match and options.if_match is None:
            raise InvalidInputError(
                f"gpconnect: if_match is required for {spec.id}: the Appointment's current "
                'ETag, as the provider returned it (e.g. W/"23"), sent as If-Match; read the '
                "Appointment first to get it",
                field="if_match",
            )
        if not spec.requires_if_match and options.if_match is not None:
            raise InvalidInputError(
                "gpconnect: if_match only applies to amend and cancel appointment "
                f"({', '.join(i.id for i in _IF_MATCH_INTERACTIONS)}), not {spec.id}",
                field="if_match",
            )

    @staticmethod
    def _check_nhs_number(spec: Interaction, options: GpConnectOptions) -> None:
        """``nhs_number``: required by Access Record HTML 0.7 (its token names the patient),
        refused elsewhere (1.x tokens name no record; the request itself does)."""
        if spec.major_version == 0 and options.nhs_number is None:
            raise InvalidInputError(
                f"gpconnect: nhs_number is required for {spec.id} (GP Connect 0.7): the "
                "token's requested_record names the patient (a route by --patient does not "
                "give the adapter the number; pass it as well)",
                field="nhs_number",
            )
        if spec.major_version != 0 and options.nhs_number is not None:
            raise InvalidInputError(
                f"gpconnect: nhs_number only applies to Access Record HTML 0.7 "
                f"({CARE_RECORD}), not {spec.id}",
                field="nhs_number",
            )

    def build(self, request: RouteRequest, resolved: Resolution) -> RoutingEnvelope:
        # Everything but the trace id and the token's times and jti follows from the request and
        # the records of its lookups: worked out once while the cache hands back the same records.
        fixed = resolved.derive(
            "gpconnect",
            [outcome.records for outcome in resolved.outcomes.values()],
            lambda timeless: self._fixed(timeless, resolved),
        )
        # One id per request: the SSP trace id, and the SDS correlation id unless the caller
        # chose one (then both are still logged together in the provenance).
        trace_id = str(uuid.uuid4()) if request.correlation_id_given else request.correlation_id
        issued_at = int(resolved.now.timestamp())
        headers = {
            "Ssp-TraceID": trace_id,
            "Ssp-From": fixed.source.asid,
            "Ssp-To": fixed.target.asid,
            "Ssp-InteractionID": request.interaction,
            "Authorization": fixed.bearer(issued_at),
            **fixed.headers,
        }
        return RoutingEnvelope(
            adapter=self.name,
            interaction=request.interaction,
            target=fixed.target,
            source=fixed.source,
            request=HttpRequestSpec(method=fixed.method, url=fixed.url, headers=headers),
            tls=fixed.tls,
            # The token is the envelope's life: the provider refuses it after exp.
            expires_at=datetime.fromtimestamp(issued_at + JWT_LIFETIME_S, UTC),
            provenance=resolved.provenance(fixed.records),
            extensions={"ssp_trace_id": trace_id, **fixed.extensions},
        )

    def _fixed(self, request: RouteRequest, resolved: Resolution) -> _Fixed:
        options: GpConnectOptions = request.options
        provider = resolved.recipient("provider_endpoints", "provider_devices", role="provider")
        consumer = self._consumer(request, options, resolved)
        spec = interaction(request.interaction)
        consumer_asid = options.consumer_asid or (consumer.asid if consumer else None)
        # _consumer and recipient() raised otherwise.
        assert consumer_asid is not None
        assert provider.asid is not None
        scope, sensitive = requested_scope(spec, options)
        method = options.method or spec.method
        if spec.major_version == 0:
            assert options.nhs_number is not None  # plan() refused a 0.7 route without one
            issue = care_record_issuer(options, nhs_number=options.nhs_number.get_secret_value())
            accept, content_type = _DSTU2_JSON, _DSTU2_JSON_UTF8
            extensions: dict[str, Any] = {"gpconnect_version": "0.7", "fhir_version": "DSTU2"}
        else:
            issue = token_issuer(
                options,
                audience=provider.address,
                scope=scope,
                reason=options.reason_for_request or spec.reason,
            )
            accept = content_type = _FHIR_JSON_UTF8
            # What the migrate request body must say (migrate_parameters builds it), so the
            # body and the token's requested_scope agree.
            extensions = {"include_sensitive_information": sensitive} if spec.migration else {}
        return _Fixed(
            target=Party(
                ods_code=request.org,
                asid=provider.asid,
                party_key=provider.party_key,
                address=provider.address,
            ),
            source=Party(
                ods_code=options.consumer_ods or options.organization_ods,
                asid=consumer_asid,
                party_key=consumer.party_key if consumer else None,
            ),
            method=method,
            url=ssp_url(options.ssp_url, provider.address, options.fhir_path or spec.path),
            headers={"Accept": accept}
            | ({"Content-Type": content_type} if method in _BODY_METHODS else {})
            # plan() refused if_match unless the interaction requires it.
            | ({"If-Match": options.if_match} if options.if_match is not None else {}),
            # TLS only means something for https (an allowed http:// mock has none).
            tls=self.tls if urlsplit(options.ssp_url).scheme == "https" else None,
            records=(*provider.records, consumer) if consumer else provider.records,
            extensions=extensions,
            issue=issue,
        )

    @staticmethod
    def _consumer(
        request: RouteRequest, options: GpConnectOptions, resolved: Resolution
    ) -> AccreditedSystem | None:
        if options.consumer_asid is not None:
            return None
        systems = [
            device
            for device in resolved.records("consumer_devices")
            if isinstance(device, AccreditedSystem) and device.asid
        ]
        if not systems:
            raise NotFoundError(
                f"no consumer system (ASID) at {options.consumer_ods} for {request.interaction}"
                + (
                    f" made by {options.consumer_supplier_ods}"
                    if options.consumer_supplier_ods
                    else ""
                ),
                correlation_id=request.correlation_id,
            )
        if len(systems) == 1:
            return systems[0]
        # Several: the selection policy decides (a deployment may install one, e.g. to prefer
        # its own supplier's system); the default refuses, re-worded to name the options a GP
        # Connect caller has (the lookup already narrowed by consumer_supplier_ods).
        candidates = [
            Candidate(asid=s.asid, party_key=s.party_key, key=s.asid, records=(s,)) for s in systems
        ]
        try:
            chosen = resolved.select(candidates, role="consumer", option=None)
        except AmbiguousError as exc:
            raise AmbiguousError(
                f"{len(systems)} consumer systems at {options.consumer_ods} for "
                f"{request.interaction}; pass consumer_supplier_ods (the system's supplier ODS "
                "code) or consumer_asid to choose: "
                + "; ".join(f"asid={s.asid} supplier={s.manufacturer_ods}" for s in systems),
                candidates=[
                    {
                        "asid": s.asid,
                        "party_key": s.party_key,
                        "manufacturer_ods": s.manufacturer_ods,
                    }
                    for s in systems
                ],
                correlation_id=request.correlation_id,
            ) from exc
        system = chosen.device
        assert system is not None  # we built the candidates above
        return system


def requested_scope(spec: Interaction, options: GpConnectOptions) -> tuple[str, bool | None]:
    """The token's ``requested_scope``, and ``includeSensitiveInformation`` for migrations.

    The migrate pages of ``nhsconnect/gpconnect`` (``accessrecord_structured_development_
    migrate_patient_record.md``, ``access_documents_development_migrate_patient_documents.md``):
    ``includeSensitiveInformation`` defaults to true, and may only be true with an appropriate
    ``requested_scope``; a ``conf/N`` scope with a request for sensitive information is answered
    CONFLICTING_VALUES (structured record) or NOT_AUTHORISED (documents). The audit-and-
    provenance page: no ``conf/*`` means ``conf/N``; ``conf/R`` is for GP2GP record transfers.
    So a migration defaults to sensitive information with ``conf/R`` (a whole-record transfer);
    ``include_sensitive_information=False`` gives ``conf/N``; any other combination is refused.
    """
    if spec.major_version == 0:
        # 0.7.4's audit and provenance page: requested_scope patient/*.read for the care
        # record, no conf/*; reason_for_request "MUST be set to directcare".
        if options.requested_scope not in (None, spec.scope):
            raise InvalidInputError(
                f"gpconnect: requested_scope for {spec.id} (GP Connect 0.7) is {spec.scope}",
                field="requested_scope",
            )
        if options.reason_for_request not in (None, "directcare"):
            raise InvalidInputError(
                f"gpconnect: reason_for_request for {spec.id} (GP Connect 0.7) MUST be directcare",
                field="reason_for_request",
            )
    if not spec.migration:
        if options.include_sensitive_information is not None:
            raise InvalidInputError(
                f"gpconnect: include_sensitive_information only applies to the migrate "
                f"interactions, not {spec.id}",
                field="include_sensitive_information",
            )
        return options.requested_scope or spec.scope, None
    sensitive = options.include_sensitive_information is not False
    wanted = "conf/R" if sensitive else "conf/N"
    if options.requested_scope is None:
        return f"{spec.scope} {wanted}", sensitive
    given = options.requested_scope.split()
    confidentiality = next((part for part in given if part.startswith("conf/")), "conf/N")
    if confidentiality != wanted:
        stated = (
            "conf/N (no conf/* means conf/N)"
            if "conf/" not in options.requested_scope
            else confidentiality
        )
        raise InvalidInputError(
            f"gpconnect: requested_scope {options.requested_scope!r} is {stated}, which "
            f"contradicts include_sensitive_information={str(sensitive).lower()}"
            + (" (the migrate default)" if options.include_sensitive_information is None else "")
            + f": a migration with{'' if sensitive else 'out'} sensitive information needs "
            f"{wanted} (the provider answers CONFLICTING_VALUES / NOT_AUTHORISED otherwise). "
            "Leave requested_scope out to get the matching one",
            field="requested_scope",
        )
    return options.requested_scope, sensitive


def ssp_url(proxy: str, service_root: str, fhir_path: str | None) -> str:
    """``<proxy>/<service root exactly as SDS has it><fhir path>``.

    The SSP compares the embedded address with SDS's character for character (case, port,
    trailing slash), so the service root is never normalised; only the joins get a ``/``.
    """
    url = f"{proxy.rstrip('/')}/{service_root}"
    if fhir_path:
        url += fhir_path if url.endswith("/") or fhir_path.startswith("/") else f"/{fhir_path}"
    return url


class _Fixed:
    """The parts of one provider's envelopes that do not change from route to route."""

    __slots__ = (
        "_issue",
        "extensions",
        "headers",
        "method",
        "records",
        "source",
        "target",
        "tls",
        "url",
    )

    def __init__(
        self,
        *,
        target: Party,
        source: Party,
        method: str,
        url: str,
        headers: dict[str, str],
        tls: ClientTls | None,
        records: tuple[Any, ...],
        extensions: dict[str, Any],
        issue: Callable[[int, str], str],
    ) -> None:
        self.target, self.source, self.method, self.url = target, source, method, url
        self.headers, self.tls, self.records, self.extensions = headers, tls, records, extensions
        self._issue = issue

    def bearer(self, issued_at: int) -> str:
        """``Bearer <token>``: a new token for each request, issued at ``issued_at`` (seconds).

        "Consumer system SHALL generate a new JWT for each API request" (the audit and provenance
        page): a fresh UUID4 ``jti`` makes each token unique, even within one second.
        """
        return f"Bearer {self._issue(issued_at, str(uuid.uuid4()))}"
