"""MESH-specific errors, under sds-plugins' tree, and reading a MESH send answer.

SdsPluginsError
├── InvalidInputError
│   └── MeshResendRefusedError   the first outbox POST was asked for twice (never retried)
└── DirectoryError
    ├── AuthenticationError      403: token refused (bad secret, replayed token, clock...)
    └── RequestRejectedError
        └── MeshRejectedError    MESH refused the message (417 unknown recipient/workflow,
                                 400 malformed headers...); ``spine_code`` is MESH's code
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from sds_plugins import (
    AuthenticationError,
    DirectoryError,
    DirectoryUnavailableError,
    InvalidInputError,
    MalformedResponseError,
    RateLimitedError,
    RequestRejectedError,
)

__all__ = ["MeshRejectedError", "MeshResendRefusedError", "parse_send_response"]


class MeshResendRefusedError(InvalidInputError):
    """The first outbox POST of a message was requested again.

    It may have landed even when no answer came back (a timeout after the upload): sending it
    again risks a duplicate message for the recipient. Find out first
    (:func:`~sds_plugins_mesh.recover_first_post`, on MESH's tracking interface), then route a
    new envelope if it really was lost.
    """


class MeshRejectedError(RequestRejectedError):
    """MESH refused a message: 417 (unknown recipient or workflow, bad chunk range), 400..."""


def parse_send_response(response: httpx.Response) -> str:
    """The ``message_id`` from a MESH outbox answer (202), or the typed error for a refusal.

    - 401/403 → :class:`~sds_plugins.AuthenticationError` (wrong password or shared key, a
      token already used, a clock more than two hours out, a missing client certificate);
    - 429 and 5xx → :class:`~sds_plugins.DirectoryUnavailableError` (a *chunk* may be retried;
      the first POST never: see :class:`MeshResendRefusedError`);
    - other 4xx, 417 included → :class:`MeshRejectedError` with MESH's error code.

    Error messages carry the method and URL, never the request's headers.
    """
    request = response.request
    context: dict[str, Any] = {
        "status_code": response.status_code,
        "method": request.method,
        "url": str(request.url),
    }
    body = _json(response)
    if response.status_code in (200, 202):
        message_id = body.get("message_id", body.get("messageID")) if body else None
        if not isinstance(message_id, str) or not message_id:
            raise MalformedResponseError(
                "MESH accepted the message but sent no message_id", field="message_id", **context
            )
        return message_id
    code, description = _mesh_error(body)
    context.update(spine_code=code, diagnostics=description or response.text[:500] or None)
    error: DirectoryError
    if response.status_code in (401, 403):
        error = AuthenticationError(
            "MESH refused the NHSMESH token (each token is single use; check mailbox, password, "
            "shared key and clock)",
            **context,
        )
    elif response.status_code == 429:
        error = RateLimitedError("MESH is throttling this mailbox", **context)
    elif response.status_code >= 500:
        error = DirectoryUnavailableError("MESH failed to take the message", **context)
    else:
        error = MeshRejectedError("MESH refused the message", **context)
    raise error


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = json.loads(response.content or b"{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _mesh_error(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """MESH's error code and text from a v2 (``detail: [{code, msg}]``) or v1 answer."""
    detail = body.get("detail")
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        first = detail[0]
        return _text(first.get("code")), _text(first.get("msg"))
    if isinstance(detail, str):
        return None, detail
    return _text(body.get("errorCode")), _text(body.get("errorDescription"))


def _text(value: object) -> str | None:
    return str(value) if value not in (None, "") else None
