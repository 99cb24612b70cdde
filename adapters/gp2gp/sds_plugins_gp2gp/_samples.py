"""Sample HL7 for the demo and tests: an EHR request and an extract of any size (no real
patient: the NHS number is one of the sandbox's invented ``999`` numbers)."""

from __future__ import annotations

import base64
import os
from xml.etree import ElementTree

from ._hl7 import HL7_NS, PREFIXES, hl7_time
from ._ids import new_id
from ._xml import to_text

__all__ = ["sample_extract", "sample_request"]

_SAMPLE_NHS_NUMBER = "9990001006"
_NHS_NUMBER_ROOT = "2.16.840.1.113883.2.1.4.1"
_ODS_ROOT = "1.2.826.0.1285.0.1.10"


def _q(name: str) -> str:
    return f"{{{HL7_NS}}}{name}"


def _sub(parent: ElementTree.Element, name: str, **attributes: str) -> ElementTree.Element:
    return ElementTree.SubElement(parent, _q(name), attributes)


def _document(
    interaction: str, *, from_ods: str, to_ods: str
) -> tuple[ElementTree.Element, ElementTree.Element]:
    root = ElementTree.Element(_q(interaction))
    _sub(root, "id", root=new_id())
    _sub(root, "creationTime", value=hl7_time())
    _sub(root, "interactionId", root="2.16.840.1.113883.2.1.3.2.4.12", extension=interaction)
    event = _sub(root, "ControlActEvent", classCode="CACT", moodCode="EVN")
    subject = _sub(event, "subject", typeCode="SUBJ", contextConductionInd="false")
    return root, subject


def _text(root: ElementTree.Element) -> str:
    return to_text(root, HL7_NS, PREFIXES)


def sample_request(*, from_ods: str, to_ods: str) -> str:
    """An ``RCMR_IN010000UK05``: ``from_ods`` (the new practice) asks ``to_ods`` for the record."""
    root, subject = _document("RCMR_IN010000UK05", from_ods=from_ods, to_ods=to_ods)
    request = _sub(subject, "EhrRequest", classCode="EXTRACT", moodCode="RQO")
    _sub(request, "id", root=new_id())
    target = _sub(request, "recordTarget", typeCode="RCT")
    patient = _sub(target, "patient", classCode="PAT")
    _sub(patient, "id", root=_NHS_NUMBER_ROOT, extension=_SAMPLE_NHS_NUMBER)
    for role, ods in (("author", from_ods), ("destination", to_ods)):
        party = _sub(request, role, typeCode="AUT" if role == "author" else "DST")
        organisation = _sub(party, "AgentOrgSDS", classCode="AGNT")
        _sub(_sub(organisation, "agentOrganizationSDS"), "id", root=_ODS_ROOT, extension=ods)
    return _text(root)


def sample_extract(*, from_ods: str, to_ods: str, size: int = 20_000) -> str:
    """An ``RCMR_IN030000UK06`` of about ``size`` bytes: an ``ehrFolder`` whose statements hold
    random text (which compresses little, so a large one stays large once compressed)."""
    root, subject = _document("RCMR_IN030000UK06", from_ods=from_ods, to_ods=to_ods)
    extract = _sub(subject, "EhrExtract", classCode="EXTRACT", moodCode="EVN")
    _sub(extract, "id", root=new_id())
    target = _sub(extract, "recordTarget", typeCode="RCT")
    _sub(
        _sub(target, "patient", classCode="PAT"),
        "id",
        root=_NHS_NUMBER_ROOT,
        extension=_SAMPLE_NHS_NUMBER,
    )
    component = _sub(extract, "component", typeCode="COMP")
    folder = _sub(component, "ehrFolder", classCode="FOLDER", moodCode="EVN")
    _sub(folder, "id", root=new_id())
    written = len(_text(root).encode("utf-8"))
    while written < size:
        item = _sub(folder, "component", typeCode="COMP")
        composition = _sub(item, "ehrComposition", classCode="COMPOSITION", moodCode="EVN")
        statement = _sub(
            _sub(composition, "component"), "NarrativeStatement", classCode="OBS", moodCode="EVN"
        )
        text = _sub(statement, "text")
        chunk = min(60_000, max(size - written, 1))
        text.text = base64.b64encode(os.urandom(chunk * 3 // 4 + 1)).decode("ascii")[:chunk]
        written += chunk + 200
    return _text(root)
