"""After a first outbox POST whose answer never came: did MESH take the message?

The first ``POST /outbox`` is never retried blindly (it may have landed: a second one would be
a second message). Finding out uses MESH's current tracking interface, as NHS England's
``mesh-client`` (``MeshClient.track_message``) and ``mesh-sandbox``
(``routers/tracking.py``, "Track outbox") implement it::

    GET /messageexchange/{mailbox}/outbox/tracking?messageID={message_id}
    Accept: application/vnd.mesh.v2+json

It finds a message by the ``message_id`` MESH gave the first POST. The route that looked a
message up by ``mex-localid`` (``/outbox/tracking/{local_id}``) is marked deprecated by
mesh-sandbox and is not used. So :func:`recover_first_post` decides, in this order:

1. ``message_id`` known (the 202 was read before the failure, e.g. a crash before the outcome
   was recorded, or a chunk that failed later): track it. ``accepted``/``acknowledged`` → it
   landed, never send it again; ``uploading`` → a chunked message waiting for chunks 2..n, which
   may be (re)sent; ``undeliverable``/``error`` → MESH gave up on it; 404 → MESH has no such
   message from this mailbox (expired, or never accepted).
2. No ``message_id``, and the error proves the request never left (connection refused, TLS
   handshake failure, connect or pool timeout): nothing landed; route again and send.
3. No ``message_id``, chunked message (two or more chunks): even if the first POST landed, MESH
   holds chunk 1 of n with status ``uploading`` and puts the message in the recipient's inbox
   only when every chunk has arrived (mesh-sandbox ``common/messaging.py``: ``send_message``
   accepts a message, and adds it to the inbox, only when ``total_chunks == 1``; the last chunk
   accepts the others). The orphan is never delivered, so sending again cannot duplicate it.
4. Otherwise the answer is **unknown**: the message may be in the recipient's inbox, and the
   current interface cannot find it without its id. Nothing is resent; reconcile with the
   recipient using the ``mex-localid`` the message carried.
"""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError
from sds_plugins import (
    AuthenticationError,
    DirectoryError,
    DirectoryUnavailableError,
    InvalidInputError,
    MalformedResponseError,
    NotFoundError,
    RateLimitedError,
    RequestRejectedError,
    RetryPolicy,
    RoutingEnvelope,
    check_path_segment,
    get_with_retries,
    parse_retry_after,
)

from ._auth import nhsmesh_authorization
from ._config import MeshCredentials
from ._lookup import MESH_V2_JSON

__all__ = [
    "FirstPostOutcome",
    "FirstPostRecovery",
    "MeshTracking",
    "recover_first_post",
    "track_message",
]

#: httpx errors raised before any byte of the request was written: nothing can have landed.
NOT_SENT_ERRORS: tuple[type[BaseException], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
)


class MeshTracking(BaseModel):
    """MESH's v2 tracking answer for one sent message (fields as MESH names them)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    message_id: str
    local_id: str | None = None
    workflow_id: str | None = None
    recipient: str | None = None
    #: ``uploading``, ``accepted``, ``acknowledged``, ``undeliverable`` or ``error``.
    status: str | None = None
    status_success: bool | None = None
    status_code: str | None = None
    status_description: str | None = None
    upload_timestamp: datetime | None = None
    expiry_time: datetime | None = None


class FirstPostOutcome(StrEnum):
    """What became of a first outbox POST whose answer was lost."""

    #: The request never reached MESH: route again and send.
    NOT_SENT = "not-sent"
    #: A chunked message whose first chunk may have landed: never delivered without the
    #: other chunks, so sending again (a new envelope) cannot duplicate it.
    NOT_DELIVERED = "not-delivered"
    #: MESH has the message (in the recipient's inbox, or downloaded): never send it again.
    ACCEPTED = "accepted"
    ACKNOWLEDGED = "acknowledged"
    #: A chunked message waiting for its other chunks: send chunks 2..n (retries are safe).
    UPLOADING = "uploading"
    #: MESH gave up on it (``undeliverable``/``error``): a new send is a new message.
    FAILED = "failed"
    #: MESH has no message with this id from this mailbox (expired, or never accepted).
    NOT_FOUND = "not-found"
    #: It may be in the recipient's inbox and cannot be found without its message id.
    UNKNOWN = "unknown"


_MAY_SEND_AGAIN = frozenset(
    {FirstPostOutcome.NOT_SENT, FirstPostOutcome.NOT_DELIVERED, FirstPostOutcome.FAILED}
)


class FirstPostRecovery(BaseModel):
    """The verdict of :func:`recover_first_post`."""

    model_config = ConfigDict(frozen=True)

    outcome: FirstPostOutcome
    #: MESH's id for the message, when known.
    message_id: str | None = None
    #: The ``mex-localid`` the message carried (the envelope's).
    local_id: str | None = None
    #: MESH's tracking answer, when the message was tracked.
    tracking: MeshTracking | None = None
    explanation: str

    @property
    def may_send_again(self) -> bool:
        """Whether routing a new envelope and sending cannot give the recipient a duplicate."""
        return self.outcome in _MAY_SEND_AGAIN

    @property
    def resume_chunks(self) -> bool:
        """Whether chunks 2..n should be sent (``ChunkedSend.chunk_requests(message_id=...)``)."""
        return self.outcome is FirstPostOutcome.UPLOADING


def _tracking_error(response: httpx.Response, correlation_id: str) -> DirectoryError:
    status = response.status_code
    context: dict[str, Any] = {
        "correlation_id": correlation_id,
        "status_code": status,
        "method": "GET",
        "url": str(response.request.url),
        "diagnostics": response.text[:500].strip() or None,
    }
    if status == 404:
        # MESH answers 404 (not 403) for another mailbox's message too, as mesh-sandbox notes.
        return NotFoundError("MESH tracks no such message from this mailbox", **context)
    if status in (401, 403):
        return AuthenticationError(
            "MESH refused the tracking request's NHSMESH token or client certificate", **context
        )
    if status == 429:
        return RateLimitedError(
            "MESH is throttling tracking requests",
            retry_after_s=parse_retry_after(response.headers.get("Retry-After")),
            **context,
        )
    if status >= 500:
        return DirectoryUnavailableError("MESH tracking failed on the server side", **context)
    return RequestRejectedError("MESH refused the tracking request", **context)


async def track_message(
    client: httpx.AsyncClient,
    *,
    mesh_url: str,
    credentials: MeshCredentials,
    message_id: str,
    correlation_id: str,
    retry: RetryPolicy | None = None,
) -> MeshTracking:
    """MESH's tracking record for ``message_id`` sent from ``credentials.mailbox``.

    The current interface (``/outbox/tracking?messageID=``, v2 JSON); an idempotent GET, so it
    is retried (429, 5xx, timeouts), each attempt with a fresh single-use NHSMESH token.
    Raises :class:`~sds_plugins.NotFoundError` when MESH tracks no such message.
    """
    message_id = check_path_segment(message_id, "message_id", max_length=100)
    headers = {"Accept": MESH_V2_JSON}

    async def sign() -> None:
        # MESH refuses a token it has seen: each attempt signs anew (the dict is read per call).
        headers["Authorization"] = nhsmesh_authorization(credentials)

    body, _ = await get_with_retries(
        client,
        f"{mesh_url}/messageexchange/{credentials.mailbox}/outbox/tracking",
        params=httpx.QueryParams({"messageID": message_id}),
        headers=headers,
        policy=retry or RetryPolicy(),
        correlation_id=correlation_id,
        error_for=_tracking_error,
        before_attempt=sign,
        service="MESH tracking",
    )
    try:
        return MeshTracking.model_validate(json.loads(body))
    except (ValueError, ValidationError):
        raise MalformedResponseError(
            "MESH's tracking answer is not a v2 tracking record", field="message_id"
        ) from None


def _outcome(tracking: MeshTracking) -> tuple[FirstPostOutcome, str]:
    status = (tracking.status or "").lower()
    if status == "accepted":
        return FirstPostOutcome.ACCEPTED, "MESH has the message: it is not sent again"
    if status == "acknowledged":
        return FirstPostOutcome.ACKNOWLEDGED, "the recipient downloaded and acknowledged it"
    if status == "uploading":
        return FirstPostOutcome.UPLOADING, (
            "MESH holds the first chunk and waits for the others: send chunks 2..n"
        )
    if status in ("undeliverable", "error") or tracking.status_success is False:
        return FirstPostOutcome.FAILED, (
            f"MESH gave up on it ({tracking.status_code or status}: "
            f"{tracking.status_description or 'no description'}); a new send is a new message"
        )
    return FirstPostOutcome.UNKNOWN, f"MESH reports status {tracking.status!r}"


async def recover_first_post(
    client: httpx.AsyncClient,
    envelope: RoutingEnvelope,
    *,
    credentials: MeshCredentials,
    error: BaseException | None = None,
    message_id: str | None = None,
    total_chunks: int = 1,
    retry: RetryPolicy | None = None,
) -> FirstPostRecovery:
    """What became of ``envelope``'s first outbox POST; see the module documentation.

    ``error`` is what the POST raised (``None`` when only the outcome was lost, e.g. a crash),
    ``message_id`` MESH's id if the answer was read, ``total_chunks`` how many chunks the
    message was split into (``ChunkedSend.total_chunks``). Nothing is ever resent here:
    :attr:`FirstPostRecovery.may_send_again` says whether the caller may route and send again.
    ``client`` carries the client certificate for real MESH (``EnvelopeClients``).
    """
    spec = envelope.request
    if envelope.adapter != "mesh" or spec.method != "POST" or not spec.url.endswith("/outbox"):
        raise InvalidInputError("not a MESH outbox envelope", field="envelope")
    if credentials.mailbox != envelope.source.mailbox_id:
        raise InvalidInputError(
            f"credentials are for mailbox {credentials.mailbox}, the envelope sends from "
            f"{envelope.source.mailbox_id}",
            field="credentials",
        )
    local_id = next((v for k, v in spec.headers.items() if k.lower() == "mex-localid"), None)
    if message_id is not None:
        mesh_url = spec.url.removesuffix(f"/messageexchange/{credentials.mailbox}/outbox")
        try:
            tracking = await track_message(
                client,
                mesh_url=mesh_url,
                credentials=credentials,
                message_id=message_id,
                correlation_id=envelope.provenance.correlation_id,
                retry=retry,
            )
        except NotFoundError:
            return FirstPostRecovery(
                outcome=FirstPostOutcome.NOT_FOUND,
                message_id=message_id,
                local_id=local_id,
                explanation="MESH tracks no such message from this mailbox",
            )
        if local_id is not None and tracking.local_id not in (None, local_id):
            raise InvalidInputError(
                f"message_id {message_id} is another message (its mex-localid is not this "
                "envelope's)",
                field="message_id",
            )
        outcome, explanation = _outcome(tracking)
        return FirstPostRecovery(
            outcome=outcome,
            message_id=tracking.message_id,
            local_id=local_id,
            tracking=tracking,
            explanation=explanation,
        )
    if isinstance(error, NOT_SENT_ERRORS):
        return FirstPostRecovery(
            outcome=FirstPostOutcome.NOT_SENT,
            local_id=local_id,
            explanation=f"the request never reached MESH ({type(error).__name__})",
        )
    if total_chunks > 1:
        return FirstPostRecovery(
            outcome=FirstPostOutcome.NOT_DELIVERED,
            local_id=local_id,
            explanation=(
                f"chunk 1 of {total_chunks} may have landed, but MESH delivers a chunked "
                "message only when every chunk has arrived: the orphan is never delivered"
            ),
        )
    return FirstPostRecovery(
        outcome=FirstPostOutcome.UNKNOWN,
        local_id=local_id,
        explanation=(
            "the message may be in the recipient's inbox: MESH's tracking interface finds it "
            "only by the message_id the lost answer held. It is not sent again; reconcile with "
            f"the recipient by mex-localid {local_id}"
        ),
    )
