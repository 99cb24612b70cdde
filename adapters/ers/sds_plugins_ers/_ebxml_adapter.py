"""The ``ers`` adapter: e-RS HL7 V3 messages (service ``ebs``) routed through Spine ebXML."""

from __future__ import annotations

import re
from collections.abc import Mapping

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
    Resolution,
    RouteRequest,
    RoutingEnvelope,
    normalise_asid,
    normalise_party_key,
)
from sds_plugins.ebxml import EbxmlPattern, MessagingPattern, ebxml_routing

from ._settings import ErsSettings

__all__ = ["EBS_INTERACTIONS", "EBS_SERVICE", "ENVELOPE_TTL", "ErsEbxmlAdapter"]

EBS_SERVICE = "urn:nhs:names:services:ebs"
#: The ebs interactions this adapter documents, with their messaging pattern: Spine's
#: forwarding lists, and NHS's MHS adaptor (``mhs/common/data/interactions/interactions.json``).
#: Forward-express ones are sent only when the caller names the pattern (``pattern`` option):
#: no NHS reference implements forward-express. Other well-formed ebs actions are accepted with
#: the pattern SDS's reliability data determines (see the README), or the one named.
EBS_INTERACTIONS: Mapping[str, MessagingPattern] = {
    f"{EBS_SERVICE}:PRSC_IN040000UK08": MessagingPattern.FORWARD_RELIABLE,
    f"{EBS_SERVICE}:PRSC_IN080000UK07": MessagingPattern.FORWARD_RELIABLE,
    f"{EBS_SERVICE}:PRPA_IN010000UK07": MessagingPattern.FORWARD_RELIABLE,
    f"{EBS_SERVICE}:PRSC_IN080000UK03": MessagingPattern.FORWARD_EXPRESS,
    f"{EBS_SERVICE}:PRSC_IN040000UK03": MessagingPattern.FORWARD_EXPRESS,
}
_HL7_ACTION = re.compile(r"^[A-Z]{4}_IN[0-9]{6}[A-Z]{2}[0-9]{2}$")


class ErsEbxmlOptions(AdapterOptions):
    """An ``ers`` route's options (each also from ``ERS_*`` settings where it says)."""

    #: Which recipient MHS, when SDS lists several.
    party_key: PartyKey | None = None
    #: The sender's MHS party key and ASID (default: ERS_FROM_PARTY_KEY, ERS_FROM_ASID).
    from_party_key: PartyKey | None = None
    from_asid: Asid | None = None
    #: The messaging pattern, where Spine's lists and SDS's data leave it undetermined.
    pattern: EbxmlPattern | None = None


class ErsEbxmlAdapter(Adapter):
    """An e-RS ``ebs`` HL7 V3 message to the recipient organisation, as Spine ebXML routing.

    One round trip: ``/Endpoint`` and ``/Device`` for (org, interaction), joined on party key.
    Options: ``from_party_key`` and ``from_asid`` (the sender; default from configuration),
    ``party_key`` (choose the recipient MHS among several), ``pattern`` (name the messaging
    pattern where Spine's lists and SDS's data leave it undetermined, e.g. forward-express).
    """

    name = "ers"
    description = "e-RS HL7 V3 (ebs) over Spine ebXML: address, party key, CPA id, ASID, flags"
    options_model = ErsEbxmlOptions
    options_help = "see the e-RS adapters' README"
    example = {
        "org": "X26",
        "interaction": f"{EBS_SERVICE}:PRSC_IN080000UK03",
        "from_party_key": "R69-0000001",
        "from_asid": "200000000001",
        # Forward-express: no NHS reference implements it, so it is sent only when named.
        "pattern": "forward-express",
    }

    def __init__(self, settings: ErsSettings | None = None) -> None:
        self.settings = settings or ErsSettings()

    def normalise_interaction(self, interaction: str) -> str:
        value = super().normalise_interaction(interaction)
        service, _, action = value.rpartition(":")
        known = ", ".join(sorted(name.rpartition(":")[2] for name in EBS_INTERACTIONS))
        if service != EBS_SERVICE:
            raise InvalidInputError(
                f"the ers adapter routes e-RS HL7 V3 interactions ({EBS_SERVICE}:<action>, "
                f"e.g. {known}), not {value}",
                field="interaction",
            )
        if not _HL7_ACTION.match(action):
            raise InvalidInputError(
                f"interaction {value}: {action!r} is not an HL7 V3 interaction id "
                f"(known ebs actions: {known})",
                field="interaction",
            )
        return value

    def _sender(self, request: RouteRequest) -> tuple[str, str]:
        options: ErsEbxmlOptions = request.options
        party_key = options.from_party_key or self.settings.from_party_key
        asid = options.from_asid or self.settings.from_asid
        if party_key is None:
            raise InvalidInputError(
                "from_party_key is required (the sender's MHS party key): pass the option "
                "or set ERS_FROM_PARTY_KEY",
                field="from_party_key",
            )
        if asid is None:
            raise InvalidInputError(
                "from_asid is required (the sender's ASID): pass the option or set ERS_FROM_ASID",
                field="from_asid",
            )
        # Settings are checked here, options by the model already.
        return normalise_party_key(party_key, "from_party_key"), normalise_asid(asid, "from_asid")

    @staticmethod
    def _pattern(request: RouteRequest) -> MessagingPattern | None:
        options: ErsEbxmlOptions = request.options
        return options.pattern

    def plan(self, request: RouteRequest) -> Mapping[str, Lookup]:
        self._sender(request)  # bad options cost no directory request
        self._pattern(request)
        return {
            "endpoints": Lookup.endpoints(org=request.org, interaction=request.interaction),
            "devices": Lookup.devices(org=request.org, interaction=request.interaction),
        }

    def build(self, request: RouteRequest, resolved: Resolution) -> RoutingEnvelope:
        from_party_key, from_asid = self._sender(request)
        # The ASID that goes with an address is the one whose party key matches, never "the
        # first device"; the selection policy refuses zero or several candidates.
        chosen = resolved.recipient(need_asid=False)
        endpoint = chosen.endpoint
        assert endpoint is not None  # recipient() refuses a candidate without one
        routing = ebxml_routing(
            endpoint,
            interaction=request.interaction,
            from_party_key=from_party_key,
            from_asid=from_asid,
            # None when SDS lists no accredited system with the MHS's party key for this
            # interaction: the routing (party key, CPA id) does not need it, the HL7 wrapper does.
            to_asid=chosen.asid,
            correlation_id=request.correlation_id,
            pattern=self._pattern(request),
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
            # Exactly the address SDS gave: for forwarded interactions, Spine's intermediary.
            request=HttpRequestSpec(method="POST", url=routing.url, headers=routing.http_headers),
            # Spine's MHS endpoints take TLS with the sender's Spine client certificate.
            tls=self.settings.client_tls(),
            reliability=routing.reliability(),
            expires_at=resolved.now + ENVELOPE_TTL,
            provenance=resolved.provenance(chosen.records),
            extensions={"ebxml": routing.model_dump(mode="json")},
        )
