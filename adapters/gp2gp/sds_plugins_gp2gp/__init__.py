"""sds-plugins adapter for GP2GP: a patient's record moving to their new practice over Spine.

- ``gp2gp`` (:class:`Gp2gpAdapter`): one message of the transfer (``RCMR_IN010000UK05``,
  ``RCMR_IN030000UK06``, ``COPC_IN000001UK01``, ``MCCI_IN010000UK13``) as Spine ebXML routing:
  SDS ``/Endpoint`` + ``/Device`` joined on party key, forward-reliable to Spine's intermediary,
  one ``eb:ConversationId`` for the whole transfer.
- :class:`Conversation`: the transfer's steps, each routed and rendered, with large extracts
  and attachments planned and sent as fragments (:func:`plan_transfer`), and
  :func:`read_message` / :func:`reassemble` for the receiving side.
"""

from __future__ import annotations

from ._adapter import (
    ACKNOWLEDGEMENT,
    EHR_EXTRACT,
    EHR_REQUEST,
    FRAGMENT,
    GP2GP_INTERACTIONS,
    GP2GP_SERVICE,
    Gp2gpAdapter,
    Gp2gpOptions,
)
from ._conversation import SPINE_MAX_REQUEST_SIZE, Conversation, Gp2gpMessage, Practice, Role, Step
from ._hl7 import acknowledgement_payload, continue_payload, fragment_payload, skeleton_extract
from ._ids import check_uuid, new_id
from ._large import (
    ATTACHMENT_CONTENT_TYPES,
    CHUNK_CONTENT_TYPE,
    SKELETON_DOMAIN_DATA,
    Chunk,
    Document,
    EhrAttachment,
    TransferPlan,
    describe,
    parse_description,
    plan_document,
    plan_transfer,
)
from ._mime import (
    ExternalReference,
    InlinePart,
    ManifestReference,
    Reassembled,
    ReceivedMessage,
    read_message,
    reassemble,
    render_message,
)
from ._records import NEW_PRACTICE, PREVIOUS_PRACTICE, sandbox_records
from ._samples import sample_extract, sample_request
from ._settings import LARGE_MESSAGE_THRESHOLD, MAX_PART_SIZE, Gp2gpSettings
from .plugin import Gp2gpPlugin

__all__ = [
    "ACKNOWLEDGEMENT",
    "ATTACHMENT_CONTENT_TYPES",
    "CHUNK_CONTENT_TYPE",
    "EHR_EXTRACT",
    "EHR_REQUEST",
    "FRAGMENT",
    "GP2GP_INTERACTIONS",
    "GP2GP_SERVICE",
    "LARGE_MESSAGE_THRESHOLD",
    "MAX_PART_SIZE",
    "NEW_PRACTICE",
    "PREVIOUS_PRACTICE",
    "SKELETON_DOMAIN_DATA",
    "SPINE_MAX_REQUEST_SIZE",
    "Chunk",
    "Conversation",
    "Document",
    "EhrAttachment",
    "ExternalReference",
    "Gp2gpAdapter",
    "Gp2gpMessage",
    "Gp2gpOptions",
    "Gp2gpPlugin",
    "Gp2gpSettings",
    "InlinePart",
    "ManifestReference",
    "Practice",
    "Reassembled",
    "ReceivedMessage",
    "Role",
    "Step",
    "TransferPlan",
    "acknowledgement_payload",
    "check_uuid",
    "continue_payload",
    "describe",
    "fragment_payload",
    "new_id",
    "parse_description",
    "plan_document",
    "plan_transfer",
    "read_message",
    "reassemble",
    "render_message",
    "sample_extract",
    "sample_request",
    "sandbox_records",
    "skeleton_extract",
]
