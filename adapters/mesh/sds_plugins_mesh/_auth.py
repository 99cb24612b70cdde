"""``Authorization: NHSMESH ...``: a fresh, single-use token per request.

Format (NHS England's MESH API; the same as mesh-client's ``AuthTokenGenerator`` and what
mesh-sandbox checks)::

    NHSMESH <MAILBOX>:<nonce>:<nonce_count>:<yyyyMMddHHmm>:<hmac>
    hmac = HMAC-SHA256(shared_key, "<MAILBOX>:<nonce>:<nonce_count>:<password>:<yyyyMMddHHmm>")

MESH refuses a token it has seen before (same mailbox, nonce and count) and one whose timestamp
is more than two hours from its clock. mesh-client keeps one nonce and counts up; a fresh UUID4
nonce with count 0 per token is just as valid and needs no shared state between the process that
routes and the process that sends.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Generator
from datetime import UTC, datetime

import httpx

from ._config import MeshCredentials

__all__ = ["AUTH_SCHEME", "MeshAuth", "nhsmesh_authorization"]

AUTH_SCHEME = "NHSMESH"


def nhsmesh_authorization(
    credentials: MeshCredentials,
    *,
    now: datetime | None = None,
    nonce: str | None = None,
    nonce_count: int = 0,
) -> str:
    """A new ``NHSMESH`` header value for ``credentials.mailbox``; use it for one request only.

    ``now`` (UTC, default the current time), ``nonce`` (default a new UUID4) and ``nonce_count``
    exist for tests and for reproducing a token; leave them alone otherwise.
    """
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    timestamp = moment.strftime("%Y%m%d%H%M")
    nonce = nonce or str(uuid.uuid4())
    public = f"{credentials.mailbox}:{nonce}:{nonce_count}"
    signed = f"{public}:{credentials.password.get_secret_value()}:{timestamp}"
    digest = hmac.new(
        credentials.shared_key.get_secret_value().encode("utf-8"),
        signed.encode("ascii"),
        hashlib.sha256,
    ).hexdigest()
    return f"{AUTH_SCHEME} {public}:{timestamp}:{digest}"


class MeshAuth(httpx.Auth):
    """``httpx.Auth`` that signs every request (retries included) with a fresh NHSMESH token.

    Used for mailbox lookups; envelopes carry their own token, built when they are routed.
    """

    def __init__(self, credentials: MeshCredentials) -> None:
        self.credentials = credentials

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = nhsmesh_authorization(self.credentials)
        yield request

    def __repr__(self) -> str:
        return f"MeshAuth(mailbox={self.credentials.mailbox!r})"
