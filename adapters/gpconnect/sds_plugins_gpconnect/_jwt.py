"""The GP Connect access token: an unsigned JWT for each request (its claims differ from one
request to the next only in iat and exp, so requests of the same second share one).

Claims as ``nhsconnect/gpconnect`` specifies them on its cross-organisation audit and provenance
page (``pages/integration/integration_cross_organisation_audit_and_provenance.md``).
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from ._options import GpConnectOptions

__all__ = ["JWT_LIFETIME_S", "access_token", "claims", "local_user_system"]

#: The specification fixes the token's life: exp is exactly iat + 300 seconds.
JWT_LIFETIME_S = 300
_ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"


def claims(
    options: GpConnectOptions, *, audience: str, scope: str, reason: str, issued_at: datetime
) -> dict[str, Any]:
    """The claims of one request's token (the specification's names and shapes)."""
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
    body = json.dumps(payload, separators=(",", ":")).encode()
    return f"{_HEADER}.{_base64url(body)}."


def _base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_HEADER = _base64url(b'{"alg":"none","typ":"JWT"}')
