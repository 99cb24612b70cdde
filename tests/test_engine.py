"""The routing engine over real sockets: one round trip, coalescing, outages, caching rules."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Generator, Mapping
from pathlib import Path
from typing import Any

import pytest

from sds_plugins import (
    Adapter,
    AmbiguousError,
    CacheBackend,
    DirectoryUnavailableError,
    EnvelopeVetoedError,
    HttpRequestSpec,
    InvalidInputError,
    Lookup,
    LookupEvent,
    MemoryCache,
    NotFoundError,
    Pacer,
    Party,
    PluginError,
    Resolution,
    RouteEvent,
    Router,
    RouteRequest,
    RoutingEnvelope,
    Settings,
    SyncRouter,
    hookimpl,
)
from sds_plugins.sandbox import Sandbox
from sds_plugins.testing import ManualClock

from ._adapters import JoinPlugin, Recorder
from ._reference import GP2GP, GPC_STRUCTURED, PSIS

DEVICE_PATH = "/spine-directory/FHIR/R4/Device"
ENDPOINT_PATH = "/spine-directory/FHIR/R4/Endpoint"


def _router(sb: Sandbox, *plugins: object, **settings: Any) -> Router:
    settings.setdefault("retry_attempts", 2)
    return Router(Settings(base_url=sb.base_url, **settings), plugins=[JoinPlugin(), *plugins])


def _requests(sb: Sandbox) -> dict[str, int]:
    return dict(sb.stats()["requests"])


async def test_route_builds_an_envelope_from_the_matching_device(sandbox: Sandbox) -> None:
    recorder = Recorder()
    async with _router(sandbox, recorder) as router:
        envelope = await router.route("join", org="yes", interaction=PSIS)
    assert envelope.target.party_key == "YES-0000806"
    assert envelope.target.asid == "928942012545"
    assert (
        envelope.target.address
        == "https://msg.opentest.hscic.gov.uk/reliablemessaging/reliablerequest"
    )
    assert envelope.provenance.cache == "miss"
    assert envelope.provenance.correlation_id == recorder.routes[0].correlation_id
    assert [type(r).__name__ for r in envelope.provenance.records] == [
        "MessageHandlingEndpoint",
        "AccreditedSystem",
    ]
    assert json.loads(envelope.model_dump_json())["target"]["asid"] == "928942012545"


async def test_lookups_of_one_route_run_concurrently(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox(latency_ms=300)
    recorder = Recorder()
    async with _router(sb, recorder) as router:
        await router.route("join", org="YES", interaction=PSIS)
    assert len(recorder.lookups) == 2
    intervals = [(e.time.timestamp() - e.duration_s, e.time.timestamp()) for e in recorder.lookups]
    # Both requests were in flight together: each started before the other finished.
    assert max(start for start, _ in intervals) < min(end for _, end in intervals)


async def test_a_thousand_concurrent_cold_routes_make_one_request_per_lookup(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    sb = make_sandbox(latency_ms=100)
    async with _router(sb) as router:
        envelopes = await asyncio.gather(
            *(router.route("join", org="YES", interaction=PSIS) for _ in range(1000))
        )
    assert len({e.target.asid for e in envelopes}) == 1
    assert _requests(sb) == {DEVICE_PATH: 1, ENDPOINT_PATH: 1}


async def test_warm_routes_are_cache_hits(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    async with _router(sb) as router:
        await router.route("join", org="YES", interaction=PSIS)
        again = await router.route("join", org="YES", interaction=PSIS)
    assert again.provenance.cache == "hit"
    assert _requests(sb) == {DEVICE_PATH: 1, ENDPOINT_PATH: 1}


async def test_outage_serves_warm_keys_stale_and_fails_cold_keys_fast(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    sb = make_sandbox()
    recorder = Recorder()
    async with _router(sb, recorder, cache_ttl_s=0, stale_if_error_s=600) as router:
        await router.route("join", org="YES", interaction=PSIS)
        sb.set_faults(outage=True, error_status=503)
        stale = await router.route("join", org="YES", interaction=PSIS)
        assert stale.provenance.cache == "stale"
        assert stale.target.asid == "928942012545"
        before = sb.stats()["statuses"]
        with pytest.raises(DirectoryUnavailableError) as info:
            await router.route("join", org="B82617", interaction=GPC_STRUCTURED)
        assert sb.stats()["statuses"] == before  # the cold key sent nothing
    assert "directory is failing" in str(info.value)
    assert info.value.attempts == 0
    assert recorder.routes[-1].outcome == "error"


async def test_stale_is_bounded(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    async with _router(sb, cache_ttl_s=0, stale_if_error_s=0, breaker_cooldown_s=0) as router:
        await router.route("join", org="YES", interaction=PSIS)
        sb.set_faults(outage=True, error_status=503)
        with pytest.raises(DirectoryUnavailableError):
            await router.route("join", org="YES", interaction=PSIS)


async def test_errors_are_never_cached(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    async with _router(sb, breaker_cooldown_s=0) as router:
        sb.set_faults(outage=True, error_status=503)
        with pytest.raises(DirectoryUnavailableError):
            await router.route("join", org="YES", interaction=PSIS)
        sb.reset()
        envelope = await router.route("join", org="YES", interaction=PSIS)
    assert envelope.provenance.cache == "miss"


async def test_negative_answers_are_cached_briefly(make_sandbox: Callable[..., Sandbox]) -> None:
    sb, clock = make_sandbox(), ManualClock()
    router = Router(
        Settings(base_url=sb.base_url, negative_ttl_s=30, cache_ttl_s=300),
        plugins=[JoinPlugin()],
        clock=clock,
    )
    async with router:
        for _ in range(3):
            with pytest.raises(NotFoundError):
                await router.route("join", org="A99999", interaction=PSIS)
        # Each empty answer was asked twice (the second time past the API gateway's cache,
        # which may hold an LDAP timeout's empty answer), then kept.
        assert _requests(sb) == {DEVICE_PATH: 2, ENDPOINT_PATH: 2}
        clock.advance(29)
        with pytest.raises(NotFoundError):
            await router.route("join", org="A99999", interaction=PSIS)
        assert _requests(sb) == {DEVICE_PATH: 2, ENDPOINT_PATH: 2}
        clock.advance(2)  # past the negative TTL, well within the positive one
        with pytest.raises(NotFoundError):
            await router.route("join", org="A99999", interaction=PSIS)
    assert _requests(sb) == {DEVICE_PATH: 4, ENDPOINT_PATH: 4}


async def test_encounter_scope(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    router = Router(Settings(base_url=sb.base_url), plugins=[JoinPlugin(scope="encounter")])
    async with router:
        await router.route("join", org="YES", interaction=PSIS, encounter="E1")
        hit = await router.route("join", org="YES", interaction=PSIS, encounter="E1")
        assert hit.provenance.cache == "hit"
        other = await router.route("join", org="YES", interaction=PSIS, encounter="E2")
        assert other.provenance.cache == "miss"
        unscoped = [await router.route("join", org="YES", interaction=PSIS) for _ in range(2)]
    assert {e.provenance.cache for e in unscoped} == {"bypass"}
    assert _requests(sb) == {DEVICE_PATH: 4, ENDPOINT_PATH: 4}


async def test_per_call_bypass_refreshes_the_cache(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    async with _router(sb) as router:
        await router.route("join", org="YES", interaction=PSIS)
        fresh = await router.route("join", org="YES", interaction=PSIS, bypass_cache=True)
        after = await router.route("join", org="YES", interaction=PSIS)
    assert fresh.provenance.cache == "bypass"
    assert after.provenance.cache == "hit"
    assert _requests(sb) == {DEVICE_PATH: 2, ENDPOINT_PATH: 2}


async def test_cache_keys_include_the_directory(make_sandbox: Callable[..., Sandbox]) -> None:
    first, second = make_sandbox(), make_sandbox()
    shared = MemoryCache()

    class SharedCache:
        @hookimpl
        def sds_provide_cache(self, settings: Settings) -> CacheBackend:
            return shared

    for sb in (first, second):
        async with _router(sb, SharedCache()) as router:
            envelope = await router.route("join", org="YES", interaction=PSIS)
            assert envelope.provenance.cache == "miss"
    assert _requests(first) == _requests(second) == {DEVICE_PATH: 1, ENDPOINT_PATH: 1}


async def test_several_candidates_are_ambiguous_and_a_party_key_chooses(sandbox: Sandbox) -> None:
    recorder = Recorder()
    async with _router(sandbox, recorder) as router:
        with pytest.raises(AmbiguousError) as info:
            await router.route("join", org="X26", interaction=GP2GP)
        assert {c["party_key"] for c in info.value.candidates} == {"X26-9199246", "X26-820918"}
        assert "party_key" in str(info.value)
        chosen = await router.route("join", org="X26", interaction=GP2GP, party_key="x26-820918")
    assert chosen.target.party_key == "X26-820918"
    assert recorder.routes[0].outcome == "ambiguous"
    assert recorder.routes[0].details["candidates"]


async def test_lookup_events_describe_each_lookup(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    recorder = Recorder()
    async with _router(sb, recorder) as router:
        await router.route(
            "join",
            org="YES",
            interaction=PSIS,
            correlation_id="7f1d3e8a-6f5c-4c53-9a5b-2d0c1c9f0a11",
        )
        await router.route("join", org="YES", interaction=PSIS)
    first, second, third, fourth = recorder.lookups
    assert {first.cache, second.cache} == {"miss"}
    assert {third.cache, fourth.cache} == {"hit"}
    assert first.correlation_id == "7f1d3e8a-6f5c-4c53-9a5b-2d0c1c9f0a11"
    assert first.attempts == 1 and third.attempts == 0
    assert first.outcome == "found" and first.records == 1
    assert first.source == "sds" and first.namespace == sb.base_url
    assert {first.query.split("?")[0], second.query.split("?")[0]} == {"Device", "Endpoint"}


async def test_a_half_warm_route_reports_each_lookup_once(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    # The endpoint lookup is cached and the device lookup is not: the warm path gives up
    # half-way, and the full path must not report the endpoint lookup a second time.
    sb = make_sandbox()
    recorder = Recorder()
    async with _router(sb, recorder) as router:
        await router.lookup(Lookup.endpoints(org="YES", interaction=PSIS))
        recorder.lookups.clear()
        await router.route("join", org="YES", interaction=PSIS)
    assert sorted(event.query.split("?")[0] for event in recorder.lookups) == [
        "Device",
        "Endpoint",
    ]
    assert sorted(event.cache for event in recorder.lookups) == ["hit", "miss"]


async def test_lookups_wait_for_the_pacer(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    # ldap_timeout_s=0: the unknown organisations' empty answers are taken at once.
    async with _router(sb, rate_limit_per_s=20, retry_attempts=1, ldap_timeout_s=0) as router:
        lookups = [Lookup.devices(org=f"A{n:05d}", interaction=PSIS) for n in range(6)]
        await asyncio.gather(*(router.lookup(lookup) for lookup in lookups))
        pacer = router.rate_limiter
        assert isinstance(pacer, Pacer)
        # Six requests, one slot each, 50 ms apart: the pacer held them, not the gateway.
        assert pacer.spacer.released == 6
        assert pacer.waited_s >= 5 * 0.05
    assert sb.stats()["statuses"] == {"200": 6}


async def test_unknown_adapter_lists_the_installed_ones(sandbox: Sandbox) -> None:
    async with _router(sandbox) as router:
        with pytest.raises(InvalidInputError, match=r"installed: .*\bjoin\b"):
            await router.route("nope", org="YES", interaction=PSIS)


async def test_invalid_input_sends_nothing(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    async with _router(sb) as router:
        for kwargs in (
            {"org": "YES\n", "interaction": PSIS},
            {"org": "YES", "interaction": "psis"},
            {"org": "YES", "interaction": PSIS, "colour": "red"},
            {"org": "YES", "interaction": PSIS, "correlation_id": "tab\tinside"},
            {"org": "YES", "interaction": PSIS, "correlation_id": " padded"},
        ):
            with pytest.raises(InvalidInputError):
                await router.route("join", **kwargs)
    assert _requests(sb) == {}


class Decorate:
    @hookimpl(wrapper=True)
    def sds_finalize_envelope(
        self, envelope: RoutingEnvelope, request: Any
    ) -> Generator[None, RoutingEnvelope, RoutingEnvelope]:
        result = yield
        headers = {**result.request.headers, "X-Broker": "node-1"}
        return result.model_copy(
            update={"request": result.request.model_copy(update={"headers": headers})}
        )


class Veto:
    @hookimpl
    def sds_finalize_envelope(self, envelope: RoutingEnvelope, request: Any) -> RoutingEnvelope:
        raise EnvelopeVetoedError(f"{request.org} is embargoed")


async def test_plugins_decorate_and_veto_envelopes(sandbox: Sandbox) -> None:
    async with _router(sandbox, Decorate()) as router:
        envelope = await router.route("join", org="YES", interaction=PSIS)
    assert envelope.request.headers["X-Broker"] == "node-1"
    recorder = Recorder()
    async with _router(sandbox, Veto(), recorder) as router:
        with pytest.raises(EnvelopeVetoedError, match="embargoed"):
            await router.route("join", org="YES", interaction=PSIS)
    assert recorder.routes[0].outcome == "vetoed"


async def test_async_hook_implementations_are_refused() -> None:
    class AsyncPolicy:
        @hookimpl
        async def sds_select_candidate(self, candidates: Any, request: Any, role: str) -> Any:
            return candidates[0]

    with pytest.raises(PluginError, match=r"async def.*always win"):
        Router(Settings(), plugins=[AsyncPolicy()])


async def test_a_failing_observer_does_not_break_routing(sandbox: Sandbox) -> None:
    class Broken:
        @hookimpl
        def sds_lookup_completed(self, event: LookupEvent) -> None:
            raise RuntimeError("observer bug")

    async with _router(sandbox, Broken()) as router:
        assert await router.route("join", org="YES", interaction=PSIS)


async def test_every_observer_sees_each_event_even_when_another_fails(
    sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    class Broken:
        @hookimpl
        def sds_route_completed(self, event: RouteEvent) -> None:
            seen.append("broken")
            raise RuntimeError("observer bug")

    class Bare:
        @hookimpl
        def sds_route_completed(self) -> None:  # pluggy lets an observer take no argument
            seen.append("bare")

    class Wrapping:
        @hookimpl(wrapper=True)
        def sds_lookup_completed(self, event: LookupEvent) -> Generator[None, None, None]:
            seen.append(f"around {event.cache}")
            yield

    recorder = Recorder()
    # Registered last, called first (pluggy's order): the failure comes before the others.
    async with _router(sandbox, recorder, Bare(), Wrapping(), Broken()) as router:
        for _ in range(2):
            assert await router.route("join", org="YES", interaction=PSIS)
    assert [event.outcome for event in recorder.routes] == ["ok", "ok"]
    assert [event.cache for event in recorder.lookups] == ["miss", "miss", "hit", "hit"]
    assert seen == [
        *(["around miss"] * 2 + ["broken", "bare"]),
        *(["around hit"] * 2 + ["broken", "bare"]),
    ]
    assert caplog.text.count("sds_route_completed failed") == 2
    assert "observer bug" in caplog.text


async def test_no_event_is_built_while_every_observer_says_it_wants_none(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Sometimes(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.wanted = False

        def wants_events(self) -> bool:
            return self.wanted

    observer = Sometimes()
    built: list[str] = []
    real_init = RouteEvent.__init__

    def counting(self: RouteEvent, **values: Any) -> None:
        built.append("route")
        real_init(self, **values)

    monkeypatch.setattr(RouteEvent, "__init__", counting)
    async with _router(sandbox, observer) as router:
        await router.route("join", org="YES", interaction=PSIS)
        await router.route("join", org="YES", interaction=PSIS)
        assert (observer.lookups, observer.routes, built) == ([], [], [])
        observer.wanted = True
        await router.route("join", org="YES", interaction=PSIS)
        assert [e.cache for e in observer.lookups] == ["hit", "hit"]
        assert [e.outcome for e in observer.routes] == ["ok"]
        # One observer without the method wants everything: all observers get the events.
        observer.wanted = False
        other = Recorder()
        router.host.register(other)
        await router.route("join", org="YES", interaction=PSIS)
        assert len(other.routes) == len(observer.routes) - 1 == 1


async def test_each_route_event_is_its_own(sandbox: Sandbox) -> None:
    class Scribbling(Recorder):
        @hookimpl
        def sds_route_completed(self, event: RouteEvent) -> None:
            event.details.setdefault("seen", []).append(event.correlation_id)
            super().sds_route_completed(event)

    observer = Scribbling()
    async with _router(sandbox, observer) as router:
        for _ in range(3):
            await router.route("join", org="YES", interaction=PSIS)
    assert [len(event.details["seen"]) for event in observer.routes] == [1, 1, 1]
    assert len({event.correlation_id for event in observer.routes}) == 3


async def test_audit_log(sandbox: Sandbox, tmp_path: Path) -> None:
    log = tmp_path / "audit" / "sds.jsonl"
    async with _router(sandbox, audit_log=log, api_key="do-not-log-me") as router:
        await router.route("join", org="YES", interaction=PSIS)
        with pytest.raises(NotFoundError):
            await router.route("join", org="A99999", interaction=PSIS)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["event"] for line in lines] == [
        "lookup",
        "lookup",
        "route",
        "lookup",
        "lookup",
        "route",
    ]
    route = lines[2]
    assert route["adapter"] == "join" and route["org"] == "YES" and route["outcome"] == "ok"
    assert route["interaction"] == PSIS and route["cache"] == "miss" and route["correlation_id"]
    assert lines[5]["outcome"] == "not_found"
    assert "do-not-log-me" not in log.read_text()


def test_sync_router(sandbox: Sandbox) -> None:
    with SyncRouter(Settings(base_url=sandbox.base_url), plugins=[JoinPlugin()]) as router:
        envelope = router.route("join", org="YES", interaction=PSIS)
    assert envelope.target.asid == "928942012545"


async def test_a_router_can_start_again(sandbox: Sandbox) -> None:
    router = _router(sandbox)
    for _ in range(2):
        async with router:
            assert router.started
            assert await router.route("join", org="YES", interaction=PSIS)
        assert not router.started


async def test_provenance_keeps_only_the_routed_interaction(sandbox: Sandbox) -> None:
    async with _router(sandbox) as router:
        envelope = await router.route("join", org="YES", interaction=PSIS)
    device = envelope.provenance.records[1]
    assert device.kind == "device"
    assert device.interactions == (PSIS,)
    assert len(envelope.model_dump_json()) < 4000


async def test_with_headers_is_validated(sandbox: Sandbox) -> None:
    async with _router(sandbox) as router:
        envelope = await router.route("join", org="YES", interaction=PSIS)
    assert envelope.with_headers(**{"X-Broker": "1"}).request.headers["X-Broker"] == "1"
    with pytest.raises(InvalidInputError):
        envelope.with_headers(**{"X-Broker": "1\r\nX-Evil: 2"})


async def test_unscoped_concurrent_lookups_share_one_request_but_nothing_is_stored(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    sb = make_sandbox(latency_ms=100)
    router = Router(Settings(base_url=sb.base_url), plugins=[JoinPlugin(scope="encounter")])
    async with router:
        await asyncio.gather(
            *(router.route("join", org="YES", interaction=PSIS) for _ in range(50))
        )
        assert _requests(sb) == {DEVICE_PATH: 1, ENDPOINT_PATH: 1}
        later = await router.route("join", org="YES", interaction=PSIS)
    assert later.provenance.cache == "bypass"
    assert _requests(sb) == {DEVICE_PATH: 2, ENDPOINT_PATH: 2}


class _NoLookups(Adapter):
    """An adapter that needs no directory (e-RS FHIR requests): its plan is empty."""

    name = "no-lookups"

    def plan(self, request: RouteRequest) -> Mapping[str, Lookup]:
        return {}

    def build(self, request: RouteRequest, resolved: Resolution) -> RoutingEnvelope:
        return RoutingEnvelope(
            adapter=self.name,
            interaction=request.interaction,
            target=Party(),
            request=HttpRequestSpec(method="GET", url="https://example.invalid/"),
            expires_at=resolved.now,
            provenance=resolved.provenance(),
        )


async def test_an_empty_plan_builds_without_lookups(make_sandbox: Callable[..., Sandbox]) -> None:
    class Plugin:
        @hookimpl
        def sds_register_adapters(self, register: Callable[[Adapter], None]) -> None:
            register(_NoLookups())

    sb = make_sandbox()
    async with _router(sb, Plugin()) as router:
        envelope = await router.route("no-lookups", org="R69", interaction=PSIS)
    assert envelope.provenance.lookups == ()
    assert envelope.provenance.cache == "hit"
    assert _requests(sb) == {}


async def test_endpoint_provenance_records_the_interaction_queried(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    # One MHS record listing several interactions, the routed one last: SDS's Endpoint carries
    # an interaction extension per interaction, and the parsed record keeps the first.
    from sds_plugins import MessageHandlingEndpoint
    from sds_plugins.testing import accredited_system_record, mhs_record

    metadata = "urn:nhs:names:services:gpconnect:fhir:rest:read:metadata-1"
    sb = make_sandbox(
        [mhs_record("A12345", [metadata, GPC_STRUCTURED])],
        [accredited_system_record("A12345", [metadata, GPC_STRUCTURED])],
    )
    async with _router(sb) as router:
        envelope = await router.route("join", org="A12345", interaction=GPC_STRUCTURED)
        again = await router.route("join", org="A12345", interaction=GPC_STRUCTURED)
    endpoint, device = envelope.provenance.records
    assert isinstance(endpoint, MessageHandlingEndpoint)
    assert endpoint.interaction == GPC_STRUCTURED
    assert device.interactions == (GPC_STRUCTURED,)  # type: ignore[union-attr]
    assert again.provenance.cache == "hit"
    assert again.provenance.records[0].interaction == GPC_STRUCTURED  # type: ignore[union-attr]


# --------------------------------------------------------------------------- the warm path


class RecipientAdapter(Adapter):
    """Endpoint + device through ``Resolution.recipient``, a URL through ``derive``."""

    name = "recipient"
    options = frozenset({"party_key"})

    def __init__(self) -> None:
        self.derived = 0
        self.seen: list[RouteRequest] = []

    def plan(self, request: RouteRequest) -> Mapping[str, Lookup]:
        return {
            "endpoints": Lookup.endpoints(org=request.org, interaction=request.interaction),
            "devices": Lookup.devices(org=request.org, interaction=request.interaction),
        }

    def _url(self, address: str, request: RouteRequest) -> str:
        self.derived += 1
        self.seen.append(request)
        return address + "?derived"

    def build(self, request: RouteRequest, resolved: Resolution) -> RoutingEnvelope:
        chosen = resolved.recipient()
        url = resolved.derive(
            "url", (chosen,), lambda timeless: self._url(chosen.address, timeless)
        )
        return RoutingEnvelope(
            adapter=self.name,
            interaction=request.interaction,
            target=Party(ods_code=request.org, asid=chosen.asid, address=chosen.address),
            request=HttpRequestSpec(method="POST", url=url),
            expires_at=resolved.now,
            provenance=resolved.provenance(chosen.records),
        )


class CountingPolicy:
    """Counts the selection hook's calls, then defers to the default policy."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def sds_select_candidate(self, candidates: Any, request: Any, role: str) -> None:
        self.calls += 1


class RecipientPlugin:
    def __init__(self) -> None:
        self.adapter = RecipientAdapter()

    @hookimpl
    def sds_register_adapters(self, register: Any) -> None:
        register(self.adapter)


async def test_warm_routes_reuse_what_follows_from_the_same_records(sandbox: Sandbox) -> None:
    clock, policy, plugin, recorder = ManualClock(), CountingPolicy(), RecipientPlugin(), Recorder()
    router = Router(
        Settings(base_url=sandbox.base_url, cache_ttl_s=60),
        plugins=[plugin, policy, recorder],
        clock=clock,
    )
    async with router:
        envelopes = [await router.route("recipient", org="YES", interaction=PSIS) for _ in range(5)]
        # The selection policy chose once, the URL was derived once, for five routes...
        assert (policy.calls, plugin.adapter.derived) == (1, 1)
        # ...from the request without the correlation id of the route it happened in.
        [seen] = plugin.adapter.seen
        assert (seen.correlation_id, seen.org, seen.interaction) == ("", "YES", PSIS)
        assert _requests(sandbox) == {DEVICE_PATH: 1, ENDPOINT_PATH: 1}
        # ...while everything that belongs to one route is its own.
        assert len({e.provenance.correlation_id for e in envelopes}) == 5
        assert [e.provenance.cache for e in envelopes] == ["miss"] + ["hit"] * 4
        assert {e.request.url for e in envelopes} == {envelopes[0].target.address + "?derived"}
        assert [event.cache for event in recorder.lookups] == ["miss"] * 2 + ["hit"] * 8
        assert [event.outcome for event in recorder.routes] == ["ok"] * 5

        # Past the TTL the directory is asked again: new records, so chosen and derived afresh.
        clock.advance(61)
        refreshed = await router.route("recipient", org="YES", interaction=PSIS)
        assert refreshed.provenance.cache == "miss"
        assert (policy.calls, plugin.adapter.derived) == (2, 2)
        assert _requests(sandbox) == {DEVICE_PATH: 2, ENDPOINT_PATH: 2}
        assert refreshed.target == envelopes[0].target


async def test_routes_with_other_options_are_prepared_and_chosen_apart(sandbox: Sandbox) -> None:
    policy, plugin = CountingPolicy(), RecipientPlugin()
    async with Router(Settings(base_url=sandbox.base_url), plugins=[plugin, policy]) as router:
        chosen = await router.route("recipient", org="YES", interaction=PSIS)
        assert chosen.target.asid is not None
        same = await router.route("recipient", org="YES", interaction=PSIS, party_key="YES-0000806")
        assert same.target == chosen.target
        for _ in range(2):  # a choice that fails is not remembered: it fails every time
            with pytest.raises(NotFoundError, match="party key YES-0000001"):
                await router.route(
                    "recipient", org="YES", interaction=PSIS, party_key="YES-0000001"
                )
        assert policy.calls == 4
        assert (
            await router.route("recipient", org="YES", interaction=PSIS)
        ).target == chosen.target
        assert policy.calls == 4


async def test_a_stale_answer_still_builds_with_what_was_derived(sandbox: Sandbox) -> None:
    clock, plugin = ManualClock(), RecipientPlugin()
    settings = Settings(base_url=sandbox.base_url, cache_ttl_s=60, retry_attempts=1)
    async with Router(settings, plugins=[plugin], clock=clock) as router:
        fresh = await router.route("recipient", org="YES", interaction=PSIS)
        clock.advance(61)
        sandbox.set_faults(outage=True, error_status=503)
        stale = await router.route("recipient", org="YES", interaction=PSIS)
    assert stale.provenance.cache == "stale"
    assert stale.request.url == fresh.request.url
    assert plugin.adapter.derived == 1


async def test_a_warm_route_sees_every_change_to_the_in_process_cache(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    sb, plugin = make_sandbox(), RecipientPlugin()
    async with Router(Settings(base_url=sb.base_url), plugins=[plugin]) as router:
        first = await router.route("recipient", org="YES", interaction=PSIS)
        for _ in range(3):
            assert (
                await router.route("recipient", org="YES", interaction=PSIS)
            ).provenance.cache == "hit"
        # Another route storing its answers changes nothing for this one.
        with pytest.raises(NotFoundError):
            await router.route("recipient", org="ZZZ99", interaction=PSIS)
        again = await router.route("recipient", org="YES", interaction=PSIS)
        assert (again.provenance.cache, plugin.adapter.derived) == ("hit", 1)
        assert again.provenance.records == first.provenance.records
        # A refreshed answer (new record objects) is what the next warm route builds from.
        await router.route("recipient", org="YES", interaction=PSIS, bypass_cache=True)
        assert plugin.adapter.derived == 2
        after = await router.route("recipient", org="YES", interaction=PSIS)
        assert (after.provenance.cache, plugin.adapter.derived) == ("hit", 3)
        assert (
            await router.route("recipient", org="YES", interaction=PSIS)
        ).provenance.cache == "hit"
        assert plugin.adapter.derived == 3
        # An emptied cache is noticed: the directory is asked again.
        await router.cache.backend.clear()
        emptied = await router.route("recipient", org="YES", interaction=PSIS)
        assert emptied.provenance.cache == "miss"
    # ZZZ99's empty answers were each asked twice (past the gateway's cache the second time).
    assert _requests(sb) == {DEVICE_PATH: 5, ENDPOINT_PATH: 5}


def test_remembered_options_keep_their_types() -> None:
    from sds_plugins._adapter_options import options_key

    # Equal and hashing alike, but an int and a bool may validate differently.
    assert options_key({"n": 1}) != options_key({"n": True})
    assert options_key({"n": 1}) != options_key({"n": 1.0})
    assert options_key({"a": "x", "b": None}) == options_key({"a": "x", "b": None})
    assert options_key({"a": ["x"]}) is None  # not plain: validated afresh every time
    # A patient's data is never kept in a memo; a credential only as a keyed digest.
    for personal in ("nhs_number", "birth_date", "family_name", "subject"):
        assert options_key({"routing": "demographic", personal: "BIRCH"}) is None
    key = options_key({"mailbox": "X26ABC1", "password": "hunter2"})
    assert key is not None and "hunter2" not in repr(key)
    assert key == options_key({"mailbox": "X26ABC1", "password": "hunter2"})
    assert key != options_key({"mailbox": "X26ABC1", "password": "hunter3"})


def test_replaced_is_model_copy_for_plain_models_and_falls_back_otherwise() -> None:
    from sds_plugins import ForeignRecord
    from sds_plugins._adapter import replaced

    request = RouteRequest(adapter="a", org="YES", interaction=PSIS, correlation_id="c")
    changes = {"correlation_id": "d", "correlation_id_given": True}
    fast, copied = replaced(request, changes), request.model_copy(update=changes)
    assert fast == copied
    assert fast.model_fields_set == copied.model_fields_set
    assert (request.correlation_id, fast.correlation_id) == ("c", "d")
    with pytest.raises(ValueError, match="frozen"):
        fast.org = "X26"  # type: ignore[misc]
    record = ForeignRecord(kind="mailbox", mailbox_id="X26HC005")
    assert replaced(record, {"kind": "other"}).model_dump() == {
        "kind": "other",
        "mailbox_id": "X26HC005",
    }
