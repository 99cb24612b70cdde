"""The worker's broker-neutral core: parsing, classification, back-off, documents. No broker.

Routes run against the sandbox through a real :class:`Router`; retry and give-up rules use a
stub router that raises the error a test chooses, and a clock the test sets.
"""

from __future__ import annotations

import json
import logging
import random
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest
import sds_plugins_example_ebxml as example

from sds_plugins import (
    BreakerOpenError,
    ConfigurationError,
    DirectoryTimeoutError,
    DirectoryUnavailableError,
    EnvelopeVetoedError,
    InvalidInputError,
    NotFoundError,
    PluginHost,
    RateLimitedError,
    Router,
    RouteRequest,
    RouteWorker,
    RoutingEnvelope,
    Settings,
    WorkerOutcome,
    WorkerPolicy,
    hookimpl,
)
from sds_plugins._validation import sds_correlation_id
from sds_plugins.sandbox import Sandbox

from ._adapters import BearerToken
from ._reference import GP2GP, PSIS

EXAMPLE = "example-ebxml"

SECRET = "Bearer s3cr3t-t0ken"
FAILURE_KEYS = {"request_id", "error", "attempts", "gave_up", "request"}
ERROR_KEYS = {"type", "message", "retryable", "retry_after_s", "exit_code", "correlation_id"}


def _body(**fields: Any) -> bytes:
    request = {"adapter": EXAMPLE, "org": "YES", "interaction": PSIS, **fields}
    return json.dumps({k: v for k, v in request.items() if v is not ...}).encode()


def _document(outcome: WorkerOutcome) -> dict[str, Any]:
    assert outcome.disposition != "retry"
    document = json.loads(outcome.body)
    assert isinstance(document, dict)
    return document


class VetoUnknown:
    @hookimpl
    def sds_finalize_envelope(
        self, envelope: RoutingEnvelope, request: RouteRequest
    ) -> RoutingEnvelope | None:
        if request.option("from_asid") == "999999999999":
            raise EnvelopeVetoedError("policy: this sender may not send to Spine")
        return None


@pytest.fixture
async def router(sandbox: Sandbox) -> AsyncIterator[Router]:
    host = PluginHost(load_entrypoints=False, environ={})
    host.register(example, name="example_ebxml")
    host.register(BearerToken(SECRET))
    host.register(VetoUnknown())
    async with Router(Settings(base_url=sandbox.base_url, retry_attempts=1), host=host) as router:
        yield router


# --------------------------------------------------------------------------- envelopes


async def test_an_envelope_is_published_as_its_json_with_secrets_masked(router: Router) -> None:
    outcome = await RouteWorker(router).handle(_body(), request_id="req-1")
    assert outcome.disposition == "envelope"
    assert outcome.envelope is not None
    assert json.loads(outcome.body) == outcome.envelope.model_dump(mode="json")
    assert outcome.envelope.request.headers["Authorization"] == SECRET
    assert b"s3cr3t" not in outcome.body
    assert "s3cr3t" not in repr(outcome)
    assert (outcome.request_id, outcome.attempt, outcome.delay_s) == ("req-1", 1, None)


async def test_with_secrets_publishes_the_envelope_ready_to_send(router: Router) -> None:
    worker = RouteWorker(router, WorkerPolicy(with_secrets=True))
    outcome = await worker.handle(_body(), request_id="req-1")
    assert outcome.envelope is not None
    assert json.loads(outcome.body) == outcome.envelope.to_message()
    assert json.loads(outcome.body)["request"]["headers"]["Authorization"] == SECRET
    assert "s3cr3t" not in repr(outcome)


async def test_correlation_id_is_the_requests_or_derived_from_the_request_id(
    router: Router,
) -> None:
    worker = RouteWorker(router)
    # The caller's id, byte for byte: an upper-case GUID stays upper case, and an id that is
    # not a UUID (PDS and e-RS take any) is kept too; SDS is sent a UUID derived from it.
    for given in (str(uuid.uuid4()).upper(), "order-42/ward 7"):
        outcome = await worker.handle(_body(correlation_id=given), request_id="a")
        assert outcome.correlation_id == given
        assert outcome.envelope is not None
        assert outcome.envelope.provenance.correlation_id == given
        assert outcome.envelope.provenance.sds_correlation_id == (
            None if given[0] != "o" else sds_correlation_id(given)
        )
    # A broker message's own correlation id (an AMQP property) when the body names none.
    outcome = await worker.handle(_body(), request_id="a", correlation_id="rpc-7")
    assert outcome.correlation_id == "rpc-7"

    # Without one, every attempt and every redelivery of a request sends the same id to SDS.
    first = await worker.handle(_body(), request_id="b")
    again = await worker.handle(_body(), request_id="b", attempt=2)
    other = await worker.handle(_body(), request_id="c")
    assert first.correlation_id == again.correlation_id != other.correlation_id
    assert uuid.UUID(first.correlation_id)
    assert first.envelope is not None
    assert first.envelope.provenance.correlation_id == first.correlation_id


@pytest.mark.parametrize(
    "request_id", ["b", "0f0e0d0c-aaaa-4bbb-8ccc-123456789012", "ré-ünïcode/42", "x" * 300]
)
def test_derived_correlation_ids_are_the_uuid5_of_the_request_id(request_id: str) -> None:
    from sds_plugins._worker._core import _CORRELATION_NAMESPACE, correlation_id_for

    assert correlation_id_for(request_id) == str(uuid.uuid5(_CORRELATION_NAMESPACE, request_id))


async def test_a_request_without_an_id_gets_one(router: Router) -> None:
    worker = RouteWorker(router)
    outcomes = [await worker.handle(_body(), request_id=None) for _ in range(2)]
    ids = {outcome.request_id for outcome in outcomes}
    assert len(ids) == 2
    assert all(uuid.UUID(request_id) for request_id in ids)


async def test_encounter_and_options_reach_the_route(router: Router) -> None:
    outcome = await RouteWorker(router).handle(
        _body(options={"from_asid": "200000000359"}, encounter="enc-1"), request_id="r"
    )
    assert outcome.envelope is not None
    assert outcome.envelope.source.asid == "200000000359"
    assert outcome.request is not None
    assert outcome.request.encounter == "enc-1"


# --------------------------------------------------------------------------- final failures


@pytest.mark.parametrize(
    ("body", "error_type", "exit_code", "in_message"),
    [
        (b"{not json", "InvalidInputError", 2, "not JSON"),
        (b"\xff\xfe{}", "InvalidInputError", 2, "not UTF-8"),
        (b"[1, 2]", "InvalidInputError", 2, "JSON object, not an array"),
        (b"[" * 10_000, "InvalidInputError", 2, "nested too deeply"),
        (_body(org=...), "InvalidInputError", 2, "'org' (an ODS code) or 'patient'"),
        (_body(org=None), "InvalidInputError", 2, "'org' (an ODS code) or 'patient'"),
        (_body(org=12), "InvalidInputError", 2, "'org' must be a string, not a number"),
        (_body(interaction=True), "InvalidInputError", 2, "not a boolean"),
        (_body(options=["a"]), "InvalidInputError", 2, "'options' must be a JSON object"),
        (_body(options={"org": "X26"}), "InvalidInputError", 2, "options cannot set 'org'"),
        (_body(option={}), "InvalidInputError", 2, "unknown request field 'option'"),
        (_body(adapter="nope"), "InvalidInputError", 2, "no adapter named 'nope'"),
        (_body(org="not an ods code!"), "InvalidInputError", 2, "org"),
        (_body(correlation_id="4\n2"), "InvalidInputError", 2, "control character"),
        (_body(options={"from_asid": "12"}), "InvalidInputError", 2, "from_asid"),
        (_body(org="A99999"), "NotFoundError", 3, "A99999"),
        (_body(org="X26", interaction=GP2GP), "AmbiguousError", 4, "party_key"),
        (_body(options={"from_asid": "999999999999"}), "EnvelopeVetoedError", 7, "policy"),
    ],
)
async def test_final_failures_are_published_at_once_with_their_classification(
    router: Router, body: bytes, error_type: str, exit_code: int, in_message: str
) -> None:
    outcome = await RouteWorker(router).handle(body, request_id="req-9", attempt=3)
    assert outcome.disposition == "failure"
    assert not outcome.gave_up
    document = _document(outcome)
    assert set(document) == FAILURE_KEYS
    assert set(document["error"]) == ERROR_KEYS
    assert document["request_id"] == "req-9"
    assert document["attempts"] == 3
    assert document["gave_up"] is False
    error = document["error"]
    assert (error["type"], error["exit_code"]) == (error_type, exit_code)
    assert (error["retryable"], error["retry_after_s"]) == (False, None)
    assert error["correlation_id"] == outcome.correlation_id
    assert in_message in error["message"]
    # The original request travels with its failure: as JSON when it was JSON, else as text.
    try:
        original: Any = json.loads(body)
    except (ValueError, RecursionError):
        original = body.decode("utf-8", errors="replace")
    assert document["request"] == original


async def test_secret_options_are_masked_in_the_failure_document(router: Router) -> None:
    body = _body(options={"password": "hunter2", "from_asid": "12"})
    masked = _document(await RouteWorker(router).handle(body, request_id="r"))
    assert masked["request"]["options"] == {"password": "**********", "from_asid": "12"}
    assert "hunter2" not in json.dumps(masked)

    revealed = _document(
        await RouteWorker(router, WorkerPolicy(with_secrets=True)).handle(body, request_id="r")
    )
    assert revealed["request"]["options"]["password"] == "hunter2"


async def test_personal_options_are_masked_in_the_failure_document(router: Router) -> None:
    # MESH demographic routing's options name the patient: masked like credentials.
    options = {"family_name": "BIRCH", "birth_date": "1951-02-11", "subject": "for SAM BIRCH"}
    body = _body(options={**options, "from_asid": "12"})
    masked = _document(await RouteWorker(router).handle(body, request_id="r"))
    assert masked["request"]["options"] == {
        **dict.fromkeys(options, "**********"),
        "from_asid": "12",
    }
    assert "BIRCH" not in json.dumps(masked) and "1951" not in json.dumps(masked)


async def test_a_bug_in_a_plugin_fails_the_request_without_its_message(
    router: Router, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        @hookimpl(tryfirst=True)
        def sds_finalize_envelope(
            self, envelope: RoutingEnvelope, request: RouteRequest
        ) -> RoutingEnvelope:
            raise KeyError("internal detail")

    router.host.register(Broken(), name="broken")
    with caplog.at_level(logging.ERROR, logger="sds_plugins.worker"):
        outcome = await RouteWorker(router).handle(_body(), request_id="r")
    error = _document(outcome)["error"]
    assert (error["type"], error["exit_code"], error["retryable"]) == ("KeyError", 1, False)
    assert "internal detail" not in error["message"]
    assert "unexpected KeyError" in caplog.text
    assert "internal detail" in caplog.text  # the traceback is in the log, for the operator


# --------------------------------------------------------------------------- retries


async def test_an_outage_is_retried_not_failed(make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox()
    host = PluginHost(load_entrypoints=False, environ={})
    host.register(example, name="example_ebxml")
    settings = Settings(base_url=sandbox.base_url, retry_attempts=1, breaker_cooldown_s=30)
    async with Router(settings, host=host) as router:
        worker = RouteWorker(router, rng=random.Random(7))
        sandbox.set_faults(outage=True)
        first = await worker.handle(_body(), request_id="a")
        assert first.disposition == "retry"
        assert isinstance(first.error, DirectoryUnavailableError)
        assert first.body == b""

        # The breaker is open now: a cold key fails in microseconds, and the retry waits for
        # the breaker to let a probe through rather than burning the next attempt at once.
        second = await worker.handle(_body(org="X26", interaction=PSIS), request_id="b")
        assert second.disposition == "retry"
        assert isinstance(second.error, BreakerOpenError)
        assert second.error.retry_after_s is not None
        assert second.delay_s is not None
        assert second.delay_s >= second.error.retry_after_s > 0


class StubRouter:
    """Raises the errors it is given, in turn; then routes nothing."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def route(self, adapter: str, **kwargs: Any) -> RoutingEnvelope:
        self.calls += 1
        raise self.errors.pop(0)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _stub_worker(*errors: Exception, clock: Clock | None = None, **policy: Any) -> RouteWorker:
    return RouteWorker(
        cast(Router, StubRouter(*errors)),
        WorkerPolicy(**policy),
        clock=clock or Clock(),
        rng=random.Random(1),
    )


@pytest.mark.parametrize(
    "error",
    [
        DirectoryUnavailableError("503", status_code=503),
        RateLimitedError("429", status_code=429, retry_after_s=2.0),
        DirectoryTimeoutError("slow"),
        BreakerOpenError("open", retry_after_s=4.5),
    ],
    ids=lambda error: type(error).__name__,
)
async def test_retryable_errors_retry_no_sooner_than_retry_after(error: Exception) -> None:
    outcome = await _stub_worker(error).handle(_body(), request_id="r")
    assert outcome.disposition == "retry"
    assert outcome.delay_s is not None
    assert outcome.delay_s >= (getattr(error, "retry_after_s", None) or 0.5)  # half of 1 s


async def test_gives_up_after_max_attempts_with_the_last_error() -> None:
    error = BreakerOpenError("the breaker is open", retry_after_s=1.0)
    worker = _stub_worker(error, error, max_attempts=2)
    assert (await worker.handle(_body(), request_id="r", attempt=1)).disposition == "retry"
    outcome = await worker.handle(_body(), request_id="r", attempt=2)
    assert (outcome.disposition, outcome.gave_up) == ("failure", True)
    document = _document(outcome)
    assert (document["gave_up"], document["attempts"]) == (True, 2)
    assert document["error"] == {
        "type": "BreakerOpenError",
        "message": "the breaker is open",
        "retryable": True,
        "retry_after_s": 1.0,
        "exit_code": 5,
        "correlation_id": outcome.correlation_id,
    }


async def test_gives_up_when_the_request_is_older_than_max_age() -> None:
    clock = Clock()
    worker = _stub_worker(DirectoryUnavailableError("503"), clock=clock, max_age_s=60)
    outcome = await worker.handle(_body(), request_id="r", first_seen=clock.now - 61, attempt=2)
    assert (outcome.disposition, outcome.gave_up) == ("failure", True)


async def test_gives_up_when_retry_after_is_beyond_the_deadline() -> None:
    clock = Clock()
    worker = _stub_worker(RateLimitedError("quota", retry_after_s=45), clock=clock, max_age_s=60)
    outcome = await worker.handle(_body(), request_id="r", first_seen=clock.now - 30)
    assert (outcome.disposition, outcome.gave_up) == ("failure", True)


async def test_the_last_retry_is_brought_forward_to_the_deadline() -> None:
    clock = Clock()
    worker = _stub_worker(
        DirectoryUnavailableError("503"), clock=clock, max_age_s=60, retry_initial_s=30
    )
    outcome = await worker.handle(_body(), request_id="r", first_seen=clock.now - 55)
    assert outcome.disposition == "retry"
    assert outcome.delay_s == pytest.approx(5)


async def test_first_seen_in_the_future_counts_as_now() -> None:
    clock = Clock()
    worker = _stub_worker(DirectoryUnavailableError("503"), clock=clock, max_age_s=60)
    outcome = await worker.handle(_body(), request_id="r", first_seen=clock.now + 3600)
    assert outcome.first_seen == clock.now
    assert outcome.disposition == "retry"


def test_backoff_is_exponential_with_equal_jitter_capped_and_floored() -> None:
    policy = WorkerPolicy(retry_initial_s=1, retry_max_s=20)
    rng = random.Random(3)
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 16), (6, 20), (60, 20)]:
        delays = [policy.backoff_s(attempt, None, rng) for _ in range(200)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling
        assert max(delays) - min(delays) > ceiling / 4  # jittered, not one fixed value
    assert policy.backoff_s(1, 12.5, rng) == 12.5
    assert policy.backoff_s(1, float("inf"), rng) <= 1  # an unusable hint is ignored


@pytest.mark.parametrize(
    "fields",
    [
        {"max_attempts": 0},
        {"max_age_s": 0},
        {"retry_initial_s": 0},
        {"retry_initial_s": 10, "retry_max_s": 5},
    ],
)
def test_policy_refuses_settings_that_cannot_work(fields: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        WorkerPolicy(**fields)


async def test_a_stub_router_not_found_is_final() -> None:
    worker = _stub_worker(NotFoundError("nothing", status_code=None))
    outcome = await worker.handle(_body(), request_id="r")
    assert (outcome.disposition, outcome.gave_up) == ("failure", False)
    assert _document(outcome)["error"]["exit_code"] == 3


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("body", "in_message"),
    [
        (b'{"options": {"asid": ' + b"9" * 5000 + b"}}", "a number 5,000 characters long"),
        (b'{"n": ' + b"1" * 101 + b"}", "a number 101 characters long; at most 100 are read"),
        (b'{"n": 0.' + b"5" * 200 + b"}", "a number 202 characters long"),
        (b'{"n": 1e999}', "a number out of range (1e999)"),
        (b'{"n": -1e400}', "a number out of range (-1e400)"),
        (b'{"n": NaN}', "not JSON (NaN is not a JSON number)"),
        (b'{"n": -Infinity}', "not JSON (-Infinity is not a JSON number)"),
    ],
)
def test_numbers_too_long_or_out_of_range_are_invalid_input(body: bytes, in_message: str) -> None:
    """Python refuses to convert an integer of more than 4,300 digits with a bare ValueError:
    that was an unexpected error (a 500 and a traceback in serve, exit code 1 here)."""
    from sds_plugins._requests import decode_body

    with pytest.raises(InvalidInputError, match="request body") as raised:
        decode_body(body)
    assert in_message in str(raised.value)
    assert raised.value.field == "body"


def test_ordinary_numbers_still_parse() -> None:
    from sds_plugins._requests import decode_body

    assert decode_body(b'{"a": 200000000359, "b": -1.5e3, "c": 0, "d": ' + b"9" * 100 + b"}") == {
        "a": 200000000359,
        "b": -1500.0,
        "c": 0,
        "d": int("9" * 100),
    }


async def test_a_huge_integer_in_a_request_is_a_final_invalid_input_failure() -> None:
    worker = _stub_worker(NotFoundError("never reached", status_code=None))
    body = b'{"adapter": "example-ebxml", "org": "YES", "options": {"n": ' + b"7" * 5000 + b"}}"
    outcome = await worker.handle(body, request_id="r")
    error = _document(outcome)["error"]
    assert (error["type"], error["exit_code"], error["retryable"]) == (
        "InvalidInputError",
        2,
        False,
    )
    assert "5,000 characters long" in error["message"]
