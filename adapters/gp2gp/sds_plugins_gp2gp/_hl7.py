"""The HL7 V3 payloads this package writes itself: the protocol's own messages (fragments, the
requester's continue, acknowledgements) and the skeleton of a large extract.

The clinical messages (the EHR request and the extract) are the caller's. These are built with
:mod:`xml.etree.ElementTree`, so every value is escaped by the library; they carry what GP2GP's
receivers read (ids, ASIDs, the acknowledged message), in the HL7 V3 transmission wrapper every
Spine message has.
"""

from __future__ import annotations

from datetime import UTC, datetime
from xml.etree import ElementTree

from sds_plugins import InvalidInputError

from ._xml import to_text

__all__ = [
    "ACK_CODE_SYSTEM",
    "GP2GP_NS",
    "HL7_NS",
    "acknowledgement_payload",
    "continue_payload",
    "fragment_payload",
    "hl7_time",
    "skeleton_extract",
]

HL7_NS = "urn:hl7-org:v3"
GP2GP_NS = "urn:nhs:names:services:gp2gp"
NPFIT_LC_NS = "NPFIT:HL7:Localisation"
#: HL7 V3 interaction ids, and Spine ASIDs (the ``root`` of a device id).
_INTERACTION_ROOT = "2.16.840.1.113883.2.1.3.2.4.12"
_ASID_ROOT = "1.2.826.0.1285.0.2.0.107"
#: GP2GP's own codes (payload information and bodies) and its acknowledgement codes.
_GP2GP_CODES = "2.16.840.1.113883.2.1.3.2.4.17.202"
ACK_CODE_SYSTEM = "2.16.840.1.113883.2.1.3.2.4.17.101"
_MESSAGE_TYPES = "2.16.840.1.113883.2.1.3.2.4.18.17"


#: The prefixes written for the namespaces HL7 documents use beside HL7's own (the default).
PREFIXES = {
    GP2GP_NS: "gp2gp",
    NPFIT_LC_NS: "npfitlc",
    "http://www.w3.org/2001/XMLSchema-instance": "xsi",
}


def hl7_time(moment: datetime | None = None) -> str:
    """An HL7 timestamp (``YYYYMMDDHHMMSS``, UTC)."""
    return (moment or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d%H%M%S")


def _q(name: str, namespace: str = HL7_NS) -> str:
    return f"{{{namespace}}}{name}"


def _sub(
    parent: ElementTree.Element,
    name: str,
    text: str | None = None,
    namespace: str = HL7_NS,
    **attributes: str,
) -> ElementTree.Element:
    element = ElementTree.SubElement(parent, _q(name, namespace), attributes)
    if text is not None:
        element.text = text
    return element


def _device(parent: ElementTree.Element, name: str, type_code: str, asid: str | None) -> None:
    function = _sub(parent, name, typeCode=type_code)
    device = _sub(function, "device", classCode="DEV", determinerCode="INSTANCE")
    _sub(device, "id", root=_ASID_ROOT, extension=asid or "")


def _wrapper(
    interaction: str,
    message_id: str,
    *,
    from_asid: str | None,
    to_asid: str | None,
    created: datetime | None,
    acknowledgement: tuple[str, str, tuple[str, str] | None] | None = None,
) -> tuple[ElementTree.Element, ElementTree.Element]:
    """The transmission wrapper; returns the root and its ``ControlActEvent``."""
    root = ElementTree.Element(_q(interaction))
    _sub(root, "id", root=message_id)
    _sub(root, "creationTime", value=hl7_time(created))
    _sub(root, "versionCode", code="V3NPfIT3.0")
    _sub(root, "interactionId", root=_INTERACTION_ROOT, extension=interaction)
    _sub(root, "processingCode", code="P")
    _sub(root, "processingModeCode", code="T")
    _sub(root, "acceptAckCode", code="NE")
    if acknowledgement is not None:
        type_code, acked, detail = acknowledgement
        ack = _sub(root, "acknowledgement", typeCode=type_code)
        if detail is not None:
            code, display = detail
            item = _sub(ack, "acknowledgementDetail", typeCode="ER" if type_code != "AA" else "IF")
            _sub(item, "code", code=code, codeSystem=ACK_CODE_SYSTEM, displayName=display)
        reference = _sub(ack, "messageRef")
        _sub(reference, "id", root=acked)
    _device(root, "communicationFunctionRcv", "RCV", to_asid)
    _device(root, "communicationFunctionSnd", "SND", from_asid)
    event = _sub(root, "ControlActEvent", classCode="CACT", moodCode="EVN")
    author = _sub(event, "author1", typeCode="AUT")
    agent = _sub(author, "AgentSystemSDS", classCode="AGNT")
    system = _sub(agent, "agentSystemSDS", classCode="DEV", determinerCode="INSTANCE")
    _sub(system, "id", root=_ASID_ROOT, extension=from_asid or "")
    return root, event


def _text(root: ElementTree.Element) -> str:
    return to_text(root, HL7_NS, PREFIXES)


def _payload_information(
    event: ElementTree.Element,
    *,
    code: tuple[str, str],
    message_id: str,
    message_type: str,
    from_ods: str,
    to_ods: str,
    subject: str,
) -> ElementTree.Element:
    holder = _sub(event, "subject", typeCode="SUBJ", contextConductionInd="false")
    information = _sub(holder, "PayloadInformation", classCode="OBS", moodCode="EVN")
    _sub(information, "code", code=code[0], codeSystem=_GP2GP_CODES, displayName=code[1])
    _sub(information, "id", root=message_id)
    _sub(information, "messageType", None, NPFIT_LC_NS, root=_MESSAGE_TYPES, extension=message_type)
    value = _sub(information, "value")
    fragment = _sub(value, "Gp2gpfragment", None, GP2GP_NS)
    _sub(fragment, "Version", "01", GP2GP_NS)
    recipients = _sub(fragment, "Recipients", None, GP2GP_NS)
    _sub(recipients, "Recipient", to_ods, GP2GP_NS)
    _sub(fragment, "From", from_ods, GP2GP_NS)
    _sub(fragment, "subject", subject, GP2GP_NS)
    _sub(fragment, "message-id", message_id, GP2GP_NS)
    return information


def fragment_payload(
    *,
    message_id: str,
    filename: str,
    from_asid: str | None,
    to_asid: str | None,
    from_ods: str,
    to_ods: str,
    created: datetime | None = None,
) -> str:
    """The HL7 of a COPC_IN000001UK01 that carries a document or one slice of one: "GP2GP
    Large Message Attachment Information", naming the file it carries."""
    root, event = _wrapper(
        "COPC_IN000001UK01", message_id, from_asid=from_asid, to_asid=to_asid, created=created
    )
    information = _payload_information(
        event,
        code=("GP2GPLMATTACHMENTINFO", "GP2GP Large Message Attachment Information"),
        message_id=message_id,
        message_type="RCMR_MT000001GB01",
        from_ods=from_ods,
        to_ods=to_ods,
        subject=f"Attachment: {filename}",
    )
    body = _payload_body(
        information, ("GP2GPLMATTACHMENT", "GP2GP Large Message Attachment"), message_id
    )
    value = _sub(body, "value")
    _sub(value, "reference", value=f"file://localhost/{filename}")
    return _text(root)


def _payload_body(
    information: ElementTree.Element, code: tuple[str, str], message_id: str
) -> ElementTree.Element:
    """The one ``pertinentPayloadBody`` of a COPC message, with its code and id."""
    pertinent = _sub(information, "pertinentInformation", typeCode="PERT")
    _sub(pertinent, "sequenceNumber", value="1")
    body = _sub(pertinent, "pertinentPayloadBody", classCode="OBS", moodCode="EVN")
    _sub(body, "code", code=code[0], codeSystem=_GP2GP_CODES, displayName=code[1])
    _sub(body, "id", root=message_id)
    return body


def continue_payload(
    *,
    message_id: str,
    extract_message_id: str,
    from_asid: str | None,
    to_asid: str | None,
    from_ods: str,
    to_ods: str,
    created: datetime | None = None,
) -> str:
    """The requester's continue (a COPC_IN000001UK01): "send the documents", acknowledging the
    extract message ``extract_message_id`` with the acknowledgement code 0, Continue."""
    root, event = _wrapper(
        "COPC_IN000001UK01", message_id, from_asid=from_asid, to_asid=to_asid, created=created
    )
    information = _payload_information(
        event,
        code=("GP2GP_PI", "GP2GP Payload Information"),
        message_id=message_id,
        message_type="RCMR_MT000002GB01",
        from_ods=from_ods,
        to_ods=to_ods,
        subject="Continue Acknowledgement",
    )
    body = _payload_body(information, ("GP2GP_PB", "GP2GP Payload Body"), message_id)
    value = _sub(body, "value")
    holder = _sub(value, "Gp2gpfragment", None, GP2GP_NS)
    message = _sub(holder, "Message", type="Message")
    _sub(message, "id", root=message_id)
    _sub(message, "code", code="0", codeSystem=ACK_CODE_SYSTEM, displayName="Continue")
    ack = _sub(message, "acknowledgement", typeCode="AA")
    detail = _sub(ack, "acknowledgementDetail", typeCode="IF")
    _sub(detail, "code", code="0", codeSystem=ACK_CODE_SYSTEM, displayName="Continue")
    reference = _sub(ack, "messageRef")
    _sub(reference, "id", root=extract_message_id)
    acknowledged = _sub(holder, "acknowledgedMessage", None, GP2GP_NS)
    _sub(acknowledged, "id", None, GP2GP_NS, root=extract_message_id)
    return _text(root)


#: Acknowledgement type codes: AA accepted; AE and AR negative (NHS's adaptor sends AE).
ACK_TYPE_CODES = ("AA", "AE", "AR")


def acknowledgement_payload(
    *,
    message_id: str,
    acknowledged_message_id: str,
    from_asid: str | None,
    to_asid: str | None,
    type_code: str = "AA",
    reason_code: str | None = None,
    reason: str | None = None,
    created: datetime | None = None,
) -> str:
    """An MCCI_IN010000UK13 application acknowledgement of ``acknowledged_message_id``:
    positive (``AA``) or negative (``AE``/``AR``, with GP2GP's reason code and text)."""
    if type_code not in ACK_TYPE_CODES:
        raise InvalidInputError(
            f"type_code: {type_code!r} is not an acknowledgement code "
            f"({', '.join(ACK_TYPE_CODES)})",
            field="type_code",
        )
    detail = None
    if type_code != "AA":
        if not reason_code:
            raise InvalidInputError(
                "reason_code: a negative acknowledgement says why (a GP2GP reason code)",
                field="reason_code",
            )
        detail = (reason_code, reason or "")
    root, _event = _wrapper(
        "MCCI_IN010000UK13",
        message_id,
        from_asid=from_asid,
        to_asid=to_asid,
        created=created,
        acknowledgement=(type_code, acknowledged_message_id, detail),
    )
    return _text(root)


def skeleton_extract(extract: bytes, document_id: str, created: datetime | None = None) -> str:
    """A large extract's skeleton: the extract with the components of its ``ehrFolder``
    replaced by one composition whose statement refers to the compressed extract sent as
    document ``document_id`` (what NHS's adaptor sends in its place; the receiver opens the
    document for the record). Raises :class:`InvalidInputError` when the extract is not HL7
    XML with an ``ehrFolder``: pass a skeleton of your own then."""
    if b"<!DOCTYPE" in extract[:4096].upper():
        raise InvalidInputError(
            "extract: a document type declaration is not allowed", field="extract"
        )
    try:
        # The extract is the caller's own document (not received input), without a DTD.
        root = ElementTree.fromstring(extract)  # noqa: S314
    except ElementTree.ParseError:
        root = None
    folder = root.find(f".//{_q('ehrFolder')}") if root is not None else None
    if root is None or folder is None:
        raise InvalidInputError(
            "the extract is over the threshold, so the extract message carries a skeleton, and "
            "this extract is not HL7 XML with an ehrFolder to make one from: pass skeleton=",
            field="skeleton",
        )
    for component in folder.findall(_q("component")):
        folder.remove(component)
    component = _sub(folder, "component", typeCode="COMP")
    composition = _sub(component, "ehrComposition", classCode="COMPOSITION", moodCode="EVN")
    _sub(composition, "id", root=document_id.lstrip("_"))
    _sub(composition, "code", nullFlavor="UNK")
    _sub(composition, "statusCode", code="COMPLETE")
    _sub(composition, "availabilityTime", value=hl7_time(created))
    inner = _sub(composition, "component")
    statement = _sub(inner, "NarrativeStatement", classCode="OBS", moodCode="EVN")
    _sub(statement, "id", root=document_id.lstrip("_"))
    _sub(statement, "text", "Skeleton statement: the extract is sent as a compressed document")
    _sub(statement, "statusCode", code="COMPLETE")
    reference = _sub(statement, "reference", typeCode="REFR")
    document = _sub(reference, "referredToExternalDocument", classCode="DOC", moodCode="EVN")
    _sub(document, "id", root=document_id.lstrip("_"))
    text = _sub(document, "text", mediaType="text/xml")
    _sub(text, "reference", value=f"cid:{document_id}")
    return to_text(root, HL7_NS, PREFIXES)
