"""The SOAP part of an ebXML message: ``eb:MessageHeader``, the reliability elements and the
``eb:Manifest`` that references every other part.

Built with :mod:`xml.etree.ElementTree`, so every value is escaped by the library.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from xml.etree import ElementTree

from .._exceptions import InvalidInputError
from ._patterns import ACK_ACTOR_TO_PARTY_MSH

if TYPE_CHECKING:
    from ._routing import EbxmlRouting

__all__ = [
    "EB_NS",
    "HL7EBXML_NS",
    "SOAP_NS",
    "XLINK_NS",
    "ManifestEntry",
    "soap_document",
    "soap_envelope",
]

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
EB_NS = "http://www.oasis-open.org/committees/ebxml-msg/schema/msg-header-2_0.xsd"
# Spine's own messages spell it "ebXML" (the HL7 transport spec has "ebxml"); follow Spine, the
# party that reads what we send.
HL7EBXML_NS = "urn:hl7-org:transport/ebXML/DSTUv1.0"
XLINK_NS = "http://www.w3.org/1999/xlink"
XML_NS = "http://www.w3.org/XML/1998/namespace"

PARTY_ID_TYPE = "urn:nhs:names:partyType:ocs+serviceInstance"
SYNC_REPLY_ACTOR = "http://schemas.xmlsoap.org/soap/actor/next"
HL7_SCHEMA_LOCATION = "http://www.nhsia.nhs.uk/schemas/HL7-Message.xsd"
# What ElementTree writes for encoding="utf-8", xml_declaration=True.
_XML_DECLARATION = b"<?xml version='1.0' encoding='utf-8'?>\n"
# Tabs and line ends are fine in XML 1.0; other control characters are not.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


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


@dataclass(frozen=True)
class ManifestEntry:
    """One ``eb:Reference`` of the manifest after the HL7 payload: ``href`` is ``cid:<id>``
    for a part of this message or ``mid:<message id>`` for one sent in another message;
    ``document_id`` becomes its ``eb:id`` when given."""

    href: str
    description: str
    document_id: str | None = None

    def __post_init__(self) -> None:
        for name in ("href", "description", "document_id"):
            value = getattr(self, name)
            if value is not None and _CONTROL.search(value):
                raise InvalidInputError(f"manifest {name} contains control characters", field=name)


def soap_envelope(routing: EbxmlRouting, references: Sequence[tuple[str, str]]) -> bytes:
    """The SOAP envelope of ``routing``, its manifest listing the HL7 payload and then each
    attachment's ``(content_id, description)`` of ``references``, as UTF-8 XML."""
    entries = [
        ManifestEntry(f"cid:{content_id}", description) for content_id, description in references
    ]
    return _XML_DECLARATION + soap_document(routing, entries).encode("utf-8")


def soap_document(routing: EbxmlRouting, entries: Sequence[ManifestEntry] = ()) -> str:
    """The SOAP envelope of ``routing`` as XML text without a declaration: ``eb:MessageHeader``,
    the reliability elements of its pattern, and the manifest listing the HL7 payload and then
    each of ``entries``. For an adapter that renders its own MIME message (one that references
    parts of other messages, say); :func:`render_multipart` covers the rest."""
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
    for entry in entries:
        attributes = {href: entry.href}
        if entry.document_id is not None:
            attributes[_q(EB_NS, "id")] = entry.document_id
        reference = _sub(manifest, EB_NS, "Reference", **attributes)
        _sub(reference, EB_NS, "Description", entry.description, **{lang: "en"})
    document: str = ElementTree.tostring(envelope, encoding="unicode")
    return document
