"""Rate limits, injected faults and the control endpoints."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from sds_plugins.sandbox import Sandbox

from .conftest import GP2GP, interaction, issue, org

DEVICE = "/spine-directory/FHIR/R4/Device"
GATEWAY_SYSTEM = "https://fhir.nhs.uk/R4/CodeSystem/Spine-ErrorOrWarningCode"
PARAMS = [org("X26"), interaction(GP2GP)]


def _get(http: httpx.Client, sandbox: Sandbox) -> httpx.Response:
    return http.get(sandbox.base_url + "/Device", params=PARAMS)


def test_rate_limit(start_sandbox: Any, http: httpx.Client) -> None:
    sandbox = start_sandbox(rate_limit=5)
    statuses = [http.get(sandbox.base_url + "/Device", params=PARAMS) for _ in range(8)]
    token = http.post(sandbox.token_url, data={"grant_type": "client_credentials"})
    assert [r.status_code for r in statuses[:5]] == [200] * 5
    limited = statuses[5:]
    assert all(r.status_code == 429 for r in limited)
    assert token.status_code == 429
    for response in limited:
        assert response.headers["retry-after"] == "1"
        [coding] = issue(response)["details"]["coding"]
        assert coding["system"] == GATEWAY_SYSTEM
        assert coding["code"] == "TOO_MANY_REQUESTS"
    time.sleep(1.05)
    assert _get(http, sandbox).status_code == 200
    # Control endpoints are never limited.
    assert http.get(sandbox.url + "/_sandbox/stats").status_code == 200


def test_latency(start_sandbox: Any, http: httpx.Client) -> None:
    sandbox = start_sandbox(latency_ms=150)
    started = time.perf_counter()
    assert _get(http, sandbox).status_code == 200
    assert time.perf_counter() - started >= 0.15
    assert sandbox.set_faults(latency_ms=0)["latency_ms"] == 0
    assert _get(http, sandbox).status_code == 200


def test_error_rate(start_sandbox: Any, http: httpx.Client) -> None:
    sandbox = start_sandbox(error_rate=1.0, error_status=502)
    response = _get(http, sandbox)
    assert response.status_code == 502
    assert issue(response)["details"]["coding"][0]["code"] == "INTERNAL_SERVER_ERROR"
    assert response.json()["id"] == response.headers["x-correlation-id"]
    sandbox.set_faults(error_rate=0.5, error_status=503)
    statuses = {_get(http, sandbox).status_code for _ in range(40)}
    assert statuses == {200, 503}
    sandbox.set_faults(error_rate=0)
    assert {_get(http, sandbox).status_code for _ in range(10)} == {200}


def test_error_rate_is_repeatable_for_a_seed(start_sandbox: Any, http: httpx.Client) -> None:
    runs = []
    for _ in range(2):
        sandbox = start_sandbox(error_rate=0.5, seed=9)
        runs.append([_get(http, sandbox).status_code for _ in range(20)])
    assert runs[0] == runs[1]


def test_outage_and_retry_after(start_sandbox: Any, http: httpx.Client) -> None:
    sandbox = start_sandbox()
    settings = sandbox.set_faults(outage=True, retry_after=7)
    assert settings == {
        "latency_ms": 0,
        "error_rate": 0,
        "error_status": 503,
        "outage": True,
        "retry_after": 7,
    }
    response = _get(http, sandbox)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"
    assert response.headers["content-type"] == "application/fhir+json"
    # The token endpoint is never faulted.
    assert http.post(sandbox.token_url, data={"grant_type": "x"}).status_code == 400
    sandbox.set_faults(error_status=504, retry_after=None)
    response = _get(http, sandbox)
    assert response.status_code == 504
    assert "retry-after" not in response.headers
    assert issue(response)["code"] == "timeout"


def test_reset_restores_configured_faults_and_clears_counters(
    start_sandbox: Any, http: httpx.Client
) -> None:
    sandbox = start_sandbox(rate_limit=3, latency_ms=0)
    sandbox.set_faults(outage=True, error_status=500)
    assert [_get(http, sandbox).status_code for _ in range(4)] == [500, 500, 500, 429]
    sandbox.reset()
    assert sandbox.stats() == {"requests": {}, "statuses": {}}
    assert _get(http, sandbox).status_code == 200


def test_stats(start_sandbox: Any, http: httpx.Client) -> None:
    sandbox = start_sandbox()
    _get(http, sandbox)
    _get(http, sandbox)
    http.get(sandbox.base_url + "/Device")
    http.get(sandbox.base_url + "/Endpoint", params=PARAMS)
    http.get(sandbox.url + "/nowhere")
    http.post(sandbox.token_url, data={"grant_type": "x"})
    assert sandbox.stats() == {
        "requests": {
            DEVICE: 3,
            "/spine-directory/FHIR/R4/Endpoint": 1,
            "/nowhere": 1,
            "/oauth2/token": 1,
        },
        "statuses": {"200": 3, "400": 2, "404": 1},
    }


@pytest.mark.parametrize(
    "body",
    [
        [],
        "outage",
        {"surprise": 1},
        {"latency_ms": -1},
        {"latency_ms": "fast"},
        {"error_rate": 2},
        {"error_rate": True},
        {"error_status": 200},
        {"error_status": 503.5},
        {"outage": "yes"},
        {"retry_after": -3},
    ],
)
def test_invalid_fault_settings_are_400(
    default_sandbox: Sandbox, body: object, http: httpx.Client
) -> None:
    response = http.post(default_sandbox.url + "/_sandbox/faults", json=body)
    assert response.status_code == 400
    assert "error" in response.json()


def test_garbage_fault_body_is_400(default_sandbox: Sandbox, http: httpx.Client) -> None:
    response = http.post(default_sandbox.url + "/_sandbox/faults", content=b"{not json")
    assert response.status_code == 400


def test_set_faults_helper_raises_on_bad_input(start_sandbox: Any) -> None:
    sandbox = start_sandbox()
    with pytest.raises(httpx.HTTPStatusError):
        sandbox.set_faults(error_rate=5)
