"""What NHS's live platform does that a friendlier sandbox would hide, over real sockets.

Each point was read from NHS's own code (``NHSDigital/spine-directory-service-api``: the SDS
server under ``docker/sds-api/spine-directory-service/sds/`` and its Apigee proxy under
``proxies/live/apiproxy/``) and the sandbox now behaves the same, so these tests would fail
against the client as it was:

- SDS takes an API key only (``targets/target.xml``: ``EnhancedVerifyApiKey`` → ``Quota`` →
  ``SpikeArrest`` → ``Response-Cache-SDS``; no flow verifies an access token);
- an LDAP timeout is a slow 200 with no records (``lookup/sds_client.py``), which the
  gateway's response cache (``ResponseCache.xml``, 1,800 s) then serves to everyone;
- ``X-Correlation-ID`` must be a UUID for SDS (``request/tracking_ids_headers_reader.py``),
  while callers' own ids are theirs to keep;
- ``Bundle.total`` counts the entries (the server's ``total = len(resources)``).

Spike arrest stays off in these gateways: what it does to timing is bench/gateway.py's work,
and a refusal would only add requests to the counts asserted here.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from sds_plugins import (
    ApiKeyAuth,
    AuthenticationError,
    DirectoryTimeoutError,
    Lookup,
    MalformedResponseError,
    NotFoundError,
    Router,
    SdsClient,
    Settings,
)
from sds_plugins._validation import sds_correlation_id
from sds_plugins.sandbox import Sandbox

from ._adapters import JoinPlugin
from ._reference import GPC_STRUCTURED, PSIS, SDS_REFERENCE, load_json

KEY = "live-like-app-key"
DEVICE_PATH = "/spine-directory/FHIR/R4/Device"
ENDPOINT_PATH = "/spine-directory/FHIR/R4/Endpoint"


def _gateway(make_sandbox: Callable[..., Sandbox], **config: Any) -> Sandbox:
    """The live proxy's key check, quota and response cache in front of the sandbox."""
    return make_sandbox(api_key=KEY, quota_per_min=2400, response_cache_s=1800, **config)


def _router(sb: Sandbox, **settings: Any) -> Router:
    options: dict[str, Any] = {"api_key": KEY, "retry_attempts": 1, **settings}
    return Router(Settings(base_url=sb.base_url, **options), plugins=[JoinPlugin()])


def _gateway_stats(sb: Sandbox) -> dict[str, Any]:
    return dict(sb.stats()["gateway"])


# -- 1. SDS takes an API key, only ----------------------------------------------------------


async def test_every_sds_request_carries_the_api_key(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = _gateway(make_sandbox)
    async with _router(sb) as router:
        envelope = await router.route("join", org="YES", interaction=PSIS)
    assert envelope.target.party_key == "YES-0000806"
    assert sb.stats()["statuses"] == {"200": 2}


async def test_without_the_key_sds_refuses_and_nothing_is_retried(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    sb = _gateway(make_sandbox)
    async with _router(sb, api_key=None, retry_attempts=4) as router:
        with pytest.raises(AuthenticationError):
            await router.route("join", org="YES", interaction=PSIS)
    assert sb.stats()["statuses"] == {"401": 2}  # one per lookup, none repeated


# -- 2. An LDAP timeout is a slow, empty 200 ----------------------------------------------


async def test_an_ldap_timeout_is_a_retryable_timeout_never_not_found(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    sb = _gateway(make_sandbox, ldap_timeout=True, ldap_timeout_ms=300)
    # No breaker: the directory failing would otherwise hold the next lookup back a while.
    async with _router(sb, ldap_timeout_s=0.25, breaker_cooldown_s=0) as router:
        with pytest.raises(DirectoryTimeoutError) as raised:
            await router.lookup(Lookup.devices(org="YES", interaction=PSIS))
        assert raised.value.retryable is True
        assert "LDAP" in raised.value.message
        # Asked twice: the second time past the gateway's cache, which kept the first answer.
        assert sb.stats()["requests"] == {DEVICE_PATH: 2}
        gateway = _gateway_stats(sb)
        assert (gateway["cache_misses"], gateway["cache_bypassed"]) == (1, 1)

        # Nothing was kept as "not found": once the directory is back, the same router finds
        # the records. The gateway still holds the empty answer and gives it, fast; an empty
        # answer from its cache is not believed, and asked again past it.
        sb.set_faults(ldap_timeout=False)
        outcome = await router.lookup(Lookup.devices(org="YES", interaction=PSIS))
        assert len(outcome.records) == 1
        gateway = _gateway_stats(sb)
        assert (gateway["cache_hits"], gateway["cache_bypassed"]) == (1, 2)

    # So does a client that never saw the slow answer (another process of a fleet, say).
    async with SdsClient(sb.base_url, auth=ApiKeyAuth(KEY)) as client:
        found = await client.devices(org="YES", interaction=PSIS)
    assert len(found.records) == 1
    assert found.attempts == 2
    gateway = _gateway_stats(sb)
    assert (gateway["cache_hits"], gateway["cache_bypassed"]) == (2, 3)


async def test_a_fast_empty_answer_is_a_genuine_not_found(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    sb = _gateway(make_sandbox)
    async with _router(sb, ldap_timeout_s=0.25) as router:
        with pytest.raises(NotFoundError):
            await router.route("join", org="A99999", interaction=PSIS)
        # Each lookup's empty answer came through the gateway's cache (it may have been the
        # cached copy of an LDAP timeout), so it was asked once more past it: quick and empty
        # again, it is a genuine "no match", now kept in the negative cache.
        assert sb.stats()["requests"] == {DEVICE_PATH: 2, ENDPOINT_PATH: 2}
        assert _gateway_stats(sb)["cache_bypassed"] == 2
        with pytest.raises(NotFoundError):
            await router.route("join", org="A99999", interaction=PSIS)
    assert sum(sb.stats()["requests"].values()) == 4


class _Slow(httpx.AsyncBaseTransport):
    """Answers as a server would after ``delays[i]`` seconds: the i-th request's answer comes
    that long after its headers were written (the ``trace`` extension httpcore would call)."""

    def __init__(self, *answers: tuple[float, dict[str, Any]]) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        delay, body = self.answers.pop(0)
        trace = request.extensions.get("trace")
        if trace is not None:
            await trace("http11.send_request_headers.started", {})
            await trace("http11.send_request_headers.complete", {})
        await asyncio.sleep(delay)
        return httpx.Response(200, json=body)


EMPTY = {"resourceType": "Bundle", "type": "searchset", "total": 0, "entry": []}
DEVICE_BODY = load_json(SDS_REFERENCE / "observed-responses" / "sds-server-single_device.json")


async def test_a_slow_empty_answer_is_asked_again_past_the_gateway_cache() -> None:
    transport = _Slow((0.3, EMPTY), (0.0, DEVICE_BODY))
    async with SdsClient("int", transport=transport, ldap_timeout_s=0.25) as client:
        result = await client.devices(org="YES", interaction=PSIS)
    assert len(result.records) == 1
    assert result.attempts == 2
    first, second = transport.requests
    assert "Cache-Control" not in first.headers
    assert second.headers["Cache-Control"] == "no-cache"


async def test_an_empty_answer_past_the_gateway_cache_is_believed_at_once() -> None:
    transport = _Slow((0.0, EMPTY))
    async with SdsClient("int", transport=transport, ldap_timeout_s=0.25) as client:
        result = await client.devices(org="YES", interaction=PSIS, no_cache=True)
    assert result.records == ()
    assert len(transport.requests) == 1


async def test_the_second_ask_spends_the_same_budget() -> None:
    # Slow, empty, then slower: the lookup's 0.5 s budget is a deadline for both asks.
    from sds_plugins import RetryPolicy

    transport = _Slow((0.3, EMPTY), (5.0, EMPTY))
    retry = RetryPolicy(attempts=1, budget_s=0.5)
    async with SdsClient("int", transport=transport, ldap_timeout_s=0.25, retry=retry) as client:
        with pytest.raises(DirectoryTimeoutError, match="budget"):
            await client.devices(org="YES", interaction=PSIS)


# -- 3. A new GP Connect encounter sees fresh data -----------------------------------------


async def test_each_new_encounter_asks_past_the_gateway_cache(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    sb = _gateway(make_sandbox)
    settings = Settings(base_url=sb.base_url, api_key=KEY)
    async with Router(settings, plugins=[JoinPlugin(scope="encounter")]) as router:
        for _ in range(3):  # repeats within the encounter: our cache, no request
            await router.route("join", org="B82617", interaction=GPC_STRUCTURED, encounter="e1")
        assert _gateway_stats(sb)["cache_bypassed"] == 2  # Endpoint and Device, fresh
        await router.route("join", org="B82617", interaction=GPC_STRUCTURED, encounter="e2")
    gateway = _gateway_stats(sb)
    assert gateway["cache_bypassed"] == 4
    assert gateway["cache_hits"] == 0  # no encounter was given another caller's answer
    assert sum(sb.stats()["requests"].values()) == 4


# -- 7. Correlation ids are the caller's ----------------------------------------------------


@pytest.mark.parametrize("given", ["0F0E0D0C-AAAA-4BBB-8CCC-123456789012", "order-42/ward 7"])
async def test_the_callers_correlation_id_is_kept_and_sds_is_sent_a_uuid(
    make_sandbox: Callable[..., Sandbox], given: str
) -> None:
    sb = _gateway(make_sandbox)
    async with _router(sb) as router:
        envelope = await router.route("join", org="YES", interaction=PSIS, correlation_id=given)
    assert envelope.provenance.correlation_id == given  # byte for byte, case and all
    if given[0] == "0":
        assert envelope.provenance.sds_correlation_id is None
    else:
        sent = envelope.provenance.sds_correlation_id
        assert sent == sds_correlation_id(given) and uuid.UUID(sent).version == 5
    # The sandbox, like SDS, refused nothing: a non-UUID id would have been a 400.
    assert sb.stats()["statuses"] == {"200": 2}


# -- 9. Bundle.total is reconciled ---------------------------------------------------------


async def test_a_total_that_disagrees_with_the_entries_is_malformed() -> None:
    short = {**DEVICE_BODY, "total": 2}
    transport = _Slow((0.0, short))
    async with SdsClient("int", transport=transport) as client:
        with pytest.raises(MalformedResponseError) as raised:
            await client.devices(org="YES", interaction=PSIS)
    assert raised.value.field == "total"
    assert raised.value.retryable is True
