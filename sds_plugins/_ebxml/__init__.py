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

``_patterns`` holds the messaging patterns and the reliability they bring (Spine's forwarding
lists, SDS's settings); ``_routing`` the routing model; ``_soap`` the SOAP envelope and its
manifest; ``_multipart`` the MIME body and its attachments. The public names are re-exported
by :mod:`sds_plugins.ebxml`.
"""

from __future__ import annotations

from .._forwarding import FORWARD_EXPRESS_ACTIONS, FORWARD_RELIABLE_ACTIONS, FORWARDED_SERVICES
from ._multipart import Attachment, render_multipart
from ._patterns import (
    ACK_ACTOR_NEXT_MSH,
    ACK_ACTOR_TO_PARTY_MSH,
    EBXML_PATTERNS,
    EbxmlPattern,
    MessagingPattern,
    envelope_reliability,
    pattern_for,
)
from ._routing import EBXML_HEADER_CONTENT_ID, EbxmlRouting, ebxml_routing
from ._soap import EB_NS, HL7EBXML_NS, SOAP_NS, XLINK_NS, ManifestEntry, soap_document

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
    "ManifestEntry",
    "MessagingPattern",
    "ebxml_routing",
    "envelope_reliability",
    "pattern_for",
    "render_multipart",
    "soap_document",
]
