"""GP2GP large messages without a network: planning, descriptions, rendering, reading back."""

from __future__ import annotations

import base64
import email
import email.policy
import os
from datetime import UTC, datetime
from xml.etree import ElementTree

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sds_plugins import InvalidInputError
from sds_plugins.ebxml import EB_NS, EbxmlRouting, MessagingPattern, envelope_reliability

from sds_plugins_gp2gp import (
    LARGE_MESSAGE_THRESHOLD,
    EhrAttachment,
    ExternalReference,
    InlinePart,
    describe,
    parse_description,
    plan_document,
    plan_transfer,
    read_message,
    render_message,
    sample_extract,
)

ROUTING = EbxmlRouting(
    url="https://spine.example.nhs.uk/reliablemessaging/intermediary",
    interaction="urn:nhs:names:services:gp2gp:COPC_IN000001UK01",
    service="urn:nhs:names:services:gp2gp",
    action="COPC_IN000001UK01",
    pattern=MessagingPattern.FORWARD_RELIABLE,
    from_party_key="P83010-9199202",
    to_party_key="B82617-9199201",
    cpa_id="S91899919880103",
    from_asid="918999198802",
    to_asid="918999198801",
    conversation_id="0b6e7f5c-8a8e-4a43-9d5e-3f1f2a3b4c5d",
    timestamp=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    **envelope_reliability(MessagingPattern.FORWARD_RELIABLE).model_dump(),
)


def test_the_threshold_is_nhs_adaptors_and_equal_is_not_large() -> None:
    assert LARGE_MESSAGE_THRESHOLD == 4_500_000
    # Base64 of n bytes is 4 * ceil(n / 3) characters: 3,375,000 bytes are 4,500,000 of them.
    exact = plan_document(b"\0" * 3_375_000, content_type="application/pdf")
    assert (exact.length, exact.large, exact.chunks) == (4_500_000, False, ())
    over = plan_document(b"\0" * 3_375_001, content_type="application/pdf")
    assert over.large
    assert [len(chunk.text) for chunk in over.chunks] == [4_500_000, 4]


def test_an_extract_is_large_over_its_threshold_in_utf8_bytes() -> None:
    text = sample_extract(from_ods="P83010", to_ods="B82617", size=5_000)
    size = len(text.encode("utf-8"))
    at = plan_transfer(text, extract_threshold=size // 4 * 4 + 4)
    assert not at.large and at.core_payload == text and at.documents == ()
    over = plan_transfer(text, extract_threshold=size // 4 * 4 - 4)
    assert over.large
    [compressed] = over.documents
    assert compressed.compressed and compressed.skeleton
    assert compressed.content_type == "text/xml"
    assert compressed.filename == compressed.document_id.lstrip("_") + ".gz"
    assert over.core_payload != text and "Skeleton statement" in over.core_payload
    root = ElementTree.fromstring(over.core_payload)
    reference = root.find(
        ".//{urn:hl7-org:v3}referredToExternalDocument//{urn:hl7-org:v3}reference"
    )
    assert reference is not None
    assert reference.get("value") == f"cid:{compressed.document_id}"


def test_compression_is_reproducible() -> None:
    text = sample_extract(from_ods="P83010", to_ods="B82617", size=9_000)
    first = plan_transfer(text, extract_threshold=4_000)
    second = plan_transfer(text, extract_threshold=4_000)
    assert first.documents[0].text == second.documents[0].text


def test_a_large_extract_that_is_not_hl7_needs_its_own_skeleton() -> None:
    blob = os.urandom(10_000)
    with pytest.raises(InvalidInputError) as info:
        plan_transfer(blob, extract_threshold=4_000)
    assert info.value.field == "skeleton"
    plan = plan_transfer(blob, extract_threshold=4_000, skeleton="<RCMR_IN030000UK06/>")
    assert plan.core_payload == "<RCMR_IN030000UK06/>"
    with pytest.raises(InvalidInputError, match="UTF-8"):
        plan_transfer(b"\xff\xfe", extract_threshold=4_000)


@pytest.mark.parametrize(
    ("threshold", "words"),
    [(0, "between"), (4_999_999, "multiple of 4"), (5_000_004, "between"), (31_217, "multiple")],
)
def test_thresholds_must_cut_base64_on_whole_quanta(threshold: int, words: str) -> None:
    with pytest.raises(InvalidInputError, match=words):
        plan_document(b"x", content_type="text/plain", threshold=threshold)


def test_attachments_are_spines_content_types_with_plain_ids_and_names() -> None:
    with pytest.raises(InvalidInputError, match="content_type"):
        plan_document(b"x", content_type="application/zip")
    with pytest.raises(InvalidInputError, match="document_id"):
        plan_document(b"x", content_type="text/plain", document_id="1-starts-with-a-digit")
    with pytest.raises(InvalidInputError, match="filename"):
        plan_document(b"x", content_type="text/plain", filename='say "hi".txt')
    with pytest.raises(InvalidInputError, match="twice"):
        plan_transfer(
            "<x/>",
            attachments=[
                EhrAttachment(b"a", "text/plain", document_id="_A"),
                EhrAttachment(b"b", "text/plain", document_id="_A"),
            ],
        )


def test_descriptions_are_in_the_form_gp2gp_receivers_parse() -> None:
    text = describe(
        filename="ABC_0.messageattachment",
        content_type="application/pdf",
        compressed=False,
        large=False,
        original_base64=True,
        length=4500000,
    )
    assert text == (
        'Filename="ABC_0.messageattachment" ContentType=application/pdf Compressed=No '
        "LargeAttachment=No OriginalBase64=Yes Length=4500000"
    )
    skeleton = describe(
        filename="X.gz",
        content_type="text/xml",
        compressed=True,
        large=True,
        original_base64=False,
        length=8,
        domain_data="X-GP2GP-Skeleton: Yes",
    )
    assert parse_description(skeleton) == {
        "Filename": "X.gz",
        "ContentType": "text/xml",
        "Compressed": "Yes",
        "LargeAttachment": "Yes",
        "OriginalBase64": "No",
        "Length": "8",
        "DomainData": "X-GP2GP-Skeleton: Yes",
    }


def test_slices_are_named_after_their_documents_message() -> None:
    document = plan_document(os.urandom(30_000), content_type="image/png", threshold=16_000)
    assert [chunk.index for chunk in document.chunks] == [0, 1, 2]
    for chunk in document.chunks:
        assert chunk.filename == f"{document.message_id}_{chunk.index}.messageattachment"
        assert parse_description(chunk.description())["ContentType"] == "image/png"
    assert len({chunk.message_id for chunk in document.chunks} | {document.message_id}) == 4


@settings(max_examples=60, deadline=None)
@given(content=st.binary(max_size=2_000), quanta=st.integers(min_value=1, max_value=64))
def test_slices_decode_on_their_own_to_the_original_bytes(content: bytes, quanta: int) -> None:
    document = plan_document(content, content_type="application/octet-stream", threshold=4 * quanta)
    pieces = [chunk.content for chunk in document.chunks] or [document.content]
    assert b"".join(pieces) == content


def test_a_multi_megabyte_random_part_renders_and_reads_back_byte_for_byte() -> None:
    blob = os.urandom(3_000_000)
    part = InlinePart(
        content=blob,
        content_type="application/octet-stream",
        description="Attachment",
        content_id="ABC@spine.nhs.uk",
        document_id="_DOC",
    )
    reference = ExternalReference(message_id="F" * 8, description="Length=1", document_id="_X")
    headers, body = render_message(ROUTING, "<COPC_IN000001UK01/>", [part], [reference])
    assert headers["SOAPAction"] == "urn:nhs:names:services:gp2gp/COPC_IN000001UK01"
    message = email.message_from_bytes(
        f"Content-Type: {headers['Content-Type']}\r\n\r\n".encode() + body,
        policy=email.policy.HTTP,
    )
    soap, payload, attachment = message.iter_parts()
    assert payload.get_content_type() == "text/xml"
    assert attachment.get_payload(decode=True) == blob
    assert attachment["Content-Transfer-Encoding"] == "base64"
    encoded = body.split(b"\r\n\r\n")[-1].split(b"\r\n")
    assert max(len(line) for line in encoded) <= 76  # base64 in MIME's lines
    soap_bytes = soap.get_payload(decode=True)
    assert isinstance(soap_bytes, bytes)
    envelope = ElementTree.fromstring(soap_bytes)
    refs = envelope.findall(f".//{{{EB_NS}}}Reference")
    hrefs = [ref.get("{http://www.w3.org/1999/xlink}href") for ref in refs]
    assert hrefs == [
        f"cid:{ROUTING.message_id}@spine.nhs.uk",
        "cid:ABC@spine.nhs.uk",
        "mid:FFFFFFFF",
    ]
    assert [ref.get(f"{{{EB_NS}}}id") for ref in refs] == [None, "_DOC", "_X"]
    read = read_message(headers, body)
    assert read.parts == {"ABC@spine.nhs.uk": blob}
    assert read.conversation_id == "0B6E7F5C-8A8E-4A43-9D5E-3F1F2A3B4C5D"
    assert read.timestamp == "2025-01-02T03:04:05Z"
    assert [ref.scheme for ref in read.references] == ["cid", "cid", "mid"]
    assert base64.b64encode(read.inline()[0][1]) == base64.b64encode(blob)


def test_a_payload_with_control_characters_or_the_boundary_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="control"):
        render_message(ROUTING, "<x>\x00</x>")
    with pytest.raises(InvalidInputError, match="boundary"):
        render_message(ROUTING, f"<x>--{ROUTING.boundary}</x>")


def test_a_soap_part_with_a_doctype_is_not_read() -> None:
    headers, body = render_message(ROUTING, "<x/>")
    hostile = body.replace(
        b'<?xml version="1.0" encoding="UTF-8"?>',
        b'<?xml version="1.0" encoding="UTF-8"?><!DOCTYPE x [<!ENTITY a "b">]>',
        1,
    )
    with pytest.raises(ValueError, match="document type"):
        read_message(headers, hostile)


def test_a_skeleton_keeps_the_extract_but_its_folders_components() -> None:
    from sds_plugins_gp2gp import skeleton_extract

    extract = (
        b'<?xml version="1.0"?><RCMR_IN030000UK06 xmlns="urn:hl7-org:v3" '
        b'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:o="urn:other" '
        b'xsi:type="T"><!-- a comment --><o:thing o:a="1 &amp; 2">t</o:thing>'
        b'<plain xmlns=""><child/></plain><EhrExtract><component><ehrFolder>'
        b"<component>the record</component><id root='F'/></ehrFolder></component></EhrExtract>"
        b"</RCMR_IN030000UK06>"
    )
    skeleton = skeleton_extract(extract, "_DOC")
    hl7 = "{urn:hl7-org:v3}"
    root = ElementTree.fromstring(skeleton)
    assert root.tag == f"{hl7}RCMR_IN030000UK06"
    assert root.get("{http://www.w3.org/2001/XMLSchema-instance}type") == "T"
    assert root.find("{urn:other}thing").get("{urn:other}a") == "1 & 2"  # type: ignore[union-attr]
    assert root.find("plain/child") is not None  # no namespace, as it was
    folder = root.find(f".//{hl7}ehrFolder")
    assert folder is not None
    assert [child.tag for child in folder] == [f"{hl7}id", f"{hl7}component"]
    assert "the record" not in skeleton
    reference = folder.find(f".//{hl7}referredToExternalDocument/{hl7}text/{hl7}reference")
    assert reference is not None and reference.get("value") == "cid:_DOC"
    with pytest.raises(InvalidInputError, match="document type"):
        skeleton_extract(b'<!DOCTYPE x [<!ENTITY a "b">]><x/>', "_DOC")
