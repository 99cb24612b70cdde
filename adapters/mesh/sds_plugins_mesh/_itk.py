"""GP Connect Messaging over MESH: the ITK3 messages, their workflow ids and acknowledgements.

Each message travels with one MESH workflow id and is acknowledged (ITK3 business and
infrastructure acknowledgements) with another. Which ``mex-to`` a message may carry differs
between messages that share a workflow id, so the catalogue is by message, each with its source:

- **Send Document, Consultation Report** (GP hubs, 111 and extended access to the patient's
  registered GP): ``GPFED_CONSULT_REPORT``, acknowledged with ``GPFED_CONSULT_REPORT_ACK``;
  "all messages sent through this use case MUST use MESH automated message routing"
  (``nhsconnect/gpconnect-messaging``, ``master``, ``_data/senddoc_requirements.yml``,
  GPCM-SD-056 to -064, shown on ``pages/senddocument/senddocument_fedcon_mesh.md``; renumbered
  GPCM-SD-CS-060 to -068 from ``release/1.5.0``, which adds CS-079/-080: ``LocalID`` and
  ``Mex-Localid`` "MUST contain the ODS code of the sending organisation").
- **Online Consultation Report** and **Generic** messages reuse that workflow pair, but their
  ``Mex-To`` "MUST contain the MESH mailbox ID of the receiver ... either the mailbox ID for the
  patient's registered GP practice, or chosen community pharmacy" (``release/1.6.0``,
  ``_data/oc_requirements.yml`` GPCM-SD-OC-160 to -164, -174, -175; ``_data/ge_requirements.yml``
  GPCM-SD-GE-287 to -292, -296): a mailbox, never demographics.
- **Update Record** (Community Pharmacy: Pharmacy First, blood pressure and contraception
  consultations written back to the registered GP): ``GPCONNECT_UPDATE_RECORD``, acknowledged
  with ``GPCONNECT_UPDATE_RECORD_ACK``, ``mex-to`` the patient's NHS number, date of birth and
  surname (automated routing) and ``mex-localid`` the sender's ODS code. These ids are published
  on Simplifier, "GP Connect - Update Record (ITK3)", Build > How to configure MESH (versions
  1.1.1 and 1.1.5-public-beta, https://simplifier.net/guide/gp-connect--update-record--itk3/Home/
  Build/How-to-configure-MESH?version=1.1.5-public-beta), not on GitHub: the draft in
  ``nhsconnect/gpconnect-messaging`` (``release/1.6.0``,
  ``_data/sendupdate_usecase_requirements.yml``, GPCM-SU-xx-287 to -292) still carries the
  ``GPFED_CONSULT_REPORT`` placeholders and a mailbox ``Mex-To``, so a mailbox is allowed too.

An acknowledgement goes back to the mailbox the message came from (its ``mex-from``): that is
:func:`route_acknowledgement`, one call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sds_plugins import InvalidInputError, RoutingEnvelope

from ._demographic import normalise_patient_number
from ._validation import check_text_header

if TYPE_CHECKING:
    from sds_plugins import Router

__all__ = [
    "ACKNOWLEDGEMENT_WORKFLOWS",
    "ITK3_MESSAGES",
    "Itk3Message",
    "Routing",
    "acknowledgement_workflow",
    "consultation_report_subject",
    "default_message",
    "route_acknowledgement",
    "subject_nhs_number",
]

#: How a MESH message finds its recipient: ``ods`` (the endpoint lookup for the organisation
#: and workflow), ``demographic`` (MESH's automated routing to the patient's registered GP) or
#: ``mailbox`` (a mailbox id the sender already knows: an acknowledgement's, a pharmacy's).
Routing = Literal["ods", "demographic", "mailbox"]

_MESSAGING = "nhsconnect/gpconnect-messaging"
_UPDATE_RECORD_GUIDE = (
    "https://simplifier.net/guide/gp-connect--update-record--itk3/Home/Build/"
    "How-to-configure-MESH?version=1.1.5-public-beta"
)


@dataclass(frozen=True)
class Itk3Message:
    """One GP Connect Messaging message: its workflow pair, how it may be routed, its source.

    ``routings`` lists the routings the specification allows, the first being the default;
    ``subject`` is the ``mex-subject`` format the specification gives (``None``: none).
    """

    name: str
    title: str
    workflow_id: str
    ack_workflow_id: str
    routings: tuple[Routing, ...]
    subject: str | None
    source: str

    @property
    def default_routing(self) -> Routing:
        return self.routings[0]


def _catalogue(*messages: Itk3Message) -> dict[str, Itk3Message]:
    return {message.name: message for message in messages}


#: The GP Connect Messaging messages by name (see the module documentation for the sources).
ITK3_MESSAGES: dict[str, Itk3Message] = _catalogue(
    Itk3Message(
        name="consultation_report",
        title="Send Document: Consultation Report",
        workflow_id="GPFED_CONSULT_REPORT",
        ack_workflow_id="GPFED_CONSULT_REPORT_ACK",
        routings=("demographic",),
        subject=(
            "Consultation report for {Patient Name}, NHS Number {NHS Number}, seen at "
            "{Practice Name}, ODS Code {ODS Code}"
        ),
        source=f"{_MESSAGING} master _data/senddoc_requirements.yml GPCM-SD-056..064; "
        "release/1.5.0+ GPCM-SD-CS-060..068, -079, -080",
    ),
    Itk3Message(
        name="online_consultation_report",
        title="Online Consultation Report",
        workflow_id="GPFED_CONSULT_REPORT",
        ack_workflow_id="GPFED_CONSULT_REPORT_ACK",
        routings=("ods", "mailbox"),
        subject="Online consultation report for {Patient Name}, NHS Number {NHS Number}, "
        "ODS Code {ODS Code}",
        source=f"{_MESSAGING} release/1.6.0 _data/oc_requirements.yml "
        "GPCM-SD-OC-160..164, -174, -175",
    ),
    Itk3Message(
        name="generic_report",
        title="Generic message",
        workflow_id="GPFED_CONSULT_REPORT",
        ack_workflow_id="GPFED_CONSULT_REPORT_ACK",
        routings=("ods", "mailbox"),
        subject="{name of report} report for {Patient Name}, NHS Number {NHS Number}, "
        "ODS Code {ODS Code}",
        source=f"{_MESSAGING} release/1.6.0 _data/ge_requirements.yml GPCM-SD-GE-287..292, -296",
    ),
    Itk3Message(
        name="update_record",
        title="Update Record (Community Pharmacy)",
        workflow_id="GPCONNECT_UPDATE_RECORD",
        ack_workflow_id="GPCONNECT_UPDATE_RECORD_ACK",
        routings=("demographic", "ods", "mailbox"),
        subject="[payload-title] for [patient-name], NHS Number: [nhs-number], seen at "
        "[practice-name], ODS code: [ods-code], version [version]",
        source=f"Simplifier 'GP Connect - Update Record (ITK3)' 1.1.1/1.1.5-public-beta, "
        f"{_UPDATE_RECORD_GUIDE}; draft: {_MESSAGING} release/1.6.0 "
        "_data/sendupdate_usecase_requirements.yml GPCM-SU-xx-287..292",
    ),
)

#: Each message workflow id and the workflow id of its acknowledgements.
ACKNOWLEDGEMENT_WORKFLOWS: dict[str, str] = {
    message.workflow_id: message.ack_workflow_id for message in ITK3_MESSAGES.values()
}
_ACK_WORKFLOWS = frozenset(ACKNOWLEDGEMENT_WORKFLOWS.values())

#: The message a workflow id means when the route does not say (``message_type``).
_DEFAULT_MESSAGES = {
    "GPFED_CONSULT_REPORT": "consultation_report",
    "GPCONNECT_UPDATE_RECORD": "update_record",
}


def default_message(workflow_id: str) -> Itk3Message | None:
    """The message ``workflow_id`` stands for by default (Send Document for
    ``GPFED_CONSULT_REPORT``, Update Record for ``GPCONNECT_UPDATE_RECORD``), else ``None``."""
    name = _DEFAULT_MESSAGES.get(workflow_id)
    return ITK3_MESSAGES[name] if name is not None else None


def is_acknowledgement(workflow_id: str) -> bool:
    """Whether ``workflow_id`` is one of the catalogue's acknowledgement workflows."""
    return workflow_id in _ACK_WORKFLOWS


def acknowledgement_workflow(workflow_id: str) -> str:
    """The workflow id an acknowledgement of a ``workflow_id`` message is sent with.

    Raises :class:`~sds_plugins.InvalidInputError` for a workflow the catalogue does not know.
    """
    found = ACKNOWLEDGEMENT_WORKFLOWS.get(workflow_id)
    if found is None:
        known = ", ".join(sorted(ACKNOWLEDGEMENT_WORKFLOWS))
        raise InvalidInputError(
            f"workflow_id: {workflow_id[:64]!r} has no known acknowledgement workflow "
            f"(known: {known})",
            field="workflow_id",
        )
    return found


# GPCM-SD-064 (master) writes "{Patient Name} , NHS Number"; GPCM-SD-CS-068 (release/1.5.0 on)
# "{Patient Name}, NHS Number": both are accepted, the later one is written.
_CONSULTATION_SUBJECT = re.compile(
    r"Consultation report for (?P<name>\S.*?) ?, NHS Number (?P<nhs>[0-9]{10}), "
    r"seen at (?P<practice>\S.*), ODS Code (?P<ods>[A-Za-z0-9]+)"
)


def consultation_report_subject(
    *, patient_name: str, nhs_number: str, practice_name: str, ods_code: str
) -> str:
    """The ``mex-subject`` of a Send Document consultation report (GPCM-SD-064, -CS-068):
    ``Consultation report for {Patient Name}, NHS Number {NHS Number}, seen at {Practice Name},
    ODS Code {ODS Code}``, where the practice is the one the patient was seen at (the sender).

    It names the patient, as the specification requires: keep it out of logs.
    """
    number = normalise_patient_number(nhs_number)
    parts = {
        "patient_name": patient_name,
        "practice_name": practice_name,
        "ods_code": ods_code,
    }
    for field, value in parts.items():
        check_text_header(value, field)
    subject = (
        f"Consultation report for {patient_name.strip()}, NHS Number {number}, seen at "
        f"{practice_name.strip()}, ODS Code {ods_code.strip().upper()}"
    )
    return check_text_header(subject, "subject")


def subject_nhs_number(message: Itk3Message, subject: str | None) -> str:
    """The NHS number a consultation report's ``subject`` names, after checking its format.

    Raises :class:`~sds_plugins.InvalidInputError` (``field="subject"``) when the subject is
    missing or not in the format; the message never repeats it.
    """
    if subject is None:
        raise InvalidInputError(
            f"mesh: subject is required for a {message.title} "
            f"(GPCM-SD-064): '{message.subject}'; build it with consultation_report_subject()",
            field="subject",
        )
    found = _CONSULTATION_SUBJECT.fullmatch(subject)
    if found is None:
        raise InvalidInputError(
            f"mesh: subject is not in the {message.title} format (GPCM-SD-064): "
            f"'{message.subject}'; build it with consultation_report_subject()",
            field="subject",
        )
    return found.group("nhs")


async def route_acknowledgement(
    router: Router,
    *,
    workflow_id: str,
    to_mailbox: str,
    org: str,
    **options: Any,
) -> RoutingEnvelope:
    """The envelope for an acknowledgement of a message received with ``workflow_id`` from
    mailbox ``to_mailbox`` (the received message's ``mex-from``, mesh-client's
    ``message.sender``): its acknowledgement workflow, sent straight to that mailbox (no lookup).

    ``org`` is the original sender's ODS code (GP Connect Messaging 1.5.0 on puts it in the
    message's ``mex-localid``; a consultation report's subject names it too): the router needs
    an organisation, and the envelope's ``target.ods_code`` records it. ``options`` are the
    MESH adapter's (the sender's ``mailbox`` and secrets, ``local_id``, ``subject``...).
    """
    return await router.route(
        "mesh",
        org=org,
        interaction=acknowledgement_workflow(workflow_id),
        routing="mailbox",
        mailbox_id=to_mailbox,
        **options,
    )
