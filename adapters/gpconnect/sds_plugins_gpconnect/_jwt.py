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

__all__ = ["JWT_LIFETIME_S", "access_token", "claims", "local_user_system", "token_issuer"]

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
