"""The GP Connect access token: an unsigned JWT, new for every request."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import jwt

from ._options import GpConnectOptions

__all__ = ["JWT_LIFETIME_S", "access_token", "claims"]

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
            ],
            "name": [practitioner_name],
        },
    }


def access_token(payload: dict[str, Any]) -> str:
    """``{"alg": "none", "typ": "JWT"}``, the claims, and an empty signature (trailing ``.``)."""
    return jwt.encode(payload, "", algorithm="none")
