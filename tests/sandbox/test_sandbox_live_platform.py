"""The sandbox against what NHS's live SDS platform does, read from NHS's own code.

Sources (``NHSDigital/spine-directory-service-api``): the server under
``docker/sds-api/spine-directory-service/sds/`` (``S/`` below), the live Apigee proxy under
``proxies/live/apiproxy/`` (``P/``); and the libraries the server runs on, tornado 6.4.2 and
ldap3 2.8.1 (its ``Pipfile.lock``). Every test names the file it holds the sandbox to.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from sds_plugins.sandbox import SANDBOX_PATIENTS, Sandbox, SandboxConfig, SandboxProcess

from .conftest import (
    GP2GP,
    ODS,
    PSIS,
    Param,
    interaction,
    issue,
    manufacturer,
    org,
    party_key,
    spine_code,
    without_ids,
)

X26_DEVICE = [org("X26"), interaction(GP2GP)]
YES_ENDPOINT = [org("YES"), interaction(PSIS)]
API_KEY = "live-platform-key"


def _timed_get(http: httpx.Client, url: str, **options: Any) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = http.get(url, **options)
    return response, time.perf_counter() - started


# ----------------------------------------------------------------------- 1. API key only


def test_sds_takes_the_api_key_and_no_bearer_token(start_sandbox: Any, http: httpx.Client) -> None:
    """P/targets/target.xml: EnhancedVerifyApiKey, Quota, SpikeArrest, Response-Cache-SDS;
    OAuthV2.VerifyAccessToken.xml is in no flow."""
    sandbox = start_sandbox(api_key=API_KEY)
    url = sandbox.base_url + "/Device"
    assert http.get(url, params=X26_DEVICE, headers={"apikey": API_KEY}).status_code == 200
    for headers in ({"Authorization": "Bearer anything"}, {"Authorization": f"Bearer {API_KEY}"}):
        refused = http.get(url, params=X26_DEVICE, headers=headers)
        assert refused.status_code == 401
        assert issue(refused)["diagnostics"] == "Missing API Key"
    # Unknown FHIR paths and the health checks are behind the same key check.
    assert http.get(sandbox.base_url + "/Nothing").status_code == 401
    assert http.get(sandbox.base_url + "/healthcheck").status_code == 401


def test_pds_faults_still_echo_the_request_id(default_sandbox: Sandbox, http: httpx.Client) -> None:
    """Only SDS drops X-Request-ID; PDS echoes it, on injected faults too."""
    default_sandbox.set_faults(outage=True)
    request_id = str(uuid.uuid4())
    response = http.get(
        f"{default_sandbox.url}/personal-demographics/FHIR/R4/Patient/"
        f"{SANDBOX_PATIENTS['gpconnect']}",
        headers={"X-Request-ID": request_id},
    )
    assert response.status_code == 503
    assert response.headers["x-request-id"] == request_id


# ----------------------------------------------------------------------- 2. LDAP timeout


@pytest.mark.parametrize(("path", "params"), [("/Device", X26_DEVICE), ("/Endpoint", YES_ENDPOINT)])
def test_an_ldap_timeout_is_a_late_empty_searchset(
    default_sandbox: Sandbox, http: httpx.Client, path: str, params: list[Param]
) -> None:
    """S/lookup/sds_client.py _get_query_result: LDAPResponseTimeoutError is logged and the
    result is [], so the handler answers 200 with total 0, no entries and its self link."""
    url = default_sandbox.base_url + path
    genuine = http.get(url, params=[org("ZZZ99"), params[1]])  # a real "nothing found"
    assert default_sandbox.set_faults(ldap_timeout=True, ldap_timeout_ms=400)["ldap_timeout"]
    sent = str(uuid.uuid4()).upper()
    response, elapsed = _timed_get(http, url, params=params, headers={"X-Correlation-ID": sent})
    assert elapsed >= 0.4
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/fhir+json"
    assert response.headers["x-correlation-id"] == sent
    bundle = response.json()
    assert list(bundle) == list(genuine.json())
    assert bundle["total"] == 0
    assert bundle["entry"] == []
    assert bundle["link"] == [{"relation": "self", "url": unquote(str(response.url))}]
    assert without_ids(bundle) == without_ids(genuine.json())
    # The fault is the wait only: turned off, the same search finds its records, unheld.
    assert default_sandbox.stats()["ldap_timeouts"] == 1
    default_sandbox.set_faults(ldap_timeout=False)
    found = http.get(url, params=params)
    assert found.json()["total"] >= 1
    assert default_sandbox.stats()["ldap_timeouts"] == 1


def test_an_ldap_timeout_comes_after_the_gateway_and_the_checks(
    start_sandbox: Any, http: httpx.Client
) -> None:
    """The server only queries LDAP once the request passed its checks; the gateway's
    refusals come before the server."""
    sandbox = start_sandbox(api_key=API_KEY, ldap_timeout=True, ldap_timeout_ms=5000)
    url = sandbox.base_url + "/Device"
    key = {"apikey": API_KEY}
    for response_of in (
        lambda: http.get(url, params=X26_DEVICE),  # 401: no key
        lambda: http.post(url, params=X26_DEVICE, headers=key),  # 405
        lambda: http.get(url, params=X26_DEVICE, headers={**key, "X-Correlation-ID": "x"}),  # 400
        lambda: http.get(url, params=[org("X26")], headers=key),  # 400
        lambda: http.get(url, params=X26_DEVICE, headers={**key, "Accept": "text/html"}),  # 406
        lambda: http.get(sandbox.base_url + "/Nothing", headers=key),  # 404
    ):
        response = response_of()
        assert response.status_code in {400, 401, 404, 405, 406}
    # Refused before the server asked LDAP: not one of them was held.
    statuses = sandbox.stats()["statuses"]
    assert {status: statuses.get(status) for status in ("400", "401", "404", "405", "406")} == {
        "400": 2,
        "401": 1,
        "404": 1,
        "405": 1,
        "406": 1,
    }
    assert sandbox.stats()["ldap_timeouts"] == 0


def test_the_gateway_caches_an_ldap_timeouts_empty_answer(
    start_sandbox: Any, http: httpx.Client
) -> None:
    """A 200 is a success to P/policies/ResponseCache.xml (ExcludeErrorResponse keeps only
    errors out), so the empty answer is served from the cache for its lifetime."""
    sandbox = start_sandbox(response_cache_s=1800, ldap_timeout=True, ldap_timeout_ms=600)
    url = sandbox.base_url + "/Device"
    no_cache = {"Cache-Control": "no-cache"}

    first, slow = _timed_get(http, url, params=X26_DEVICE)
    assert slow >= 0.6
    assert first.json()["total"] == 0
    second = http.get(url, params=X26_DEVICE)
    assert second.content == first.content  # the stored answer, ids and all
    assert sandbox.stats()["ldap_timeouts"] == 1  # from the cache: LDAP was not asked

    sandbox.set_faults(ldap_timeout=False)  # LDAP answers again...
    assert http.get(url, params=X26_DEVICE).json()["total"] == 0  # ...but the cache still wins
    # no-cache skips the lookup (so the records are found) and the store (so the cached empty
    # answer stays for the callers without it).
    assert http.get(url, params=X26_DEVICE, headers=no_cache).json()["total"] == 1
    assert http.get(url, params=X26_DEVICE).json()["total"] == 0

    sandbox.set_faults(ldap_timeout=True)
    bypass, slow = _timed_get(http, url, params=X26_DEVICE, headers=no_cache)
    assert slow >= 0.6  # past the cache, to the timing-out LDAP
    assert bypass.json()["total"] == 0
    gateway = sandbox.stats()["gateway"]
    assert (gateway["cache_misses"], gateway["cache_hits"], gateway["cache_bypassed"]) == (1, 3, 2)


def test_the_ldap_wait_blocks_nothing_else(start_sandbox: Any) -> None:
    sandbox = start_sandbox(ldap_timeout=True, ldap_timeout_ms=4000)
    results: list[int] = []

    def search() -> None:
        with httpx.Client(timeout=30) as own:
            results.append(own.get(sandbox.base_url + "/Device", params=X26_DEVICE).status_code)

    threads = [threading.Thread(target=search) for _ in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while sandbox.stats()["ldap_timeouts"] < 3:  # all three are waiting at once...
        assert time.monotonic() < deadline
        time.sleep(0.02)
    # ...and the sandbox still answers (the stats above, and this) while they wait.
    with httpx.Client(timeout=10) as own:
        assert own.get(sandbox.url + "/_sandbox/faults").status_code == 200
    for thread in threads:
        thread.join(30)
    assert results == [200, 200, 200]


def test_a_caller_that_hangs_up_ends_the_wait(start_sandbox: Any) -> None:
    sandbox = start_sandbox(ldap_timeout=True, ldap_timeout_ms=30_000)
    with httpx.Client(timeout=0.3) as impatient, pytest.raises(httpx.ReadTimeout):
        impatient.get(sandbox.base_url + "/Device", params=X26_DEVICE)
    deadline = time.monotonic() + 5
    while sandbox.stats()["statuses"].get("499") != 1:
        assert time.monotonic() < deadline, sandbox.stats()
        time.sleep(0.05)


def test_stopping_the_sandbox_cancels_the_wait() -> None:
    sandbox = Sandbox(SandboxConfig(ldap_timeout=True, ldap_timeout_ms=60_000)).start()
    errors: list[BaseException] = []

    def search() -> None:
        try:
            httpx.get(sandbox.base_url + "/Device", params=X26_DEVICE, timeout=30)
        except httpx.HTTPError as error:
            errors.append(error)

    thread = threading.Thread(target=search)
    thread.start()
    time.sleep(0.3)
    sandbox.stop()  # uvicorn's graceful 2 s, then the waiting task is cancelled
    thread.join(30)  # long before the 60 s wait would have ended
    assert not thread.is_alive()


def test_ldap_timeout_configured_at_start_and_restored_by_reset(start_sandbox: Any) -> None:
    sandbox = start_sandbox(ldap_timeout=True, ldap_timeout_ms=250)
    faults = sandbox.set_faults(ldap_timeout=False)
    assert (faults["ldap_timeout"], faults["ldap_timeout_ms"]) == (False, 250)
    sandbox.reset()
    assert httpx.get(sandbox.url + "/_sandbox/faults").json()["ldap_timeout"] is True
    with pytest.raises(ValueError, match="ldap_timeout_ms"):
        SandboxConfig(ldap_timeout_ms=60_001)


@pytest.mark.slow
def test_ldap_timeout_from_the_command_line() -> None:
    with SandboxProcess(ldap_timeout=True, ldap_timeout_ms=300) as sandbox:
        faults = sandbox.set_faults()
        assert (faults["ldap_timeout"], faults["ldap_timeout_ms"]) == (True, 300)
        with httpx.Client(timeout=10) as http:
            response, elapsed = _timed_get(
                http, sandbox.base_url + "/Endpoint", params=YES_ENDPOINT
            )
        assert (response.status_code, response.json()["total"]) == (200, 0)
        assert elapsed >= 0.3


# ----------------------------------------------------------------------- 3. Accept


def test_repeated_accept_headers_are_read_joined(client: httpx.Client) -> None:
    """Tornado joins a repeated header's values with ',' (tornado/httputil.py HTTPHeaders.add),
    and S/request/content_type_validator.py then splits them again."""
    accepts = [("Accept", "application/xml"), ("Accept", "application/json")]
    response = client.get("/Device", params=X26_DEVICE, headers=accepts)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"


# ----------------------------------------------------------------------- 4. order and ids


@pytest.mark.parametrize(
    ("method", "path", "params", "headers", "status", "says"),
    [
        # Any method but GET first (S/request/base_handler.py prepare), whatever else is wrong.
        ("POST", "/Device", [("x", "1")], {"X-Correlation-ID": "bad", "Accept": "a/b"}, 405, ""),
        ("HEAD", "/Endpoint", [], {"Accept": "a/b"}, 405, ""),
        # Then the correlation id (S/request/tracking_ids_headers_reader.py)...
        ("GET", "/Device", [("x", "1")], {"X-Correlation-ID": "bad", "Accept": "a/b"}, 400,
         "Invalid X-Correlation-ID header"),
        # ...then the query's names and systems (_validate_query_params)...
        ("GET", "/Device", [("x", "1")], {"Accept": "a/b"}, 400, "Illegal query parameter 'x'"),
        ("GET", "/Endpoint", [("organization", "X26")], {"Accept": "a/b"}, 400,
         "Missing or invalid 'organization' query parameter"),
        # ...then required parameters or the allowed combinations...
        ("GET", "/Device", [org("X26")], {"Accept": "a/b"}, 400,
         "Missing or invalid 'identifier' query parameter"),
        ("GET", "/Endpoint", [org("X26")], {"Accept": "a/b"}, 400,
         "Missing or invalid query parameters"),
        # ...and Accept last (get_valid_accept_type).
        ("GET", "/Device", X26_DEVICE, {"Accept": "a/b"}, 406, "Accept type not supported"),
    ],
    ids=["405", "405-head", "correlation", "illegal", "system", "required", "combination", "406"],
)  # fmt: skip
def test_checks_come_in_the_servers_order(
    client: httpx.Client,
    method: str,
    path: str,
    params: list[Param],
    headers: dict[str, str],
    status: int,
    says: str,
) -> None:
    response = client.request(method, path, params=params, headers=headers)
    assert response.status_code == status
    if method != "HEAD":
        assert says in issue(response)["diagnostics"]


@pytest.mark.parametrize(
    "sent",
    [
        "2d2b7a0e-5b1c-4f0e-9d57-0c5a3f1e8b21",
        "2D2B7A0E-5B1C-4F0E-9D57-0C5A3F1E8B21",
        "6D3d3674-7ce5-11EC-90d6-0242ac120003",  # a version-1 UUID in mixed case
    ],
    ids=["lower", "upper", "mixed-v1"],
)
@pytest.mark.parametrize(
    ("params", "accept", "status"),
    [(X26_DEVICE, None, 200), ([org("X26")], None, 400), (X26_DEVICE, "text/html", 406)],
)
def test_a_valid_correlation_id_is_echoed_exactly_as_sent(
    client: httpx.Client, sent: str, params: list[Param], accept: str | None, status: int
) -> None:
    headers = {"X-Correlation-ID": sent} | ({"Accept": accept} if accept else {})
    response = client.get("/Device", params=params, headers=headers)
    assert response.status_code == status
    assert response.headers["x-correlation-id"] == sent
    if status != 200:
        assert response.json()["id"] == sent


@pytest.mark.parametrize(
    "headers",
    [
        [("X-Correlation-ID", "not-a-uuid")],
        [("X-Correlation-ID", f"{uuid.uuid4()}0")],
        # Two valid ids are read as one joined value (tornado HTTPHeaders.add), which is not.
        [("X-Correlation-ID", str(uuid.uuid4())), ("X-Correlation-ID", str(uuid.uuid4()))],
    ],
    ids=["text", "too-long", "repeated"],
)
def test_an_invalid_correlation_id_is_answered_under_a_new_upper_case_id(
    client: httpx.Client, headers: list[tuple[str, str]]
) -> None:
    response = client.get("/Device", params=X26_DEVICE, headers=headers)
    assert spine_code(response) == "BAD_REQUEST"
    replacement = response.headers["x-correlation-id"]
    assert uuid.UUID(replacement)
    assert replacement == replacement.upper()
    assert response.json()["id"] == replacement


def test_an_empty_correlation_id_counts_as_absent(client: httpx.Client) -> None:
    response = client.get("/Device", params=X26_DEVICE, headers={"X-Correlation-ID": ""})
    assert response.status_code == 200
    generated = response.headers["x-correlation-id"]
    assert uuid.UUID(generated) and generated == generated.upper()


def test_bundle_and_resource_ids_are_upper_case(client: httpx.Client) -> None:
    bundle = client.get("/Endpoint", params=[org("X26"), interaction(GP2GP)]).json()
    ids = [bundle["id"]] + [entry["resource"]["id"] for entry in bundle["entry"]]
    assert len(ids) == 3
    assert all(uuid.UUID(i) and i == i.upper() for i in ids)


# ----------------------------------------------------------------------- 5. wire format


def test_bodies_are_written_as_the_server_writes_them(client: httpx.Client) -> None:
    """Bundles json.dumps(indent=2) (the handlers), OperationOutcomes indent=4
    (S/request/error_handler.py), both ASCII."""
    found = client.get("/Device", params=X26_DEVICE)
    assert found.content == json.dumps(found.json(), indent=2).encode()
    refused = client.get("/Device", params=[("caf\u00e9", "1")])
    assert refused.content == json.dumps(refused.json(), indent=4).encode()


def test_answers_carry_tornados_etag_and_honour_if_none_match(client: httpx.Client) -> None:
    """tornado/web.py finish(): a 200 GET gets Etag = the body's quoted SHA-1, and a matching
    If-None-Match (or '*') turns it into an empty 304."""
    response = client.get("/Device", params=X26_DEVICE)
    assert response.headers["etag"] == f'"{hashlib.sha1(response.content).hexdigest()}"'
    assert "etag" not in client.get("/Device", params=[org("X26")]).headers  # errors: none
    # Fresh ids make every body, and so every Etag, new: only '*' can match.
    again = client.get(
        "/Device", params=X26_DEVICE, headers={"If-None-Match": response.headers["etag"]}
    )
    assert again.status_code == 200
    for value in ("*", 'W/"x", *'):
        unchanged = client.get("/Device", params=X26_DEVICE, headers={"If-None-Match": value})
        if value.startswith("*"):
            assert unchanged.status_code == 304
            assert unchanged.content == b""
            assert unchanged.headers["etag"]
            assert unchanged.headers["x-correlation-id"]
            assert "content-type" not in unchanged.headers
        else:
            assert unchanged.status_code == 200  # '*' counts only first, as in tornado


# ----------------------------------------------------------------------- 6. query values


def test_a_star_is_an_ldap_wildcard(client: httpx.Client) -> None:
    """S/lookup/sds_client.py puts values unescaped into its LDAP filter; ldap3 2.8.1
    (ldap3/operation/search.py evaluate_match) reads '*' as a substring or presence match."""

    def total(path: str, *params: Param) -> int:
        response = client.get(path, params=list(params))
        assert response.status_code == 200, response.text
        result: int = response.json()["total"]
        return result

    assert total("/Device", org("X2*"), interaction(GP2GP)) == 1
    assert total("/Device", org("X2"), interaction(GP2GP)) == 0  # no prefix match without '*'
    # X26's, and the two GP2GP practices' of this project's additions
    assert total("/Device", org("*"), interaction("*copc_in000001uk01")) == 3
    assert total("/Device", org("X26"), interaction(GP2GP), manufacturer("*")) == 1
    assert total("/Endpoint", org("YES"), party_key("YES-*")) == 5
    assert total("/Endpoint", org("X*"), interaction(GP2GP)) == 2
    # The forward-reliable rewrite still applies to records found by a pattern.
    found = client.get("/Endpoint", params=[org("X2*"), interaction("*:COPC_IN000001UK01")])
    addresses = {entry["resource"]["address"] for entry in found.json()["entry"]}
    assert addresses == {"https://msg.int.spine2.ncrs.nhs.uk/reliablemessaging/intermediary"}


def test_control_characters_in_values_are_blanks(client: httpx.Client) -> None:
    """tornado/web.py _get_arguments turns \\x00-\\x08 and \\x0e-\\x1f into spaces, then strips."""
    response = client.get("/Device", params=[org("X26\x01"), interaction(f"\x1f{GP2GP}")])
    assert response.json()["total"] == 1


def test_a_value_that_is_not_utf8_is_a_500(default_sandbox: Sandbox, http: httpx.Client) -> None:
    """_validate_query_params decodes each value with .decode('utf-8'); the UnicodeDecodeError
    escapes as a 500 carrying its text. An unknown name is still reported first."""
    base = default_sandbox.base_url + "/Device"
    query = f"organization={ODS}%7CX%FF&identifier=x"
    response = http.get(f"{base}?{query}")
    assert response.status_code == 500
    assert spine_code(response) == "INTERNAL_SERVER_ERROR"
    value = f"{ODS}|X".encode() + b"\xff"
    with pytest.raises(UnicodeDecodeError) as expected:
        value.decode("utf-8")
    assert issue(response)["diagnostics"] == str(expected.value)
    illegal = http.get(f"{base}?x=%FF&{query}")
    assert issue(illegal)["diagnostics"] == "HTTP 400: Bad Request (Illegal query parameter 'x')"
    # Names are read as latin-1 (tornado/escape.py parse_qs_bytes).
    named = http.get(f"{base}?caf%C3%A9=1")
    assert "Illegal query parameter 'caf\u00c3\u00a9'" in issue(named)["diagnostics"]


@pytest.mark.parametrize(
    ("mhs", "accredited", "path", "params", "diagnostics"),
    [
        (
            [],
            [{"nhsIDCode": "A1", "nhsAsSvcIA": "svc:x", "uniqueIdentifier": ["1", "2"]}],
            "/Device",
            [org("A1"), interaction("svc:x")],
            "LDAP returned more than 1 'uniqueIdentifier' attribute",
        ),
        (
            [],
            [{"nhsIDCode": "A1", "nhsAsSvcIA": "svc:x", "nhsAsClient": ["A1", "B2"]}],
            "/Device",
            [org("A1"), interaction("svc:x")],
            "LDAP returned more than 1 'nhsAsClient' attribute",
        ),
        (
            [{"nhsIDCode": "A1", "nhsMhsSvcIA": "svc:x", "nhsMHSActor": ["a", "b"]}],
            [],
            "/Endpoint",
            [org("A1"), interaction("svc:x")],
            "LDAP returned more than 1 'nhsMHSActor' attribute",
        ),
        (
            [{"nhsIDCode": "A1", "nhsMhsSvcIA": "svc:x", "nhsMHSRetries": "often"}],
            [],
            "/Endpoint",
            [org("A1"), interaction("svc:x")],
            "invalid literal for int() with base 10: 'often'",
        ),
    ],
    ids=["asid", "client", "actor", "retries"],
)
def test_records_the_servers_mapper_refuses_are_500s(
    start_sandbox: Any,
    http: httpx.Client,
    mhs: list[dict[str, Any]],
    accredited: list[dict[str, Any]],
    path: str,
    params: list[Param],
    diagnostics: str,
) -> None:
    """S/request/fhir_json_mapper.py raises ValueError (or int() does); the handler's 500."""
    sandbox = start_sandbox(mhs, accredited)
    response = http.get(sandbox.base_url + path, params=params)
    assert response.status_code == 500
    assert issue(response)["code"] == "exception"
    assert spine_code(response) == "INTERNAL_SERVER_ERROR"
    assert issue(response)["diagnostics"] == diagnostics


# ----------------------------------------------------------------------- 7. the proxy's own paths


def test_cors_preflight_is_answered_by_the_proxy(start_sandbox: Any, http: httpx.Client) -> None:
    """P/proxies/default.xml OptionsPreFlight + AssignMessage.AddCors, before any key check."""
    sandbox = start_sandbox(api_key=API_KEY)
    for path in ("/Device", "/Endpoint", "/Nothing", "/_ping"):
        response = http.options(
            sandbox.base_url + path,
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"},
        )
        assert response.status_code == 200
        assert response.content == b""
        assert response.headers["access-control-allow-origin"] == "https://app.example"
        assert response.headers["access-control-allow-methods"] == "GET, PUT, POST, PATCH, DELETE"
        assert response.headers["access-control-max-age"] == "3628800"
        assert "if-match" in response.headers["access-control-allow-headers"]
    # Without Access-Control-Request-Method it is an ordinary request: key first, then 405.
    plain = http.options(sandbox.base_url + "/Device", headers={"Origin": "https://app.example"})
    assert plain.status_code == 401
    keyed = {"Origin": "https://app.example", "apikey": API_KEY}
    assert http.options(sandbox.base_url + "/Device", headers=keyed).status_code == 405


def test_ping_and_status_are_the_proxys(start_sandbox: Any, http: httpx.Client) -> None:
    """P/proxies/default.xml: /_ping (AssignMessage.AddPayloadToPing) for anyone; /_status
    only with the status key (else RaiseFault.401Unauthorized), reporting /healthcheck/deep."""
    sandbox = start_sandbox(api_key=API_KEY, quota_per_min=1)
    ping = http.get(sandbox.base_url + "/_ping")
    assert ping.status_code == 200
    assert ping.headers["content-type"] == "application/json"
    assert list(ping.json()) == ["version", "revision", "releaseId", "commitId"]
    assert http.head(sandbox.base_url + "/_ping").status_code == 200
    refused = http.get(sandbox.base_url + "/_status", headers={"apikey": "wrong"})
    assert (refused.status_code, refused.content) == (401, b"")
    status = http.get(sandbox.base_url + "/_status", headers={"apikey": API_KEY})
    assert status.status_code == 200
    report = status.json()
    assert report["status"] == "pass"
    [check] = report["checks"]["healthcheckService:status"]
    assert (check["status"], check["responseCode"]) == ("pass", 200)
    assert check["links"]["self"].endswith("/spine-directory/FHIR/R4/healthcheck/deep")
    sandbox.set_faults(outage=True)
    failing = http.get(sandbox.base_url + "/_status", headers={"apikey": API_KEY}).json()
    assert failing["status"] == "fail"
    assert failing["checks"]["healthcheckService:status"][0]["responseCode"] == 503
    # None of that passed the target's PreFlow: the quota of one is untouched.
    sandbox.set_faults(outage=False)
    key = {"apikey": API_KEY}
    assert http.get(sandbox.base_url + "/Device", params=X26_DEVICE, headers=key).status_code == 200
    # Other methods go to the target like any path: key, quota, then the server's 404.
    assert http.post(sandbox.base_url + "/_ping", headers=key).status_code == 429


def test_health_checks_are_the_servers(start_sandbox: Any, http: httpx.Client) -> None:
    """S/main.py routes /healthcheck and /healthcheck/deep to healthcheck_handler.py."""
    sandbox = start_sandbox()
    shallow = http.get(sandbox.base_url + "/healthcheck")
    assert (shallow.status_code, shallow.content) == (200, b"")
    assert shallow.headers["etag"] == f'"{hashlib.sha1(b"").hexdigest()}"'
    deep = http.get(sandbox.base_url + "/healthcheck/deep")
    assert deep.status_code == 200
    assert deep.headers["content-type"] == "application/json"
    assert deep.json()["status"] == "pass"
    assert deep.json()["details"]["ldap"]["status"] == "pass"
    other = http.post(sandbox.base_url + "/healthcheck")
    assert other.status_code == 405
    assert b"405: Method Not Allowed" in other.content


# ----------------------------------------------------------------------- 8. the response cache


def test_the_cache_key_holds_every_accept_header(start_sandbox: Any, http: httpx.Client) -> None:
    """UseAcceptHeader (P/policies/ResponseCache.xml): Apigee keys Accept, Accept-Encoding,
    Accept-Language and Accept-Charset (Apigee's ResponseCache policy documentation)."""
    sandbox = start_sandbox(response_cache_s=1800)
    url = sandbox.base_url + "/Device"
    base = {"Accept-Encoding": "gzip"}
    assert http.get(url, params=X26_DEVICE, headers=base).status_code == 200
    sandbox.set_faults(outage=True)
    assert http.get(url, params=X26_DEVICE, headers=base).status_code == 200  # cached
    for other in (
        {"Accept-Encoding": "identity"},
        {**base, "Accept-Language": "en-GB"},
        {**base, "Accept-Charset": "utf-8"},
        {**base, "Accept": "application/json"},
    ):
        assert http.get(url, params=X26_DEVICE, headers=other).status_code == 503, other


@pytest.mark.parametrize(
    ("cache_control", "skips"),
    [
        ("no-cache", True),
        ("no-cache, no-store", True),  # Apigee reads a header's first value
        ("no-store, no-cache", False),
        ("No-Cache", False),  # the condition compares the exact string
        ("max-age=0", False),
    ],
)
def test_only_a_first_value_of_no_cache_skips_the_cache(
    start_sandbox: Any, http: httpx.Client, cache_control: str, skips: bool
) -> None:
    """ResponseCache.xml skips on request.header.cache-control = "no-cache"; Apigee's
    request.header.<name> is the first comma-separated value ("multi-value HTTP headers"
    antipattern, Apigee documentation)."""
    sandbox = start_sandbox(response_cache_s=1800)
    url = sandbox.base_url + "/Device"
    http.get(url, params=X26_DEVICE)
    sandbox.set_faults(outage=True)
    response = http.get(url, params=X26_DEVICE, headers={"Cache-Control": cache_control})
    assert response.status_code == (503 if skips else 200)


def test_gateway_rates_are_the_policies_fallbacks() -> None:
    """SpikeArrest.xml 40ps and Quota.xml 2400 are fallbacks of apiproduct.* references; the
    standard product (manifest_template.yml) sets ratelimit 300pm and quota 300 per minute."""
    from sds_plugins._sandbox._config import PRODUCT_QUOTA_PER_MIN, PRODUCT_SPIKE_ARREST_PER_S

    config = SandboxConfig.gateway()
    assert (config.spike_arrest_per_s, config.quota_per_min, config.response_cache_s) == (
        40,
        2400,
        1800,
    )
    assert (PRODUCT_SPIKE_ARREST_PER_S, PRODUCT_QUOTA_PER_MIN) == (5, 300)
    product = SandboxConfig.gateway(
        spike_arrest_per_s=PRODUCT_SPIKE_ARREST_PER_S, quota_per_min=PRODUCT_QUOTA_PER_MIN
    )
    assert (product.spike_arrest_per_s, product.quota_per_min) == (5, 300)
