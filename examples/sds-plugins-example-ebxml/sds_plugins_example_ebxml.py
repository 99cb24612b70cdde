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

import re
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, ClassVar

from sds_plugins import (
    Adapter,
    HttpRequestSpec,
    InvalidInputError,
    Lookup,
    MessageHandlingEndpoint,
    NotFoundError,
    Party,
    Resolution,
    RouteRequest,
    RoutingEnvelope,
    hookimpl,
    join_on_party_key,
)
from sds_plugins.ebxml import MessagingPattern, envelope_reliability, pattern_for

__all__ = ["ENVELOPE_TTL", "EbxmlExampleAdapter", "sds_register_adapters"]

#: How long a sender may use an envelope before resolving the route again: long enough for one
#: send with its retries, short enough that a practice changing supplier is noticed.
ENVELOPE_TTL = timedelta(minutes=5)

_ASID = re.compile(r"[0-9]{12}")


class EbxmlExampleAdapter(Adapter):
    """An ebXML message to the organisation's MHS: address, party key, CPA id, ASID, reliability.

    Options: ``party_key`` (choose among several MHSs; read by the selection policy),
    ``from_asid`` (the sender's own 12-digit ASID, for the source party) and ``pattern`` (the
    messaging pattern, where Spine's lists and SDS's data leave it undetermined).
    """

    name = "example-ebxml"
    description = "Example: a Spine ebXML message to the recipient organisation's MHS"
    options = frozenset({"party_key", "from_asid", "pattern"})
    #: Shown by ``sds-plugins demo`` (Spine's own PSIS system in the sandbox's reference data).
    example: ClassVar[Mapping[str, Any] | None] = {
        "org": "YES",
        "interaction": "urn:nhs:names:services:psis:REPC_IN150016UK05",
        "from_asid": "200000000359",
    }

    def plan(self, request: RouteRequest) -> Mapping[str, Lookup]:
        # Options are checked here, before any lookup, so bad input costs no directory request.
        _from_asid(request)
        _pattern(request)
        return {
            "endpoints": Lookup.endpoints(org=request.org, interaction=request.interaction),
            "devices": Lookup.devices(org=request.org, interaction=request.interaction),
        }

    def build(self, request: RouteRequest, resolved: Resolution) -> RoutingEnvelope:
        # Pair each endpoint with the device that has its party key (never "the first device"),
        # then let the selection policy choose: it refuses zero or several candidates.
        candidates = join_on_party_key(resolved.records("endpoints"), resolved.records("devices"))
        chosen = resolved.select(candidates, role="recipient")
        endpoint = chosen.records[0]  # join_on_party_key puts the endpoint first
        assert isinstance(endpoint, MessageHandlingEndpoint)
        if not chosen.address or not chosen.asid:
            raise NotFoundError(
                f"{request.org}'s MHS for {request.interaction} has no "
                f"{'address' if not chosen.address else 'accredited system (ASID)'}",
                correlation_id=request.correlation_id,
            )
        # The pattern NHS's MHS adaptor would use (the core's pattern_for, shared with the ers
        # adapter): refused when SDS leaves it undetermined, unless the caller named one.
        pattern = pattern_for(request.interaction, endpoint, named=_pattern(request))
        service, _, action = request.interaction.rpartition(":")
        return RoutingEnvelope(
            adapter=self.name,
            interaction=request.interaction,
            target=Party(
                ods_code=request.org,
                asid=chosen.asid,
                party_key=chosen.party_key,
                address=chosen.address,
                cpa_id=endpoint.cpa_id,
            ),
            source=Party(asid=_from_asid(request)),
            request=HttpRequestSpec(
                method="POST",
                url=chosen.address,  # exactly as SDS gave it: Spine refuses a rewritten address
                headers={
                    "SOAPAction": f"{service}/{action}",
                    "X-Correlation-ID": request.correlation_id,
                },
            ),
            reliability=envelope_reliability(pattern, endpoint),
            expires_at=resolved.now + ENVELOPE_TTL,
            provenance=resolved.provenance(chosen.records),
            extensions={"service": service, "action": action, "pattern": pattern.value},
        )


def _from_asid(request: RouteRequest) -> str | None:
    value = request.option("from_asid")
    if value is None:
        return None
    # fullmatch, not match with "$": "$" also matches before a trailing newline.
    if not isinstance(value, str) or not _ASID.fullmatch(value):
        raise InvalidInputError(
            f"from_asid: {value!r} is not an ASID (12 digits)", field="from_asid"
        )
    return value


def _pattern(request: RouteRequest) -> MessagingPattern | None:
    value = request.option("pattern")
    if value is None:
        return None
    try:
        return MessagingPattern(value)
    except ValueError:
        raise InvalidInputError(
            f"pattern: {value!r} is not one of {', '.join(p.value for p in MessagingPattern)}",
            field="pattern",
        ) from None


@hookimpl
def sds_register_adapters(register: Callable[[Adapter], None]) -> None:
    """Give each starting router this module's adapter."""
    register(EbxmlExampleAdapter())
