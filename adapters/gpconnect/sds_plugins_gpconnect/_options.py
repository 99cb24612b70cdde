"""The adapter's options, validated before any lookup: a bad option costs no request."""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from sds_plugins import (
    AdapterOptions,
    Asid,
    InvalidInputError,
    OdsCode,
    PartyKey,
    check_header_value,
    check_nhs_number,
    check_relative_path,
)

__all__ = ["GpConnectOptions"]

_SCOPE = re.compile(r"^(patient|organization)/\*\.(read|write)( conf/[NR])?$")
# Characters a FHIR path and query may carry unencoded; check_relative_path does the structural
# checks (dot segments, literal or encoded; ';' path parameters; empty segments...).
_PATH = re.compile(r"[A-Za-z0-9$._~\-/?&=%:+,;*@!']+")
# A weak ETag naming a resource version: W/ and the version id in double quotes. The ETag
# format is nhsconnect/gpconnect's (branch feature/1.6.2,
# pages/development/development_general_api_guidance.md, "Managing resource contention":
# "ETag headers which denote resource version Ids SHALL be prefixed with W/ and enclosed in
# quotes"); the version id is a FHIR STU3 Meta.versionId, of type id: ASCII letters, digits,
# '-' and '.', 1 to 64 characters (http://hl7.org/fhir/STU3/datatypes.html#id).
_WEAK_ETAG = re.compile(r'W/"[A-Za-z0-9\-.]{1,64}"')


class GpConnectOptions(AdapterOptions):
    """Everything a consumer supplies. Names are the portable option names of the README."""

    # The consumer system: its ASID directly, or looked up in SDS.
    consumer_asid: Asid | None = None
    consumer_ods: OdsCode | None = None
    consumer_supplier_ods: OdsCode | None = None
    # Where and what.
    ssp_url: str
    fhir_path: str | None = None
    method: Literal["GET", "POST", "PUT", "DELETE", "PATCH"] | None = None
    party_key: PartyKey | None = None
    encounter: str | None = None
    # JWT claims.
    system_url: str
    system_name: str
    system_version: str
    device_identifier: str | None = None
    organization_ods: OdsCode
    organization_name: str
    practitioner_id: str
    practitioner_sds_user_id: str = "UNK"
    practitioner_sds_role_profile_id: str = "UNK"
    #: Access Record HTML 0.7 only: the ``practitionerRole`` code, the SDS Job Role of the
    #: user's smartcard (e.g. ``R8000``), ``UNK`` without one.
    practitioner_sds_job_role: str = "UNK"
    #: The consumer system's own identifier for the logged-on user (default: practitioner_id),
    #: under ``practitioner_local_user_id_system`` (default ``<system_url>/Id/local-user-id``).
    practitioner_local_user_id: str | None = None
    practitioner_local_user_id_system: str | None = None
    practitioner_family_name: str
    practitioner_given_name: str | None = None
    practitioner_name_prefix: str | None = None
    reason_for_request: Literal["directcare", "migration"] | None = None
    requested_scope: str | None = None
    #: Migrate interactions only: the ``includeSensitiveInformation`` the request asks for.
    include_sensitive_information: bool | None = None
    #: Amend and cancel appointment only (and required there): the Appointment's current ETag.
    if_match: str | None = Field(
        default=None,
        description=(
            "Required for amend and cancel appointment (fhir:rest:update:appointment-1, "
            "fhir:rest:cancel:appointment-1), refused for other interactions: the Appointment's "
            'current ETag as the provider returned it, a weak ETag such as W/"23", sent as '
            "the If-Match header"
        ),
    )

    #: Access Record HTML 0.7 only (and required there): the patient's NHS number, named by the
    #: token's ``requested_record``. Personal data: masked like a secret.
    nhs_number: SecretStr | None = Field(
        default=None,
        description=(
            "Required for Access Record HTML 0.7 (fhir:operation:gpc.getcarerecord), refused "
            "for other interactions: the patient's NHS number, for the token's requested_record "
            "and the request body (care_record_parameters)"
        ),
    )

    @field_validator("nhs_number", mode="before")
    @classmethod
    def _nhs_number(cls, value: Any) -> Any:
        if value is None:
            return None
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        return SecretStr(check_nhs_number(text, "nhs_number"))

    @field_validator("*", mode="before")
    @classmethod
    def _no_control_characters(cls, value: Any, info: Any) -> Any:
        if isinstance(value, str):
            check_header_value(value, info.field_name)
        return value

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("ssp_url", "system_url", "practitioner_local_user_id_system")
    @classmethod
    def _url(cls, value: str | None, info: Any) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if (
            parts.scheme not in ("http", "https")
            or not parts.netloc
            or parts.query
            or parts.fragment
        ):
            raise ValueError(f"{value!r} is not an http(s) URL without query or fragment")
        path = parts.path.strip("/")
        if path:
            # The proxy's own path prefix, if any: no dot segments or ';' tricks there either.
            check_relative_path(path, info.field_name)
        return value

    @field_validator("fhir_path", mode="before")
    @classmethod
    def _path(cls, value: Any) -> Any:
        # Checked as given, before whitespace stripping or any other normalisation.
        if value is None:
            return None
        path = check_relative_path(value, "fhir_path", allow_query=True)
        if not _PATH.fullmatch(path):
            raise InvalidInputError(
                f"fhir_path: {path!r} is not a FHIR path relative to the service root "
                "(letters, digits and $._~-/?&=%:+,;*@!' only; percent-encode the rest)",
                field="fhir_path",
            )
        return path

    @field_validator("requested_scope")
    @classmethod
    def _scope(cls, value: str | None) -> str | None:
        if value is not None and not _SCOPE.match(value):
            raise ValueError(
                f"{value!r} is not a GP Connect scope "
                "((patient|organization)/*.(read|write), optionally ' conf/N' or ' conf/R')"
            )
        return value

    @field_validator("if_match")
    @classmethod
    def _etag(cls, value: str | None) -> str | None:
        if value is not None and not _WEAK_ETAG.fullmatch(value):
            raise ValueError(
                # At most 80 characters of it: the message must stay readable (and short).
                f"{value[:80]!r} is not a weak ETag: give the Appointment's ETag exactly as the "
                'provider returned it, W/ then the version id in double quotes (e.g. W/"23"; '
                "the version id is 1 to 64 ASCII letters, digits, '-' or '.')"
            )
        return value

    @model_validator(mode="after")
    def _consumer(self) -> GpConnectOptions:
        if (self.consumer_asid is None) == (self.consumer_ods is None):
            raise InvalidInputError(
                "consumer: give consumer_asid, or consumer_ods (with consumer_supplier_ods when "
                "the organisation runs several consumer systems) - exactly one of the two",
                field="consumer_asid",
            )
        if self.consumer_supplier_ods is not None and self.consumer_ods is None:
            raise InvalidInputError(
                "consumer_supplier_ods only narrows a consumer_ods lookup",
                field="consumer_supplier_ods",
            )
        return self
