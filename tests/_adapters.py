"""What engine tests share: a minimal adapter (the GP Connect lookup pattern without GP
Connect's rules) and an observer of the engine's events."""

from __future__ import annotations

from collections.abc import Generator, Mapping
from datetime import timedelta

from sds_plugins import (
    Adapter,
    HttpRequestSpec,
    Lookup,
    LookupEvent,
    NotFoundError,
    Party,
    Resolution,
    RouteEvent,
    RouteRequest,
    RoutingEnvelope,
    hookimpl,
    join_on_party_key,
)


class JoinAdapter(Adapter):
    """Endpoint (org, interaction) joined on party key with Device (org, interaction)."""

    name = "join"
    description = "test adapter: endpoint + device joined on party key"
    options = frozenset({"party_key"})

    def __init__(self, scope: str | None = "") -> None:
        self.scope = scope

    def cache_scope(self, request: RouteRequest) -> str | None:
        if self.scope == "encounter":
            return f"encounter:{request.encounter}" if request.encounter else None
        return self.scope

    def plan(self, request: RouteRequest) -> Mapping[str, Lookup]:
        return {
            "endpoints": Lookup.endpoints(org=request.org, interaction=request.interaction),
            "devices": Lookup.devices(org=request.org, interaction=request.interaction),
        }

    def build(self, request: RouteRequest, resolved: Resolution) -> RoutingEnvelope:
        candidates = join_on_party_key(resolved.records("endpoints"), resolved.records("devices"))
        chosen = resolved.select(candidates, role="target")
        if not chosen.address:
            raise NotFoundError("no usable endpoint", correlation_id=request.correlation_id)
        return RoutingEnvelope(
            adapter=self.name,
            interaction=request.interaction,
            target=Party(
                ods_code=request.org,
                asid=chosen.asid,
                party_key=chosen.party_key,
                address=chosen.address,
            ),
            request=HttpRequestSpec(
                method="POST",
                url=chosen.address,
                headers={"X-Correlation-ID": request.correlation_id},
            ),
            expires_at=resolved.now + timedelta(minutes=5),
            provenance=resolved.provenance(chosen.records),
        )


class JoinPlugin:
    """Registers a :class:`JoinAdapter`."""

    def __init__(self, scope: str | None = "") -> None:
        self.adapter = JoinAdapter(scope)

    @hookimpl
    def sds_register_adapters(self, register: object) -> None:
        register(self.adapter)  # type: ignore[operator]


class Recorder:
    """Collects every event the engine emits."""

    def __init__(self) -> None:
        self.lookups: list[LookupEvent] = []
        self.routes: list[RouteEvent] = []

    @hookimpl
    def sds_lookup_completed(self, event: LookupEvent) -> None:
        self.lookups.append(event)

    @hookimpl
    def sds_route_completed(self, event: RouteEvent) -> None:
        self.routes.append(event)


class BearerToken:
    """Adds ``Authorization: <secret>`` to every envelope, as an auth-bearing adapter would."""

    def __init__(self, secret: str) -> None:
        self.secret = secret

    @hookimpl(wrapper=True)
    def sds_finalize_envelope(
        self, envelope: RoutingEnvelope, request: RouteRequest
    ) -> Generator[None, RoutingEnvelope, RoutingEnvelope]:
        final: RoutingEnvelope = yield
        return final.with_headers(Authorization=self.secret)
