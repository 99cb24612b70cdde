"""The routing of one ebXML message: :class:`EbxmlRouting` and :func:`ebxml_routing`.

:func:`ebxml_routing` turns one SDS ``/Endpoint`` record (plus the sender's party key and ASID
and the correlation id) into an :class:`EbxmlRouting`: URL, ``eb:To/PartyId``, ``eb:CPAId``,
Service, Action, ConversationId, MessageId, Timestamp, the flags of the messaging pattern and
the retry settings, and the HTTP headers (``SOAPAction``, ``Content-Type``). No I/O, nothing
rendered: :mod:`sds_plugins._ebxml._multipart` makes the body.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .._envelope import EnvelopeReliability
from .._exceptions import InvalidInputError
from .._models import MessageHandlingEndpoint
from .._validation import (
    check_correlation_id,
    check_header_value,
    new_uuid,
    normalise_interaction,
    sds_correlation_id,
)
from ._patterns import MessagingPattern, envelope_reliability, pattern_for, split_interaction

__all__ = ["CONTENT_ID_DOMAIN", "EBXML_HEADER_CONTENT_ID", "EbxmlRouting", "ebxml_routing"]

#: The Content-Id of the SOAP part; the ``start`` parameter of the multipart Content-Type.
EBXML_HEADER_CONTENT_ID = "ebXMLHeader@spine.nhs.uk"
#: The domain of the Content-Ids made for the payload and attachments.
CONTENT_ID_DOMAIN = "spine.nhs.uk"
_BOUNDARY_PREFIX = "--=_MIME-Boundary_"


def _new_message_id() -> str:
    # Upper-case UUIDs, as NHS's MHS adaptor generates every id it sends to Spine
    # (NHSDigital/integration-adaptor-mhs, common/utilities/message_utilities.py, get_uuid).
    return new_uuid().upper()


def _upper_uuid(value: str, field: str) -> str:
    """``value`` as an upper-case UUID (the form Spine is sent); anything else is refused."""
    try:
        return str(uuid.UUID(value)).upper()
    except ValueError:
        raise ValueError(
            f"{field} {value!r} is not a UUID (Spine's ebXML ids are upper-case UUIDs)"
        ) from None


def _utc_seconds(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("timestamp must be timezone-aware")
    # ebXML timestamps carry whole seconds; truncating here keeps the model equal to what a
    # receiver reads back.
    return moment.astimezone(UTC).replace(microsecond=0)


class EbxmlRouting(BaseModel):
    """Everything an MHS needs to send one ebXML message, and nothing it has to look up.

    JSON-friendly and frozen, so it travels in :attr:`RoutingEnvelope.extensions` and comes back
    with ``EbxmlRouting.model_validate(envelope.extensions["ebxml"])``. One instance is one
    message: resending it (ebXML retries) must reuse its ``message_id``, which is what duplicate
    elimination keys on.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Where to POST: the address SDS gave (for forwarded patterns, Spine's intermediary).
    url: str
    interaction: str
    service: str
    action: str
    pattern: MessagingPattern
    from_party_key: str
    to_party_key: str
    cpa_id: str
    #: The HL7 wrapper's sender and receiver (``communicationFunctionSnd/Rcv``); not part of the
    #: ebXML header.
    from_asid: str | None = None
    to_asid: str | None = None
    #: The correlation id, as an upper-case UUID: Spine keeps it across the request,
    #: acknowledgements and responses.
    conversation_id: str
    message_id: str = Field(default_factory=_new_message_id)
    timestamp: datetime = Field(default_factory=lambda: _utc_seconds(datetime.now(UTC)))
    duplicate_elimination: bool
    ack_requested: bool
    ack_actor: str | None = None
    sync_reply: bool
    retries: int | None = None
    retry_interval_s: float | None = None
    persist_duration_s: float | None = None

    @field_validator(
        "url",
        "interaction",
        "service",
        "action",
        "from_party_key",
        "to_party_key",
        "cpa_id",
        "from_asid",
        "to_asid",
        "conversation_id",
        "message_id",
        "ack_actor",
    )
    @classmethod
    def _no_control_characters(cls, value: str | None, info: Any) -> str | None:
        if value is None:
            return None
        if not value:
            raise ValueError(f"{info.field_name} is empty")
        return check_header_value(value, info.field_name)

    @field_validator("message_id", "conversation_id")
    @classmethod
    def _upper_case_uuid(cls, value: str, info: Any) -> str:
        # The MHS adaptor sends both as upper-case UUIDs (message_utilities.get_uuid: the
        # MessageId, and the ConversationId when the caller gives no correlation id), and
        # Spine has refused lower-case ids elsewhere; a caller's lower-case UUID is upper-cased.
        return _upper_uuid(value, info.field_name)

    @field_validator("timestamp")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return _utc_seconds(value)

    @property
    def boundary(self) -> str:
        """The MIME boundary of the rendered body (also in the Content-Type header).

        Derived from the message id: unique per message, and the same when a message is
        rendered again for a retry.
        """
        token = re.sub(r"[^0-9A-Za-z]", "", self.message_id)[:40]
        return f"{_BOUNDARY_PREFIX}{token}"

    @property
    def soap_action(self) -> str:
        """``<service>/<action>``, the ``SOAPAction`` header Spine routes on."""
        return f"{self.service}/{self.action}"

    @property
    def content_type(self) -> str:
        """The ``multipart/related`` Content-Type of the rendered body."""
        return (
            f'multipart/related; boundary="{self.boundary}"; type="text/xml"; '
            f'start="<{EBXML_HEADER_CONTENT_ID}>"'
        )

    @property
    def http_headers(self) -> dict[str, str]:
        """The HTTP headers to POST the rendered body with."""
        return {"SOAPAction": self.soap_action, "Content-Type": self.content_type}

    @property
    def payload_content_id(self) -> str:
        """The Content-Id of the HL7 payload part (the manifest's first reference)."""
        return f"{self.message_id}@{CONTENT_ID_DOMAIN}"

    def reliability(self) -> EnvelopeReliability:
        """The delivery settings as an :class:`EnvelopeReliability` (seconds and booleans)."""
        return EnvelopeReliability(
            retries=self.retries,
            retry_interval_s=self.retry_interval_s,
            persist_duration_s=self.persist_duration_s,
            duplicate_elimination=self.duplicate_elimination,
            ack_requested=self.ack_requested,
            ack_actor=self.ack_actor,
            sync_reply=self.sync_reply,
        )

    def ebxml_timestamp(self) -> str:
        """The ``eb:Timestamp`` text: ISO 8601, UTC, whole seconds, ``Z``."""
        return self.timestamp.strftime("%Y-%m-%dT%H:%M:%SZ")


# EbxmlRouting fields filled from something other than an argument of the same name.
_ARGUMENT_OF = {
    "conversation_id": "correlation_id",
    "url": "endpoint",
    "to_party_key": "endpoint",
    "cpa_id": "endpoint",
    "service": "interaction",
    "action": "interaction",
}


def ebxml_routing(
    endpoint: MessageHandlingEndpoint,
    *,
    interaction: str,
    from_party_key: str,
    from_asid: str | None,
    to_asid: str | None,
    correlation_id: str,
    message_id: str | None = None,
    timestamp: datetime | None = None,
    pattern: MessagingPattern | str | None = None,
) -> EbxmlRouting:
    """The routing of one ebXML message to the MHS ``endpoint`` (an SDS ``/Endpoint`` record).

    The pattern is :func:`pattern_for`'s answer; pass ``pattern`` to name one the forwarding
    lists and SDS leave undetermined (forward-express, for one). The address is used exactly as
    SDS gave it: for forwarded interactions SDS has already replaced it with Spine's
    intermediary, while the party key and CPA id stay the recipient's. Retries, retry interval
    and persist duration come from the record's reliability settings (durations in seconds);
    the flags from the pattern (:func:`envelope_reliability`).

    Raises :class:`InvalidInputError` for a synchronous interaction, an endpoint without address,
    party key or CPA id, or values that cannot go into a header or an XML document.
    """
    interaction = normalise_interaction(interaction)
    pattern = pattern_for(interaction, endpoint, named=pattern)
    if pattern is MessagingPattern.SYNCHRONOUS:
        raise InvalidInputError(
            f"interaction {interaction} is synchronous (SDS: no acknowledgements, no sync reply "
            "mode); it is sent as a plain SOAP request, not as ebXML",
            field="interaction",
        )
    missing = [
        name
        for name, value in (
            ("address", endpoint.address),
            ("party key", endpoint.party_key),
            ("CPA id", endpoint.cpa_id),
        )
        if not value
    ]
    if missing:
        raise InvalidInputError(
            f"the MHS record for {interaction} at {endpoint.ods_code or 'this organisation'} "
            f"has no {' or '.join(missing)}",
            field="endpoint",
        )
    service, action = split_interaction(interaction)
    fields: dict[str, Any] = {
        "url": endpoint.address,
        "interaction": interaction,
        "service": service,
        "action": action,
        "pattern": pattern,
        "from_party_key": from_party_key,
        "to_party_key": endpoint.party_key,
        "cpa_id": endpoint.cpa_id,
        "from_asid": from_asid,
        "to_asid": to_asid,
        # A UUID, as ebXML's ConversationId must be: the correlation id when it is one, else
        # the UUID SDS was sent for it (a caller's id need not be a UUID).
        "conversation_id": sds_correlation_id(check_correlation_id(correlation_id)),
        **envelope_reliability(pattern, endpoint).model_dump(),
    }
    if message_id is not None:
        fields["message_id"] = message_id
    if timestamp is not None:
        fields["timestamp"] = timestamp
    try:
        routing = EbxmlRouting(**fields)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        name = str(error["loc"][0]) if error["loc"] else "endpoint"
        # Name the argument the caller passed, not the model field it became.
        field = _ARGUMENT_OF.get(name, name)
        message = str(error["msg"]).removeprefix("Value error, ")
        raise InvalidInputError(f"{field}: {message}", field=field) from None
    # Every header value is built from fields the validators above already checked.
    return routing
