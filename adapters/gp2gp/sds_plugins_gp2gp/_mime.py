"""GP2GP's multipart messages: rendering (with ``mid:`` references) and reading back.

``sds_plugins.ebxml.render_multipart`` renders a message and its own attachments; a GP2GP
extract also references parts sent in *other* messages, ``mid:<message id>`` in its
``eb:Manifest``, with the document's ``eb:id``, which ``render_multipart`` does not write. So
this module renders the MIME message itself, from the public
:class:`~sds_plugins.ebxml.EbxmlRouting` (its boundary, content type, payload Content-Id, flags)
and the SOAP envelope the core builds for it (:func:`~sds_plugins.ebxml.soap_document`, with
:class:`~sds_plugins.ebxml.ManifestEntry` for each ``cid:`` and ``mid:`` reference); MIME with
:mod:`email`, so every value is escaped by a library. The layout is NHS's MHS adaptor's
(NHSDigital/integration-adaptor-mhs, ``mhs/common/data/templates/ebxml_request.mustache``):
the SOAP part
``<ebXMLHeader@spine.nhs.uk>`` first, the HL7 payload ``<MESSAGEID@spine.nhs.uk>``, then the
attachments, each ``<UUID@spine.nhs.uk>``; the manifest lists the payload, then ``cid:`` to
each attachment, then ``mid:`` to each part sent in another message.

Reading (:func:`read_message`) is the same standard parsers, for a receiver and the tests.
"""

from __future__ import annotations

import gzip
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email import message_from_bytes
from email import policy as email_policy
from email.generator import BytesGenerator
from email.message import EmailMessage, MIMEPart
from io import BytesIO
from xml.etree import ElementTree

from sds_plugins import InvalidInputError
from sds_plugins.ebxml import (
    EB_NS,
    EBXML_HEADER_CONTENT_ID,
    SOAP_NS,
    XLINK_NS,
    EbxmlRouting,
    ManifestEntry,
    soap_document,
)

from ._large import SKELETON_DOMAIN_DATA, parse_description

__all__ = [
    "ExternalReference",
    "InlinePart",
    "ManifestReference",
    "Reassembled",
    "ReceivedMessage",
    "read_message",
    "reassemble",
    "render_message",
]

CONTENT_ID_DOMAIN = "spine.nhs.uk"
# CRLF line ends, MIME's canonical form; base64 lines of 76 characters.
_POLICY = email_policy.default.clone(linesep="\r\n", max_line_length=76)
_CONTENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._%+@-]{0,199}")


@dataclass(frozen=True)
class InlinePart:
    """A MIME part of this message after the payload, referenced ``cid:<content_id>``."""

    content: bytes = field(repr=False)
    content_type: str
    description: str
    content_id: str
    document_id: str | None = None


@dataclass(frozen=True)
class ExternalReference:
    """A manifest entry for a part sent in another message: ``mid:<message_id>``."""

    message_id: str
    description: str
    document_id: str | None = None


def part_content_id(routing: EbxmlRouting, index: int) -> str:
    """A stable Content-Id for a message's ``index``-th attachment (the same for a retry)."""
    derived = uuid.uuid5(uuid.NAMESPACE_URL, f"gp2gp:{routing.message_id}:{index}")
    return f"{str(derived).upper()}@{CONTENT_ID_DOMAIN}"


def _q(namespace: str, name: str) -> str:
    return f"{{{namespace}}}{name}"


def _soap(
    routing: EbxmlRouting, parts: Sequence[InlinePart], references: Sequence[ExternalReference]
) -> str:
    entries = [
        ManifestEntry(f"cid:{part.content_id}", part.description, part.document_id)
        for part in parts
    ] + [
        ManifestEntry(f"mid:{reference.message_id}", reference.description, reference.document_id)
        for reference in references
    ]
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + soap_document(routing, entries)


def _check_text(text: str, field: str) -> None:
    # Tabs and line ends are fine in a document; other control characters are not XML 1.0.
    if re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f]", text):
        raise InvalidInputError(f"{field} contains control characters", field=field)


def _text_part(text: str, content_id: str) -> MIMEPart:
    part = MIMEPart(policy=_POLICY)
    part.set_content(text, subtype="xml", charset="utf-8", cte="8bit")
    part["Content-Id"] = f"<{content_id}>"
    return part


def _binary_part(part_spec: InlinePart) -> MIMEPart:
    part = MIMEPart(policy=_POLICY)
    maintype, _, subtype = part_spec.content_type.partition("/")
    part.set_content(part_spec.content, maintype=maintype, subtype=subtype, cte="base64")
    part["Content-Id"] = f"<{part_spec.content_id}>"
    return part


def render_message(
    routing: EbxmlRouting,
    payload: str,
    parts: Sequence[InlinePart] = (),
    references: Sequence[ExternalReference] = (),
) -> tuple[dict[str, str], bytes]:
    """The HTTP headers and ``multipart/related`` body of one GP2GP message.

    Attachments travel base64 encoded and come back byte for byte; the HL7 payload travels as
    UTF-8 text (8bit, CRLF line ends, a final line end: MIME's canonical text form, which an
    XML parser reads as the same document).
    """
    _check_text(payload, "payload")
    for part in parts:
        if not _CONTENT_ID.fullmatch(part.content_id):
            raise InvalidInputError(f"content id {part.content_id!r} is not plain", field="parts")
    soap = _soap(routing, parts, references)
    mime_parts = [
        _text_part(soap, EBXML_HEADER_CONTENT_ID),
        _text_part(payload, routing.payload_content_id),
        *(_binary_part(part) for part in parts),
    ]
    delimiter = f"--{routing.boundary}"
    if delimiter in payload or delimiter in soap:
        raise InvalidInputError(
            f"the payload contains the MIME boundary {routing.boundary!r}", field="payload"
        )
    root = EmailMessage(policy=_POLICY)
    root["Content-Type"] = routing.content_type
    root.set_payload(list(mime_parts))
    buffer = BytesIO()
    BytesGenerator(buffer, policy=_POLICY).flatten(root)
    # The root's own headers travel as HTTP headers instead.
    _, _, body = buffer.getvalue().partition(b"\r\n\r\n")
    return routing.http_headers, body


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ManifestReference:
    """One ``eb:Reference`` of a message's manifest."""

    href: str
    description: str
    document_id: str | None = None

    @property
    def scheme(self) -> str:
        """``cid`` (a part of this message) or ``mid`` (another message)."""
        return self.href.partition(":")[0]

    @property
    def target(self) -> str:
        """The Content-Id (``cid:``) or the message id (``mid:``) referenced."""
        return self.href.partition(":")[2]

    def items(self) -> dict[str, str]:
        """The description's ``Key=value`` items (``Filename``, ``Compressed``, ``Length``...)."""
        return parse_description(self.description)


@dataclass(frozen=True)
class ReceivedMessage:
    """A GP2GP message as a receiver reads it: its ebXML header, manifest, payload and parts."""

    from_party_key: str
    to_party_key: str
    cpa_id: str
    conversation_id: str
    service: str
    action: str
    message_id: str
    timestamp: str
    duplicate_elimination: bool
    ack_requested: bool
    ack_actor: str | None
    sync_reply: bool
    references: tuple[ManifestReference, ...]
    payload: str = field(repr=False)
    #: Each attachment's decoded bytes, by Content-Id (without the angle brackets).
    parts: Mapping[str, bytes] = field(repr=False)
    part_types: Mapping[str, str] = field(repr=False)

    def inline(self) -> list[tuple[ManifestReference, bytes]]:
        """The manifest's ``cid:`` attachments with their bytes, in manifest order."""
        found = []
        for reference in self.references[1:]:
            if reference.scheme == "cid":
                if reference.target not in self.parts:
                    raise ValueError(f"message {self.message_id}: no part {reference.target}")
                found.append((reference, self.parts[reference.target]))
        return found

    def external(self) -> list[ManifestReference]:
        """The manifest's ``mid:`` references, in order."""
        return [reference for reference in self.references if reference.scheme == "mid"]


def _content_id(value: str | None) -> str:
    return (value or "").strip().removeprefix("<").removesuffix(">")


def read_message(content_type: str | Mapping[str, str], body: bytes) -> ReceivedMessage:
    """Parse one ebXML message (its ``Content-Type`` header, or all its HTTP headers, and its
    body) with :mod:`email` and :mod:`xml.etree.ElementTree`.

    A SOAP part with a document type declaration is refused (SOAP forbids them, and it is the
    one way XML could make the parser expand entities).
    """
    if not isinstance(content_type, str):
        lowered = {name.lower(): value for name, value in content_type.items()}
        content_type = lowered["content-type"]
    message = message_from_bytes(
        f"Content-Type: {content_type}\r\n\r\n".encode("ascii") + body, policy=_POLICY
    )
    if not message.is_multipart():
        raise ValueError("not a multipart message")
    by_id: dict[str, bytes] = {}
    types: dict[str, str] = {}
    for part in message.iter_parts():
        content = part.get_payload(decode=True)
        if not isinstance(content, bytes):  # a nested multipart: not an ebXML message part
            raise ValueError("a part of the message is itself multipart")
        key = _content_id(part.get("Content-Id"))
        by_id[key] = content
        types[key] = part.get_content_type()
    soap = by_id.pop(EBXML_HEADER_CONTENT_ID, None)
    if soap is None:
        raise ValueError(f"no part <{EBXML_HEADER_CONTENT_ID}>")
    if b"<!DOCTYPE" in soap.upper():
        raise ValueError("the SOAP part has a document type declaration")
    envelope = ElementTree.fromstring(soap)  # noqa: S314  # no DTD (checked above)
    ns = {"eb": EB_NS, "SOAP": SOAP_NS, "xlink": XLINK_NS}

    def text(path: str) -> str:
        return (envelope.findtext(path, default="", namespaces=ns) or "").strip()

    references = tuple(
        ManifestReference(
            href=reference.get(_q(XLINK_NS, "href"), ""),
            description=(reference.findtext("eb:Description", "", ns) or "").strip(),
            document_id=reference.get(_q(EB_NS, "id")),
        )
        for reference in envelope.iterfind(".//eb:Manifest/eb:Reference", ns)
    )
    if not references or references[0].scheme != "cid":
        raise ValueError("the manifest does not start with the HL7 payload")
    payload = by_id.pop(references[0].target, None)
    if payload is None:
        raise ValueError(f"no payload part <{references[0].target}>")
    types.pop(references[0].target, None)
    types.pop(EBXML_HEADER_CONTENT_ID, None)
    ack = envelope.find(".//eb:AckRequested", ns)
    return ReceivedMessage(
        from_party_key=text(".//eb:From/eb:PartyId"),
        to_party_key=text(".//eb:To/eb:PartyId"),
        cpa_id=text(".//eb:CPAId"),
        conversation_id=text(".//eb:ConversationId"),
        service=text(".//eb:Service"),
        action=text(".//eb:Action"),
        message_id=text(".//eb:MessageData/eb:MessageId"),
        timestamp=text(".//eb:MessageData/eb:Timestamp"),
        duplicate_elimination=envelope.find(".//eb:DuplicateElimination", ns) is not None,
        ack_requested=ack is not None,
        ack_actor=ack.get(_q(SOAP_NS, "actor")) if ack is not None else None,
        sync_reply=envelope.find(".//eb:SyncReply", ns) is not None,
        references=references,
        payload=payload.decode("utf-8"),
        parts=by_id,
        part_types=types,
    )


# --------------------------------------------------------------------------- reassembly


@dataclass(frozen=True)
class Reassembled:
    """What a requester rebuilds from the extract message and the COPC messages after it."""

    #: The extract: the extract message's payload, or the compressed document it refers to
    #: (decompressed) when it was large, byte for byte what the sender planned.
    extract: bytes = field(repr=False)
    #: Whether the extract came as a compressed document (the message held a skeleton).
    large: bool
    #: Every other document, by its ``eb:id`` (the message id when it has none).
    documents: Mapping[str, bytes] = field(repr=False)


def _document_bytes(message_id: str, messages: Mapping[str, ReceivedMessage]) -> bytes:
    carrier = messages.get(message_id)
    if carrier is None:
        raise ValueError(f"the COPC message {message_id} referenced by mid: is missing")
    inline = carrier.inline()
    if inline:
        return b"".join(content for _reference, content in inline)
    slices = carrier.external()
    if not slices:
        raise ValueError(f"the COPC message {message_id} carries no document and no slices")
    # The slices, in the order the document's message lists them, each its own message.
    return b"".join(_document_bytes(reference.target, messages) for reference in slices)


def reassemble(
    extract_message: ReceivedMessage, fragments: Iterable[ReceivedMessage]
) -> Reassembled:
    """The extract and the documents, from the extract message and every COPC message sent
    after it (any order): each ``mid:`` of the extract's manifest names the COPC message that
    carries a document, whole or as slices that message references in order."""
    messages = {message.message_id: message for message in fragments}
    extract: bytes | None = None
    documents: dict[str, bytes] = {}
    for reference in extract_message.external():
        content = _document_bytes(reference.target, messages)
        items = reference.items()
        if items.get("Compressed") == "Yes":
            content = gzip.decompress(content)
        if items.get("DomainData") == SKELETON_DOMAIN_DATA:
            extract = content
        else:
            documents[reference.document_id or reference.target] = content
    large = extract is not None
    if extract is None:
        extract = extract_message.payload.encode("utf-8")
    return Reassembled(extract=extract, large=large, documents=documents)
