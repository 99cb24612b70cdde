"""sds-plugins-example-ebxml: route a Spine ebXML message to the recipient's MHS.

A whole third-party adapter in one module. ``plan`` names the directory lookups it needs; the
engine runs them concurrently, through its cache; ``build`` turns the answers into an envelope.
Neither does I/O. The ``sds_plugins`` entry point in ``pyproject.toml`` points at this module,
and its ``sds_register_adapters`` hook hands the adapter to each router that starts::

    envelope = await router.route(
        "example-ebxml", org="YES", interaction="urn:nhs:names:services:psis:REPC_IN150016UK05"
    )
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from sds_plugins.adapters import (
    ENVELOPE_TTL,
    Adapter,
    AdapterOptions,
    Asid,
    EnvelopeReliability,
    HttpRequestSpec,
    Lookup,
    Party,
    PartyKey,
    Recipient,
    Resolution,
    RouteRequest,
    RoutingEnvelope,
    hookimpl,
)
from sds_plugins.ebxml import EbxmlPattern, MessagingPattern, envelope_reliability, pattern_for

__all__ = ["EbxmlExampleAdapter", "ExampleOptions", "sds_register_adapters"]


class ExampleOptions(AdapterOptions):
    """The options: checked once, by the engine, before ``plan`` (bad input costs no lookup)."""

    #: Which MHS, when the organisation has several (the selection policy reads it).
    party_key: PartyKey | None = None
    #: The sender's own ASID, for the source party.
    from_asid: Asid | None = None
    #: The messaging pattern, where Spine's lists and SDS's data leave it undetermined.
    pattern: EbxmlPattern | None = None


class EbxmlExampleAdapter(Adapter):
    """An ebXML message to the organisation's MHS: address, party key, CPA id, ASID, reliability.

    Options (:class:`ExampleOptions`): ``party_key``, ``from_asid`` and ``pattern``.
    """

    name = "example-ebxml"
    description = "Example: a Spine ebXML message to the recipient organisation's MHS"
    options_model = ExampleOptions
    options_help = "see ExampleOptions"
    #: Shown by ``sds-plugins demo`` (Spine's own PSIS system in the sandbox's reference data).
    example = {
        "org": "YES",
        "interaction": "urn:nhs:names:services:psis:REPC_IN150016UK05",
        "from_asid": "200000000359",
    }

    def plan(self, request: RouteRequest) -> Mapping[str, Lookup]:
        return {
            "endpoints": Lookup.endpoints(org=request.org, interaction=request.interaction),
            "devices": Lookup.devices(org=request.org, interaction=request.interaction),
        }

    def build(self, request: RouteRequest, resolved: Resolution) -> RoutingEnvelope:
        options: ExampleOptions = request.options
        # Which MHS, its party and the messaging pattern follow from the directory's records
        # alone: worked out once while the cache hands back the same records (derive).
        recipient, target, pattern, reliability = resolved.derive(
            "recipient",
            (resolved.records("endpoints"), resolved.records("devices")),
            lambda timeless: self._recipient(timeless, resolved),
        )
        service, _, action = request.interaction.rpartition(":")
        return RoutingEnvelope(
            adapter=self.name,
            interaction=request.interaction,
            target=target,
            source=Party(asid=options.from_asid),
            request=HttpRequestSpec(
                method="POST",
                url=recipient.address,  # exactly as SDS gave it: Spine refuses a rewritten one
                headers={
                    "SOAPAction": f"{service}/{action}",
                    "X-Correlation-ID": request.correlation_id,
                },
            ),
            reliability=reliability,
            expires_at=resolved.now + ENVELOPE_TTL,
            provenance=resolved.provenance(recipient.records),
            extensions={"service": service, "action": action, "pattern": pattern.value},
        )

    def _recipient(
        self, request: RouteRequest, resolved: Resolution
    ) -> tuple[Recipient, Party, MessagingPattern, EnvelopeReliability]:
        options: ExampleOptions = request.options
        # The endpoint joined with the device that has its party key (never "the first
        # device"), chosen by the selection policy, with an address and an ASID.
        recipient = resolved.recipient()
        endpoint = recipient.endpoint
        assert endpoint is not None
        # The pattern NHS's MHS adaptor would use (the core's pattern_for, shared with the ers
        # adapter): refused when SDS leaves it undetermined, unless the caller named one.
        pattern = pattern_for(request.interaction, endpoint, named=options.pattern)
        target = Party(
            ods_code=request.org,
            asid=recipient.asid,
            party_key=recipient.party_key,
            address=recipient.address,
            cpa_id=endpoint.cpa_id,
        )
        return recipient, target, pattern, envelope_reliability(pattern, endpoint)


@hookimpl
def sds_register_adapters(register: Callable[[Adapter], None]) -> None:
    """Give each starting router this module's adapter."""
    register(EbxmlExampleAdapter())
