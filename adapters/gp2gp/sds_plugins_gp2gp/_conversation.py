"""One GP2GP transfer as one conversation: the envelopes and messages for each of its steps.

The new practice (where the patient has registered) asks the previous practice for the record;
the previous practice sends it back, in fragments when it is large; each side acknowledges.
:class:`Conversation` knows both practices and the conversation id, so each step is one call
and the caller never names a party again::

    conversation = Conversation(router, new_practice=new, previous_practice=previous)
    request = await conversation.request(ehr_request_hl7)              # new → previous
    extract = await conversation.extract(extract_hl7, attachments=docs)  # previous → new
    go_on = await conversation.continue_transfer(extract)              # new → previous
    fragments = await conversation.fragments(extract)                  # previous → new
    done = await conversation.acknowledge(request)                     # previous → new
    final = await conversation.acknowledge(extract)                    # new → previous

Every message is routed through the ``gp2gp`` adapter (SDS, Spine's reliable intermediary,
the recipient's party key, CPA id, ASID and reliability) and rendered; each carries the same
``eb:ConversationId``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from sds_plugins import (
    InvalidInputError,
    Router,
    RoutingEnvelope,
    normalise_asid,
    normalise_ods_code,
    normalise_party_key,
)
from sds_plugins.ebxml import EbxmlRouting

from ._adapter import ACKNOWLEDGEMENT, EHR_EXTRACT, EHR_REQUEST, FRAGMENT
from ._hl7 import acknowledgement_payload, continue_payload, fragment_payload
from ._ids import check_uuid, new_id
from ._large import CHUNK_CONTENT_TYPE, EhrAttachment, TransferPlan, plan_transfer
from ._mime import (
    ExternalReference,
    InlinePart,
    ReceivedMessage,
    part_content_id,
    read_message,
    render_message,
)
from ._settings import Gp2gpSettings

if TYPE_CHECKING:
    import httpx

__all__ = ["SPINE_MAX_REQUEST_SIZE", "Conversation", "Gp2gpMessage", "Practice", "Role", "Step"]

#: The largest message NHS's MHS adaptor sends to Spine: ``MHS_SPINE_REQUEST_MAX_SIZE``,
#: 4999600, "5 000 000 - 400" for the HTTP headers (NHSDigital/integration-adaptor-mhs,
#: docker-compose.yml and mhs/operating-mhs-adaptor.md; checked after the message is built,
#: mhs/common/mhs_common/workflow/common_asynchronous.py).
SPINE_MAX_REQUEST_SIZE = 4_999_600

#: Who sends: the new practice (where the patient registered) or the previous one.
Role = Literal["new", "previous"]
#: What a message is, in the transfer.
Step = Literal["request", "extract", "continue", "document", "fragment", "acknowledgement"]
_OTHER: Mapping[Role, Role] = {"new": "previous", "previous": "new"}


@dataclass(frozen=True)
class Practice:
    """A practice of the transfer: its ODS code, and when this system sends as it, its MHS
    party key and ASID (else the adapter's ``SDS_GP2GP_FROM_*`` settings are used). A party key
    also chooses the practice's MHS when SDS lists several for it (a change of supplier)."""

    ods: str
    party_key: str | None = None
    asid: str | None = None

    def __post_init__(self) -> None:
        # Frozen: the checked values replace the given ones.
        object.__setattr__(self, "ods", normalise_ods_code(self.ods))
        if self.party_key is not None:
            object.__setattr__(self, "party_key", normalise_party_key(self.party_key))
        if self.asid is not None:
            object.__setattr__(self, "asid", normalise_asid(self.asid))


@dataclass(frozen=True)
class Gp2gpMessage:
    """One routed and rendered message of the transfer: POST :attr:`body` with :attr:`headers`
    to the envelope's address (``build_request()``). Its content stays out of its repr."""

    step: Step
    sender: Role
    message_id: str
    conversation_id: str
    envelope: RoutingEnvelope = field(repr=False)
    routing: EbxmlRouting = field(repr=False)
    headers: dict[str, str] = field(repr=False)
    body: bytes = field(repr=False)
    payload: str = field(repr=False)
    #: For an acknowledgement or a continue: the message it acknowledges.
    acknowledges: str | None = None
    #: For the extract: what follows it (documents and fragments), see :class:`TransferPlan`.
    plan: TransferPlan | None = field(default=None, repr=False)

    @property
    def recipient(self) -> Role:
        return _OTHER[self.sender]

    @property
    def interaction(self) -> str:
        return self.routing.interaction

    @property
    def size(self) -> int:
        """The body's size in bytes (what Spine's request limit is about)."""
        return len(self.body)

    def build_request(self) -> httpx.Request:
        """The HTTP request to send: the envelope's address and headers, this body."""
        return self.envelope.build_request(self.body)

    def read(self) -> ReceivedMessage:
        """This message as its recipient reads it (the standard MIME and XML parsers)."""
        return read_message(self.headers, self.body)


def _practice(value: Practice | str) -> Practice:
    return value if isinstance(value, Practice) else Practice(value)


class Conversation:
    """The messages of one GP2GP transfer between ``new_practice`` and ``previous_practice``.

    ``conversation_id`` (a UUID; any other value is refused with :class:`InvalidInputError`)
    is the transfer's: given, when a system continues a transfer another started, or new.
    ``settings`` gives the large-message thresholds (default ``SDS_GP2GP_*``, NHS's 4.5 MB);
    ``options`` are added to every route. Each step routes through ``router`` (which has the
    ``gp2gp`` adapter, under the name ``adapter``) and returns a :class:`Gp2gpMessage`.
    """

    def __init__(
        self,
        router: Router,
        *,
        new_practice: Practice | str,
        previous_practice: Practice | str,
        conversation_id: str | None = None,
        settings: Gp2gpSettings | None = None,
        adapter: str = "gp2gp",
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.router = router
        self.practices: dict[Role, Practice] = {
            "new": _practice(new_practice),
            "previous": _practice(previous_practice),
        }
        if self.practices["new"].ods == self.practices["previous"].ods:
            raise InvalidInputError(
                "the new and the previous practice are the same: there is nothing to transfer",
                field="previous_practice",
            )
        self.conversation_id = (
            check_uuid(conversation_id, "conversation_id") if conversation_id else new_id()
        )
        self.settings = settings or Gp2gpSettings()
        self.adapter = adapter
        self.options = dict(options or {})

    @classmethod
    async def for_patient(
        cls,
        router: Router,
        patient: str,
        *,
        previous_practice: Practice | str,
        party_key: str | None = None,
        asid: str | None = None,
        **kwargs: Any,
    ) -> Conversation:
        """The transfer of ``patient``'s record to the practice PDS says they are registered
        with now (the new practice; ``party_key``/``asid`` its own MHS, when this system sends
        as it) from ``previous_practice``, which the caller must name: PDS gives the current
        registration only. The NHS number goes to PDS and is not kept."""
        registration = await router.patient(patient)
        if registration.practice is None:  # pragma: no cover - router.patient refuses it first
            raise InvalidInputError("PDS gives no practice for the patient", field="patient")
        new = Practice(registration.practice, party_key, asid)
        return cls(router, new_practice=new, previous_practice=previous_practice, **kwargs)

    def __repr__(self) -> str:
        return (
            f"Conversation({self.conversation_id}, new={self.practices['new'].ods}, "
            f"previous={self.practices['previous'].ods})"
        )

    # -- routing and rendering ------------------------------------------------------------------

    async def _route(
        self, sender: Role, interaction: str, message_id: str
    ) -> tuple[RoutingEnvelope, EbxmlRouting]:
        me, them = self.practices[sender], self.practices[_OTHER[sender]]
        options: dict[str, Any] = {
            **self.options,
            "conversation_id": self.conversation_id,
            "message_id": message_id,
        }
        for name, value in (
            ("from_party_key", me.party_key),
            ("from_asid", me.asid),
            ("party_key", them.party_key),
        ):
            if value is not None:
                options[name] = value
        # The conversation id is every route's correlation id too, as NHS's GP2GP adaptor
        # sends it to its MHS (Correlation-Id): one id ties the transfer's logs together.
        envelope = await self.router.route(
            self.adapter,
            org=them.ods,
            interaction=interaction,
            correlation_id=self.conversation_id,
            **options,
        )
        return envelope, EbxmlRouting.model_validate(envelope.extensions["ebxml"])

    def _message(
        self,
        step: Step,
        sender: Role,
        envelope: RoutingEnvelope,
        routing: EbxmlRouting,
        payload: str,
        parts: tuple[InlinePart, ...] = (),
        references: tuple[ExternalReference, ...] = (),
        **extra: Any,
    ) -> Gp2gpMessage:
        headers, body = render_message(routing, payload, parts, references)
        if len(body) > SPINE_MAX_REQUEST_SIZE:
            raise InvalidInputError(
                f"the {step} message is {len(body):,} bytes, over Spine's request limit of "
                f"{SPINE_MAX_REQUEST_SIZE:,} (lower the large-message thresholds)",
                field="payload",
            )
        return Gp2gpMessage(
            step=step,
            sender=sender,
            message_id=routing.message_id,
            conversation_id=routing.conversation_id,
            envelope=envelope,
            routing=routing,
            headers=headers,
            body=body,
            payload=payload,
            **extra,
        )

    # -- the steps ------------------------------------------------------------------------------

    async def request(self, payload: str | bytes, *, message_id: str | None = None) -> Gp2gpMessage:
        """The EHR request (``RCMR_IN010000UK05``, your HL7), new practice → previous practice."""
        message_id = check_uuid(message_id, "message_id") if message_id else new_id()
        envelope, routing = await self._route("new", EHR_REQUEST, message_id)
        return self._message("request", "new", envelope, routing, _hl7_text(payload))

    def plan_extract(
        self,
        extract: bytes | str,
        *,
        attachments: Iterable[EhrAttachment] = (),
        skeleton: str | None = None,
    ) -> TransferPlan:
        """Plan the extract and what follows it, with this conversation's thresholds (nothing
        is routed): whether it is large, its documents, their slices, their message ids."""
        return plan_transfer(
            extract,
            attachments=attachments,
            skeleton=skeleton,
            extract_threshold=self.settings.large_extract_threshold,
            attachment_threshold=self.settings.large_attachment_threshold,
        )

    async def extract(
        self,
        extract: bytes | str | TransferPlan,
        *,
        attachments: Iterable[EhrAttachment] = (),
        skeleton: str | None = None,
    ) -> Gp2gpMessage:
        """The EHR extract (``RCMR_IN030000UK06``), previous practice → new practice: the
        extract (or, when large, its skeleton), its manifest referencing by ``mid:`` each
        document sent after it. Its :attr:`~Gp2gpMessage.plan` is what :meth:`fragments` sends."""
        plan = (
            extract
            if isinstance(extract, TransferPlan)
            else self.plan_extract(extract, attachments=attachments, skeleton=skeleton)
        )
        envelope, routing = await self._route("previous", EHR_EXTRACT, plan.extract_message_id)
        references = tuple(
            ExternalReference(
                message_id=document.message_id,
                description=document.description(),
                document_id=document.document_id,
            )
            for document in plan.documents
        )
        return self._message(
            "extract", "previous", envelope, routing, plan.core_payload, (), references, plan=plan
        )

    async def continue_transfer(self, extract: Gp2gpMessage | str) -> Gp2gpMessage:
        """The requester's continue (``COPC_IN000001UK01``), new practice → previous practice,
        after an extract that has documents to follow: the sender waits for it."""
        extract_id = _message_id(extract, "extract")
        envelope, routing = await self._route("new", FRAGMENT, new_id())
        payload = continue_payload(
            message_id=routing.message_id,
            extract_message_id=extract_id,
            from_asid=routing.from_asid,
            to_asid=routing.to_asid,
            from_ods=self.practices["new"].ods,
            to_ods=self.practices["previous"].ods,
            created=routing.timestamp,
        )
        return self._message("continue", "new", envelope, routing, payload, acknowledges=extract_id)

    async def fragments(self, extract: Gp2gpMessage | TransferPlan) -> list[Gp2gpMessage]:
        """Every COPC message after the extract, previous practice → new practice, in the order
        to send them: each document's message, then its slices' messages."""
        plan = extract.plan if isinstance(extract, Gp2gpMessage) else extract
        if plan is None:
            raise InvalidInputError("that message is not an extract", field="extract")
        sent: list[Gp2gpMessage] = []
        for document in plan.documents:
            envelope, routing = await self._route("previous", FRAGMENT, document.message_id)
            payload = self._fragment_payload(routing, document.filename)
            if document.chunks:
                references = tuple(
                    ExternalReference(message_id=chunk.message_id, description=chunk.description())
                    for chunk in document.chunks
                )
                sent.append(
                    self._message(
                        "document", "previous", envelope, routing, payload, (), references
                    )
                )
            else:
                part = InlinePart(
                    content=document.content,
                    content_type=document.content_type,
                    description=document.description(),
                    content_id=part_content_id(routing, 1),
                    document_id=document.document_id,
                )
                sent.append(
                    self._message("document", "previous", envelope, routing, payload, (part,))
                )
            for chunk in document.chunks:
                envelope, routing = await self._route("previous", FRAGMENT, chunk.message_id)
                part = InlinePart(
                    content=chunk.content,
                    content_type=CHUNK_CONTENT_TYPE,
                    description=chunk.description(),
                    content_id=part_content_id(routing, 1),
                )
                payload = self._fragment_payload(routing, chunk.filename)
                sent.append(
                    self._message("fragment", "previous", envelope, routing, payload, (part,))
                )
        return sent

    def _fragment_payload(self, routing: EbxmlRouting, filename: str) -> str:
        return fragment_payload(
            message_id=routing.message_id,
            filename=filename,
            from_asid=routing.from_asid,
            to_asid=routing.to_asid,
            from_ods=self.practices["previous"].ods,
            to_ods=self.practices["new"].ods,
            created=routing.timestamp,
        )

    async def acknowledge(
        self,
        message: Gp2gpMessage | str,
        *,
        to: Role | None = None,
        type_code: str = "AA",
        reason_code: str | None = None,
        reason: str | None = None,
    ) -> Gp2gpMessage:
        """An application acknowledgement (``MCCI_IN010000UK13``) of ``message``, sent back to
        its sender: the previous practice acknowledges the request once the extract (and its
        documents) went, the new practice acknowledges the extract once it has the record.
        For a message id alone, say whom it goes ``to``. ``type_code`` ``AE``/``AR`` with a
        GP2GP ``reason_code`` is a negative acknowledgement."""
        if isinstance(message, Gp2gpMessage):
            recipient: Role = message.sender
            if to is not None and to != recipient:
                raise InvalidInputError(
                    f"an acknowledgement of the {message.step} goes back to its sender, the "
                    f"{recipient} practice",
                    field="to",
                )
        elif to is None:
            raise InvalidInputError(
                "to: say which practice the acknowledgement goes to (new or previous)", field="to"
            )
        else:
            recipient = to
        acked = _message_id(message, "message")
        sender = _OTHER[recipient]
        envelope, routing = await self._route(sender, ACKNOWLEDGEMENT, new_id())
        payload = acknowledgement_payload(
            message_id=routing.message_id,
            acknowledged_message_id=acked,
            from_asid=routing.from_asid,
            to_asid=routing.to_asid,
            type_code=type_code,
            reason_code=reason_code,
            reason=reason,
            created=routing.timestamp,
        )
        return self._message(
            "acknowledgement", sender, envelope, routing, payload, acknowledges=acked
        )


def _message_id(message: Gp2gpMessage | str, field: str) -> str:
    if isinstance(message, Gp2gpMessage):
        return message.message_id
    return check_uuid(message, field)


def _hl7_text(payload: str | bytes) -> str:
    if isinstance(payload, str):
        return payload
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError("payload is not UTF-8 text (HL7 XML)", field="payload") from None
