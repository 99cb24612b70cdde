"""The SDS client against the local sandbox, over real sockets: queries, errors, auth, retries."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from sds_plugins import (
    ApiKeyAuth,
    AuthenticationError,
    DirectoryTimeoutError,
    DirectoryUnavailableError,
    RateLimitedError,
    RequestRejectedError,
    RetryPolicy,
    SdsClient,
    SignedJwtAuth,
    SyncSdsClient,
)
from sds_plugins.sandbox import Sandbox

from ._reference import GP2GP, GPC_STRUCTURED, PSIS

FAST = RetryPolicy(attempts=4, backoff_s=0.01, max_backoff_s=0.05, budget_s=10)
EBS_EXPRESS = "urn:nhs:names:services:ebs:PRSC_IN080000UK03"
INTERMEDIARY = "https://msg.int.spine2.ncrs.nhs.uk/reliablemessaging/intermediary"


def _client(sb: Sandbox, **options: Any) -> SdsClient:
    options.setdefault("retry", FAST)
    return SdsClient(sb.base_url, **options)


async def test_device_lookup(sandbox: Sandbox) -> None:
    async with _client(sandbox) as client:
        result = await client.devices(org="yes", interaction=PSIS)
    [device] = result.records
    assert device.asid == "928942012545"
    assert device.party_key == "YES-0000806"
    assert device.manufacturer_ods == "X09001"
    assert PSIS in device.interactions
    assert result.base_url == sandbox.base_url


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, 1),
        ({"party_key": "YES-0000806"}, 1),
        ({"party_key": "YES-0000807"}, 0),
        ({"manufacturer": "X09001"}, 1),
        ({"manufacturer": "X26"}, 0),
        ({"party_key": "YES-0000806", "manufacturer": "X09001"}, 1),
    ],
)
async def test_device_query_combinations(
    sandbox: Sandbox, filters: dict[str, str], expected: int
) -> None:
    async with _client(sandbox) as client:
        result = await client.devices(org="YES", interaction=PSIS, **filters)
    assert len(result.records) == expected


@pytest.mark.parametrize(
    ("query", "addresses"),
    [
        ({"org": "YES", "interaction": PSIS, "party_key": "YES-0000806"}, 1),
        ({"org": "B82617", "party_key": "B82617-0000806"}, 1),
        ({"org": "B82617", "interaction": GPC_STRUCTURED}, 1),
        ({"interaction": PSIS, "party_key": "YES-0000806"}, 1),
        ({"org": "X26", "interaction": GP2GP}, 2),
        ({"org": "A99999", "interaction": GPC_STRUCTURED}, 0),
    ],
)
async def test_endpoint_query_combinations(
    sandbox: Sandbox, query: dict[str, str], addresses: int
) -> None:
    async with _client(sandbox) as client:
        result = await client.endpoints(**query)
    assert len(result.records) == addresses


async def test_endpoint_address_is_exactly_as_sds_has_it(sandbox: Sandbox) -> None:
    async with _client(sandbox) as client:
        [endpoint] = (await client.endpoints(org="B82617", interaction=GPC_STRUCTURED)).records
    assert endpoint.address == "https://orange.testlab.nhs.uk/B82617/STU3/1/gpconnect/"
    assert endpoint.party_key == "B82617-0000806"


async def test_forward_reliable_and_express_are_rewritten_to_the_intermediary(
    sandbox: Sandbox,
) -> None:
    async with _client(sandbox) as client:
        reliable = (await client.endpoints(org="X26", interaction=GP2GP)).records
        [express] = (await client.endpoints(org="X26", interaction=EBS_EXPRESS)).records
    assert {e.address for e in reliable} == {INTERMEDIARY}
    assert {e.party_key for e in reliable} == {"X26-9199246", "X26-820918"}
    assert express.address == INTERMEDIARY
    assert express.party_key == "X26-200150"
    assert express.cpa_id == "5878ac87fcd8acfef532bd5e06372fee3bf3df0c"


async def test_reliability_values(sandbox: Sandbox) -> None:
    async with _client(sandbox) as client:
        [endpoint] = (await client.endpoints(org="YES", interaction=PSIS)).records
    reliability = endpoint.reliability
    assert reliability is not None
    assert (reliability.retries, reliability.retry_interval_s, reliability.persist_duration_s) == (
        2,
        60,
        300,
    )
    assert reliability.actor == "urn:oasis:names:tc:ebxml-msg:actor:toPartyMSH"


async def test_correlation_id_round_trip(sandbox: Sandbox) -> None:
    correlation_id = str(uuid.uuid4())
    async with _client(sandbox) as client:
        result = await client.devices(org="YES", interaction=PSIS, correlation_id=correlation_id)
    assert result.correlation_id == correlation_id


async def test_paging_is_followed(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox(page_size=1)
    async with _client(sb) as client:
        result = await client.endpoints(org="X26", interaction=GP2GP)
    assert result.pages == 2
    assert len(result.records) == 2
    assert sb.stats()["requests"]["/spine-directory/FHIR/R4/Endpoint"] == 2


async def test_page_bound_stops_a_long_answer(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox(page_size=1)
    async with _client(sb, max_pages=1) as client:
        with pytest.raises(DirectoryUnavailableError, match="beyond 1 pages"):
            await client.endpoints(org="X26", interaction=GP2GP)


@pytest.mark.parametrize("status", [429, 503])
async def test_transient_faults_are_retried(
    make_sandbox: Callable[..., Sandbox], status: int
) -> None:
    sb = make_sandbox()
    sb.set_faults(error_rate=1.0, error_status=status, retry_after=0)
    async with _client(sb, retry=RetryPolicy(attempts=3, backoff_s=0.01, budget_s=5)) as client:
        with pytest.raises(DirectoryUnavailableError) as info:
            await client.devices(org="YES", interaction=PSIS)
    assert info.value.status_code == status
    assert info.value.attempts == 3
    assert sb.stats()["statuses"] == {str(status): 3}
    if status == 429:
        assert isinstance(info.value, RateLimitedError)


async def test_intermittent_faults_are_ridden_out(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    sb.set_faults(error_rate=0.5, error_status=503)
    async with _client(
        sb, retry=RetryPolicy(attempts=12, backoff_s=0.001, max_backoff_s=0.002, budget_s=10)
    ) as client:
        results = await asyncio.gather(
            *(client.devices(org="YES", interaction=PSIS) for _ in range(20))
        )
    assert all(len(r.records) == 1 for r in results)
    statuses = sb.stats()["statuses"]
    assert statuses["200"] == 20
    assert statuses.get("503", 0) > 0


async def test_a_429_with_retry_after_is_honoured(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    sb.set_faults(error_rate=0.5, error_status=429, retry_after=0)
    async with _client(sb, retry=RetryPolicy(attempts=8, budget_s=10)) as client:
        results = await asyncio.gather(
            *(client.devices(org="YES", interaction=PSIS) for _ in range(4))
        )
    assert all(len(r.records) == 1 for r in results)
    statuses = sb.stats()["statuses"]
    assert statuses["429"] >= 1  # some were throttled...
    assert statuses["200"] == 4  # ...and all got through after honouring Retry-After


async def test_server_errors_are_not_retried(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    sb.set_faults(outage=True, error_status=500)
    async with _client(sb) as client:
        with pytest.raises(DirectoryUnavailableError) as info:
            await client.devices(org="YES", interaction=PSIS)
    assert info.value.status_code == 500
    assert info.value.spine_code == "INTERNAL_SERVER_ERROR"
    assert info.value.attempts == 1


async def test_timeouts_are_reported_as_timeouts(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox(latency_ms=500)
    async with _client(
        sb, read_timeout_s=0.1, retry=RetryPolicy(attempts=2, backoff_s=0.01, budget_s=5)
    ) as client:
        with pytest.raises(DirectoryTimeoutError) as info:
            await client.devices(org="YES", interaction=PSIS)
    assert info.value.attempts == 2


async def test_unreachable_directory(sandbox: Sandbox) -> None:
    async with SdsClient(
        "http://127.0.0.1:1/spine-directory/FHIR/R4", retry=RetryPolicy(attempts=2, backoff_s=0.01)
    ) as client:
        with pytest.raises(DirectoryUnavailableError, match="unreachable") as info:
            await client.devices(org="YES", interaction=PSIS)
    assert info.value.attempts == 2


async def test_rejected_request_from_the_server(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    sb.set_faults(outage=True, error_status=400)
    async with _client(sb) as client:
        with pytest.raises(RequestRejectedError) as info:
            await client.devices(org="YES", interaction=PSIS)
    assert info.value.status_code == 400


async def test_api_key_auth(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox(api_key="the-key")
    async with _client(sb, auth=ApiKeyAuth("the-key")) as client:
        assert (await client.devices(org="YES", interaction=PSIS)).records
    async with _client(sb, auth=ApiKeyAuth("wrong-key")) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.devices(org="YES", interaction=PSIS)
    assert info.value.status_code == 401
    assert "wrong-key" not in str(info.value)
    async with _client(sb) as client:
        with pytest.raises(AuthenticationError):
            await client.devices(org="YES", interaction=PSIS)


def _jwks(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": kid, "use": "sig", "alg": "RS512"})
    return {"keys": [jwk]}


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


async def test_signed_jwt_auth_one_token_for_many_requests(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    # PDS takes the platform's bearer token (SDS takes only its API key).
    from sds_plugins.sandbox import SANDBOX_PATIENTS

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sb = make_sandbox(api_key="app-key", jwks=_jwks(key, "kid-1"))
    auth = SignedJwtAuth(
        client_id="app-key", private_key=_pem(key), kid="kid-1", token_url=sb.token_url
    )
    patient = f"{sb.url}/personal-demographics/FHIR/R4/Patient/{SANDBOX_PATIENTS['gpconnect']}"
    async with httpx.AsyncClient(auth=auth) as http:
        responses = await asyncio.gather(
            *(http.get(patient, headers={"X-Request-ID": str(uuid.uuid4())}) for _ in range(25))
        )
        refused = await http.get(patient, headers={"X-Request-ID": str(uuid.uuid4())}, auth=None)
    assert [r.status_code for r in responses] == [200] * 25
    assert refused.status_code == 401  # no token, no patient
    assert sb.stats()["requests"]["/oauth2/token"] == 1
    assert auth.tokens_fetched == 1


class _WrongAudience(SignedJwtAuth):
    """Posts to the real token URL an assertion whose ``aud`` names another URL."""

    def __init__(self, real_token_url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.real_token_url = real_token_url

    def _token_request(self) -> httpx.Request:
        request = super()._token_request()
        return httpx.Request(
            "POST", self.real_token_url, headers=request.headers, content=request.content
        )


@pytest.mark.parametrize(
    ("kid", "client_id", "wrong_audience"),
    [
        ("unknown-kid", "app-key", False),
        ("kid-1", "someone-else", False),
        ("kid-1", "app-key", True),
    ],
)
async def test_signed_jwt_refusals(
    make_sandbox: Callable[..., Sandbox], kid: str, client_id: str, wrong_audience: bool
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sb = make_sandbox(api_key="app-key", jwks=_jwks(key, "kid-1"))
    options: dict[str, Any] = {"client_id": client_id, "private_key": _pem(key), "kid": kid}
    auth: SignedJwtAuth
    if wrong_audience:
        auth = _WrongAudience(sb.token_url, token_url=sb.url + "/oauth2/other", **options)
    else:
        auth = SignedJwtAuth(token_url=sb.token_url, **options)
    async with _client(sb, auth=auth) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.devices(org="YES", interaction=PSIS)
    assert info.value.status_code == 401
    assert info.value.spine_code in {"invalid_request", "invalid_client", "unauthorized_client"}
    assert info.value.diagnostics
    assert "app-key" not in str(info.value)
    assert sb.stats()["requests"].get("/spine-directory/FHIR/R4/Device") is None


def test_sync_facade(sandbox: Sandbox) -> None:
    with SyncSdsClient(sandbox.base_url) as client:
        first = client.devices(org="YES", interaction=PSIS)
        second = client.endpoints(org="B82617", interaction=GPC_STRUCTURED)
    assert first.records[0].asid == "928942012545"
    assert second.records[0].party_key == "B82617-0000806"


async def test_sync_facade_inside_a_running_loop(sandbox: Sandbox) -> None:
    # Callers with their own loop (e.g. a sync callback inside an async app) still work.
    with SyncSdsClient(sandbox.base_url) as client:
        assert client.devices(org="YES", interaction=PSIS).records
