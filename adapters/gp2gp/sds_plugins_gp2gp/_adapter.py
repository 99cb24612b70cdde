"""The ``gp2gp`` adapter: one GP2GP message (request, extract, fragment, acknowledgement) routed
through SDS to Spine's reliable intermediary, as part of one conversation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BeforeValidator
from sds_plugins import (
    ENVELOPE_TTL,
    Adapter,
    AdapterOptions,
    Asid,
    HttpRequestSpec,
    InvalidInputError,
    Lookup,
    Party,
    PartyKey,
    PatientRegistration,
    Resolution,
    RouteRequest,
    RoutingEnvelope,
    normalise_asid,
    normalise_party_key,
)
from sds_plugins.ebxml import ebxml_routing

from ._ids import check_uuid
from ._settings import Gp2gpSettings

__all__ = [
    "ACKNOWLEDGEMENT",
    "EHR_EXTRACT",
    "EHR_REQUEST",
    "FRAGMENT",
    "GP2GP_INTERACTIONS",
    "GP2GP_SERVICE",
    "Gp2gpAdapter",
    "Gp2gpOptions",
]

GP2GP_SERVICE = "urn:nhs:names:services:gp2gp"
#: The EHR request: the new practice asks the previous practice for the record.
EHR_REQUEST = f"{GP2GP_SERVICE}:RCMR_IN010000UK05"
#: The EHR extract: the previous practice sends the record back.
EHR_EXTRACT = f"{GP2GP_SERVICE}:RCMR_IN030000UK06"
#: Large-message fragments (and the requester's "continue"): COPC_IN000001UK01.
FRAGMENT = f"{GP2GP_SERVICE}:COPC_IN000001UK01"
#: Application acknowledgements, either way.
ACKNOWLEDGEMENT = f"{GP2GP_SERVICE}:MCCI_IN010000UK13"
#: The conversation's interactions, each forward-reliable: on SDS's forward-reliable list (SDS
#: answers with Spine's reliable intermediary) and listed ``"forward-reliable"`` by NHS's MHS
#: adaptor (NHSDigital/integration-adaptor-mhs, mhs/common/data/interactions/interactions.json).
GP2GP_INTERACTIONS: Mapping[str, str] = {
    EHR_REQUEST: "EHR request (new practice → previous practice)",
    EHR_EXTRACT: "EHR extract (previous practice → new practice)",
    FRAGMENT: "large-message fragment, or the requester's continue",
    ACKNOWLEDGEMENT: "application acknowledgement (either way)",
}
_ACTIONS = {interaction.rpartition(":")[2]: interaction for interaction in GP2GP_INTERACTIONS}


def _uuid_option(field: str) -> BeforeValidator:
    return BeforeValidator(lambda value: check_uuid(value, field))


#: A conversation id: a UUID (any case given; sent upper case), anything else refused.
ConversationId = Annotated[str, _uuid_option("conversation_id")]
#: An ebXML message id: the same rule.
MessageId = Annotated[str, _uuid_option("message_id")]


class Gp2gpOptions(AdapterOptions):
    """A ``gp2gp`` route's options (the sender's also from ``SDS_GP2GP_*`` settings)."""

    #: Which recipient MHS, when SDS lists several for the practice (a change of supplier).
    party_key: PartyKey | None = None
    #: The sender's MHS party key and ASID (default: SDS_GP2GP_FROM_PARTY_KEY, _FROM_ASID).
    from_party_key: PartyKey | None = None
    from_asid: Asid | None = None
    #: The transfer's ConversationId, carried by every message of it. Default: the route's
    #: correlation id, which must then be a UUID (a fresh one when the caller gives none).
    conversation_id: ConversationId | None = None
    #: This message's ebXML MessageId (a fresh UUID by default); set when another message
    #: references it before it is sent, as an extract's manifest references its fragments.
    message_id: MessageId | None = None


class Gp2gpAdapter(Adapter):
    """A GP2GP message to a practice, as Spine ebXML routing, within one conversation.

    One round trip: ``/Endpoint`` and ``/Device`` for (practice, interaction), joined on party
    key; the address SDS gives is Spine's reliable intermediary (forward-reliable), while party
    key and CPA id stay the practice's. The recipient's ASID is required (the HL7 wrapper's
    ``communicationFunctionRcv``). Options: see :class:`Gp2gpOptions`.
    """

    name = "gp2gp"
    description = (
        "GP2GP record transfer over Spine ebXML (request, extract, fragments, acks): "
        "forward-reliable via Spine's intermediary, one ConversationId"
    )
    options_model = Gp2gpOptions
    options_help = "see the gp2gp adapter's README"
    #: No example on the sandbox's default data (its GP2GP records have no matching accredited
    #: system); ``sds-plugins demo`` shows a whole transfer through ``sds_register_demos``.
    example = None

    def __init__(self, settings: Gp2gpSettings | None = None) -> None:
        self.settings = settings or Gp2gpSettings()

    # -- input ----------------------------------------------------------------------------------

    def normalise_interaction(self, interaction: str) -> str:
        # The bare HL7 id (RCMR_IN010000UK05) is taken for its GP2GP interaction.
        text = interaction.strip() if isinstance(interaction, str) else interaction
        if isinstance(text, str) and text in _ACTIONS:
            return _ACTIONS[text]
        value = super().normalise_interaction(interaction)
        if value not in GP2GP_INTERACTIONS:
            known = ", ".join(action for action in _ACTIONS)
            raise InvalidInputError(
                f"the gp2gp adapter routes the GP2GP conversation's interactions "
                f"({GP2GP_SERVICE}:<id>, id one of {known}), not {value}",
                field="interaction",
            )
        return value

    def _sender(self, request: RouteRequest) -> tuple[str, str]:
        options: Gp2gpOptions = request.options
        party_key = options.from_party_key or self.settings.from_party_key
        asid = options.from_asid or self.settings.from_asid
        if party_key is None:
            raise InvalidInputError(
                "from_party_key is required (the sending MHS's party key): pass the option or "
                "set SDS_GP2GP_FROM_PARTY_KEY",
                field="from_party_key",
            )
        if asid is None:
            raise InvalidInputError(
                "from_asid is required (the sending system's ASID): pass the option or set "
                "SDS_GP2GP_FROM_ASID",
                field="from_asid",
            )
        # Options were checked by the model; settings are checked here.
        return normalise_party_key(party_key, "from_party_key"), normalise_asid(asid, "from_asid")

    @staticmethod
    def conversation_id(request: RouteRequest) -> str:
        """The route's ConversationId: the ``conversation_id`` option, else the correlation id,
        which must then be a UUID (refused otherwise: GP2GP's ConversationId is never derived)."""
        options: Gp2gpOptions = request.options
        if options.conversation_id is not None:
            return options.conversation_id
        # Without either, the engine made a fresh UUID: this message starts a conversation.
        try:
            return check_uuid(request.correlation_id, "correlation_id")
        except InvalidInputError:
            raise InvalidInputError(
                "conversation_id: a GP2GP message needs its transfer's ConversationId, a UUID; "
                "the correlation id given is not one, so pass conversation_id=<UUID> (or a UUID "
                "correlation id)",
                field="conversation_id",
            ) from None

    def check_patient(self, request: RouteRequest, patient: PatientRegistration) -> None:
        # PDS names the practice the patient is registered with now: the new practice, once
        # the registration that starts a GP2GP transfer is made. The EHR request goes the
        # other way, to the previous practice, which PDS does not give.
        if request.interaction == EHR_REQUEST:
            raise InvalidInputError(
                "the EHR request (RCMR_IN010000UK05) goes to the patient's previous practice, "
                "and PDS gives the current registration only: route it with org=<previous "
                "practice's ODS code>",
                field="patient",
            )

    # -- plan and build -------------------------------------------------------------------------

    def plan(self, request: RouteRequest) -> Mapping[str, Lookup]:
        # Bad input costs no directory request. (The correlation id is checked in build: the
        # engine plans once per organisation, interaction and options, with an id of its own.)
        self._sender(request)
        return {
            "endpoints": Lookup.endpoints(org=request.org, interaction=request.interaction),
            "devices": Lookup.devices(org=request.org, interaction=request.interaction),
        }

    def build(self, request: RouteRequest, resolved: Resolution) -> RoutingEnvelope:
        options: Gp2gpOptions = request.options
        from_party_key, from_asid = self._sender(request)
        conversation_id = self.conversation_id(request)
        # The endpoint joined with the accredited system that has its party key, chosen by the
        # selection policy; the HL7 wrapper needs the recipient's ASID, so it is required.
        chosen = resolved.recipient()
        endpoint = chosen.endpoint
        assert endpoint is not None  # recipient() refuses a candidate without one
        extra: dict[str, Any] = {}
        if options.message_id is not None:
            extra["message_id"] = options.message_id
        routing = ebxml_routing(
            endpoint,
            interaction=request.interaction,
            from_party_key=from_party_key,
            from_asid=from_asid,
            to_asid=chosen.asid,
            correlation_id=conversation_id,
            **extra,
        )
        return RoutingEnvelope(
            adapter=self.name,
            interaction=request.interaction,
            target=Party(
                ods_code=request.org,
                asid=chosen.asid,
                party_key=routing.to_party_key,
                address=routing.url,
                cpa_id=routing.cpa_id,
            ),
            source=Party(asid=from_asid, party_key=from_party_key),
            # Exactly the address SDS gave: Spine's reliable intermediary.
            request=HttpRequestSpec(method="POST", url=routing.url, headers=routing.http_headers),
            tls=self.settings.client_tls(),
            reliability=routing.reliability(),
            expires_at=resolved.now + ENVELOPE_TTL,
            provenance=resolved.provenance(chosen.records),
            extensions={
                "ebxml": routing.model_dump(mode="json"),
                "gp2gp": {
                    "conversation_id": routing.conversation_id,
                    "message_id": routing.message_id,
                },
            },
        )
