"""The ``multipart/related`` body of an ebXML message: :func:`render_multipart` and the
:class:`Attachment` parts after the HL7 payload.

MIME is built with :mod:`email`, so every header value is escaped by the library; payloads
and text attachments with control characters, or holding the boundary, are refused before
anything is built.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from email import policy as email_policy
from email.generator import BytesGenerator
from email.message import EmailMessage, MIMEPart
from io import BytesIO

from pydantic import BaseModel, ConfigDict, field_validator

from .._exceptions import InvalidInputError
from .._validation import check_header_value
from ._routing import CONTENT_ID_DOMAIN, EBXML_HEADER_CONTENT_ID, EbxmlRouting
from ._soap import soap_envelope

__all__ = ["Attachment", "render_multipart"]

# Content ids become part of Content-Id headers and cid: URLs: keep them plain.
_CONTENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._%+@-]{0,199}$")
_MIME_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*$")
# CRLF line ends (MIME's canonical form); 76-character lines only matter for base64 parts
# (8bit text is never re-wrapped).
_POLICY = email_policy.default.clone(linesep="\r\n", max_line_length=76)


class Attachment(BaseModel):
    """One extra MIME part after the HL7 payload, listed in the ebXML manifest.

    ``bytes`` content is sent base64-encoded; ``str`` content as UTF-8 text (8bit).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    content: bytes | str
    content_type: str = "text/plain"
    description: str = "Attachment"
    #: Defaults to a stable id derived from the message id and the attachment's position.
    content_id: str | None = None

    @field_validator("content_type")
    @classmethod
    def _mime_type(cls, value: str) -> str:
        if not _MIME_TYPE.match(value):
            raise ValueError(f"content_type {value!r} is not a MIME type (type/subtype)")
        return value

    @field_validator("description")
    @classmethod
    def _text(cls, value: str) -> str:
        return check_header_value(value, "description")

    @field_validator("content_id")
    @classmethod
    def _content_id(cls, value: str | None) -> str | None:
        if value is not None and not _CONTENT_ID.match(value):
            raise ValueError(f"content_id {value!r} is not a plain Content-Id (e.g. id@host)")
        return value


def _text_part(text: str, content_id: str, subtype: str = "xml") -> MIMEPart:
    part = MIMEPart(policy=_POLICY)
    part.set_content(text, subtype=subtype, charset="utf-8", cte="8bit")
    part["Content-Id"] = f"<{content_id}>"
    return part


def _attachment_part(attachment: Attachment, content_id: str) -> MIMEPart:
    part = MIMEPart(policy=_POLICY)
    maintype, _, subtype = attachment.content_type.partition("/")
    if isinstance(attachment.content, bytes):
        part.set_content(attachment.content, maintype=maintype, subtype=subtype, cte="base64")
    elif maintype == "text":
        part.set_content(attachment.content, subtype=subtype, charset="utf-8", cte="8bit")
    else:
        part.set_content(
            attachment.content.encode("utf-8"), maintype=maintype, subtype=subtype, cte="base64"
        )
    part["Content-Id"] = f"<{content_id}>"
    return part


def _attachment_content_id(routing: EbxmlRouting, index: int) -> str:
    # Stable, so rendering the same message twice gives the same bytes (a retry is the same
    # message to the receiver's duplicate elimination).
    derived = uuid.uuid5(uuid.NAMESPACE_URL, f"ebxml:{routing.message_id}:{index}")
    return f"{str(derived).upper()}@{CONTENT_ID_DOMAIN}"


def render_multipart(
    routing: EbxmlRouting,
    payload: str | bytes,
    attachments: Iterable[Attachment] = (),
) -> tuple[dict[str, str], bytes]:
    """The HTTP headers and ``multipart/related`` body of one ebXML message.

    Parts, in the order Spine requires: the SOAP envelope (``eb:MessageHeader`` and the
    ``eb:Manifest`` that references every other part), the HL7 ``payload`` (UTF-8 XML), then
    each attachment. Text parts are sent with CRLF line ends and a final line end (MIME's
    canonical text form); bytes attachments travel base64-encoded and come back unchanged.
    Raises :class:`InvalidInputError` for a payload that is not UTF-8 text or contains control
    characters, or a text part that contains the boundary.
    """
    try:
        text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
    except UnicodeDecodeError as exc:
        raise InvalidInputError("payload is not UTF-8 text", field="payload") from exc
    _clean_payload(text, "payload")
    numbered = [
        (attachment.content_id or _attachment_content_id(routing, index), attachment)
        for index, attachment in enumerate(attachments, start=1)
    ]
    for content_id, attachment in numbered:
        if isinstance(attachment.content, str):
            _clean_payload(attachment.content, f"attachment {content_id}")
    references = [(content_id, attachment.description) for content_id, attachment in numbered]
    soap = soap_envelope(routing, references).decode("utf-8")
    parts = [
        _text_part(soap, EBXML_HEADER_CONTENT_ID),
        _text_part(text, routing.payload_content_id),
        *(_attachment_part(attachment, content_id) for content_id, attachment in numbered),
    ]
    delimiter = f"--{routing.boundary}"
    for part in parts:
        if part.get_content_maintype() == "text" and delimiter in part.get_content():
            raise InvalidInputError(
                f"a part of the message contains the MIME boundary {routing.boundary!r}",
                field="payload",
            )
    root = EmailMessage(policy=_POLICY)
    root["Content-Type"] = routing.content_type
    root.set_payload(list(parts))
    buffer = BytesIO()
    BytesGenerator(buffer, policy=_POLICY).flatten(root)
    # The generator writes the root's headers first; they travel as HTTP headers instead.
    _, _, body = buffer.getvalue().partition(b"\r\n\r\n")
    return routing.http_headers, body


def _clean_payload(text: str, field: str) -> None:
    # Tabs and line ends are fine in a document; other control characters are not legal XML 1.0
    # and most are a sign of binary data sent as text.
    if re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f]", text):
        raise InvalidInputError(f"{field} contains control characters", field=field)
