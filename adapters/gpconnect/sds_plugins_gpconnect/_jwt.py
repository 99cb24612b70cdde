"""The GP Connect access token: a new unsigned JWT for each request.

Claims as ``nhsconnect/gpconnect`` specifies them on its cross-organisation audit and provenance
page (branch ``feature/1.6.2``,
``pages/integration/integration_cross_organisation_audit_and_provenance.md``), which also says
"Consumer system SHALL generate a new JWT for each API request". The page neither requires nor
forbids ``jti``; each token carries a fresh UUID4 as its ``jti`` (RFC 7519 §4.1.7, a unique
identifier for the token), so two requests never carry the same token, even within one second
(``iat`` and ``exp`` are whole seconds).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ._options import GpConnectOptions

__all__ = [
    "DSTU2_AUDIENCE",
    "DSTU2_NHS_NUMBER_SYSTEM",
    "JWT_LIFETIME_S",
    "access_token",
    "care_record_claims",
    "care_record_issuer",
    "claims",
    "local_user_system",
    "token_issuer",
]

#: The specification fixes the token's life: exp is exactly iat + 300 seconds.
JWT_LIFETIME_S = 300
_ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"


def claims(
    options: GpConnectOptions,
    *,
    audience: str,
    scope: str,
    reason: str,
    issued_at: datetime,
    jti: str | None = None,
) -> dict[str, Any]:
    """The claims of one request's token (the specification's names and shapes).

    ``jti`` is the token's unique id: a fresh UUID4 unless given.
    """
    iat = int(issued_at.timestamp())
    practitioner_name: dict[str, Any] = {"family": options.practitioner_family_name}
    if options.practitioner_given_name:
        practitioner_name["given"] = [options.practitioner_given_name]
    if options.practitioner_name_prefix:
        practitioner_name["prefix"] = [options.practitioner_name_prefix]
    return {
        "iss": options.system_url,
        "sub": options.practitioner_id,
        "aud": audience,
        "exp": iat + JWT_LIFETIME_S,
        "iat": iat,
        "jti": jti if jti is not None else str(uuid.uuid4()),
        "reason_for_request": reason,
        "requested_scope": scope,
        "requesting_device": {
            "resourceType": "Device",
            "identifier": [
                {
                    "system": f"{options.system_url.rstrip('/')}/Id/device-identifier",
                    "value": options.device_identifier or options.system_name,
                }
            ],
            "model": options.system_name,
            "version": options.system_version,
        },
        "requesting_organization": {
            "resourceType": "Organization",
            "identifier": [{"system": _ODS_SYSTEM, "value": options.organization_ods}],
            "name": options.organization_name,
        },
        "requesting_practitioner": {
            "resourceType": "Practitioner",
            "id": options.practitioner_id,
            "identifier": [
                {
                    "system": "https://fhir.nhs.uk/Id/sds-user-id",
                    "value": options.practitioner_sds_user_id,
                },
                {
                    "system": "https://fhir.nhs.uk/Id/sds-role-profile-id",
                    "value": options.practitioner_sds_role_profile_id,
                },
                # The audit-and-provenance page: "an identifier element containing a unique
                # local user or user-role identifier for the logged on user ... from the
                # consumer system", under a consumer-defined system URL.
                {
                    "system": local_user_system(options),
                    "value": options.practitioner_local_user_id or options.practitioner_id,
                },
            ],
            "name": [practitioner_name],
        },
    }


def local_user_system(options: GpConnectOptions) -> str:
    """The local user identifier's system: the option or ``<system_url>/Id/local-user-id``.

    A URL of the consumer system's own, as ``requesting_device``'s identifier system is.
    """
    return options.practitioner_local_user_id_system or (
        f"{options.system_url.rstrip('/')}/Id/local-user-id"
    )


def access_token(payload: dict[str, Any]) -> str:
    """``{"alg":"none","typ":"JWT"}``, the claims, and an empty signature (trailing ``.``).

    The compact JSON and unpadded base64url of RFC 7515/7519, byte for byte what PyJWT
    writes for ``algorithm="none"``, without its per-call algorithm machinery.
    """
    return f"{_HEADER}.{_base64url(_json(payload).encode())}."


#: The claims that change from one token to the next (the rest follow from the route).
_PER_TOKEN = ("exp", "iat", "jti")
_HEAD = ("iss", "sub", "aud")


def token_issuer(
    options: GpConnectOptions, *, audience: str, scope: str, reason: str
) -> Callable[[int, str], str]:
    """``issue(issued_at, jti)``: the token of :func:`claims` for these arguments.

    Byte for byte ``access_token(claims(..., issued_at=<issued_at>, jti=<jti>))``, but the
    claims that do not change (all but ``exp``, ``iat`` and ``jti``) are serialised once here,
    not once per request: a warm route only formats two integers and the ``jti``.
    """
    template = claims(
        options,
        audience=audience,
        scope=scope,
        reason=reason,
        issued_at=datetime.fromtimestamp(0, UTC),
        jti="",
    )
    # claims() writes iss, sub, aud, then exp, iat, jti, then the rest: keep that order.
    assert tuple(template)[: len(_HEAD) + len(_PER_TOKEN)] == _HEAD + _PER_TOKEN
    head = _json({name: template[name] for name in _HEAD})[:-1]
    rest = _json({k: v for k, v in template.items() if k not in _HEAD + _PER_TOKEN})[1:]
    prefix, suffix = f'{head},"exp":', f",{rest}"

    def issue(issued_at: int, jti: str) -> str:
        body = f'{prefix}{issued_at + JWT_LIFETIME_S},"iat":{issued_at},"jti":{_json(jti)}{suffix}'
        return f"{_HEADER}.{_base64url(body.encode())}."

    return issue


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_HEADER = _base64url(b'{"alg":"none","typ":"JWT"}')


# -- GP Connect 0.7.x (Access Record HTML, FHIR DSTU2) ------------------------------------------
#
# nhsconnect/gpconnect (branch release/0.7.4),
# pages/integration/integration_cross_organisation_audit_and_provenance.md. What differs from 1.x:
# - aud "MUST be fixed to https://authorize.fhir.nhs.net/token" (1.x: the provider's root);
# - requested_record, the record asked for: a Patient with an http://fhir.nhs.net/Id/nhs-number
#   identifier (the page's inline examples misname it "requesting_record"; its claim list and
#   full payload example say requested_record);
# - reason_for_request "MUST be set to directcare";
# - requesting_device and requesting_organization each need an "id with a unique logical
#   identifier"; the organisation's identifier system is http://fhir.nhs.net/Id/ods-organization-
#   code;
# - requesting_practitioner is a DSTU2 Practitioner: name an object whose family, given and
#   prefix are lists; the SDS user id under http://fhir.nhs.net/sds-user-id (the page: "MUST
#   contain an identifier with the system http://fhir.nhs.net/sds-user-id rather than ...
#   http://fhir.nhs.net/Id/sds-user-id", an error providers were assured against); no role
#   profile identifier; practitionerRole with the SDS Job Role code under
#   http://fhir.nhs.net/ValueSet/sds-job-role-name-1 (UNK without a smartcard);
# - no jti: 0.7's claim list has none, and nor does it have 1.x's "new JWT for each API request"
#   sentence; the token carries exactly the claims 0.7 providers were assured with.

#: ``aud`` of every 0.7 token.
DSTU2_AUDIENCE = "https://authorize.fhir.nhs.net/token"
DSTU2_NHS_NUMBER_SYSTEM = "http://fhir.nhs.net/Id/nhs-number"
_DSTU2_ODS_SYSTEM = "http://fhir.nhs.net/Id/ods-organization-code"
_DSTU2_SDS_USER_SYSTEM = "http://fhir.nhs.net/sds-user-id"
_DSTU2_JOB_ROLE_SYSTEM = "http://fhir.nhs.net/ValueSet/sds-job-role-name-1"


def _logical_id(kind: str, *parts: str) -> str:
    """A stable FHIR logical id (a UUID, which fits DSTU2's ``id`` type) for the consumer's own
    device or organisation: the same inputs always give the same id."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join((kind, *parts))))


def care_record_claims(
    options: GpConnectOptions, *, nhs_number: str, issued_at: datetime
) -> dict[str, Any]:
    """The claims of an Access Record HTML 0.7 token for the patient ``nhs_number``."""
    iat = int(issued_at.timestamp())
    name: dict[str, Any] = {"family": [options.practitioner_family_name]}
    if options.practitioner_given_name:
        name["given"] = [options.practitioner_given_name]
    if options.practitioner_name_prefix:
        name["prefix"] = [options.practitioner_name_prefix]
    device_value = options.device_identifier or options.system_name
    system = options.system_url.rstrip("/")
    return {
        "iss": options.system_url,
        "sub": options.practitioner_id,
        "aud": DSTU2_AUDIENCE,
        "exp": iat + JWT_LIFETIME_S,
        "iat": iat,
        "reason_for_request": "directcare",
        "requested_record": {
            "resourceType": "Patient",
            "identifier": [{"system": DSTU2_NHS_NUMBER_SYSTEM, "value": nhs_number}],
        },
        "requested_scope": "patient/*.read",
        "requesting_device": {
            "resourceType": "Device",
            "id": _logical_id("device", system, device_value),
            "identifier": [{"system": f"{system}/Id/device-identifier", "value": device_value}],
            "model": options.system_name,
            "version": options.system_version,
        },
        "requesting_organization": {
            "resourceType": "Organization",
            "id": _logical_id("organization", system, options.organization_ods),
            "identifier": [{"system": _DSTU2_ODS_SYSTEM, "value": options.organization_ods}],
            "name": options.organization_name,
        },
        "requesting_practitioner": {
            "resourceType": "Practitioner",
            "id": options.practitioner_id,
            "identifier": [
                {"system": _DSTU2_SDS_USER_SYSTEM, "value": options.practitioner_sds_user_id},
                {
                    "system": local_user_system(options),
                    "value": options.practitioner_local_user_id or options.practitioner_id,
                },
            ],
            "name": name,
            "practitionerRole": [
                {
                    "role": {
                        "coding": [
                            {
                                "system": _DSTU2_JOB_ROLE_SYSTEM,
                                "code": options.practitioner_sds_job_role,
                            }
                        ]
                    }
                }
            ],
        },
    }


def care_record_issuer(options: GpConnectOptions, *, nhs_number: str) -> Callable[[int, str], str]:
    """``issue(issued_at, jti)`` for 0.7 tokens (``jti`` is not a 0.7 claim and is ignored)."""

    def issue(issued_at: int, jti: str) -> str:
        moment = datetime.fromtimestamp(issued_at, UTC)
        return access_token(care_record_claims(options, nhs_number=nhs_number, issued_at=moment))

    return issue
