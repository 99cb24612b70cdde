"""The ``ers-fhir`` adapter: ready-to-send e-RS FHIR API requests, from one catalogue.

No directory lookup is needed: the only planned lookup is the bearer token (see ``_token``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, ClassVar, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict

from sds_plugins import (
    Adapter,
    HttpRequestSpec,
    InvalidInputError,
    Lookup,
    Party,
    Resolution,
    RouteRequest,
    RoutingEnvelope,
    check_path_segment,
)

from ._settings import ErsSettings
from ._token import TOKEN_SOURCE, AccessToken, TokenQuery

__all__ = [
    "BUSINESS_FUNCTIONS",
    "FHIR_INTERACTION_PREFIX",
    "FHIR_OPERATIONS",
    "ErsFhirAdapter",
    "FhirOperation",
]

FHIR_INTERACTION_PREFIX = "urn:nhs:names:services:ers:fhir:"

#: Every value ``NHSD-eRS-Business-Function`` may take (the API's enumeration).
BUSINESS_FUNCTIONS = frozenset(
    {
        "REFERRING_CLINICIAN",
        "REFERRING_CLINICIAN_ADMIN",
        "REFERRING_ADMIN",
        "COMMISSIONER",
        "SERVICE_PROVIDER_CLINICIAN_ADMIN",
        "SERVICE_PROVIDER_CLINICIAN",
        "SERVICE_PROVIDER_ADMIN",
        "INFORMATION_ANALYST",
        "BOOKING_MANAGER",
        "ADDITIONAL_REQUIREMENTS_MANAGER",
    }
)
_CLINICIANS = frozenset(
    {
        "REFERRING_CLINICIAN",
        "REFERRING_CLINICIAN_ADMIN",
        "SERVICE_PROVIDER_CLINICIAN",
        "SERVICE_PROVIDER_CLINICIAN_ADMIN",
    }
)

# The platform's headers for the user's context; in application-restricted mode it takes them
# from the registered application and refuses requests that send them.
BUSINESS_FUNCTION_HEADER = "NHSD-eRS-Business-Function"
ODS_HEADER = "NHSD-End-User-Organisation-ODS"
ON_BEHALF_OF_HEADER = "NHSD-eRS-On-Behalf-Of-User-ID"
USER_CONTEXT_HEADERS = frozenset({BUSINESS_FUNCTION_HEADER, ODS_HEADER, ON_BEHALF_OF_HEADER})

FHIR_JSON = "application/fhir+json"
#: Envelopes older than this are resolved again (and never outlive their token).
ENVELOPE_TTL = timedelta(minutes=5)

# Path parameters: option name -> (pattern, description). Each value is first checked as one
# plain path segment (check_path_segment: no "..", "%2e%2e", "..;", encoded "/"...), then must
# match its pattern in full (fullmatch: "$" would let a trailing newline through). FHIR ids are
# [A-Za-z0-9.-]{1,64} (FHIR R4 "id"), which alone would accept "." and "..".
_PARAMETERS: Mapping[str, tuple[re.Pattern[str], str]] = {
    "ubrn": (re.compile(r"[0-9]{12}"), "a UBRN (12 digits)"),
    "attachment_id": (re.compile(r"[A-Za-z0-9.-]{1,64}"), "a FHIR id (letters, digits, - .)"),
    "service_id": (re.compile(r"[A-Za-z0-9.-]{1,64}"), "a FHIR id (letters, digits, - .)"),
}
_USER_ID = re.compile(r"[0-9]{12}")


class FhirOperation(BaseModel):
    """One e-RS FHIR API operation the adapter can build a request for."""

    model_config = ConfigDict(frozen=True)

    code: str
    name: str
    title: str
    method: Literal["GET", "POST"]
    #: Relative to the base URL; ``{option}`` placeholders are filled from route options.
    path: str
    app_restricted: bool
    #: Whether the operation takes the user-context headers (business function, ODS, OBO).
    user_context: bool = True
    #: Business functions allowed in user-restricted mode.
    business_functions: frozenset[str] = frozenset()
    accept: str | None = FHIR_JSON

    @property
    def interaction(self) -> str:
        return f"{FHIR_INTERACTION_PREFIX}{self.name}"

    @property
    def fhir_version(self) -> str:
        return self.path.split("/", 2)[1]

    @property
    def parameters(self) -> tuple[str, ...]:
        return tuple(re.findall(r"\{(\w+)\}", self.path))


#: The catalogue: interaction name -> operation. See the README for the table.
FHIR_OPERATIONS: Mapping[str, FhirOperation] = {
    operation.interaction: operation
    for operation in (
        FhirOperation(
            code="A005",
            name="a005-retrieve-referral-request",
            title="Retrieve referral request",
            method="GET",
            path="/STU3/ReferralRequest/{ubrn}",
            app_restricted=True,
            business_functions=_CLINICIANS,
        ),
        FhirOperation(
            code="A008",
            name="a008-retrieve-worklist",
            title="Retrieve referral worklist",
            method="POST",
            path="/STU3/ReferralRequest/$ers.fetchworklist",
            app_restricted=True,
            business_functions=frozenset(
                {
                    "REFERRING_CLINICIAN",
                    "REFERRING_CLINICIAN_ADMIN",
                    "REFERRING_ADMIN",
                    "SERVICE_PROVIDER_CLINICIAN",
                    "SERVICE_PROVIDER_CLINICIAN_ADMIN",
                    "SERVICE_PROVIDER_ADMIN",
                }
            ),
        ),
        FhirOperation(
            code="A042",
            name="a042-retrieve-attachment",
            title="Retrieve attachment (answers 307 to a short-lived download URL)",
            method="GET",
            path="/R4/Binary/{attachment_id}",
            app_restricted=True,
            business_functions=_CLINICIANS,
            accept=None,
        ),
        FhirOperation(
            code="A030",
            name="a030-retrieve-business-functions",
            title="Retrieve the user's practitioner roles (e-RS business functions)",
            method="GET",
            path="/R4/PractitionerRole",
            app_restricted=False,
            user_context=False,
        ),
        FhirOperation(
            code="A033",
            name="a033-retrieve-healthcare-service",
            title="Retrieve healthcare service",
            method="GET",
            path="/R4/HealthcareService/{service_id}",
            app_restricted=True,
            business_functions=frozenset({"REFERRING_CLINICIAN", "REFERRING_CLINICIAN_ADMIN"}),
        ),
    )
}


def _known() -> str:
    return ", ".join(sorted(FHIR_OPERATIONS))


class ErsFhirAdapter(Adapter):
    """A ready-to-send e-RS FHIR API request: URL, bearer token and the e-RS headers.

    ``org`` is the end user's organisation (``NHSD-End-User-Organisation-ODS``). Options:
    ``business_function``, ``on_behalf_of`` (user-restricted mode only) and the operation's path
    parameters (``ubrn``, ``attachment_id``, ``service_id``).
    """

    name = "ers-fhir"
    description = "e-RS FHIR API requests (A005, A008, A030, A033, A042) with a bearer token"
    options = frozenset({"business_function", "on_behalf_of", *_PARAMETERS})
    example: ClassVar[Mapping[str, Any] | None] = {
        "org": "R69",
        "interaction": f"{FHIR_INTERACTION_PREFIX}a005-retrieve-referral-request",
        "business_function": "SERVICE_PROVIDER_CLINICIAN",
        "ubrn": "000000070000",
    }

    def __init__(self, settings: ErsSettings | None = None) -> None:
        self.settings = settings or ErsSettings()

    def normalise_interaction(self, interaction: str) -> str:
        value = interaction.strip() if isinstance(interaction, str) else interaction
        if value not in FHIR_OPERATIONS:
            value = super().normalise_interaction(interaction)  # type errors, CR/LF...
            raise InvalidInputError(
                f"unknown e-RS FHIR interaction {value}; known: {_known()}", field="interaction"
            )
        return str(value)

    def cache_scope(self, request: RouteRequest) -> str | None:
        # The only lookup is the bearer token: a secret the engine must never store.
        return None

    def _headers(self, request: RouteRequest, operation: FhirOperation) -> dict[str, str]:
        """The e-RS headers for ``request``; raises before anything is sent."""
        business_function = request.option("business_function")
        on_behalf_of = request.option("on_behalf_of")
        given = [
            name
            for name, value in (
                ("business_function", business_function),
                ("on_behalf_of", on_behalf_of),
            )
            if value is not None
        ]
        headers: dict[str, str] = {}
        if self.settings.access_mode == "application-restricted":
            if not operation.app_restricted:
                raise InvalidInputError(
                    f"{operation.code} ({operation.title}) supports user-restricted access "
                    "only; ERS_ACCESS_MODE is application-restricted",
                    field="interaction",
                )
            if given:
                raise InvalidInputError(
                    f"{', '.join(given)}: not allowed in application-restricted mode (the "
                    "platform takes the organisation, business function and ASID from the "
                    "registered application and refuses requests that override them)",
                    field=given[0],
                )
            return headers
        if not operation.user_context:
            if given:
                raise InvalidInputError(
                    f"{operation.code} ({operation.title}) takes no {', '.join(given)}",
                    field=given[0],
                )
            return headers
        business_function = business_function or self.settings.business_function
        if business_function is None:
            raise InvalidInputError(
                f"business_function is required for {operation.code} in user-restricted mode "
                f"(one of {', '.join(sorted(operation.business_functions))})",
                field="business_function",
            )
        if not isinstance(business_function, str) or business_function not in BUSINESS_FUNCTIONS:
            raise InvalidInputError(
                f"business_function: {business_function!r} is not an e-RS business function "
                f"(one of {', '.join(sorted(BUSINESS_FUNCTIONS))})",
                field="business_function",
            )
        if business_function not in operation.business_functions:
            raise InvalidInputError(
                f"business_function: {operation.code} ({operation.title}) does not accept "
                f"{business_function} (one of {', '.join(sorted(operation.business_functions))})",
                field="business_function",
            )
        headers[BUSINESS_FUNCTION_HEADER] = business_function
        headers[ODS_HEADER] = request.org  # validated as an ODS code by the engine
        if on_behalf_of is not None:
            if not isinstance(on_behalf_of, str) or not _USER_ID.fullmatch(on_behalf_of):
                raise InvalidInputError(
                    f"on_behalf_of: {on_behalf_of!r} is not an SDS user id (12 digits)",
                    field="on_behalf_of",
                )
            headers[ON_BEHALF_OF_HEADER] = on_behalf_of
        return headers

    def _url(self, request: RouteRequest, operation: FhirOperation) -> str:
        values: dict[str, str] = {}
        for name, (pattern, description) in _PARAMETERS.items():
            value = request.option(name)
            if name not in operation.parameters:
                if value is not None:
                    raise InvalidInputError(
                        f"{operation.code} ({operation.title}) takes no {name}", field=name
                    )
                continue
            if value is None:
                raise InvalidInputError(f"{name} is required for {operation.code}", field=name)
            check_path_segment(value, name)
            if not isinstance(value, str) or not pattern.fullmatch(value):
                raise InvalidInputError(f"{name}: {value!r} is not {description}", field=name)
            values[name] = quote(value, safe="")
        return self.settings.resolved_base_url() + operation.path.format(**values)

    def plan(self, request: RouteRequest) -> Mapping[str, Lookup]:
        operation = FHIR_OPERATIONS[request.interaction]
        # Every check runs here, so bad input costs no token request either.
        self._url(request, operation)
        self._headers(request, operation)
        token_url = self.settings.resolved_token_url()
        return {"token": Lookup(source=TOKEN_SOURCE, query=TokenQuery(token_url=token_url))}

    def build(self, request: RouteRequest, resolved: Resolution) -> RoutingEnvelope:
        operation = FHIR_OPERATIONS[request.interaction]
        [token] = resolved.records("token")
        assert isinstance(token, AccessToken)
        headers = {
            "Authorization": f"Bearer {token.value.get_secret_value()}",
            "X-Correlation-ID": request.correlation_id,
        }
        if operation.accept:
            headers["Accept"] = operation.accept
        if operation.method == "POST":
            headers["Content-Type"] = FHIR_JSON
        headers.update(self._headers(request, operation))
        url = self._url(request, operation)
        expires_at = resolved.now + ENVELOPE_TTL
        if token.expires_at is not None:
            expires_at = min(expires_at, token.expires_at)
        return RoutingEnvelope(
            adapter=self.name,
            interaction=request.interaction,
            target=Party(address=self.settings.resolved_base_url()),
            source=Party(ods_code=request.org),
            request=HttpRequestSpec(method=operation.method, url=url, headers=headers),
            expires_at=expires_at,
            provenance=resolved.provenance(),
            extensions={
                "ers": {
                    "operation": operation.code,
                    "title": operation.title,
                    "fhir_version": operation.fhir_version,
                    "access_mode": self.settings.access_mode,
                }
            },
        )
