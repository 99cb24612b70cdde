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


def _fault(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/json"
    assert "retry-after" not in response.headers  # Apigee's faults say nothing of when
    fault: dict[str, Any] = response.json()["fault"]
    return fault


def test_spike_arrest_refuses_a_request_sooner_than_the_smoothed_interval(
    start_sandbox: Any, http: httpx.Client
) -> None:
    # 1 per second smoothed: one request per 1,000 ms, however few came that second.
    sandbox = start_sandbox(spike_arrest_per_s=1)
    first, second = _get(http, sandbox), _get(http, sandbox)
    assert first.status_code == 200
    fault = _fault(second)
    assert fault == {
        "faultstring": "Spike arrest violation. Allowed rate : 1ps",
        "detail": {"errorcode": "policies.ratelimit.SpikeArrestViolation"},
    }
    # The token endpoint is another proxy, and the control endpoints are never limited.
    assert http.post(sandbox.token_url, data={"grant_type": "x"}).status_code == 400
    gateway = sandbox.stats()["gateway"]
    assert gateway["spike_arrest_per_s"] == 1
    assert gateway["spike_arrest_refused"] == 1


def test_quota_counts_every_request_per_calendar_minute(
    start_sandbox: Any, http: httpx.Client
) -> None:
    sandbox = start_sandbox(quota_per_min=3, spike_arrest_per_s=1)
    statuses = [_get(http, sandbox).status_code for _ in range(4)]
    # The first passes; the next two are spiked but still counted by the quota (it runs
    # first in the live proxy's PreFlow); the fourth is over the quota.
    assert statuses == [200, 429, 429, 429]
    last = _get(http, sandbox)
    assert _fault(last)["detail"]["errorcode"] == "policies.ratelimit.QuotaViolation"
    gateway = sandbox.stats()["gateway"]
    assert (gateway["spike_arrest_refused"], gateway["quota_refused"]) == (2, 2)


def test_a_missing_key_is_refused_before_the_limits(start_sandbox: Any, http: httpx.Client) -> None:
    sandbox = start_sandbox(api_key="k", quota_per_min=1)
    assert [_get(http, sandbox).status_code for _ in range(3)] == [401, 401, 401]
    assert sandbox.stats()["gateway"]["quota_refused"] == 0


def test_response_cache_serves_repeats_until_no_cache(
    start_sandbox: Any, http: httpx.Client
) -> None:
    sandbox = start_sandbox(response_cache_s=1800)
    first = _get(http, sandbox)
    sandbox.set_faults(outage=True)  # SDS itself is down: the gateway still answers
    cached = _get(http, sandbox)
    assert cached.status_code == 200
    assert cached.json() == first.json()  # the same bundle, ids and all
    bypass = http.get(
        sandbox.base_url + "/Device", params=PARAMS, headers={"Cache-Control": "no-cache"}
    )
    assert bypass.status_code == 503  # past the cache, to the failing SDS
    # Accept is part of the key (UseAcceptHeader): another media type is another entry.
    other = http.get(
        sandbox.base_url + "/Device", params=PARAMS, headers={"Accept": "application/json"}
    )
    assert other.status_code == 503
    sandbox.set_faults(outage=False)
    gateway = sandbox.stats()["gateway"]
    assert gateway["cache_hits"] == 1
    assert gateway["cache_misses"] == 2
    assert gateway["cache_bypassed"] == 1


def test_error_responses_are_not_cached(start_sandbox: Any, http: httpx.Client) -> None:
    sandbox = start_sandbox(response_cache_s=1800)
    sandbox.set_faults(outage=True)
    assert _get(http, sandbox).status_code == 503
    sandbox.set_faults(outage=False)
    assert _get(http, sandbox).status_code == 200
    # A no-cache answer is not stored either.
    sandbox.reset()
    http.get(sandbox.base_url + "/Device", params=PARAMS, headers={"Cache-Control": "no-cache"})
    _get(http, sandbox)
    assert sandbox.stats()["gateway"]["cache_hits"] == 0


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
        "ldap_timeout": False,
        "ldap_timeout_ms": 3000,
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
    sandbox = start_sandbox(quota_per_min=3, latency_ms=0)
    sandbox.set_faults(outage=True, error_status=500)
    assert [_get(http, sandbox).status_code for _ in range(4)] == [500, 500, 500, 429]
    sandbox.reset()
    stats = sandbox.stats()
    assert (stats["requests"], stats["statuses"]) == ({}, {})
    assert stats["gateway"]["quota_refused"] == 0
    assert _get(http, sandbox).status_code == 200


def test_stats(start_sandbox: Any, http: httpx.Client) -> None:
    sandbox = start_sandbox()
    _get(http, sandbox)
    _get(http, sandbox)
    http.get(sandbox.base_url + "/Device")
    http.get(sandbox.base_url + "/Endpoint", params=PARAMS)
    http.get(sandbox.url + "/nowhere")
    http.post(sandbox.token_url, data={"grant_type": "x"})
    stats = sandbox.stats()
    assert stats["requests"] == {
        DEVICE: 3,
        "/spine-directory/FHIR/R4/Endpoint": 1,
        "/nowhere": 1,
        "/oauth2/token": 1,
    }
    assert stats["statuses"] == {"200": 3, "400": 2, "404": 1}
    # Every gateway policy is off by default (NHS's public sandbox has none of them).
    assert stats["gateway"] == {
        "spike_arrest_per_s": None,
        "quota_per_min": None,
        "response_cache_s": None,
        "quota_refused": 0,
        "spike_arrest_refused": 0,
        "cache_hits": 0,
        "cache_misses": 0,
        "cache_bypassed": 0,
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
        {"ldap_timeout": 1},
        {"ldap_timeout": "true"},
        {"ldap_timeout_ms": -1},
        {"ldap_timeout_ms": 60_001},
        {"ldap_timeout_ms": True},
        {"ldap_timeout_ms": "3s"},
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


# -- limits: a sandbox left running must not be hung or filled by what callers send ------------


def test_an_absurd_page_number_is_a_400(start_sandbox: Any, http: httpx.Client) -> None:
    sandbox = start_sandbox(page_size=2)
    response = http.get(sandbox.base_url + "/Device", params=[*PARAMS, ("page", "1" * 5000)])
    assert response.status_code == 400
    assert "positive integer" in issue(response)["diagnostics"]


def test_control_bodies_are_bounded(default_sandbox: Sandbox, http: httpx.Client) -> None:
    big = b'{"latency_ms": 0, "pad": "' + b"x" * (1024 * 1024) + b'"}'
    response = http.post(default_sandbox.url + "/_sandbox/faults", content=big)
    assert response.status_code == 413
    token = http.post(
        default_sandbox.token_url,
        content=b"a=" + b"x" * (1024 * 1024),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert token.status_code == 413


def test_the_stats_do_not_grow_with_every_path(start_sandbox: Any, http: httpx.Client) -> None:
    sandbox = start_sandbox()
    for n in range(1100):
        http.get(f"{sandbox.url}/nowhere/{n}")
    requests = sandbox.stats()["requests"]
    assert len(requests) == 1001
    assert requests["(other paths)"] == 100


@pytest.mark.parametrize("body", [{"latency_ms": 1e308}, {"retry_after": 10**9}])
def test_absurd_faults_are_refused(
    default_sandbox: Sandbox, body: object, http: httpx.Client
) -> None:
    response = http.post(default_sandbox.url + "/_sandbox/faults", json=body)
    assert response.status_code == 400


def test_headers_trickled_forever_are_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from sds_plugins._sandbox import _server

    monkeypatch.setattr(_server, "HEADER_TIMEOUT_S", 0.3)
    with Sandbox() as sandbox:
        host, port = sandbox.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"GET /spine-directory/FHIR/R4/Device HTTP/1.1\r\nHost: x\r\n")
            # ...and never the end of the headers: the sandbox closes the connection.
            assert sock.recv(1024) == b""
