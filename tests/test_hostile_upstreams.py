"""The fault matrix: whatever a directory, a token endpoint or anything in between sends, a
lookup ends in one of the project's typed errors, within its time budget and in bounded memory.

Each case is answered by a hostile server of our own over a real socket (``tests/_hostile.py``).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from sds_plugins import (
    AccreditedSystem,
    DirectoryError,
    DirectoryTimeoutError,
    DirectoryUnavailableError,
    MalformedResponseError,
    RequestRejectedError,
    RetryPolicy,
    SdsClient,
    SignedJwtAuth,
)
from sds_plugins._auth import parse_token_response

from ._hostile import Case, HostileServer, endless, gzip_bomb, nested, trickle
from ._reference import GPC_STRUCTURED, SDS_REFERENCE, load_json

DEVICE_BODY = (SDS_REFERENCE / "observed-responses" / "sds-server-single_device.json").read_bytes()
ENDPOINT_JSON = load_json(SDS_REFERENCE / "observed-responses" / "sds-server-single_endpoint.json")
FHIR = "/spine-directory/FHIR/R4"
BUDGET = RetryPolicy(attempts=3, backoff_s=0.01, max_backoff_s=0.02, budget_s=3)


def _outcome(issue: dict[str, Any]) -> bytes:
    return json.dumps({"resourceType": "OperationOutcome", "issue": [issue]}).encode()


def _endpoint_with_retries(value: object) -> bytes:
    body = json.loads(json.dumps(ENDPOINT_JSON))
    resource = body["entry"][0]["resource"] if "entry" in body else body
    for extension in resource.get("extension", []):
        for item in extension.get("extension", []):
            if item.get("url") == "nhsMHSRetries":
                item.pop("valueInteger", None)
                item["valueString"] = value
    return json.dumps(body).encode()


async def _devices(server: HostileServer, policy: RetryPolicy = BUDGET, **options: Any) -> Any:
    async with SdsClient(server.url + FHIR, retry=policy, **options) as client:
        return await client.devices(org="B82617", interaction=GPC_STRUCTURED)


async def _endpoints(server: HostileServer) -> Any:
    async with SdsClient(server.url + FHIR, retry=BUDGET) as client:
        return await client.endpoints(org="B82617", interaction=GPC_STRUCTURED)


# (case name, answer to /Device, expected error class, attempts) — one per way an upstream
# has been seen to break things.
ERROR_CASES: list[tuple[str, Case, type[DirectoryError], int]] = [
    (
        "OperationOutcome details is a string",
        Case(400, body=_outcome({"code": "required", "details": "bad request"})),
        RequestRejectedError,
        1,
    ),
    (
        "OperationOutcome coding is an object",
        Case(400, body=_outcome({"details": {"coding": {"code": "BAD_REQUEST"}}})),
        RequestRejectedError,
        1,
    ),
    (
        "OperationOutcome coding is a number",
        Case(400, body=_outcome({"details": {"coding": 7}, "diagnostics": ["x"]})),
        RequestRejectedError,
        1,
    ),
    (
        "error body nested 100,000 deep",
        Case(500, body=nested(100_000)),
        DirectoryUnavailableError,
        1,
    ),
    (
        "Retry-After with a non-ASCII digit",
        Case(503, headers={"Retry-After": "²"}, body=b"{}"),
        DirectoryUnavailableError,
        3,
    ),
    ("a 200 body nested 100,000 deep", Case(200, body=nested(100_000)), MalformedResponseError, 1),
    (
        "a 200 body that is not JSON",
        Case(200, body=b"<html>oops</html>"),
        MalformedResponseError,
        1,
    ),
    (
        "a next link that is not a URL",
        Case(
            200,
            body=json.dumps(
                {"resourceType": "Bundle", "link": [{"relation": "next", "url": "http://[::1"}]}
            ).encode(),
        ),
        MalformedResponseError,
        1,
    ),
    (
        "an identifier with CR/LF",
        Case(200, body=DEVICE_BODY.replace(b'"value": "', b'"value": "\\r\\n', 1)),
        MalformedResponseError,
        1,
    ),
    (
        "a gzip stream that is corrupt",
        Case(200, headers={"Content-Encoding": "gzip"}, body=b"\x1f\x8b\x08\x00garbage"),
        MalformedResponseError,
        1,
    ),
    (
        "an encoding nobody asked for",
        Case(200, headers={"Content-Encoding": "br"}, body=b"\x00\x01"),
        MalformedResponseError,
        1,
    ),
    (
        "a status line that is not HTTP",
        Case(200, script=lambda: iter([(b"garbage\r\n\r\n", 0.0)])),
        DirectoryUnavailableError,
        3,
    ),
]


@pytest.mark.parametrize(
    ("case", "expected", "attempts"),
    [
        pytest.param(case, expected, attempts, id=name)
        for name, case, expected, attempts in ERROR_CASES
    ],
)
async def test_every_hostile_answer_is_a_typed_error(
    case: Case, expected: type[DirectoryError], attempts: int
) -> None:
    with HostileServer({FHIR + "/Device": case}) as server, pytest.raises(expected) as raised:
        await _devices(server)
    error = raised.value
    assert type(error) is expected or isinstance(error, expected)
    # Bounded by attempts (and the budget, which the lookup enforces as a deadline: see below);
    # how long that took is for bench/, not for an assertion here.
    assert error.attempts == attempts
    assert error.correlation_id
    str(error)  # and it prints


@pytest.mark.parametrize("retries", ["١٢", "1" * 5000, "²", "-3", True])
async def test_unreadable_retries_leave_the_endpoint_usable(retries: object) -> None:
    with HostileServer(
        {FHIR + "/Endpoint": Case(200, body=_endpoint_with_retries(retries))}
    ) as server:
        result = await _endpoints(server)
    [endpoint] = result.records
    assert endpoint.address
    assert endpoint.reliability is not None
    assert endpoint.reliability.retries is None


async def test_a_trickled_body_ends_within_the_budget() -> None:
    policy = RetryPolicy(attempts=3, backoff_s=0.01, budget_s=3, attempt_timeout_s=1)
    case = Case(200, script=trickle(DEVICE_BODY, every_s=0.5))
    with (
        HostileServer({FHIR + "/Device": case}) as server,
        pytest.raises(DirectoryTimeoutError) as raised,
    ):
        await _devices(server, policy)
    # Each attempt is cut at 1 s (httpx's per-read timeout would never fire: a byte comes every
    # 0.5 s): three attempts, each ended by its own deadline, not by the server.
    assert raised.value.attempts == 3


async def test_the_budget_is_a_deadline_for_the_whole_lookup() -> None:
    policy = RetryPolicy(attempts=20, backoff_s=0.01, budget_s=1.5, attempt_timeout_s=10)
    case = Case(200, script=trickle(DEVICE_BODY, every_s=0.2))
    with (
        HostileServer({FHIR + "/Device": case}) as server,
        pytest.raises(DirectoryTimeoutError, match="budget") as raised,
    ):
        await _devices(server, policy)
    # The budget ended it: one attempt (of 20 allowed), cut at the 1.5 s deadline although the
    # attempt's own timeout (10 s) and the trickle would have gone on.
    assert raised.value.attempts == 1


def _peak_mib(run: Callable[[], Any]) -> float:
    import asyncio

    tracemalloc.start()
    with contextlib.suppress(DirectoryError):
        asyncio.run(run())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 1024 / 1024


def test_a_decompression_bomb_is_refused_in_bounded_memory() -> None:
    bomb = gzip_bomb(1024 * 1024 * 1024)  # 1 GiB of zeros in about 1 MiB
    assert len(bomb) < 2 * 1024 * 1024
    case = Case(200, headers={"Content-Encoding": "gzip"}, body=bomb)
    with HostileServer({FHIR + "/Device": case}) as server:
        errors: list[BaseException] = []

        async def run() -> None:
            try:
                await _devices(server, max_response_bytes=4 * 1024 * 1024)
            except DirectoryError as exc:
                errors.append(exc)
                raise

        peak = _peak_mib(run)
    [error] = errors
    assert isinstance(error, MalformedResponseError)
    assert "larger than 4,194,304 bytes" in error.message
    assert error.retryable
    assert peak < 32, f"peak {peak:.1f} MiB"  # the limit plus a compressed chunk, not a GiB


def test_a_huge_error_body_is_not_read() -> None:
    case = Case(500, script=endless(b"x" * 65536, 256 * 1024 * 1024))
    with HostileServer({FHIR + "/Device": case}) as server:
        errors: list[BaseException] = []

        async def run() -> None:
            try:
                await _devices(server, RetryPolicy(attempts=1, budget_s=10))
            except DirectoryError as exc:
                errors.append(exc)
                raise

        peak = _peak_mib(run)
    [error] = errors
    assert isinstance(error, DirectoryUnavailableError)
    assert error.status_code == 500
    assert peak < 16, f"peak {peak:.1f} MiB"  # 64 KiB read for an OperationOutcome, no more


async def test_a_body_over_the_limit_is_refused_without_reading_it_all() -> None:
    big = b'{"resourceType": "Bundle", "entry": [' + b" " * (5 * 1024 * 1024) + b"]}"
    with (
        HostileServer({FHIR + "/Device": Case(200, body=big)}) as server,
        pytest.raises(MalformedResponseError, match="larger than"),
    ):
        await _devices(server, max_response_bytes=1024 * 1024)


# -- the token endpoint ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        nested(100_000),
        b'{"access_token": "t", "expires_in": "-1"}',
        b'{"access_token": "t", "expires_in": "nan"}',
        b'{"access_token": "t", "expires_in": "1e400"}',
        b'{"access_token": "t", "expires_in": "\xc2\xb2"}',
        b'{"access_token": "t\\r\\nX-Evil: 1", "expires_in": "599"}',
        b'{"access_token": ["t"], "expires_in": "599"}',
        b'{"expires_in": "599"}',
        b"[]",
    ],
)
def test_token_answers_that_cannot_be_used_are_typed(answer: bytes) -> None:
    with pytest.raises(MalformedResponseError):
        parse_token_response(answer)


def test_a_usable_token_answer() -> None:
    assert parse_token_response(b'{"access_token": "abc", "expires_in": "599"}') == ("abc", 599.0)
    assert parse_token_response(b'{"access_token": "abc", "expires_in": 60}') == ("abc", 60.0)


async def test_a_hostile_token_endpoint_fails_the_lookup_typed(
    private_key_pem: bytes,
) -> None:
    cases = {
        "/oauth2/token": Case(200, content_type="application/json", body=nested(100_000)),
        FHIR + "/Device": Case(200, body=DEVICE_BODY),
    }
    with HostileServer(cases) as server:
        auth = SignedJwtAuth(
            client_id="app",
            private_key=private_key_pem,
            kid="k",
            token_url=server.url + "/oauth2/token",
        )
        with pytest.raises(MalformedResponseError) as raised:
            await _devices(server, auth=auth)
        assert FHIR + "/Device" not in [target.split("?")[0] for target in server.seen]
    assert raised.value.method == "POST"


@pytest.fixture(scope="module")
def private_key_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# -- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["error body nested 100,000 deep", "a 200 body nested 100,000 deep"]
)
def test_no_upstream_fault_prints_a_traceback(name: str) -> None:
    case = next(case for label, case, _, _ in ERROR_CASES if label == name)
    with HostileServer({FHIR + "/Device": case}) as server:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "sds_plugins",
                "device",
                "--org",
                "B82617",
                "--interaction",
                GPC_STRUCTURED,
                "--base-url",
                server.url + FHIR,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={"SDS_RETRY_ATTEMPTS": "1", "PATH": "/usr/bin:/bin"},
        )
    assert result.returncode == 5, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")


def test_a_base_url_with_control_characters_or_credentials_is_refused_at_start() -> None:
    for url in ("http://127.0.0.1:1/x\r\nX-Evil: 1", "https://user:s3cret@example.org/x"):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "sds_plugins",
                "device",
                "--org",
                "B82617",
                "--interaction",
                GPC_STRUCTURED,
                "--base-url",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert "s3cret" not in result.stderr


async def test_the_reference_answer_still_parses() -> None:
    with HostileServer({FHIR + "/Device": Case(200, body=DEVICE_BODY)}) as server:
        result = await _devices(server)
    assert isinstance(result.records[0], AccreditedSystem)
    assert httpx.URL(server.url)  # the server was a real one
