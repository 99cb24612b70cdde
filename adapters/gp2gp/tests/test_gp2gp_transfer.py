"""A whole GP2GP transfer between the two sandbox practices, over real sockets: the request,
the extract (large: a skeleton and fragments), the continue, the acknowledgements. Every
rendered message is read back with the standard library's parsers alone (``email`` and
``xml.etree``), and the extract and documents are rebuilt byte for byte."""

from __future__ import annotations

import base64
import email
import email.message
import email.policy
import gzip
import hashlib
import os
from typing import Any
from xml.etree import ElementTree

import pytest
from _gp2gp_support import Gp2gpRouterFactory
from sds_plugins import InvalidInputError, Router
from sds_plugins.ebxml import ACK_ACTOR_NEXT_MSH, EB_NS, EBXML_HEADER_CONTENT_ID, XLINK_NS
from sds_plugins.sandbox import SANDBOX_PATIENTS, Sandbox

from sds_plugins_gp2gp import (
    CHUNK_CONTENT_TYPE,
    EHR_EXTRACT,
    EHR_REQUEST,
    FRAGMENT,
    LARGE_MESSAGE_THRESHOLD,
    NEW_PRACTICE,
    PREVIOUS_PRACTICE,
    SKELETON_DOMAIN_DATA,
    SPINE_MAX_REQUEST_SIZE,
    Conversation,
    EhrAttachment,
    Gp2gpMessage,
    Gp2gpSettings,
    Practice,
    parse_description,
    reassemble,
    sample_extract,
    sample_request,
)

HL7 = "urn:hl7-org:v3"
NS = {"eb": EB_NS, "xlink": XLINK_NS, "hl7": HL7}
NEW, PREVIOUS = NEW_PRACTICE, PREVIOUS_PRACTICE


def decoded(part: email.message.Message) -> bytes:
    """A part's content, its transfer encoding undone."""
    content = part.get_payload(decode=True)
    assert isinstance(content, bytes)
    return content


def parse(message: Gp2gpMessage) -> dict[str, Any]:
    """The message as any receiver reads it: stdlib MIME, then stdlib XML, nothing of ours."""
    raw = f"Content-Type: {message.headers['Content-Type']}\r\n\r\n".encode() + message.body
    mime = email.message_from_bytes(raw, policy=email.policy.HTTP)
    assert mime.is_multipart()
    assert mime.get_param("start") == f"<{EBXML_HEADER_CONTENT_ID}>"
    parts = list(mime.iter_parts())
    soap_part, payload_part, *attachments = parts
    assert soap_part["Content-Id"] == f"<{EBXML_HEADER_CONTENT_ID}>"
    soap = ElementTree.fromstring(decoded(soap_part))
    header = soap.find(".//eb:MessageHeader", NS)
    assert header is not None
    manifest = [
        {
            "href": reference.get(f"{{{XLINK_NS}}}href"),
            "id": reference.get(f"{{{EB_NS}}}id"),
            "description": reference.findtext("eb:Description", "", NS),
        }
        for reference in soap.iterfind(".//eb:Manifest/eb:Reference", NS)
    ]
    payload = decoded(payload_part)
    return {
        "from": header.findtext("eb:From/eb:PartyId", None, NS),
        "to": header.findtext("eb:To/eb:PartyId", None, NS),
        "cpa_id": header.findtext("eb:CPAId", None, NS),
        "conversation_id": header.findtext("eb:ConversationId", None, NS),
        "service": header.findtext("eb:Service", None, NS),
        "action": header.findtext("eb:Action", None, NS),
        "message_id": header.findtext("eb:MessageData/eb:MessageId", None, NS),
        "duplicate_elimination": header.find("eb:DuplicateElimination", NS) is not None,
        "ack_actor": next(
            (
                element.get("{http://schemas.xmlsoap.org/soap/envelope/}actor")
                for element in soap.iterfind(".//eb:AckRequested", NS)
            ),
            None,
        ),
        "sync_reply": soap.find(".//eb:SyncReply", NS) is not None,
        "manifest": manifest,
        "payload_id": payload_part["Content-Id"],
        "payload": ElementTree.fromstring(payload),
        "payload_text": payload.decode("utf-8"),
        "attachments": {
            part["Content-Id"].strip("<>"): (part.get_content_type(), decoded(part))
            for part in attachments
        },
        "transfer_encodings": [part["Content-Transfer-Encoding"] for part in attachments],
    }


def check_header(message: Gp2gpMessage, read: dict[str, Any]) -> None:
    """The values rendered are the values routed, for every field of the ebXML header."""
    routing = message.routing
    assert read["from"] == routing.from_party_key == message.envelope.source.party_key
    assert read["to"] == routing.to_party_key == message.envelope.target.party_key
    assert read["cpa_id"] == routing.cpa_id == message.envelope.target.cpa_id
    assert read["conversation_id"] == message.conversation_id
    assert (read["service"], read["action"]) == (routing.service, routing.action)
    assert read["message_id"] == message.message_id
    assert read["payload_id"] == f"<{message.message_id}@spine.nhs.uk>"
    assert read["manifest"][0]["href"] == f"cid:{message.message_id}@spine.nhs.uk"
    # Forward-reliable: duplicate elimination, ack from the next MSH, no sync reply.
    assert read["duplicate_elimination"] is True
    assert read["ack_actor"] == ACK_ACTOR_NEXT_MSH
    assert read["sync_reply"] is False
    assert message.headers == message.envelope.request.headers
    assert message.size <= SPINE_MAX_REQUEST_SIZE
    # The payload reads back as the one given (MIME text: CRLF line ends, a final one).
    assert read["payload_text"].replace("\r\n", "\n").rstrip("\n") == message.payload.rstrip("\n")
    if message.step in ("continue", "document", "fragment", "acknowledgement"):
        assert hl7_id(read["payload"]) == message.message_id  # the HL7 written here


def hl7_id(payload: ElementTree.Element) -> str | None:
    element = payload.find("hl7:id", NS)
    return None if element is None else element.get("root")


@pytest.fixture
async def router(gp2gp_router: Gp2gpRouterFactory) -> Router:
    return await gp2gp_router()


async def test_a_whole_transfer_with_a_large_extract_routes_renders_and_reassembles(
    router: Router, gp2gp_sandbox: Sandbox
) -> None:
    conversation = Conversation(router, new_practice=NEW, previous_practice=PREVIOUS)
    cid = conversation.conversation_id
    # A multi-MB extract of random text (it compresses little, so it stays large) and a
    # random binary letter: over the 4,500,000-byte threshold both.
    extract_text = sample_extract(from_ods=PREVIOUS.ods, to_ods=NEW.ods, size=6_500_000)
    letter = EhrAttachment(os.urandom(3_600_000), "application/pdf", filename="letter.pdf")
    photo = EhrAttachment(os.urandom(40_000), "image/jpeg")

    request = await conversation.request(sample_request(from_ods=NEW.ods, to_ods=PREVIOUS.ods))
    extract = await conversation.extract(extract_text, attachments=[letter, photo])
    go_on = await conversation.continue_transfer(extract)
    fragments = await conversation.fragments(extract)
    done = await conversation.acknowledge(request)
    final = await conversation.acknowledge(extract)
    messages = [request, extract, go_on, *fragments, done, final]

    # Directions, interactions and the one conversation.
    assert [(m.step, m.sender) for m in messages[:3]] == [
        ("request", "new"),
        ("extract", "previous"),
        ("continue", "new"),
    ]
    assert [m.interaction for m in (request, extract, go_on, done)] == [
        EHR_REQUEST,
        EHR_EXTRACT,
        FRAGMENT,
        "urn:nhs:names:services:gp2gp:MCCI_IN010000UK13",
    ]
    assert {m.sender for m in fragments} == {"previous"}
    assert (done.sender, final.sender) == ("previous", "new")
    assert {m.conversation_id for m in messages} == {cid}
    assert len({m.message_id for m in messages}) == len(messages)
    for message in messages:
        recipient = conversation.practices[message.recipient]
        assert message.envelope.target.ods_code == recipient.ods
        assert message.envelope.target.asid == recipient.asid
        assert message.envelope.request.url.endswith("/reliablemessaging/intermediary")

    # One SDS round trip per (practice, interaction): six, whatever the number of fragments.
    assert sum(gp2gp_sandbox.stats()["requests"].values()) == 12
    assert {m.envelope.provenance.correlation_id for m in messages} == {cid}

    reads = [parse(message) for message in messages]
    for message, read in zip(messages, reads, strict=True):
        check_header(message, read)
    assert {read["conversation_id"] for read in reads} == {cid}

    # The plan: the extract is large (compressed, then sliced); the letter is sliced; the
    # photo goes whole. Every slice is at most the threshold.
    plan = extract.plan
    assert plan is not None and plan.large
    compressed, letter_doc, photo_doc = plan.documents
    assert compressed.compressed and compressed.skeleton and compressed.large
    assert letter_doc.large and not photo_doc.large
    for document in (compressed, letter_doc):
        assert [len(chunk.text) for chunk in document.chunks[:-1]] == [LARGE_MESSAGE_THRESHOLD] * (
            len(document.chunks) - 1
        )
        assert 0 < len(document.chunks[-1].text) <= LARGE_MESSAGE_THRESHOLD
    assert (
        len(fragments) == plan.fragment_count == 3 + len(compressed.chunks) + len(letter_doc.chunks)
    )

    # The extract message: a skeleton payload, and mid: references to each document's message
    # (eb:id the document id), described as NHS's adaptor describes them.
    extract_read = reads[1]
    assert len(extract_read["payload_text"].encode()) < 10_000
    assert extract_read["payload"].tag == f"{{{HL7}}}RCMR_IN030000UK06"
    external = extract_read["manifest"][1:]
    assert [ref["href"] for ref in external] == [f"mid:{doc.message_id}" for doc in plan.documents]
    assert [ref["id"] for ref in external] == [doc.document_id for doc in plan.documents]
    first = parse_description(external[0]["description"])
    assert first["Compressed"] == "Yes"
    assert first["DomainData"] == SKELETON_DOMAIN_DATA
    assert first["Filename"] == f"{compressed.document_id.lstrip('_')}.gz"
    assert first["LargeAttachment"] == "Yes"
    assert int(first["Length"]) == compressed.length
    assert parse_description(external[2]["description"])["LargeAttachment"] == "No"
    assert extract_read["attachments"] == {}

    # The continue acknowledges the extract; the acks acknowledge request and extract.
    assert reads[2]["payload"].find(".//hl7:messageRef/hl7:id", NS).get("root") == (
        extract.message_id
    )
    for ack, acked in ((reads[-2], request), (reads[-1], extract)):
        assert ack["payload"].tag == f"{{{HL7}}}MCCI_IN010000UK13"
        assert ack["payload"].find("hl7:acknowledgement", NS).get("typeCode") == "AA"
        assert ack["payload"].find(".//hl7:messageRef/hl7:id", NS).get("root") == acked.message_id

    # Rebuild the extract and the documents from the parsed messages alone.
    by_id = {read["message_id"]: read for read in reads}

    def document_bytes(message_id: str) -> bytes:
        read = by_id[message_id]
        cid = [ref for ref in read["manifest"][1:] if ref["href"].startswith("cid:")]
        if cid:
            [(_, content)] = [read["attachments"][ref["href"][4:]] for ref in cid]
            assert isinstance(content, bytes)
            return content
        return b"".join(
            document_bytes(ref["href"][4:])
            for ref in read["manifest"][1:]
            if ref["href"].startswith("mid:")
        )

    rebuilt_extract = gzip.decompress(document_bytes(external[0]["href"][4:]))
    assert rebuilt_extract == extract_text.encode("utf-8")
    assert document_bytes(external[1]["href"][4:]) == letter.content
    assert document_bytes(external[2]["href"][4:]) == photo.content

    # Each slice's message: one application/octet-stream part in base64, at most the threshold
    # of base64 text, decoding to a slice of the document; named <document message>_<n>.
    for chunk in letter_doc.chunks:
        read = by_id[chunk.message_id]
        [(content_type, content)] = read["attachments"].values()
        assert content_type == CHUNK_CONTENT_TYPE
        assert read["transfer_encodings"] == ["base64"]
        assert len(base64.b64encode(content)) <= LARGE_MESSAGE_THRESHOLD
        description = parse_description(read["manifest"][1]["description"])
        assert description["Filename"] == f"{letter_doc.message_id}_{chunk.index}.messageattachment"
        assert description["OriginalBase64"] == "Yes"

    # The package's own reader agrees with the standard parsers.
    rebuilt = reassemble(extract.read(), [message.read() for message in fragments])
    assert rebuilt.large
    assert (
        hashlib.sha256(rebuilt.extract).digest() == hashlib.sha256(extract_text.encode()).digest()
    )
    assert rebuilt.documents == {
        letter_doc.document_id: letter.content,
        photo_doc.document_id: photo.content,
    }


async def test_a_small_extract_travels_whole_and_needs_no_fragments(router: Router) -> None:
    conversation = Conversation(
        router,
        new_practice=NEW,
        previous_practice=PREVIOUS,
        conversation_id="7d0f0a9e-5b1c-4f3e-8a2b-1c2d3e4f5a6b",
    )
    extract_text = sample_extract(from_ods=PREVIOUS.ods, to_ods=NEW.ods, size=30_000)
    extract = await conversation.extract(extract_text)
    assert extract.plan is not None
    assert not extract.plan.large and not extract.plan.needs_continue
    assert await conversation.fragments(extract) == []
    read = parse(extract)
    check_header(extract, read)
    assert read["conversation_id"] == "7D0F0A9E-5B1C-4F3E-8A2B-1C2D3E4F5A6B"
    assert read["manifest"][1:] == []
    # The payload is the extract: the same document (MIME text travels with CRLF line ends).
    assert read["payload_text"].replace("\r\n", "\n").rstrip("\n") == extract_text
    rebuilt = reassemble(extract.read(), [])
    assert not rebuilt.large
    assert rebuilt.extract.replace(b"\r\n", b"\n").rstrip(b"\n") == extract_text.encode()


async def test_a_document_exactly_at_the_threshold_is_sent_whole(
    gp2gp_router: Gp2gpRouterFactory,
) -> None:
    # NHS's adaptor: "DocumentSizeEqualThreshold_Expect_LargeDocumentIsSentAsOne".
    threshold = 30_000
    settings = Gp2gpSettings(
        large_attachment_threshold=threshold, large_extract_threshold=threshold
    )
    router = await gp2gp_router(settings)
    conversation = Conversation(
        router, new_practice=NEW, previous_practice=PREVIOUS, settings=settings
    )
    at = EhrAttachment(os.urandom(threshold // 4 * 3), "application/pdf")  # base64: 30,000
    over = EhrAttachment(os.urandom(threshold // 4 * 3 + 1), "application/pdf")  # 30,004
    extract = await conversation.extract(
        sample_extract(from_ods=PREVIOUS.ods, to_ods=NEW.ods, size=2_000), attachments=[at, over]
    )
    assert extract.plan is not None
    exact, larger = extract.plan.documents
    assert (exact.length, exact.large, len(exact.chunks)) == (threshold, False, 0)
    assert (larger.length, larger.large, [len(c.text) for c in larger.chunks]) == (
        threshold + 4,
        True,
        [threshold, 4],
    )
    fragments = await conversation.fragments(extract)
    assert [m.step for m in fragments] == ["document", "document", "fragment", "fragment"]
    rebuilt = reassemble(extract.read(), [m.read() for m in fragments])
    assert list(rebuilt.documents.values()) == [at.content, over.content]


async def test_many_small_fragments_of_random_binary_reassemble(
    gp2gp_router: Gp2gpRouterFactory,
) -> None:
    settings = Gp2gpSettings(large_attachment_threshold=4_096, large_extract_threshold=4_096)
    router = await gp2gp_router(settings)
    conversation = Conversation(
        router, new_practice=NEW, previous_practice=PREVIOUS, settings=settings
    )
    blob = os.urandom(100_003)  # not a multiple of 3: base64 padding in the last slice
    extract_text = sample_extract(from_ods=PREVIOUS.ods, to_ods=NEW.ods, size=60_000)
    extract = await conversation.extract(
        extract_text, attachments=[EhrAttachment(blob, "application/octet-stream")]
    )
    fragments = await conversation.fragments(extract)
    assert extract.plan is not None and extract.plan.fragment_count == len(fragments) > 40
    # Any order: the manifests say which slice goes where.
    received = [m.read() for m in reversed(fragments)]
    rebuilt = reassemble(extract.read(), received)
    assert rebuilt.extract == extract_text.encode()
    assert list(rebuilt.documents.values()) == [blob]
    with pytest.raises(ValueError, match="missing"):
        reassemble(extract.read(), received[1:])


async def test_a_negative_acknowledgement_carries_its_reason(router: Router) -> None:
    conversation = Conversation(router, new_practice=NEW, previous_practice=PREVIOUS)
    request = await conversation.request(sample_request(from_ods=NEW.ods, to_ods=PREVIOUS.ods))
    nack = await conversation.acknowledge(
        request, type_code="AE", reason_code="06", reason="Patient not at surgery"
    )
    read = parse(nack)
    assert nack.sender == "previous" and read["to"] == NEW.party_key
    ack = read["payload"].find("hl7:acknowledgement", NS)
    assert ack.get("typeCode") == "AE"
    assert ack.find("hl7:acknowledgementDetail/hl7:code", NS).get("code") == "06"
    # By message id alone, the caller says where it goes.
    with pytest.raises(InvalidInputError, match="to:"):
        await conversation.acknowledge(request.message_id)
    by_id = await conversation.acknowledge(request.message_id, to="new")
    assert by_id.envelope.target.ods_code == NEW.ods
    with pytest.raises(InvalidInputError, match="reason_code"):
        await conversation.acknowledge(request, type_code="AE")


@pytest.mark.parametrize(
    "conversation_id",
    ["transfer-42", "0b6e7f5c8a8e4a439d5e3f1f2a3b4c5d", "0b6e7f5c-8a8e-4a43-9d5e-3f1f2a3b4c5d\n"],
)
async def test_a_conversation_id_that_is_not_a_uuid_is_refused(
    router: Router, conversation_id: str
) -> None:
    with pytest.raises(InvalidInputError) as info:
        Conversation(
            router,
            new_practice=NEW,
            previous_practice=PREVIOUS,
            conversation_id=conversation_id,
        )
    assert info.value.field == "conversation_id"


async def test_a_conversation_continues_with_the_id_it_is_given(router: Router) -> None:
    # The previous practice's system answers a request another system started: it takes the
    # request's ConversationId, read from the wire, and every message it sends carries it.
    started = Conversation(router, new_practice=NEW, previous_practice=PREVIOUS)
    request = await started.request(sample_request(from_ods=NEW.ods, to_ods=PREVIOUS.ods))
    received = request.read()
    answering = Conversation(
        router,
        new_practice=Practice(NEW.ods),
        previous_practice=PREVIOUS,
        conversation_id=received.conversation_id.lower(),
    )
    extract = await answering.extract(sample_extract(from_ods=PREVIOUS.ods, to_ods=NEW.ods))
    ack = await answering.acknowledge(received.message_id, to="new")
    assert {extract.conversation_id, ack.conversation_id} == {started.conversation_id}
    assert extract.envelope.target.party_key == NEW.party_key  # found in SDS by ODS code


async def test_for_patient_takes_the_new_practice_from_pds(router: Router) -> None:
    conversation = await Conversation.for_patient(
        router,
        SANDBOX_PATIENTS["gpconnect"],
        previous_practice=PREVIOUS,
        party_key=NEW.party_key,
        asid=NEW.asid,
    )
    assert conversation.practices["new"] == NEW
    assert SANDBOX_PATIENTS["gpconnect"] not in repr(conversation)
    request = await conversation.request(sample_request(from_ods=NEW.ods, to_ods=PREVIOUS.ods))
    assert request.envelope.target.ods_code == PREVIOUS.ods
    assert SANDBOX_PATIENTS["gpconnect"] not in repr(request)


async def test_the_same_practice_twice_is_refused(router: Router) -> None:
    with pytest.raises(InvalidInputError, match="same"):
        Conversation(router, new_practice=NEW.ods, previous_practice=NEW.ods.lower())


async def test_a_message_over_spines_limit_is_refused(gp2gp_router: Gp2gpRouterFactory) -> None:
    router = await gp2gp_router()
    conversation = Conversation(router, new_practice=NEW, previous_practice=PREVIOUS)
    # An extract at the threshold is sent whole (NHS's rule); made of many short lines, it is
    # larger on the wire (MIME text travels with CRLF line ends) than Spine takes: refused
    # here, before anything is sent, rather than by Spine.
    extract = "<a/>\n" * (LARGE_MESSAGE_THRESHOLD // 5)
    assert len(extract) == LARGE_MESSAGE_THRESHOLD
    with pytest.raises(InvalidInputError, match="over Spine's request limit"):
        await conversation.extract(extract)
