"""Client failure handling, with faults shaped by httpx.MockTransport (unit level).

The same behaviours are exercised over real sockets against the sandbox in
test_client_sandbox.py; here we shape exact sequences (429 then 200, HTTP-date Retry-After...).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from sds_plugins import (
    AuthenticationError,
    DirectoryTimeoutError,
    DirectoryUnavailableError,
    InvalidInputError,
    MalformedResponseError,
    RateLimitedError,
    RequestRejectedError,
    RetryPolicy,
    SdsClient,
)
from sds_plugins._retrying import parse_retry_after
from sds_plugins._validation import sds_correlation_id

from ._reference import GPC_STRUCTURED, SDS_REFERENCE, load_json

BASE = "https://int.api.service.nhs.uk/spine-directory/FHIR/R4"
DEVICE_BODY = load_json(SDS_REFERENCE / "observed-responses" / "sds-server-single_device.json")
GATEWAY_ERROR = load_json(
    SDS_REFERENCE / "observed-responses" / "gpc-consumer-sds_error_response.json"
)
FAST = RetryPolicy(attempts=4, backoff_s=0.001, max_backoff_s=0.002, budget_s=5)


def _outcome(code: str, diagnostics: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "required",
                "details": {"coding": [{"code": code, "display": "x"}]},
                "diagnostics": diagnostics,
            }
        ],
    }


class Script:
    """Answers requests from a list of responses (or exceptions), recording what was asked."""

    def __init__(
        self, *answers: httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]
    ):
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer) and not isinstance(answer, httpx.Response):
            return answer(request)
        return answer


def _client(script: Script, retry: RetryPolicy = FAST, **options: Any) -> SdsClient:
    return SdsClient(BASE, transport=httpx.MockTransport(script), retry=retry, **options)


async def _devices(client: SdsClient, **kwargs: Any) -> Any:
    async with client:
        return await client.devices(org="B82617", interaction=GPC_STRUCTURED, **kwargs)


async def test_success_carries_the_correlation_id_and_sends_it() -> None:
    script = Script(httpx.Response(200, json=DEVICE_BODY))
    correlation_id = str(uuid.uuid4())
    result = await _devices(_client(script), correlation_id=correlation_id)
    assert result.correlation_id == correlation_id
    assert result.attempts == 1
    request = script.requests[0]
    assert request.headers["X-Correlation-ID"] == correlation_id
    assert request.headers["Accept"] == "application/fhir+json"
    assert "Cache-Control" not in request.headers
    assert request.url.params.get_list("identifier") == [
        f"https://fhir.nhs.uk/Id/nhsServiceInteractionId|{GPC_STRUCTURED}"
    ]


async def test_no_cache_is_passed_through() -> None:
    script = Script(httpx.Response(200, json=DEVICE_BODY))
    await _devices(_client(script), no_cache=True)
    assert script.requests[0].headers["Cache-Control"] == "no-cache"


async def test_invalid_input_sends_nothing() -> None:
    script = Script(httpx.Response(200, json=DEVICE_BODY))
    async with _client(script) as client:
        with pytest.raises(InvalidInputError):
            await client.devices(org="B82617\r\n", interaction=GPC_STRUCTURED)
        with pytest.raises(InvalidInputError):
            await client.devices(org="B82617", interaction=GPC_STRUCTURED, correlation_id="a\nb")
        with pytest.raises(InvalidInputError):
            await client.devices(org="B82617", interaction=GPC_STRUCTURED, correlation_id="x" * 201)
    assert script.requests == []


@pytest.mark.parametrize(
    "given", ["msg-42/ward 7", "0F0E0D0C-AAAA-4BBB-8CCC-123456789012", "{7d9f0a3c}"]
)
async def test_the_callers_correlation_id_is_kept_and_sds_gets_a_uuid(given: str) -> None:
    # SDS refuses an X-Correlation-ID that is not a UUID (in either case:
    # sds/request/tracking_ids_headers_reader.py, NHSDigital/spine-directory-service-api).
    script = Script(httpx.Response(200, json=DEVICE_BODY))
    result = await _devices(_client(script), correlation_id=given)
    assert result.correlation_id == given  # the caller's, byte for byte
    sent = script.requests[0].headers["X-Correlation-ID"]
    if given.startswith("0F0E"):
        assert sent == given  # a UUID goes as it is, upper case and all
    else:
        assert uuid.UUID(sent).version == 5  # derived: the same id always reaches SDS alike
        assert sent == sds_correlation_id(given)


@pytest.mark.parametrize("status", [429, 502, 503, 504])
async def test_transient_statuses_are_retried(status: int) -> None:
    script = Script(
        httpx.Response(status, json=_outcome("X", "busy")), httpx.Response(200, json=DEVICE_BODY)
    )
    result = await _devices(_client(script))
    assert result.attempts == 2
    assert len(result.records) == 1
    # Retries keep the correlation id: they are the same logical request.
    assert len({r.headers["X-Correlation-ID"] for r in script.requests}) == 1


async def test_transport_errors_are_retried() -> None:
    script = Script(httpx.ConnectError("refused"), httpx.Response(200, json=DEVICE_BODY))
    result = await _devices(_client(script))
    assert result.attempts == 2


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, RequestRejectedError),
        (404, RequestRejectedError),
        (405, RequestRejectedError),
        (406, RequestRejectedError),
        (401, AuthenticationError),
        (403, AuthenticationError),
        (500, DirectoryUnavailableError),
    ],
)
async def test_other_errors_are_not_retried(status: int, error: type[Exception]) -> None:
    script = Script(
        httpx.Response(status, json=_outcome("BAD_REQUEST", "Missing or invalid organization"))
    )
    with pytest.raises(error) as info:
        await _devices(_client(script))
    assert len(script.requests) == 1
    assert info.value.status_code == status  # type: ignore[attr-defined]
    assert info.value.attempts == 1  # type: ignore[attr-defined]


async def test_operation_outcome_becomes_a_typed_error() -> None:
    correlation_id = str(uuid.uuid4())
    script = Script(
        httpx.Response(400, json=_outcome("BAD_REQUEST", "Missing or invalid organization"))
    )
    with pytest.raises(RequestRejectedError) as info:
        await _devices(_client(script), correlation_id=correlation_id)
    error = info.value
    assert error.spine_code == "BAD_REQUEST"
    assert error.diagnostics == "Missing or invalid organization"
    assert error.correlation_id == correlation_id
    assert error.method == "GET"
    assert correlation_id in str(error)


async def test_gateway_error_body() -> None:
    script = Script(httpx.Response(500, json=GATEWAY_ERROR))
    with pytest.raises(DirectoryUnavailableError) as info:
        await _devices(_client(script))
    assert info.value.spine_code == "UNKNOWN_ERROR"
    assert "unknown error" in (info.value.diagnostics or "")


async def test_429_exhausting_attempts_is_rate_limited_not_500() -> None:
    script = Script(
        httpx.Response(
            429, headers={"Retry-After": "0"}, json=_outcome("TOO_MANY_REQUESTS", "slow down")
        )
    )
    with pytest.raises(RateLimitedError) as info:
        await _devices(_client(script))
    assert len(script.requests) == FAST.attempts
    assert info.value.attempts == FAST.attempts
    assert info.value.status_code == 429


async def test_retry_after_beyond_the_budget_fails_at_once() -> None:
    script = Script(httpx.Response(429, headers={"Retry-After": "120"}))
    with pytest.raises(RateLimitedError) as info:
        await _devices(_client(script, retry=RetryPolicy(attempts=5, budget_s=2)))
    assert len(script.requests) == 1
    assert info.value.retry_after_s == 120


async def test_retry_after_is_honoured(slept: list[float]) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=3), usegmt=True)
    script = Script(
        httpx.Response(503, headers={"Retry-After": "2"}),
        httpx.Response(429, headers={"Retry-After": when}),
        httpx.Response(200, json=DEVICE_BODY),
    )
    await _devices(_client(script, retry=RetryPolicy(attempts=5, budget_s=30)))
    assert slept[0] == 2
    assert 1.5 < slept[1] <= 3


def test_parse_retry_after() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("7") == 7
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0
    assert parse_retry_after("soon") is None


async def test_timeouts_are_never_not_found() -> None:
    script = Script(httpx.ReadTimeout("slow"))
    with pytest.raises(DirectoryTimeoutError) as info:
        await _devices(_client(script))
    assert info.value.attempts == FAST.attempts
    assert "did not answer in time" in str(info.value)


async def test_non_json_200_is_malformed() -> None:
    script = Script(httpx.Response(200, text="<html>maintenance</html>"))
    with pytest.raises(MalformedResponseError) as info:
        await _devices(_client(script))
    assert info.value.field == "body"
    assert len(script.requests) == 1


async def test_structurally_wrong_200_names_the_field_and_carries_the_correlation_id() -> None:
    broken = {**DEVICE_BODY, "entry": [{"resource": {"resourceType": "Device", "identifier": 5}}]}
    script = Script(httpx.Response(200, json=broken))
    with pytest.raises(MalformedResponseError) as info:
        await _devices(_client(script), correlation_id="0f8fad5b-d9cb-469f-a165-70867728950e")
    assert info.value.field == "entry[0].resource.identifier"
    assert info.value.correlation_id == "0f8fad5b-d9cb-469f-a165-70867728950e"


def _paged(
    pages: int, origin: str = "https://int.api.service.nhs.uk"
) -> Callable[[httpx.Request], httpx.Response]:
    def answer(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params.get("page", "1"))
        # A page's total counts every page's entries (one each here), as FHIR has it.
        body = {
            **DEVICE_BODY,
            "total": pages,
            "link": [{"relation": "self", "url": str(request.url)}],
        }
        if page < pages:
            body["link"].append(
                {
                    "relation": "next",
                    "url": f"{origin}/spine-directory/FHIR/R4/Device?page={page + 1}",
                }
            )
        return httpx.Response(200, json=body)

    return answer


async def test_next_links_are_followed() -> None:
    script = Script(_paged(3))
    result = await _devices(_client(script))
    assert result.pages == 3
    assert len(result.records) == 3
    assert [r.url.params.get("page") for r in script.requests] == [None, "2", "3"]


async def test_pages_are_bounded() -> None:
    script = Script(_paged(100))
    with pytest.raises(MalformedResponseError, match="beyond 5 pages"):
        await _devices(_client(script, max_pages=5))
    assert len(script.requests) == 5


async def test_next_link_to_another_origin_is_refused() -> None:
    script = Script(_paged(2, origin="https://evil.example"))
    with pytest.raises(MalformedResponseError, match="another origin"):
        await _devices(_client(script, auth=None))
    assert len(script.requests) == 1


async def test_one_http_client_for_all_requests() -> None:
    script = Script(httpx.Response(200, json=DEVICE_BODY))
    client = _client(script)
    pool = client._http
    async with client:
        for _ in range(3):
            await client.devices(org="B82617", interaction=GPC_STRUCTURED)
        assert client._http is pool
    assert pool.is_closed
