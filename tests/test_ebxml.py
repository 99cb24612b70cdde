"""The shared Spine ebXML builder: routing data, flags per pattern, and the rendered message."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from typing import Any
from xml.etree import ElementTree

import pytest

import sds_plugins.ebxml as public
from sds_plugins import InvalidInputError, MessageHandlingEndpoint, Reliability
from sds_plugins.ebxml import (
    ACK_ACTOR_NEXT_MSH,
    ACK_ACTOR_TO_PARTY_MSH,
    EB_NS,
    HL7EBXML_NS,
    SOAP_NS,
    XLINK_NS,
    Attachment,
    EbxmlRouting,
    MessagingPattern,
    ebxml_routing,
    pattern_for,
    render_multipart,
)

NS = {"SOAP": SOAP_NS, "eb": EB_NS, "hl7ebxml": HL7EBXML_NS}
CORRELATION_ID = "0b6e7f5c-8a8e-4a43-9d5e-3f1f2a3b4c5d"
INTERMEDIARY = "https://msg.int.spine2.ncrs.nhs.uk/reliablemessaging/intermediary"
PAYLOAD = '<PRSC_IN040000UK08 xmlns="urn:hl7-org:v3"><id root="A1"/></PRSC_IN040000UK08>'


def _reliability(ack: str, sync: str, **extra: Any) -> Reliability:
    return Reliability(ack_requested=ack, duplicate_elimination=ack, sync_reply_mode=sync, **extra)


def _endpoint(**fields: Any) -> MessageHandlingEndpoint:
    values: dict[str, Any] = {
        "address": INTERMEDIARY,
        "party_key": "X26-820918",
        "cpa_id": "cb238429762210af860b",
        "ods_code": "X26",
        "reliability": _reliability(
            "always",
            "None",
            retries=2,
            retry_interval="PT2H",
            retry_interval_s=7200,
            persist_duration="PT7H",
            persist_duration_s=25200,
        ),
    }
    values.update(fields)
    return MessageHandlingEndpoint(**values)


def _routing(
    interaction: str = "urn:nhs:names:services:ebs:PRSC_IN040000UK08", **kw: Any
) -> EbxmlRouting:
    endpoint = kw.pop("endpoint", None) or _endpoint()
    options: dict[str, Any] = {
        "interaction": interaction,
        "from_party_key": "R69-0000001",
        "from_asid": "200000000001",
        "to_asid": "918999199246",
        "correlation_id": CORRELATION_ID,
    }
    options.update(kw)
    return ebxml_routing(endpoint, **options)


def _parse(headers: dict[str, str], body: bytes) -> EmailMessage:
    message = email.message_from_bytes(
        f"Content-Type: {headers['Content-Type']}\r\n\r\n".encode() + body,
        policy=email.policy.HTTP,
    )
    assert isinstance(message, EmailMessage)
    assert not message.defects
    return message


def _soap(message: EmailMessage) -> ElementTree.Element:
    first = next(message.iter_parts())
    assert isinstance(first, EmailMessage)
    return ElementTree.fromstring(first.get_content())


def test_public_names_are_sorted_and_exported() -> None:
    # Sorted as ruff's RUF022 sorts: constants, then classes, then functions.
    def kind(name: str) -> tuple[int, str]:
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    assert public.__all__ == sorted(public.__all__, key=kind)
    assert all(hasattr(public, name) for name in public.__all__)


@pytest.mark.parametrize(
    ("interaction", "reliability", "pattern"),
    [
        ("urn:nhs:names:services:ebs:PRSC_IN040000UK08", None, MessagingPattern.FORWARD_RELIABLE),
        ("urn:nhs:names:services:gp2gp:COPC_IN000001UK01", None, MessagingPattern.FORWARD_RELIABLE),
        # The forwarding lists only apply to the services Spine forwards.
        (
            "urn:nhs:names:services:psis:PRSC_IN080000UK03",
            _reliability("never", "MSHSignalsOnly"),
            MessagingPattern.ASYNC_EXPRESS,
        ),
        (
            "urn:nhs:names:services:psis:REPC_IN150016UK05",
            _reliability("always", "MSHSignalsOnly", actor=ACK_ACTOR_TO_PARTY_MSH),
            MessagingPattern.ASYNC_RELIABLE,
        ),
        (
            "urn:nhs:names:services:psisquery:QUPC_IN160101UK05",
            _reliability("never", "MSHSignalsOnly"),
            MessagingPattern.ASYNC_EXPRESS,
        ),
        (
            "urn:nhs:names:services:pdsquery:QUPA_IN040000UK32",
            _reliability("never", "None"),
            MessagingPattern.SYNCHRONOUS,
        ),
    ],
)
def test_pattern_for(
    interaction: str, reliability: Reliability | None, pattern: MessagingPattern
) -> None:
    assert pattern_for(interaction, _endpoint(reliability=reliability)) is pattern


@pytest.mark.parametrize(
    ("interaction", "reliability", "said"),
    [
        # No reliability settings at all.
        ("urn:nhs:names:services:psis:REPC_IN150016UK05", None, "no reliability settings"),
        # Forward-express: listed by Spine, implemented by no NHS reference.
        (
            "urn:nhs:names:services:ebs:PRSC_IN080000UK03",
            _reliability("never", "None"),
            "ackRequested=never",
        ),
        # Unlisted, ack always and sync reply None: the hybrid no reference implements.
        (
            "urn:nhs:names:services:ebs:PRSC_IN990000UK01",
            _reliability("always", "None"),
            "ackRequested=always, duplicateElimination=always, syncReplyMode=None",
        ),
        # Reliable with a sync reply, but acknowledged by the next MSH: contradictory.
        (
            "urn:nhs:names:services:psis:REPC_IN150016UK05",
            _reliability("always", "MSHSignalsOnly", actor=ACK_ACTOR_NEXT_MSH),
            "actor=urn:oasis:names:tc:ebxml-msg:actor:nextMSH",
        ),
        (
            "urn:nhs:names:services:psis:REPC_IN150016UK05",
            _reliability("sometimes", "MSHSignalsOnly"),
            "ackRequested=sometimes",
        ),
    ],
)
def test_undetermined_patterns_are_refused_saying_what_sds_said(
    interaction: str, reliability: Reliability | None, said: str
) -> None:
    endpoint = _endpoint(reliability=reliability)
    with pytest.raises(InvalidInputError) as info:
        pattern_for(interaction, endpoint)
    assert info.value.field == "interaction"
    assert said in str(info.value)
    assert "pattern=" in str(info.value)
    with pytest.raises(InvalidInputError):
        _routing(interaction, endpoint=endpoint)
    # Named by the caller, the pattern is used as named.
    named = _routing(interaction, endpoint=endpoint, pattern="async-reliable")
    assert named.pattern is MessagingPattern.ASYNC_RELIABLE


def test_forward_express_is_used_when_named() -> None:
    interaction = "urn:nhs:names:services:ebs:PRSC_IN080000UK03"
    routing = _routing(interaction, pattern=MessagingPattern.FORWARD_EXPRESS)
    assert routing.pattern is MessagingPattern.FORWARD_EXPRESS
    assert (routing.duplicate_elimination, routing.ack_requested, routing.sync_reply) == (
        False,
        False,
        False,
    )


@pytest.mark.parametrize(
    ("interaction", "reliability", "named"),
    [
        ("urn:nhs:names:services:gp2gp:COPC_IN000001UK01", None, "async-express"),
        (
            "urn:nhs:names:services:psis:REPC_IN150016UK05",
            _reliability("always", "MSHSignalsOnly"),
            "forward-reliable",
        ),
    ],
)
def test_a_named_pattern_that_contradicts_a_determined_one_is_refused(
    interaction: str, reliability: Reliability | None, named: str
) -> None:
    with pytest.raises(InvalidInputError) as info:
        pattern_for(interaction, _endpoint(reliability=reliability), named=named)
    assert info.value.field == "pattern"


def test_an_unknown_pattern_name_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="async-express") as info:
        pattern_for("urn:nhs:names:services:ebs:PRSC_IN080000UK03", named="express-ish")
    assert info.value.field == "pattern"


def test_envelope_reliability_is_what_the_routing_carries() -> None:
    from sds_plugins.ebxml import envelope_reliability

    endpoint = _endpoint()
    routing = _routing(endpoint=endpoint)
    assert envelope_reliability(routing.pattern, endpoint) == routing.reliability()
    with pytest.raises(InvalidInputError, match="plain SOAP"):
        envelope_reliability(MessagingPattern.SYNCHRONOUS, endpoint)


@pytest.mark.parametrize(
    ("pattern", "flags"),
    [
        (MessagingPattern.ASYNC_EXPRESS, (False, False, None, True)),
        (MessagingPattern.ASYNC_RELIABLE, (True, True, ACK_ACTOR_TO_PARTY_MSH, True)),
        (MessagingPattern.FORWARD_RELIABLE, (True, True, ACK_ACTOR_NEXT_MSH, False)),
        (MessagingPattern.FORWARD_EXPRESS, (False, False, None, False)),
    ],
)
def test_every_pattern_sets_its_flags_in_the_model_and_the_xml(
    pattern: MessagingPattern, flags: tuple[bool, bool, str | None, bool]
) -> None:
    # An interaction whose pattern nothing determines, so that any pattern may be named.
    endpoint = _endpoint(reliability=_reliability("always", "None"))
    routing = _routing(
        "urn:nhs:names:services:ebs:PRSC_IN990000UK01", endpoint=endpoint, pattern=pattern
    )
    assert (
        routing.duplicate_elimination,
        routing.ack_requested,
        routing.ack_actor,
        routing.sync_reply,
    ) == flags
    soap = _soap(_parse(*render_multipart(routing, PAYLOAD)))
    duplicate, ack, actor, sync = flags
    assert (soap.find(".//eb:MessageHeader/eb:DuplicateElimination", NS) is not None) is duplicate
    ack_element = soap.find("SOAP:Header/eb:AckRequested", NS)
    assert (ack_element is not None) is ack
    if ack_element is not None:
        assert ack_element.get(f"{{{SOAP_NS}}}actor") == actor
        assert ack_element.get(f"{{{EB_NS}}}signed") == "false"
    assert (soap.find("SOAP:Header/eb:SyncReply", NS) is not None) is sync


def test_reliability_values_come_from_sds_in_seconds() -> None:
    routing = _routing()
    assert (routing.retries, routing.retry_interval_s, routing.persist_duration_s) == (
        2,
        7200,
        25200,
    )
    reliability = routing.reliability()
    assert reliability.retry_interval_s == 7200
    assert reliability.ack_actor == ACK_ACTOR_NEXT_MSH


def test_the_rendered_message_parses_back_to_the_same_values() -> None:
    timestamp = datetime(2024, 5, 1, 13, 14, 15, 999, tzinfo=timezone(timedelta(hours=1)))
    routing = _routing(message_id="C5D2A0D4-5D5F-4C3B-9C19-0E3B1F2A3B4C", timestamp=timestamp)
    headers, body = render_multipart(routing, PAYLOAD)

    assert headers["SOAPAction"] == "urn:nhs:names:services:ebs/PRSC_IN040000UK08"
    message = _parse(headers, body)
    assert message.get_content_type() == "multipart/related"
    assert message.get_param("type") == "text/xml"
    assert message.get_param("start") == "<ebXMLHeader@spine.nhs.uk>"
    soap_part, payload_part = message.iter_parts()
    assert soap_part["Content-Id"] == "<ebXMLHeader@spine.nhs.uk>"
    assert soap_part.get_content_type() == "text/xml"

    soap = _soap(message)
    header = soap.find("SOAP:Header/eb:MessageHeader", NS)
    assert header is not None
    assert header.get(f"{{{SOAP_NS}}}mustUnderstand") == "1"
    assert header.get(f"{{{EB_NS}}}version") == "2.0"
    values = {
        name: header.findtext(path, namespaces=NS)
        for name, path in {
            "from": "eb:From/eb:PartyId",
            "to": "eb:To/eb:PartyId",
            "cpa": "eb:CPAId",
            "conversation": "eb:ConversationId",
            "service": "eb:Service",
            "action": "eb:Action",
            "message_id": "eb:MessageData/eb:MessageId",
            "timestamp": "eb:MessageData/eb:Timestamp",
        }.items()
    }
    assert values == {
        "from": "R69-0000001",
        "to": "X26-820918",
        "cpa": "cb238429762210af860b",
        "conversation": CORRELATION_ID.upper(),
        "service": "urn:nhs:names:services:ebs",
        "action": "PRSC_IN040000UK08",
        "message_id": "C5D2A0D4-5D5F-4C3B-9C19-0E3B1F2A3B4C",
        "timestamp": "2024-05-01T12:14:15Z",
    }
    party = header.find("eb:To/eb:PartyId", NS)
    assert party is not None
    assert party.get(f"{{{EB_NS}}}type") == "urn:nhs:names:partyType:ocs+serviceInstance"

    [reference] = soap.findall("SOAP:Body/eb:Manifest/eb:Reference", NS)
    assert reference.get(f"{{{XLINK_NS}}}href") == f"cid:{routing.message_id}@spine.nhs.uk"
    assert reference.find("hl7ebxml:Payload", NS) is not None
    assert payload_part["Content-Id"] == f"<{routing.message_id}@spine.nhs.uk>"
    hl7 = ElementTree.fromstring(payload_part.get_content())
    assert hl7.tag == "{urn:hl7-org:v3}PRSC_IN040000UK08"
    # The model round-trips through JSON (an envelope's extensions) unchanged.
    assert EbxmlRouting.model_validate(routing.model_dump(mode="json")) == routing
    assert routing.timestamp == datetime(2024, 5, 1, 12, 14, 15, tzinfo=UTC)


def test_hostile_values_are_escaped_not_interpreted() -> None:
    hostile = 'S1</eb:CPAId><eb:Evil x="1"/>&amp;"\'<![CDATA[x]]>'
    routing = _routing(endpoint=_endpoint(cpa_id=hostile))
    attachment = Attachment(content="notes", description='<b>"bold" & </eb:Description>')
    soap = _soap(_parse(*render_multipart(routing, PAYLOAD, [attachment])))

    assert soap.findtext(".//eb:CPAId", namespaces=NS) == hostile
    assert soap.find(".//eb:Evil", NS) is None
    descriptions = [e.text for e in soap.iterfind(".//eb:Reference/eb:Description", NS)]
    assert descriptions == ["HL7 payload", '<b>"bold" & </eb:Description>']


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("from_party_key", "R69-1\r\nSOAPAction: evil"),
        ("correlation_id", "abc\x00"),
        ("message_id", "id with spaces"),
        ("message_id", "<id@x>"),
        ("message_id", "not-a-uuid"),
        ("correlation_id", " padded"),
    ],
)
def test_control_characters_and_odd_ids_are_refused(field: str, value: str) -> None:
    with pytest.raises(InvalidInputError, match=field):
        _routing(**{field: value})


def test_attachments_parse_back_byte_for_byte() -> None:
    routing = _routing()
    binary = bytes(range(256)) * 4
    attachments = [
        Attachment(content=binary, content_type="application/pdf", description="Letter"),
        Attachment(content="line one\nline two", description="Notes"),
        Attachment(content="<a/>", content_type="application/xml", content_id="a1@example.com"),
    ]
    headers, body = render_multipart(routing, PAYLOAD, attachments)
    message = _parse(headers, body)
    _, _, pdf, text, xml = message.iter_parts()

    assert pdf.get_content_type() == "application/pdf"
    assert pdf["Content-Transfer-Encoding"] == "base64"
    assert pdf.get_content() == binary
    assert text.get_content().splitlines() == ["line one", "line two"]
    assert xml.get_content() == b"<a/>"
    assert xml["Content-Id"] == "<a1@example.com>"
    references = [
        e.get(f"{{{XLINK_NS}}}href")
        for e in _soap(message).iterfind(".//eb:Manifest/eb:Reference", NS)
    ]
    assert references == [
        f"cid:{routing.message_id}@spine.nhs.uk",
        f"cid:{pdf['Content-Id'][1:-1]}",
        f"cid:{text['Content-Id'][1:-1]}",
        "cid:a1@example.com",
    ]
    # The same message renders to the same bytes (a retry is the same message).
    assert render_multipart(routing, PAYLOAD, attachments) == (headers, body)


def test_a_payload_containing_the_boundary_is_refused() -> None:
    routing = _routing()
    with pytest.raises(InvalidInputError, match="boundary"):
        render_multipart(routing, f"<x>--{routing.boundary}</x>")


@pytest.mark.parametrize(
    "payload", [b"\xff\xfe not utf-8", "<x>\x01</x>"], ids=["not-utf8", "control"]
)
def test_a_payload_that_is_not_xml_text_is_refused(payload: str | bytes) -> None:
    with pytest.raises(InvalidInputError, match="payload"):
        render_multipart(_routing(), payload)


def test_synchronous_interactions_are_not_ebxml() -> None:
    endpoint = _endpoint(
        address="https://pds.example/sync", reliability=_reliability("never", "None")
    )
    with pytest.raises(InvalidInputError, match="synchronous"):
        _routing("urn:nhs:names:services:pdsquery:QUPA_IN040000UK32", endpoint=endpoint)


def test_an_endpoint_without_cpa_id_cannot_be_routed() -> None:
    with pytest.raises(InvalidInputError, match="CPA id"):
        _routing(endpoint=_endpoint(cpa_id=None))


def test_attachment_values_are_checked() -> None:
    with pytest.raises(ValueError, match="MIME type"):
        Attachment(content="x", content_type="text")
    with pytest.raises(ValueError, match="Content-Id"):
        Attachment(content="x", content_id="<bad id>")


def test_conversation_and_message_ids_are_upper_case_uuids() -> None:
    # As NHS's MHS adaptor sends them (message_utilities.get_uuid: str(uuid4()).upper()).
    routing = _routing(message_id="c5d2a0d4-5d5f-4c3b-9c19-0e3b1f2a3b4c")
    assert routing.conversation_id == CORRELATION_ID.upper()
    assert routing.message_id == "C5D2A0D4-5D5F-4C3B-9C19-0E3B1F2A3B4C"
    generated = _routing()
    assert generated.message_id == generated.message_id.upper()
    header = _soap(_parse(*render_multipart(routing, PAYLOAD))).find(
        "SOAP:Header/eb:MessageHeader", NS
    )
    assert header is not None
    assert header.findtext("eb:ConversationId", namespaces=NS) == CORRELATION_ID.upper()
    assert header.findtext("eb:MessageData/eb:MessageId", namespaces=NS) == routing.message_id
    # The upper-cased form survives a trip through an envelope's JSON.
    assert EbxmlRouting.model_validate(routing.model_dump(mode="json")) == routing


def test_soap_document_lists_references_to_parts_of_other_messages() -> None:
    routing = _routing()
    document = public.soap_document(
        routing,
        [
            public.ManifestEntry("cid:part@spine.nhs.uk", "a part of this message", "_DOC1"),
            public.ManifestEntry("mid:0B6E7F5C", "sent in another message"),
        ],
    )
    assert not document.startswith("<?xml")
    root = ElementTree.fromstring(document)
    href = f"{{{public.XLINK_NS}}}href"
    references = root.findall(f".//{{{public.EB_NS}}}Reference")
    assert [r.get(href) for r in references] == [
        f"cid:{routing.payload_content_id}",
        "cid:part@spine.nhs.uk",
        "mid:0B6E7F5C",
    ]
    assert [r.get(f"{{{public.EB_NS}}}id") for r in references] == [None, "_DOC1", None]
    with pytest.raises(InvalidInputError):
        public.ManifestEntry("mid:x", "bell \x07")
