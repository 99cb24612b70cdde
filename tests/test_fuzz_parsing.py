"""Property tests over every entry point that reads upstream bytes: arbitrary bytes or JSON in,
a parsed value or one of the project's typed errors out, never anything else.

The example count per entry point is bounded (``EXAMPLES``) so the suite runs in ``make test``.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sds_plugins import DirectoryError, MalformedResponseError, parse_devices, parse_endpoints
from sds_plugins._auth import parse_token_response
from sds_plugins._models import ASID_SYSTEM, INTERACTION_EXT, PARTY_KEY_SYSTEM, RELIABILITY_EXT
from sds_plugins._retrying import (
    error_from_response,
    gateway_throttle,
    seconds_to_next_minute,
)
from sds_plugins._upstream import load_json, operation_outcome, parse_retry_after

EXAMPLES = 300
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# Any JSON value, nested a little, with the strings an upstream might send.
TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=25,
)
KEYS = st.sampled_from(
    [
        "resourceType",
        "entry",
        "resource",
        "identifier",
        "extension",
        "url",
        "valueString",
        "valueInteger",
        "valueReference",
        "system",
        "value",
        "link",
        "relation",
        "address",
        "total",
        "owner",
        "managingOrganization",
        "issue",
        "details",
        "coding",
        "code",
        "diagnostics",
        "fault",
        "detail",
        "errorcode",
        "access_token",
        "expires_in",
    ]
)
VALUES = st.sampled_from(
    [
        "Bundle",
        "Device",
        "Endpoint",
        "OperationOutcome",
        "next",
        ASID_SYSTEM,
        PARTY_KEY_SYSTEM,
        INTERACTION_EXT,
        RELIABILITY_EXT,
        "nhsMHSRetries",
        "http://[::1",
        "²",
        "1e400",
        "-1",
        "nan",
        "policies.ratelimit.SpikeArrestViolation",
    ]
)
# FHIR-shaped: the keys and values our parsers look for, in any arrangement.
SHAPED: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.integers() | VALUES | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=40,
)
BODIES = st.one_of(
    st.binary(max_size=300),
    JSON.map(lambda value: json.dumps(value).encode()),
    SHAPED.map(lambda value: json.dumps(value).encode()),
)


@FUZZ
@given(BODIES)
def test_device_answers(body: bytes) -> None:
    try:
        parsed = parse_devices(body)
    except MalformedResponseError:
        return
    assert isinstance(parsed.records, tuple)


@FUZZ
@given(BODIES)
def test_endpoint_answers(body: bytes) -> None:
    try:
        parsed = parse_endpoints(body)
    except MalformedResponseError:
        return
    for record in parsed.records:
        retries = record.reliability.retries if record.reliability else None
        assert retries is None or isinstance(retries, int)


@FUZZ
@given(JSON | SHAPED)
def test_operation_outcomes(body: object) -> None:
    code, diagnostics = operation_outcome(body)
    assert code is None or isinstance(code, str)
    assert diagnostics is None or isinstance(diagnostics, str)


@FUZZ
@given(st.integers(400, 599), BODIES, st.text(max_size=30))
def test_error_answers(status: int, body: bytes, retry_after: str) -> None:
    request = httpx.Request("GET", "https://example.org/Device")
    headers = {"Retry-After": retry_after.encode("utf-8", "replace").decode("latin-1")}
    try:
        response = httpx.Response(status, content=body, headers=headers, request=request)
    except (UnicodeEncodeError, ValueError):
        response = httpx.Response(status, content=body, request=request)
    error = error_from_response(response, "6b1a2c3d-0000-4000-8000-000000000000")
    assert isinstance(error, DirectoryError)
    str(error)
    if hasattr(error, "retry_after_s") and error.retry_after_s is not None:
        assert 0 <= error.retry_after_s <= 86_400


@FUZZ
@given(st.text(max_size=80))
def test_retry_after_values(value: str) -> None:
    seconds = parse_retry_after(value)
    assert seconds is None or 0 <= seconds <= 86_400


@FUZZ
@given(st.text(max_size=60))
def test_date_headers(value: str) -> None:
    assert 0 < seconds_to_next_minute(value, now=120.0) <= 60


@FUZZ
@given(BODIES)
def test_token_answers(body: bytes) -> None:
    try:
        token, expires_in = parse_token_response(body)
    except MalformedResponseError:
        return
    assert token and token.isascii() and "\n" not in token
    assert 1 <= expires_in <= 86_400


@FUZZ
@given(BODIES)
def test_json_and_gateway_faults(body: bytes) -> None:
    try:
        value = load_json(body)
    except MalformedResponseError:
        return
    assert gateway_throttle(value) in (None, "spike_arrest", "quota")
