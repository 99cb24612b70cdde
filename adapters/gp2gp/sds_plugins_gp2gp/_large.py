"""GP2GP large messages: which parts of a transfer are sent as fragments, and how.

The rules are NHS's GP2GP adaptor's (``NHSDigital/integration-adaptor-gp2gp``, the adaptor
that answers EHR requests for a practice), restated here, not copied:

- an EHR extract whose HL7 text is over the extract threshold is compressed (gzip), base64
  encoded and sent as a document of its own; the extract message itself carries a *skeleton*
  extract and references that document (``SendEhrExtractCoreTaskExecutor.java``: the reference
  has ``eb:id`` ``_<document id>``, ``Compressed=Yes``, ``OriginalBase64=No``,
  ``DomainData="X-GP2GP-Skeleton: Yes"``; the file is ``<document id>.gz``);
- every document (the compressed extract, every attachment) travels in a
  ``COPC_IN000001UK01`` message of its own, referenced from the extract's ``eb:Manifest`` by
  ``mid:<that message's id>``;
- a document whose base64 text is over the attachment threshold is cut into slices of that
  many characters (``SendDocumentTaskExecutor.java``, ``chunkBinary``); each slice goes in a
  COPC message of its own (a new message id, file ``<document's message id>_<n>.messageattachment``,
  content type ``application/octet-stream``), and the document's own COPC message carries no
  part but a ``mid:`` reference to each slice's message, in order, described ``Compressed=No
  LargeAttachment=No OriginalBase64=Yes Length=<characters>``;
- descriptions are ``Filename="..." ContentType=... Compressed=Yes|No LargeAttachment=Yes|No
  OriginalBase64=Yes|No Length=n [DomainData="..."]`` (``OutboundMessage.AttachmentDescription``).
- A size equal to a threshold is not large (``>`` in both executors; the end-to-end test
  ``When_ExtractRequestReceivedForPatientWithDocumentSizeEqualThreshold_Expect_LargeDocumentIsSentAsOne``).
"""

from __future__ import annotations

import base64
import gzip
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sds_plugins import InvalidInputError, check_header_value

from ._hl7 import skeleton_extract
from ._ids import check_uuid, new_id
from ._settings import LARGE_MESSAGE_THRESHOLD, check_threshold

__all__ = [
    "ATTACHMENT_CONTENT_TYPES",
    "CHUNK_CONTENT_TYPE",
    "SKELETON_DOMAIN_DATA",
    "Chunk",
    "Document",
    "EhrAttachment",
    "TransferPlan",
    "describe",
    "parse_description",
    "plan_document",
    "plan_transfer",
]

#: The content types Spine takes for an attachment (NHS's MHS adaptor lists them "from the
#: Spine External Interface Specification Part 2, Version 11.6, Section 2.5.4.2":
#: NHSDigital/integration-adaptor-mhs, mhs/common/mhs_common/request/request_body_schema.py).
ATTACHMENT_CONTENT_TYPES = frozenset(
    {
        "text/plain",
        "text/html",
        "application/pdf",
        "text/xml",
        "application/xml",
        "text/rtf",
        "audio/basic",
        "audio/mpeg",
        "image/png",
        "image/gif",
        "image/jpeg",
        "image/tiff",
        "video/mpeg",
        "application/msword",
        "application/octet-stream",
    }
)
#: What each slice of a large document is sent as (``SendDocumentTaskExecutor``:
#: ``MimeTypes.OCTET_STREAM``).
CHUNK_CONTENT_TYPE = "application/octet-stream"
#: The compressed extract's content type (``SendEhrExtractCoreTaskExecutor``:
#: ``TEXT_XML_CONTENT_TYPE``).
COMPRESSED_EXTRACT_CONTENT_TYPE = "text/xml"
#: ``DomainData`` of the reference to the compressed extract, which says "this is the real
#: extract; the one in the message is a skeleton".
SKELETON_DOMAIN_DATA = "X-GP2GP-Skeleton: Yes"
_CHUNK_EXTENSION = ".messageattachment"
_EXTENSIONS = {
    "text/plain": ".txt",
    "text/html": ".html",
    "application/pdf": ".pdf",
    "text/xml": ".xml",
    "application/xml": ".xml",
    "text/rtf": ".rtf",
    "audio/basic": ".au",
    "audio/mpeg": ".mp3",
    "image/png": ".png",
    "image/gif": ".gif",
    "image/jpeg": ".jpg",
    "image/tiff": ".tiff",
    "video/mpeg": ".mpeg",
    "application/msword": ".doc",
    "application/octet-stream": ".bin",
}


def describe(
    *,
    filename: str,
    content_type: str,
    compressed: bool,
    large: bool,
    original_base64: bool,
    length: int,
    domain_data: str | None = None,
) -> str:
    """An ``eb:Description`` of a document in the form GP2GP receivers parse."""

    def yes(flag: bool) -> str:
        return "Yes" if flag else "No"

    text = (
        f'Filename="{filename}" ContentType={content_type} Compressed={yes(compressed)} '
        f"LargeAttachment={yes(large)} OriginalBase64={yes(original_base64)} Length={length}"
    )
    if domain_data is not None:
        text += f' DomainData="{domain_data}"'
    return text


_DESCRIPTION_ITEM = re.compile(r'(\w+)=(?:"([^"]*)"|(\S+))')


def parse_description(text: str) -> dict[str, str]:
    """The ``Key=value`` items of a GP2GP description (quotes removed)."""
    return {
        key: quoted if quoted else bare for key, quoted, bare in _DESCRIPTION_ITEM.findall(text)
    }


@dataclass(frozen=True)
class EhrAttachment:
    """A document of the patient's record, sent after the extract in a COPC message.

    ``content`` is sent as is (base64 on the wire); ``content_type`` one of
    :data:`ATTACHMENT_CONTENT_TYPES`. ``document_id`` (the manifest's ``eb:id``, the id the
    extract's HL7 uses for the document) and ``filename`` default to fresh values.
    """

    content: bytes = field(repr=False)
    content_type: str = "application/octet-stream"
    filename: str | None = None
    document_id: str | None = None


@dataclass(frozen=True)
class Chunk:
    """One slice of a large document, sent in a COPC message of its own."""

    index: int
    message_id: str
    filename: str
    #: The document's content type (the description says it; the part itself is
    #: ``application/octet-stream``).
    document_content_type: str
    #: The slice: base64 text, at most the threshold long.
    text: str = field(repr=False)

    @property
    def content(self) -> bytes:
        """The bytes this slice carries (its base64 text decoded)."""
        return base64.b64decode(self.text)

    def description(self) -> str:
        return describe(
            filename=self.filename,
            content_type=self.document_content_type,
            compressed=False,
            large=False,
            original_base64=True,
            length=len(self.text),
        )


@dataclass(frozen=True)
class Document:
    """A document sent after the extract: the compressed extract or an attachment.

    It travels in the COPC message ``message_id``: whole (one MIME part) when its base64 text
    is within ``threshold``, else as :attr:`chunks`, each in a COPC message of its own that
    the document's message references by ``mid:``.
    """

    document_id: str
    message_id: str
    filename: str
    content_type: str
    compressed: bool
    skeleton: bool
    threshold: int
    #: The document's base64 text (of its gzip form when ``compressed``).
    text: str = field(repr=False)
    chunks: tuple[Chunk, ...] = ()

    @property
    def large(self) -> bool:
        return len(self.text) > self.threshold

    @property
    def length(self) -> int:
        """Characters sent: the base64 text's length (NHS's adaptor measures the same)."""
        return len(self.text)

    @property
    def content(self) -> bytes:
        """The bytes sent (base64 decoded): gzip data for a compressed document."""
        return base64.b64decode(self.text)

    def description(self) -> str:
        """The description of the extract's ``mid:`` reference to this document."""
        return describe(
            filename=self.filename,
            content_type=self.content_type,
            compressed=self.compressed,
            large=self.large,
            original_base64=False,
            length=self.length,
            domain_data=SKELETON_DOMAIN_DATA if self.skeleton else None,
        )


def _check_threshold(value: int, name: str) -> int:
    try:
        return check_threshold(value, name)
    except ValueError as exc:
        raise InvalidInputError(str(exc), field=name) from None


def _check_filename(value: str) -> str:
    check_header_value(value, "filename")
    if not value or '"' in value or len(value) > 200:
        raise InvalidInputError(
            "filename: must be 1 to 200 characters, without double quotes (it is quoted in "
            "the manifest's description)",
            field="filename",
        )
    return value


def plan_document(
    content: bytes,
    *,
    content_type: str,
    threshold: int = LARGE_MESSAGE_THRESHOLD,
    filename: str | None = None,
    document_id: str | None = None,
    message_id: str | None = None,
    compressed: bool = False,
    skeleton: bool = False,
) -> Document:
    """A document's COPC message id, and its slices when its base64 text is over ``threshold``."""
    threshold = _check_threshold(threshold, "threshold")
    if content_type not in ATTACHMENT_CONTENT_TYPES:
        raise InvalidInputError(
            f"content_type: {content_type!r} is not one Spine takes for an attachment ("
            + ", ".join(sorted(ATTACHMENT_CONTENT_TYPES))
            + ")",
            field="content_type",
        )
    if document_id is None:
        # An eb:id is an XML ID, which cannot start with a digit: "_" first, as NHS's adaptor
        # names the compressed extract's document.
        document_id = f"_{new_id()}"
    elif not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,99}", document_id):
        raise InvalidInputError(
            f"document_id: {document_id!r} is not an XML id (a letter or _, then letters, "
            "digits, _ . -)",
            field="document_id",
        )
    message_id = check_uuid(message_id, "message_id") if message_id else new_id()
    if filename is None:
        filename = document_id.lstrip("_") + (".gz" if compressed else _EXTENSIONS[content_type])
    filename = _check_filename(filename)
    text = base64.b64encode(content).decode("ascii")
    chunks: tuple[Chunk, ...] = ()
    if len(text) > threshold:
        chunks = tuple(
            Chunk(
                index=index,
                message_id=new_id(),
                filename=f"{message_id}_{index}{_CHUNK_EXTENSION}",
                document_content_type=content_type,
                text=text[start : start + threshold],
            )
            for index, start in enumerate(range(0, len(text), threshold))
        )
    return Document(
        document_id=document_id,
        message_id=message_id,
        filename=filename,
        content_type=content_type,
        compressed=compressed,
        skeleton=skeleton,
        threshold=threshold,
        text=text,
        chunks=chunks,
    )


@dataclass(frozen=True)
class TransferPlan:
    """What the previous practice sends for one extract: the extract message, then the
    documents (each one COPC message, or an index message and its slices)."""

    #: The extract message's MessageId (its manifest references every document).
    extract_message_id: str
    #: The HL7 the extract message carries: the extract itself, or its skeleton when large.
    core_payload: str = field(repr=False)
    #: The extract's own size (UTF-8 bytes) and the threshold it was measured against.
    extract_size: int
    extract_threshold: int
    attachment_threshold: int
    documents: tuple[Document, ...] = ()

    @property
    def large(self) -> bool:
        """Whether the extract itself went over its threshold (and travels compressed)."""
        return self.extract_size > self.extract_threshold

    @property
    def fragment_count(self) -> int:
        """COPC messages sent after the extract: one per document, plus one per slice."""
        return sum(1 + len(document.chunks) for document in self.documents)

    @property
    def needs_continue(self) -> bool:
        """Whether the requester must send its continue before the documents come (they are
        sent after "Receive Continue Request", NHS's adaptor's sequence diagram)."""
        return bool(self.documents)

    def summary(self) -> dict[str, Any]:
        """Sizes and counts, JSON-friendly (for logs and the demo: no content)."""
        return {
            "extract_message_id": self.extract_message_id,
            "extract_bytes": self.extract_size,
            "extract_threshold": self.extract_threshold,
            "attachment_threshold": self.attachment_threshold,
            "large_extract": self.large,
            "core_payload_bytes": len(self.core_payload.encode("utf-8")),
            "documents": [
                {
                    "document_id": document.document_id,
                    "message_id": document.message_id,
                    "filename": document.filename,
                    "content_type": document.content_type,
                    "compressed": document.compressed,
                    "base64_length": document.length,
                    "large": document.large,
                    "chunks": [len(chunk.text) for chunk in document.chunks],
                }
                for document in self.documents
            ],
            "fragment_messages": self.fragment_count,
        }


def _text(value: bytes | str, field: str) -> str:
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError(f"{field} is not UTF-8 text (HL7 XML)", field=field) from None


def plan_transfer(
    extract: bytes | str,
    *,
    attachments: Iterable[EhrAttachment] = (),
    skeleton: str | None = None,
    extract_threshold: int = LARGE_MESSAGE_THRESHOLD,
    attachment_threshold: int = LARGE_MESSAGE_THRESHOLD,
    extract_message_id: str | None = None,
) -> TransferPlan:
    """Plan one extract's messages: is it large, which documents follow, which are sliced.

    ``extract`` is the ``RCMR_IN030000UK06`` HL7 (UTF-8). Over ``extract_threshold`` bytes it
    becomes a compressed document (the first), and the extract message carries ``skeleton``
    (default: the extract with its folder's components replaced by one statement that refers
    to that document; pass your own when the extract is not XML this can rewrite). A skeleton
    given for an extract within the threshold is not used: that extract is sent whole.
    """
    extract_threshold = _check_threshold(extract_threshold, "extract_threshold")
    attachment_threshold = _check_threshold(attachment_threshold, "attachment_threshold")
    raw = extract.encode("utf-8") if isinstance(extract, str) else bytes(extract)
    message_id = (
        check_uuid(extract_message_id, "extract_message_id") if extract_message_id else new_id()
    )
    documents: list[Document] = []
    if len(raw) > extract_threshold:
        # mtime=0: the same extract compresses to the same bytes, so a message rendered again
        # for a retry is byte for byte the one sent before.
        compressed = plan_document(
            gzip.compress(raw, mtime=0),
            content_type=COMPRESSED_EXTRACT_CONTENT_TYPE,
            threshold=attachment_threshold,
            compressed=True,
            skeleton=True,
        )
        documents.append(compressed)
        core = skeleton if skeleton is not None else skeleton_extract(raw, compressed.document_id)
    else:
        core = _text(extract, "extract")  # sent whole: a skeleton is only for a large one
    seen = {document.document_id for document in documents}
    for attachment in attachments:
        document = plan_document(
            attachment.content,
            content_type=attachment.content_type,
            threshold=attachment_threshold,
            filename=attachment.filename,
            document_id=attachment.document_id,
        )
        if document.document_id in seen:
            raise InvalidInputError(
                f"document_id {document.document_id!r} is given twice", field="document_id"
            )
        seen.add(document.document_id)
        documents.append(document)
    return TransferPlan(
        extract_message_id=message_id,
        core_payload=core,
        extract_size=len(raw),
        extract_threshold=extract_threshold,
        attachment_threshold=attachment_threshold,
        documents=tuple(documents),
    )


def documents_by_message(plan: TransferPlan) -> Mapping[str, Document]:
    """The plan's documents by the id of the COPC message that carries each."""
    return {document.message_id: document for document in plan.documents}
