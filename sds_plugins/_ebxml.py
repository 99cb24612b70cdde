"""Spine ebXML (HL7 V3 over Spine's message handling system): routing data and the MIME message.

Two steps, kept apart so an adapter never does I/O and a sender never needs SDS:

- :func:`ebxml_routing` turns one SDS ``/Endpoint`` record (plus the sender's party key and ASID
  and the correlation id) into an :class:`EbxmlRouting`: URL, ``eb:To/PartyId``, ``eb:CPAId``,
  Service, Action, ConversationId, MessageId, Timestamp, the flags of the messaging pattern and
  the retry settings, and the HTTP headers (``SOAPAction``, ``Content-Type``).
- :func:`render_multipart` renders an :class:`EbxmlRouting`, an HL7 payload and attachments into
  the ``multipart/related`` body Spine expects: the SOAP envelope with ``eb:MessageHeader`` and
  ``eb:Manifest`` first, then the payload, then the attachments.

XML is built with :mod:`xml.etree.ElementTree` and MIME with :mod:`email`, so every value is
escaped by the library; values with control characters are refused before anything is built.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from email import policy as email_policy
from email.generator import BytesGenerator
from email.message import EmailMessage, MIMEPart
from enum import StrEnum
from io import BytesIO
from typing import Annotated, Any
from xml.etree import ElementTree

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from ._envelope import EnvelopeReliability
from ._exceptions import InvalidInputError
from ._forwarding import FORWARD_EXPRESS_ACTIONS, FORWARD_RELIABLE_ACTIONS, FORWARDED_SERVICES
from ._models import MessageHandlingEndpoint
from ._validation import (
    check_correlation_id,
    check_header_value,
    new_uuid,
    normalise_interaction,
    sds_correlation_id,
)

__all__ = [
    "ACK_ACTOR_NEXT_MSH",
    "ACK_ACTOR_TO_PARTY_MSH",
    "EBXML_HEADER_CONTENT_ID",
    "EBXML_PATTERNS",
    "EB_NS",
    "FORWARDED_SERVICES",
    "FORWARD_EXPRESS_ACTIONS",
    "FORWARD_RELIABLE_ACTIONS",
    "HL7EBXML_NS",
    "SOAP_NS",
    "XLINK_NS",
    "Attachment",
    "EbxmlPattern",
    "EbxmlRouting",
    "MessagingPattern",
    "ebxml_routing",
    "envelope_reliability",
    "pattern_for",
    "render_multipart",
]

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
EB_NS = "http://www.oasis-open.org/committees/ebxml-msg/schema/msg-header-2_0.xsd"
# Spine's own messages spell it "ebXML" (the HL7 transport spec has "ebxml"); follow Spine, the
# party that reads what we send.
HL7EBXML_NS = "urn:hl7-org:transport/ebXML/DSTUv1.0"
XLINK_NS = "http://www.w3.org/1999/xlink"
XML_NS = "http://www.w3.org/XML/1998/namespace"

PARTY_ID_TYPE = "urn:nhs:names:partyType:ocs+serviceInstance"
ACK_ACTOR_TO_PARTY_MSH = "urn:oasis:names:tc:ebxml-msg:actor:toPartyMSH"
ACK_ACTOR_NEXT_MSH = "urn:oasis:names:tc:ebxml-msg:actor:nextMSH"
SYNC_REPLY_ACTOR = "http://schemas.xmlsoap.org/soap/actor/next"
HL7_SCHEMA_LOCATION = "http://www.nhsia.nhs.uk/schemas/HL7-Message.xsd"
#: The Content-Id of the SOAP part; the ``start`` parameter of the multipart Content-Type.
EBXML_HEADER_CONTENT_ID = "ebXMLHeader@spine.nhs.uk"
_CONTENT_ID_DOMAIN = "spine.nhs.uk"

# Content ids become part of Content-Id headers and cid: URLs: keep them plain.
_CONTENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._%+@-]{0,199}$")
_MIME_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*$")
# CRLF line ends (MIME's canonical form); 76-character lines only matter for base64 parts
# (8bit text is never re-wrapped).
_POLICY = email_policy.default.clone(linesep="\r\n", max_line_length=76)
_BOUNDARY_PREFIX = "--=_MIME-Boundary_"


class MessagingPattern(StrEnum):
    """How a Spine message travels, which decides the ebXML reliability elements it carries.

    The flags are those of NHS's MHS adaptor (``NHSDigital/integration-adaptor-mhs``,
    ``mhs/common/mhs_common/workflow/``), which implements async-express, async-reliable,
    forward-reliable and synchronous; see ``docs/ebxml-patterns.md`` for the evidence per pattern.
    """

    #: Straight to the recipient, no acknowledgement or duplicate elimination, sync reply
    #: (``asynchronous_express.py``).
    ASYNC_EXPRESS = "async-express"
    #: Straight to the recipient, duplicate elimination, ack from the recipient (toPartyMSH),
    #: sync reply (``asynchronous_reliable.py``).
    ASYNC_RELIABLE = "async-reliable"
    #: Through Spine's reliable intermediary: duplicate elimination, ack from the next MSH, no
    #: sync reply (``asynchronous_forward_reliable.py``).
    FORWARD_RELIABLE = "forward-reliable"
    #: Through Spine's express intermediary. No NHS reference implements it (the MHS adaptor
    #: lists its two interactions as "Forward Express" but has no such workflow), so it is only
    #: used when the caller names it; flags from SDS's ExpressIntermediary record.
    FORWARD_EXPRESS = "forward-express"
    #: Synchronous SOAP request/response: not an ebXML message at all (``synchronous.py``).
    SYNCHRONOUS = "synchronous"


def _ebxml_pattern(value: object) -> object:
    if isinstance(value, MessagingPattern) and value is not MessagingPattern.SYNCHRONOUS:
        return value
    try:
        pattern = MessagingPattern(value) if isinstance(value, str) else None
    except ValueError:
        pattern = None
    if pattern is None or pattern is MessagingPattern.SYNCHRONOUS:
        raise InvalidInputError(
            f"pattern: {value!r} is not an ebXML messaging pattern ({', '.join(EBXML_PATTERNS)})",
            field="pattern",
        )
    return pattern


#: The patterns an ebXML message can take (every one but synchronous), by name.
EBXML_PATTERNS = tuple(p.value for p in MessagingPattern if p is not MessagingPattern.SYNCHRONOUS)
#: A caller's choice of messaging pattern, as an option type (``pattern: EbxmlPattern | None``):
#: one of :data:`EBXML_PATTERNS`, refused otherwise with an :class:`InvalidInputError`.
EbxmlPattern = Annotated[MessagingPattern, BeforeValidator(_ebxml_pattern)]


class _Flags(BaseModel):
    model_config = ConfigDict(frozen=True)

    duplicate_elimination: bool
    ack_requested: bool
    ack_actor: str | None
    sync_reply: bool


_PATTERN_FLAGS: Mapping[MessagingPattern, _Flags] = {
    # integration-adaptor-mhs, workflow/asynchronous_express.py: duplicate_elimination=False,
    # ack_requested=False, sync_reply=True.
    MessagingPattern.ASYNC_EXPRESS: _Flags(
        duplicate_elimination=False, ack_requested=False, ack_actor=None, sync_reply=True
    ),
    # workflow/asynchronous_reliable.py: duplicate_elimination=True, ack_requested=True,
    # ack_soap_actor=toPartyMSH, sync_reply=True.
    MessagingPattern.ASYNC_RELIABLE: _Flags(
        duplicate_elimination=True,
        ack_requested=True,
        ack_actor=ACK_ACTOR_TO_PARTY_MSH,
        sync_reply=True,
    ),
    # workflow/asynchronous_forward_reliable.py: duplicate_elimination=True, ack_requested=True,
    # ack_soap_actor=nextMSH, sync_reply=False (the intermediary acknowledges and cannot hand
    # back the recipient's reply on our connection).
    MessagingPattern.FORWARD_RELIABLE: _Flags(
        duplicate_elimination=True,
        ack_requested=True,
        ack_actor=ACK_ACTOR_NEXT_MSH,
        sync_reply=False,
    ),
    # No reference workflow. Only used when a caller names it: Spine's own ExpressIntermediary
    # record in SDS says ackRequested "never", duplicateElimination "never", syncReplyMode
    # "None", so none of the three elements is sent.
    MessagingPattern.FORWARD_EXPRESS: _Flags(
        duplicate_elimination=False, ack_requested=False, ack_actor=None, sync_reply=False
    ),
}
#: The same, as keyword arguments for :class:`EnvelopeReliability` (built on every route).
_FLAG_VALUES = {pattern: flags.model_dump() for pattern, flags in _PATTERN_FLAGS.items()}


def _split(interaction: str) -> tuple[str, str]:
    service, _, action = interaction.rpartition(":")
    return service, action


def _sds_said(endpoint: MessageHandlingEndpoint | None) -> str:
    reliability = endpoint.reliability if endpoint is not None else None
    if reliability is None:
        return "SDS gives no reliability settings for it"
    values = {
        "ackRequested": reliability.ack_requested,
        "duplicateElimination": reliability.duplicate_elimination,
        "syncReplyMode": reliability.sync_reply_mode,
        "actor": reliability.actor,
    }
    return "SDS says " + ", ".join(f"{name}={value or 'nothing'}" for name, value in values.items())


def _determined(
    interaction: str, endpoint: MessageHandlingEndpoint | None
) -> tuple[MessagingPattern | None, str]:
    """The pattern Spine's lists or SDS's data determine, or ``None`` and why not."""
    service, action = _split(interaction)
    if service.rpartition(":")[2] in FORWARDED_SERVICES:
        if action in FORWARD_RELIABLE_ACTIONS:
            return MessagingPattern.FORWARD_RELIABLE, ""
        if action in FORWARD_EXPRESS_ACTIONS:
            return None, (
                "Spine forwards it through its express intermediary, but no NHS reference "
                "implementation sends forward-express (NHS's MHS adaptor lists it as "
                "'Forward Express' and has no workflow for it)"
            )
    reliability = endpoint.reliability if endpoint is not None else None
    ack = (reliability.ack_requested or "").lower() if reliability else ""
    sync_mode = (reliability.sync_reply_mode or "").lower() if reliability else ""
    actor = reliability.actor if reliability else None
    if ack == "always" and sync_mode == "mshsignalsonly" and actor != ACK_ACTOR_NEXT_MSH:
        return MessagingPattern.ASYNC_RELIABLE, ""
    if ack == "never" and sync_mode == "mshsignalsonly":
        return MessagingPattern.ASYNC_EXPRESS, ""
    if ack == "never" and sync_mode == "none":
        return MessagingPattern.SYNCHRONOUS, ""
    return None, (
        "it is not on Spine's forwarding lists and its reliability settings match none of the "
        "patterns NHS's MHS adaptor implements (async-reliable: ackRequested always with "
        "syncReplyMode MSHSignalsOnly; async-express: never with MSHSignalsOnly; synchronous: "
        "never with None)"
    )


def pattern_for(
    interaction: str,
    endpoint: MessageHandlingEndpoint | None = None,
    *,
    named: MessagingPattern | str | None = None,
) -> MessagingPattern:
    """The messaging pattern of ``interaction``: Spine's forwarding lists, SDS's data, or ``named``.

    Determined patterns, as NHS's MHS adaptor sends them: the forward-reliable list (the
    interactions SDS rewrites to Spine's reliable intermediary) is forward-reliable; otherwise
    the endpoint's ``ackRequested``/``syncReplyMode`` decide: always + MSHSignalsOnly
    async-reliable, never + MSHSignalsOnly async-express, never + None synchronous.

    Anything else (the forward-express list, which no reference implements; ``ackRequested``
    always with ``syncReplyMode`` None outside the forwarding lists; missing settings) is
    refused with an :class:`InvalidInputError` that says what SDS said, unless the caller names
    the pattern (``named``). A named pattern that contradicts a determined one is refused too.
    """
    interaction = normalise_interaction(interaction)
    chosen: MessagingPattern | None = None
    if named is not None:
        try:
            chosen = MessagingPattern(named)
        except ValueError:
            raise InvalidInputError(
                f"pattern: {named!r} is not a messaging pattern "
                f"({', '.join(pattern.value for pattern in MessagingPattern)})",
                field="pattern",
            ) from None
    determined, why = _determined(interaction, endpoint)
    if chosen is None:
        if determined is None:
            raise InvalidInputError(
                f"interaction {interaction}: cannot tell its ebXML messaging pattern: {why}; "
                f"{_sds_said(endpoint)}. Name the pattern explicitly if you know it (pattern="
                + "|".join(p.value for p in _PATTERN_FLAGS)
                + ")",
                field="interaction",
            )
        return determined
    if determined is not None and determined is not chosen:
        raise InvalidInputError(
            f"pattern: {interaction} is {determined.value} (Spine's forwarding lists and SDS's "
            f"reliability settings say so; {_sds_said(endpoint)}), not {chosen.value}",
            field="pattern",
        )
    return chosen


def envelope_reliability(
    pattern: MessagingPattern, endpoint: MessageHandlingEndpoint | None = None
) -> EnvelopeReliability:
    """The delivery settings of one ebXML message: the pattern's flags, SDS's retry timings.

    Retries, retry interval and persist duration come from the endpoint's reliability settings
    (as the MHS adaptor takes them from SDS); duplicate elimination, acknowledgement and sync
    reply from the pattern. Raises :class:`InvalidInputError` for a synchronous interaction.
    """
    flags = _FLAG_VALUES.get(pattern)
    if flags is None:
        raise InvalidInputError(
            f"a {pattern.value} interaction is sent as a plain SOAP request, not as ebXML",
            field="interaction",
        )
    reliability = endpoint.reliability if endpoint is not None else None
    return EnvelopeReliability(
        retries=reliability.retries if reliability else None,
        retry_interval_s=reliability.retry_interval_s if reliability else None,
        persist_duration_s=reliability.persist_duration_s if reliability else None,
        **flags,
    )


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
        return f"{self.message_id}@{_CONTENT_ID_DOMAIN}"

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
    service, action = _split(interaction)
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


# --------------------------------------------------------------------------- rendering


class Attachment(BaseModel):
    """One extra MIME part after the HL7 payload, listed in the ebXML manifest.

    ``bytes`` content is sent base64-encoded; ``str`` content as UTF-8 text (8bit).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    content: bytes | str
    content_type: str = "text/plain"
    description: str = "Attachment"
    #: Defaults to a stable id derived from the message id and the attachment's position.
    content_id: str | None = None

    @field_validator("content_type")
    @classmethod
    def _mime_type(cls, value: str) -> str:
        if not _MIME_TYPE.match(value):
            raise ValueError(f"content_type {value!r} is not a MIME type (type/subtype)")
        return value

    @field_validator("description")
    @classmethod
    def _text(cls, value: str) -> str:
        return check_header_value(value, "description")

    @field_validator("content_id")
    @classmethod
    def _content_id(cls, value: str | None) -> str | None:
        if value is not None and not _CONTENT_ID.match(value):
            raise ValueError(f"content_id {value!r} is not a plain Content-Id (e.g. id@host)")
        return value


@functools.cache
def _register_prefixes() -> None:
    # ElementTree keeps prefixes in one process-wide table; registering once, on first render
    # (not on import), gives Spine the conventional SOAP/eb/hl7ebxml/xlink prefixes.
    for prefix, uri in (
        ("SOAP", SOAP_NS),
        ("eb", EB_NS),
        ("hl7ebxml", HL7EBXML_NS),
        ("xlink", XLINK_NS),
    ):
        ElementTree.register_namespace(prefix, uri)


def _q(namespace: str, name: str) -> str:
    return f"{{{namespace}}}{name}"


def _sub(
    parent: ElementTree.Element,
    namespace: str,
    name: str,
    text: str | None = None,
    **attributes: str,
) -> ElementTree.Element:
    element = ElementTree.SubElement(parent, _q(namespace, name), attributes)
    if text is not None:
        element.text = text
    return element


def _soap_envelope(routing: EbxmlRouting, attachments: list[tuple[str, Attachment]]) -> bytes:
    _register_prefixes()
    must_understand = _q(SOAP_NS, "mustUnderstand")
    version = _q(EB_NS, "version")
    envelope = ElementTree.Element(_q(SOAP_NS, "Envelope"))
    header = _sub(envelope, SOAP_NS, "Header")
    message_header = _sub(header, EB_NS, "MessageHeader", **{must_understand: "1", version: "2.0"})
    for role, party in (("From", routing.from_party_key), ("To", routing.to_party_key)):
        side = _sub(message_header, EB_NS, role)
        _sub(side, EB_NS, "PartyId", party, **{_q(EB_NS, "type"): PARTY_ID_TYPE})
    _sub(message_header, EB_NS, "CPAId", routing.cpa_id)
    _sub(message_header, EB_NS, "ConversationId", routing.conversation_id)
    _sub(message_header, EB_NS, "Service", routing.service)
    _sub(message_header, EB_NS, "Action", routing.action)
    message_data = _sub(message_header, EB_NS, "MessageData")
    _sub(message_data, EB_NS, "MessageId", routing.message_id)
    _sub(message_data, EB_NS, "Timestamp", routing.ebxml_timestamp())
    if routing.duplicate_elimination:
        _sub(message_header, EB_NS, "DuplicateElimination")
    if routing.ack_requested:
        _sub(
            header,
            EB_NS,
            "AckRequested",
            **{
                must_understand: "1",
                version: "2.0",
                _q(EB_NS, "signed"): "false",
                _q(SOAP_NS, "actor"): routing.ack_actor or ACK_ACTOR_TO_PARTY_MSH,
            },
        )
    if routing.sync_reply:
        _sub(
            header,
            EB_NS,
            "SyncReply",
            **{must_understand: "1", version: "2.0", _q(SOAP_NS, "actor"): SYNC_REPLY_ACTOR},
        )
    body = _sub(envelope, SOAP_NS, "Body")
    manifest = _sub(body, EB_NS, "Manifest", **{must_understand: "1", version: "2.0"})
    href = _q(XLINK_NS, "href")
    lang = _q(XML_NS, "lang")
    payload_reference = _sub(
        manifest, EB_NS, "Reference", **{href: f"cid:{routing.payload_content_id}"}
    )
    _sub(
        payload_reference,
        EB_NS,
        "Schema",
        **{_q(EB_NS, "location"): HL7_SCHEMA_LOCATION, version: "1.0"},
    )
    _sub(payload_reference, EB_NS, "Description", "HL7 payload", **{lang: "en"})
    _sub(payload_reference, HL7EBXML_NS, "Payload", style="HL7", encoding="XML", version="3.0")
    for content_id, attachment in attachments:
        reference = _sub(manifest, EB_NS, "Reference", **{href: f"cid:{content_id}"})
        _sub(reference, EB_NS, "Description", attachment.description, **{lang: "en"})
    document: bytes = ElementTree.tostring(envelope, encoding="utf-8", xml_declaration=True)
    return document


def _text_part(text: str, content_id: str, subtype: str = "xml") -> MIMEPart:
    part = MIMEPart(policy=_POLICY)
    part.set_content(text, subtype=subtype, charset="utf-8", cte="8bit")
    part["Content-Id"] = f"<{content_id}>"
    return part


def _attachment_part(attachment: Attachment, content_id: str) -> MIMEPart:
    part = MIMEPart(policy=_POLICY)
    maintype, _, subtype = attachment.content_type.partition("/")
    if isinstance(attachment.content, bytes):
        part.set_content(attachment.content, maintype=maintype, subtype=subtype, cte="base64")
    elif maintype == "text":
        part.set_content(attachment.content, subtype=subtype, charset="utf-8", cte="8bit")
    else:
        part.set_content(
            attachment.content.encode("utf-8"), maintype=maintype, subtype=subtype, cte="base64"
        )
    part["Content-Id"] = f"<{content_id}>"
    return part


def _attachment_content_id(routing: EbxmlRouting, index: int) -> str:
    # Stable, so rendering the same message twice gives the same bytes (a retry is the same
    # message to the receiver's duplicate elimination).
    derived = uuid.uuid5(uuid.NAMESPACE_URL, f"ebxml:{routing.message_id}:{index}")
    return f"{str(derived).upper()}@{_CONTENT_ID_DOMAIN}"


def render_multipart(
    routing: EbxmlRouting,
    payload: str | bytes,
    attachments: Iterable[Attachment] = (),
) -> tuple[dict[str, str], bytes]:
    """The HTTP headers and ``multipart/related`` body of one ebXML message.

    Parts, in the order Spine requires: the SOAP envelope (``eb:MessageHeader`` and the
    ``eb:Manifest`` that references every other part), the HL7 ``payload`` (UTF-8 XML), then
    each attachment. Text parts are sent with CRLF line ends and a final line end (MIME's
    canonical text form); bytes attachments travel base64-encoded and come back unchanged.
    Raises :class:`InvalidInputError` for a payload that is not UTF-8 text or contains control
    characters, or a text part that contains the boundary.
    """
    try:
        text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
    except UnicodeDecodeError as exc:
        raise InvalidInputError("payload is not UTF-8 text", field="payload") from exc
    _clean_payload(text, "payload")
    numbered = [
        (attachment.content_id or _attachment_content_id(routing, index), attachment)
        for index, attachment in enumerate(attachments, start=1)
    ]
    for content_id, attachment in numbered:
        if isinstance(attachment.content, str):
            _clean_payload(attachment.content, f"attachment {content_id}")
    soap = _soap_envelope(routing, numbered).decode("utf-8")
    parts = [
        _text_part(soap, EBXML_HEADER_CONTENT_ID),
        _text_part(text, routing.payload_content_id),
        *(_attachment_part(attachment, content_id) for content_id, attachment in numbered),
    ]
    delimiter = f"--{routing.boundary}"
    for part in parts:
        if part.get_content_maintype() == "text" and delimiter in part.get_content():
            raise InvalidInputError(
                f"a part of the message contains the MIME boundary {routing.boundary!r}",
                field="payload",
            )
    root = EmailMessage(policy=_POLICY)
    root["Content-Type"] = routing.content_type
    root.set_payload(list(parts))
    buffer = BytesIO()
    BytesGenerator(buffer, policy=_POLICY).flatten(root)
    # The generator writes the root's headers first; they travel as HTTP headers instead.
    _, _, body = buffer.getvalue().partition(b"\r\n\r\n")
    return routing.http_headers, body


def _clean_payload(text: str, field: str) -> None:
    # Tabs and line ends are fine in a document; other control characters are not legal XML 1.0
    # and most are a sign of binary data sent as text.
    if re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f]", text):
        raise InvalidInputError(f"{field} contains control characters", field=field)
