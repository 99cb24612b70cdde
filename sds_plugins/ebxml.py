"""Spine ebXML messaging, for any adapter that sends HL7 V3 through Spine's MHS.

From an SDS ``/Endpoint`` record to the routing data (:func:`ebxml_routing`,
:class:`EbxmlRouting`), and from that plus an HL7 payload to the ``multipart/related`` HTTP body
(:func:`render_multipart`)::

    from sds_plugins.ebxml import ebxml_routing, render_multipart

    routing = ebxml_routing(
        endpoint,  # a MessageHandlingEndpoint from an SDS /Endpoint lookup
        interaction="urn:nhs:names:services:ebs:PRSC_IN040000UK08",
        from_party_key="R69-0000001",
        from_asid="200000000001",
        to_asid=device.asid,
        correlation_id=correlation_id,
    )
    headers, body = render_multipart(routing, hl7_payload)
    httpx.post(routing.url, headers=headers, content=body)

The messaging pattern (and so the reliability elements) is what NHS's MHS adaptor would send:
see :func:`pattern_for` and ``docs/ebxml-patterns.md``. Forward-express interactions, which no
reference implements, need ``pattern="forward-express"`` (or another pattern) named by the
caller.
"""

from __future__ import annotations

from ._ebxml import (
    ACK_ACTOR_NEXT_MSH,
    ACK_ACTOR_TO_PARTY_MSH,
    EB_NS,
    EBXML_HEADER_CONTENT_ID,
    EBXML_PATTERNS,
    FORWARD_EXPRESS_ACTIONS,
    FORWARD_RELIABLE_ACTIONS,
    FORWARDED_SERVICES,
    HL7EBXML_NS,
    SOAP_NS,
    XLINK_NS,
    Attachment,
    EbxmlPattern,
    EbxmlRouting,
    ManifestEntry,
    MessagingPattern,
    ebxml_routing,
    envelope_reliability,
    pattern_for,
    render_multipart,
    soap_document,
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
    "ManifestEntry",
    "MessagingPattern",
    "ebxml_routing",
    "envelope_reliability",
    "pattern_for",
    "render_multipart",
    "soap_document",
]
