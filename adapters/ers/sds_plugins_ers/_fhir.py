"""The ``ers-fhir`` adapter: ready-to-send e-RS FHIR API requests, from one catalogue.

Two access modes, as e-RS defines them (``NHSDigital/e-referrals-service-api``,
``specification/e-referrals-service-api.yaml``, "Security and authorisation"):

- **application-restricted** (the default): the application's signed-JWT client-credentials
  token, the only planned lookup (see ``_token``). The platform takes organisation, business
  function and ASID from the registered application; the user-context headers are "Not allowed
  for application-restricted access" (``specification/components/*/schemas/headers/request/``,
  the ``*OnlyUserRestricted.yaml`` headers).
- **user-restricted**: a healthcare worker's NHS CIS2 token, which only the caller can have
  (this project never runs a CIS2 login): the ``user_access_token`` option, a string or a
  callable returning one. Then the user-context headers are sent and nothing is looked up.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationInfo, field_validator

from sds_plugins import (
    ENVELOPE_TTL,
    Adapter,
    HttpRequestSpec,
    InvalidInputError,
    Lookup,
    Party,
    Resolution,
    RouteRequest,
    RoutingEnvelope,
    check_header_value,
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
# RFC 6750 b64token: what may follow "Bearer " (e-RS's BearerAuthorization.yaml: ASCII).
_BEARER_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
SPCA = "SERVICE_PROVIDER_CLINICIAN_ADMIN"
USER_TOKEN_OPTION = "user_access_token"  # noqa: S105 - an option name, not a secret

#: Where ``NHSD-eRS-On-Behalf-Of-User-ID`` may go, per operation (user-restricted mode only).
#: "On behalf of" is only supported for a Service Provider Clinician Admin acting for a
#: Service Provider Clinician (``OnBehalfOfUserID*.yaml``); operations whose parameters list
#: ``OnBehalfOfUserIDOnlyUserRestricted.yaml`` require it with that business function.
OnBehalfOf = Literal["spca-required", "spca-optional", "never"]


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
    #: ``NHSD-eRS-On-Behalf-Of-User-ID``: required with SERVICE_PROVIDER_CLINICIAN_ADMIN,
    #: optional with it, or not a parameter of the operation at all.
    on_behalf_of: OnBehalfOf = "never"
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
            on_behalf_of="spca-required",
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
            # a008-retrieve-worklist.yaml lists OnBehalfOfUserID.yaml: allowed, not required.
            on_behalf_of="spca-optional",
        ),
        FhirOperation(
            code="A042",
            name="a042-retrieve-attachment",
            title="Retrieve attachment (answers 307 to a short-lived download URL)",
            method="GET",
            path="/R4/Binary/{attachment_id}",
            app_restricted=True,
            business_functions=_CLINICIANS,
            on_behalf_of="spca-required",
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


class ErsFhirOptions(BaseModel):
    """An ``ers-fhir`` route's options, each checked in itself (which of them an operation and
    the access mode take is checked in ``plan``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    ubrn: str | None = None
    attachment_id: str | None = None
    service_id: str | None = None
    business_function: str | None = None
    on_behalf_of: str | None = None
    #: The user's NHS CIS2 access token: a string, a SecretStr or a callable returning one.
    user_access_token: Any = None

    @field_validator("ubrn", "attachment_id", "service_id", mode="before")
    @classmethod
    def _parameter(cls, value: object, info: ValidationInfo) -> object:
        if value is None:
            return None
        name = str(info.field_name)
        pattern, description = _PARAMETERS[name]
        check_path_segment(value, name)  # ASCII, no dot segments, before anything else
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise InvalidInputError(f"{name}: {value!r} is not {description}", field=name)
        return value

    @field_validator("business_function", mode="before")
    @classmethod
    def _business_function(cls, value: object) -> object:
        if value is not None and (not isinstance(value, str) or value not in BUSINESS_FUNCTIONS):
            raise InvalidInputError(
                f"business_function: {value!r} is not an e-RS business function "
                f"(one of {', '.join(sorted(BUSINESS_FUNCTIONS))})",
                field="business_function",
            )
        return value

    @field_validator("on_behalf_of", mode="before")
    @classmethod
    def _on_behalf_of(cls, value: object) -> object:
        if value is not None and (not isinstance(value, str) or not _USER_ID.fullmatch(value)):
            raise InvalidInputError(
                f"on_behalf_of: {value!r} is not an SDS user id (12 digits)",
                field="on_behalf_of",
            )
        return value

    @field_validator("user_access_token", mode="before")
    @classmethod
    def _user_access_token(cls, value: object) -> object:
        if value is None:
            return None
        if not (isinstance(value, str | SecretStr) or callable(value)):
            # The type only: the value is a credential even when it is the wrong type.
            raise InvalidInputError(
                f"{USER_TOKEN_OPTION} must be a string, a SecretStr or a callable returning "
                f"one, not {type(value).__name__}",
                field=USER_TOKEN_OPTION,
            )
        if not callable(value):
            _user_token(value)  # a well-formed bearer token, checked now
            return value if isinstance(value, SecretStr) else SecretStr(value)
        return value

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, ("**********" if name == USER_TOKEN_OPTION and value else value)


class ErsFhirAdapter(Adapter):
    """A ready-to-send e-RS FHIR API request: URL, bearer token and the e-RS headers.

    ``org`` is the end user's organisation (``NHSD-End-User-Organisation-ODS`` in
    user-restricted mode). Options: the operation's path parameters (``ubrn``,
    ``attachment_id``, ``service_id``) and, in user-restricted mode only (``ERS_ACCESS_MODE``),
    ``user_access_token`` (required), ``business_function`` and ``on_behalf_of``.
    """

    name = "ers-fhir"
    description = "e-RS FHIR API requests (A005, A008, A030, A033, A042) with a bearer token"
    options_model = ErsFhirOptions
    options_help = "see the e-RS adapters' README"
    example = {
        "org": "R69",
        "interaction": f"{FHIR_INTERACTION_PREFIX}a005-retrieve-referral-request",
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
        self._check_access_mode(request)
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
        if business_function not in BUSINESS_FUNCTIONS:  # from ERS_BUSINESS_FUNCTION
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
        self._check_on_behalf_of(operation, business_function, on_behalf_of)
        if on_behalf_of is not None:  # its form checked by the options model
            headers[ON_BEHALF_OF_HEADER] = on_behalf_of
        return headers

    def _check_access_mode(self, request: RouteRequest) -> None:
        """Refuse the mixes e-RS rejects: a user token without user-restricted mode, and back."""
        token = request.option(USER_TOKEN_OPTION)
        if self.settings.access_mode == "application-restricted":
            if token is not None:
                raise InvalidInputError(
                    f"{USER_TOKEN_OPTION}: ERS_ACCESS_MODE is application-restricted (the "
                    "default), where requests carry the application's signed-JWT token and "
                    "no user context; to act as the user, set ERS_ACCESS_MODE=user-restricted",
                    field=USER_TOKEN_OPTION,
                )
            return
        if token is None:
            raise InvalidInputError(
                f"{USER_TOKEN_OPTION} is required: ERS_ACCESS_MODE=user-restricted needs the "
                "user's NHS CIS2 access token (pass the option, a string or a callable that "
                "returns one; this adapter never runs a CIS2 login), or set "
                "ERS_ACCESS_MODE=application-restricted to use the application's signed-JWT "
                "token (ERS_CLIENT_ID, ERS_KID, ERS_PRIVATE_KEY_FILE)",
                field=USER_TOKEN_OPTION,
            )

    @staticmethod
    def _check_on_behalf_of(
        operation: FhirOperation, business_function: str, on_behalf_of: object
    ) -> None:
        """e-RS's on-behalf-of rules (``OnBehalfOfUserID*.yaml``), before anything is sent."""
        if on_behalf_of is None:
            if business_function == SPCA and operation.on_behalf_of == "spca-required":
                raise InvalidInputError(
                    f"on_behalf_of is required for {operation.code} with business function "
                    f"{SPCA}: the SDS user id of the Service Provider Clinician acted for "
                    "(NHSD-eRS-On-Behalf-Of-User-ID)",
                    field="on_behalf_of",
                )
            return
        if operation.on_behalf_of == "never":
            raise InvalidInputError(
                f"{operation.code} ({operation.title}) takes no on_behalf_of",
                field="on_behalf_of",
            )
        if business_function != SPCA:
            raise InvalidInputError(
                f"on_behalf_of is only allowed with business function {SPCA} (a Service "
                f"Provider Clinician Admin acting for a Service Provider Clinician), not "
                f"{business_function}",
                field="on_behalf_of",
            )

    def _url(self, request: RouteRequest, operation: FhirOperation) -> str:
        values: dict[str, str] = {}
        for name in _PARAMETERS:
            value = request.option(name)
            if name not in operation.parameters:
                if value is not None:
                    raise InvalidInputError(
                        f"{operation.code} ({operation.title}) takes no {name}", field=name
                    )
                continue
            if value is None:
                raise InvalidInputError(f"{name} is required for {operation.code}", field=name)
            values[name] = quote(value, safe="")  # its form checked by the options model
        return self.settings.resolved_base_url() + operation.path.format(**values)

    def plan(self, request: RouteRequest) -> Mapping[str, Lookup]:
        operation = FHIR_OPERATIONS[request.interaction]
        # Every check runs here, so bad input costs no token request either.
        self._url(request, operation)
        self._headers(request, operation)
        if self.settings.access_mode == "user-restricted":
            return {}  # the caller's user token is the bearer: nothing to look up
        token_url = self.settings.resolved_token_url()
        return {"token": Lookup(source=TOKEN_SOURCE, query=TokenQuery(token_url=token_url))}

    def build(self, request: RouteRequest, resolved: Resolution) -> RoutingEnvelope:
        operation = FHIR_OPERATIONS[request.interaction]
        expires_at = resolved.now + ENVELOPE_TTL
        if self.settings.access_mode == "user-restricted":
            bearer = _user_token(request.option(USER_TOKEN_OPTION))
        else:
            [token] = resolved.records("token")
            assert isinstance(token, AccessToken)
            bearer = token.value.get_secret_value()
            if token.expires_at is not None:
                expires_at = min(expires_at, token.expires_at)
        headers = {
            "Authorization": f"Bearer {bearer}",
            "X-Correlation-ID": request.correlation_id,
        }
        if operation.accept:
            headers["Accept"] = operation.accept
        if operation.method == "POST":
            headers["Content-Type"] = FHIR_JSON
        headers.update(self._headers(request, operation))
        url = self._url(request, operation)
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


def _user_token(value: object) -> str:
    """The caller's user access token as text (a callable is called once, here).

    Errors name the option and never the value: it is a credential.
    """
    if callable(value) and not isinstance(value, str | SecretStr):
        supplier: Callable[[], object] = value
        value = supplier()
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if not isinstance(value, str) or not value:
        raise InvalidInputError(
            f"{USER_TOKEN_OPTION} gave no token (a non-empty string or SecretStr is needed)",
            field=USER_TOKEN_OPTION,
        )
    check_header_value(value, USER_TOKEN_OPTION)
    token = value.removeprefix("Bearer ")
    if not _BEARER_TOKEN.fullmatch(token):
        raise InvalidInputError(
            f"{USER_TOKEN_OPTION} is not a bearer token (ASCII letters, digits and -._~+/ "
            "only; give the token itself, without 'Bearer ')",
            field=USER_TOKEN_OPTION,
        )
    return token
