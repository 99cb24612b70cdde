"""Spine's messaging patterns: which one an interaction takes, and the reliability it brings.

:func:`pattern_for` reads Spine's forwarding lists (:mod:`sds_plugins._forwarding`) and an SDS
``/Endpoint`` record's reliability settings, as NHS's MHS adaptor does; :func:`envelope_reliability`
turns a pattern and those settings into an :class:`EnvelopeReliability` (the flags of the
pattern, the retry timings of SDS).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict

from .._envelope import EnvelopeReliability
from .._exceptions import InvalidInputError
from .._forwarding import FORWARD_EXPRESS_ACTIONS, FORWARD_RELIABLE_ACTIONS, FORWARDED_SERVICES
from .._models import MessageHandlingEndpoint
from .._validation import normalise_interaction

__all__ = [
    "ACK_ACTOR_NEXT_MSH",
    "ACK_ACTOR_TO_PARTY_MSH",
    "EBXML_PATTERNS",
    "EbxmlPattern",
    "MessagingPattern",
    "envelope_reliability",
    "pattern_for",
    "split_interaction",
]

ACK_ACTOR_TO_PARTY_MSH = "urn:oasis:names:tc:ebxml-msg:actor:toPartyMSH"
ACK_ACTOR_NEXT_MSH = "urn:oasis:names:tc:ebxml-msg:actor:nextMSH"


class MessagingPattern(StrEnum):
    """How a Spine message travels, which decides the ebXML reliability elements it carries.

    The flags are those of NHS's MHS adaptor (``NHSDigital/integration-adaptor-mhs``,
    ``mhs/common/mhs_common/workflow/``), which implements async-express, async-reliable,
    forward-reliable and synchronous; see ``docs/ebxml-patterns.md`` for the evidence per pattern.
    """

    #: Straight to the recipient, no acknowledgement or duplicate elimination, sync reply
    #: (``asynchronous_express.py``).
    ASYNC_EXPRESS = "async-express"
    #: Straight to the recipient, duplicate elimination, ack from the recipient (toPartyMSH),
    #: sync reply (``asynchronous_reliable.py``).
    ASYNC_RELIABLE = "async-reliable"
    #: Through Spine's reliable intermediary: duplicate elimination, ack from the next MSH, no
    #: sync reply (``asynchronous_forward_reliable.py``).
    FORWARD_RELIABLE = "forward-reliable"
    #: Through Spine's express intermediary. No NHS reference implements it (the MHS adaptor
    #: lists its two interactions as "Forward Express" but has no such workflow), so it is only
    #: used when the caller names it; flags from SDS's ExpressIntermediary record.
    FORWARD_EXPRESS = "forward-express"
    #: Synchronous SOAP request/response: not an ebXML message at all (``synchronous.py``).
    SYNCHRONOUS = "synchronous"


def _ebxml_pattern(value: object) -> object:
    if isinstance(value, MessagingPattern) and value is not MessagingPattern.SYNCHRONOUS:
        return value
    try:
        pattern = MessagingPattern(value) if isinstance(value, str) else None
    except ValueError:
        pattern = None
    if pattern is None or pattern is MessagingPattern.SYNCHRONOUS:
        raise InvalidInputError(
            f"pattern: {value!r} is not an ebXML messaging pattern ({', '.join(EBXML_PATTERNS)})",
            field="pattern",
        )
    return pattern


#: The patterns an ebXML message can take (every one but synchronous), by name.
EBXML_PATTERNS = tuple(p.value for p in MessagingPattern if p is not MessagingPattern.SYNCHRONOUS)
#: A caller's choice of messaging pattern, as an option type (``pattern: EbxmlPattern | None``):
#: one of :data:`EBXML_PATTERNS`, refused otherwise with an :class:`InvalidInputError`.
EbxmlPattern = Annotated[MessagingPattern, BeforeValidator(_ebxml_pattern)]


class _Flags(BaseModel):
    model_config = ConfigDict(frozen=True)

    duplicate_elimination: bool
    ack_requested: bool
    ack_actor: str | None
    sync_reply: bool


_PATTERN_FLAGS: Mapping[MessagingPattern, _Flags] = {
    # integration-adaptor-mhs, workflow/asynchronous_express.py: duplicate_elimination=False,
    # ack_requested=False, sync_reply=True.
    MessagingPattern.ASYNC_EXPRESS: _Flags(
        duplicate_elimination=False, ack_requested=False, ack_actor=None, sync_reply=True
    ),
    # workflow/asynchronous_reliable.py: duplicate_elimination=True, ack_requested=True,
    # ack_soap_actor=toPartyMSH, sync_reply=True.
    MessagingPattern.ASYNC_RELIABLE: _Flags(
        duplicate_elimination=True,
        ack_requested=True,
        ack_actor=ACK_ACTOR_TO_PARTY_MSH,
        sync_reply=True,
    ),
    # workflow/asynchronous_forward_reliable.py: duplicate_elimination=True, ack_requested=True,
    # ack_soap_actor=nextMSH, sync_reply=False (the intermediary acknowledges and cannot hand
    # back the recipient's reply on our connection).
    MessagingPattern.FORWARD_RELIABLE: _Flags(
        duplicate_elimination=True,
        ack_requested=True,
        ack_actor=ACK_ACTOR_NEXT_MSH,
        sync_reply=False,
    ),
    # No reference workflow. Only used when a caller names it: Spine's own ExpressIntermediary
    # record in SDS says ackRequested "never", duplicateElimination "never", syncReplyMode
    # "None", so none of the three elements is sent.
    MessagingPattern.FORWARD_EXPRESS: _Flags(
        duplicate_elimination=False, ack_requested=False, ack_actor=None, sync_reply=False
    ),
}
#: The same, as keyword arguments for :class:`EnvelopeReliability` (built on every route).
_FLAG_VALUES = {pattern: flags.model_dump() for pattern, flags in _PATTERN_FLAGS.items()}


def split_interaction(interaction: str) -> tuple[str, str]:
    """An interaction URN's ebXML ``Service`` and ``Action`` (split at its last colon)."""
    service, _, action = interaction.rpartition(":")
    return service, action


def _sds_said(endpoint: MessageHandlingEndpoint | None) -> str:
    reliability = endpoint.reliability if endpoint is not None else None
    if reliability is None:
        return "SDS gives no reliability settings for it"
    values = {
        "ackRequested": reliability.ack_requested,
        "duplicateElimination": reliability.duplicate_elimination,
        "syncReplyMode": reliability.sync_reply_mode,
        "actor": reliability.actor,
    }
    return "SDS says " + ", ".join(f"{name}={value or 'nothing'}" for name, value in values.items())


def _determined(
    interaction: str, endpoint: MessageHandlingEndpoint | None
) -> tuple[MessagingPattern | None, str]:
    """The pattern Spine's lists or SDS's data determine, or ``None`` and why not."""
    service, action = split_interaction(interaction)
    if service.rpartition(":")[2] in FORWARDED_SERVICES:
        if action in FORWARD_RELIABLE_ACTIONS:
            return MessagingPattern.FORWARD_RELIABLE, ""
        if action in FORWARD_EXPRESS_ACTIONS:
            return None, (
                "Spine forwards it through its express intermediary, but no NHS reference "
                "implementation sends forward-express (NHS's MHS adaptor lists it as "
                "'Forward Express' and has no workflow for it)"
            )
    reliability = endpoint.reliability if endpoint is not None else None
    ack = (reliability.ack_requested or "").lower() if reliability else ""
    sync_mode = (reliability.sync_reply_mode or "").lower() if reliability else ""
    actor = reliability.actor if reliability else None
    if ack == "always" and sync_mode == "mshsignalsonly" and actor != ACK_ACTOR_NEXT_MSH:
        return MessagingPattern.ASYNC_RELIABLE, ""
    if ack == "never" and sync_mode == "mshsignalsonly":
        return MessagingPattern.ASYNC_EXPRESS, ""
    if ack == "never" and sync_mode == "none":
        return MessagingPattern.SYNCHRONOUS, ""
    return None, (
        "it is not on Spine's forwarding lists and its reliability settings match none of the "
        "patterns NHS's MHS adaptor implements (async-reliable: ackRequested always with "
        "syncReplyMode MSHSignalsOnly; async-express: never with MSHSignalsOnly; synchronous: "
        "never with None)"
    )


def pattern_for(
    interaction: str,
    endpoint: MessageHandlingEndpoint | None = None,
    *,
    named: MessagingPattern | str | None = None,
) -> MessagingPattern:
    """The messaging pattern of ``interaction``: Spine's forwarding lists, SDS's data, or ``named``.

    Determined patterns, as NHS's MHS adaptor sends them: the forward-reliable list (the
    interactions SDS rewrites to Spine's reliable intermediary) is forward-reliable; otherwise
    the endpoint's ``ackRequested``/``syncReplyMode`` decide: always + MSHSignalsOnly
    async-reliable, never + MSHSignalsOnly async-express, never + None synchronous.

    Anything else (the forward-express list, which no reference implements; ``ackRequested``
    always with ``syncReplyMode`` None outside the forwarding lists; missing settings) is
    refused with an :class:`InvalidInputError` that says what SDS said, unless the caller names
    the pattern (``named``). A named pattern that contradicts a determined one is refused too.
    """
    interaction = normalise_interaction(interaction)
    chosen: MessagingPattern | None = None
    if named is not None:
        try:
            chosen = MessagingPattern(named)
        except ValueError:
            raise InvalidInputError(
                f"pattern: {named!r} is not a messaging pattern "
                f"({', '.join(pattern.value for pattern in MessagingPattern)})",
                field="pattern",
            ) from None
    determined, why = _determined(interaction, endpoint)
    if chosen is None:
        if determined is None:
            raise InvalidInputError(
                f"interaction {interaction}: cannot tell its ebXML messaging pattern: {why}; "
                f"{_sds_said(endpoint)}. Name the pattern explicitly if you know it (pattern="
                + "|".join(p.value for p in _PATTERN_FLAGS)
                + ")",
                field="interaction",
            )
        return determined
    if determined is not None and determined is not chosen:
        raise InvalidInputError(
            f"pattern: {interaction} is {determined.value} (Spine's forwarding lists and SDS's "
            f"reliability settings say so; {_sds_said(endpoint)}), not {chosen.value}",
            field="pattern",
        )
    return chosen


def envelope_reliability(
    pattern: MessagingPattern, endpoint: MessageHandlingEndpoint | None = None
) -> EnvelopeReliability:
    """The delivery settings of one ebXML message: the pattern's flags, SDS's retry timings.

    Retries, retry interval and persist duration come from the endpoint's reliability settings
    (as the MHS adaptor takes them from SDS); duplicate elimination, acknowledgement and sync
    reply from the pattern. Raises :class:`InvalidInputError` for a synchronous interaction.
    """
    flags = _FLAG_VALUES.get(pattern)
    if flags is None:
        raise InvalidInputError(
            f"a {pattern.value} interaction is sent as a plain SOAP request, not as ebXML",
            field="interaction",
        )
    reliability = endpoint.reliability if endpoint is not None else None
    return EnvelopeReliability(
        retries=reliability.retries if reliability else None,
        retry_interval_s=reliability.retry_interval_s if reliability else None,
        persist_duration_s=reliability.persist_duration_s if reliability else None,
        **flags,
    )
