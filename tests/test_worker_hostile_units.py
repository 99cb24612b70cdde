"""The worker's defences against hostile messages, without a broker: bounded failure documents,
strings that are not UTF-8, reply-to rules, refusals, heartbeats and the settings' checks.
(``test_worker_hostile.py`` runs each on the real brokers.)"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any, cast

import pytest
from pydantic import ValidationError

from sds_plugins import (
    DirectoryTimeoutError,
    InvalidInputError,
    Router,
    RouteWorker,
    RoutingEnvelope,
    WorkerPolicy,
    WorkerSettings,
)
from sds_plugins._worker._core import (
    MAX_FAILURE_BYTES,
    MAX_REQUEST_BYTES,
    MAX_REQUEST_ID_CHARS,
    shorten_id,
)

from ._reference import PSIS
from ._worker_support import raw_amqp_strings

EXAMPLE = "example-ebxml"


class NeverRouter:
    """Counts the routes it is asked for, and raises: nothing here should reach it."""

    def __init__(self) -> None:
        self.calls = 0

    async def route(self, adapter: str, **kwargs: Any) -> RoutingEnvelope:
        self.calls += 1
        raise DirectoryTimeoutError("should not have been routed")


def _worker(**policy: Any) -> tuple[RouteWorker, NeverRouter]:
    router = NeverRouter()
    return RouteWorker(cast(Router, router), WorkerPolicy(max_attempts=1, **policy)), router


def _body(**fields: Any) -> bytes:
    return json.dumps({"adapter": EXAMPLE, "org": "YES", "interaction": PSIS, **fields}).encode()


async def _failure(body: bytes | str, **kwargs: Any) -> tuple[dict[str, Any], bytes]:
    worker, _ = _worker()
    outcome = await worker.handle(body, **{"request_id": "r", **kwargs})
    assert outcome.disposition == "failure"
    assert len(outcome.body) <= MAX_FAILURE_BYTES
    return json.loads(outcome.body), outcome.body


# --------------------------------------------------------------------------- failure documents


async def test_a_body_of_control_bytes_is_summarised_not_echoed_six_fold() -> None:
    """60,000 control bytes are a readable body (UTF-8, under the 64 KiB limit) but not JSON:
    echoed as JSON they would be 360,000 bytes. The document summarises them instead."""
    body = bytes(range(1, 32)) * 2000
    document, data = await _failure(body)
    assert document["error"]["type"] == "InvalidInputError"
    assert "not JSON" in document["error"]["message"]
    assert document["request"] is None
    assert document["request_summary"] == {
        "bytes": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "head": body[:200].decode(),
    }
    assert len(data) < 2000


async def test_a_body_over_the_limit_is_refused_unread_and_summarised() -> None:
    body = b'{"adapter": "' + b"x" * (2 * MAX_REQUEST_BYTES) + b'"}'
    document, _ = await _failure(body)
    assert document["error"]["message"] == (
        f"the request body is {len(body):,} bytes; at most {MAX_REQUEST_BYTES:,} are read"
    )
    assert document["error"]["exit_code"] == 2
    summary = document["request_summary"]
    assert (summary["bytes"], summary["sha256"]) == (len(body), hashlib.sha256(body).hexdigest())
    assert summary["head"] == body[:200].decode()
    # A text body (the embedding API) is measured in UTF-8 bytes too.
    text = "é" * (MAX_REQUEST_BYTES // 2 + 1)
    document, _ = await _failure(text)
    assert f"{len(text.encode()):,} bytes" in document["error"]["message"]


async def test_a_long_request_that_parsed_is_summarised_with_its_secrets_masked() -> None:
    body = _body(options={"password": "hunter2", "note": "n" * 40_000})
    document, data = await _failure(body)  # options the example adapter does not know
    assert document["request"] is None
    head = document["request_summary"]["head"]
    assert head.startswith('{"adapter": "example-ebxml"')
    assert b"hunter2" not in data
    assert document["request_summary"]["bytes"] == len(body)


async def test_short_requests_are_still_echoed_whole() -> None:
    document, _ = await _failure(b"{not json")
    assert document["request"] == "{not json"
    assert "request_summary" not in document


async def test_long_error_messages_and_request_ids_are_cut() -> None:
    # 3,000 unknown fields: the message names them all, and would be 45 KB long.
    body = json.dumps({f"field{index:05d}": 1 for index in range(3000)}).encode()
    assert len(body) < MAX_REQUEST_BYTES
    document, _ = await _failure(body)
    message = document["error"]["message"]
    assert message.startswith("unknown request field")
    assert len(message) < 2100
    assert message.endswith("characters in all)")

    long_id = "id-" + "x" * 5000
    document, _ = await _failure(_body(), request_id=long_id)
    assert document["error"]["message"] == (
        f"the request id is {len(long_id):,} characters long; "
        f"at most {MAX_REQUEST_ID_CHARS:,} are taken"
    )
    assert document["request_id"] == shorten_id(long_id)
    assert len(document["request_id"]) <= MAX_REQUEST_ID_CHARS
    assert document["request_id"] == shorten_id(long_id)  # the same at every delivery
    assert shorten_id(long_id) != shorten_id(long_id + "y")
    assert shorten_id("short") == "short"


async def test_the_worst_case_document_is_within_the_limit() -> None:
    """Everything a request controls, at its longest and made of characters JSON escapes
    six-fold: the document is still under 64 KiB."""
    control = "\x01" * (MAX_REQUEST_ID_CHARS + 500)
    body = json.dumps({("\x02" * 10_000): 1}).encode()  # one long unknown field name
    worker, _ = _worker()
    outcome = await worker.handle(body, request_id=control)
    assert outcome.disposition == "failure"
    assert len(outcome.body) <= MAX_FAILURE_BYTES
    json.loads(outcome.body)


async def test_a_rejected_message_fails_unrouted_with_its_body_echoed_and_masked() -> None:
    worker, router = _worker()
    reject = InvalidInputError('the message has ... message_id "caf\\xe9"', field="properties")
    body = _body(options={"password": "hunter2"})
    outcome = await worker.handle(body, request_id="caf\\xe9", reject=reject)
    assert router.calls == 0
    assert outcome.disposition == "failure"
    document = json.loads(outcome.body)
    assert document["error"]["message"] == str(reject)
    assert document["request"]["options"] == {"password": "**********"}
    # A body that is not JSON is echoed as text, and the message's own error still wins.
    outcome = await worker.handle(b"{oops", request_id="x", reject=reject)
    assert json.loads(outcome.body)["error"]["message"] == str(reject)


async def test_a_text_body_with_lone_surrogates_still_makes_a_utf8_document() -> None:
    document, data = await _failure("{\udcff")
    data.decode("utf-8")  # strict: the document is UTF-8
    assert document["request"] == "{\udcff"


# --------------------------------------------------------------------------- AMQP strings


def _content_header(**properties: Any) -> bytes:
    import pamqp.commands
    import pamqp.frame
    import pamqp.header

    with raw_amqp_strings():
        header = pamqp.header.ContentHeader(0, 2, pamqp.commands.Basic.Properties(**properties))
        return pamqp.frame.marshal(header, 1)


def test_strings_that_are_not_utf8_are_read_only_on_the_workers_connections() -> None:
    pytest.importorskip("aiormq", reason="needs the 'amqp' extra")
    import pamqp.exceptions
    import pamqp.frame

    from sds_plugins._worker._amqp_strings import escaped, has_undecodable, install, lenient

    frame = _content_header(
        message_id=b"caf\xe9", correlation_id=b"ok", headers={b"x-\xff": 1, "t": {b"\xfe": 2}}
    )
    assert install()
    assert install()  # once per process
    # Outside the worker's scope, pamqp is as strict as ever: an application's own connection
    # in the same process sees no change.
    with pytest.raises(pamqp.exceptions.UnmarshalingException):
        pamqp.frame.unmarshal(frame)

    with lenient():
        _, _, header = pamqp.frame.unmarshal(frame)
    properties = header.properties  # type: ignore[union-attr]
    assert has_undecodable(properties.message_id)
    assert escaped(properties.message_id) == "caf\\xe9"
    assert properties.correlation_id == "ok"
    assert not has_undecodable(properties.correlation_id)
    [table, bad] = sorted(properties.headers)
    assert escaped(bad) == "x-\\xff"
    assert [escaped(name) for name in properties.headers[table]] == ["\\xfe"]

    # The connection's reader task is created inside lenient() and keeps its scope after.
    async def later() -> Any:
        await asyncio.sleep(0)
        return pamqp.frame.unmarshal(frame)

    async def main() -> Any:
        with lenient():
            task = asyncio.create_task(later())
        return await task

    assert asyncio.run(main())[2].properties.message_id == properties.message_id


def test_request_ids_that_are_not_utf8_are_escaped_to_fit_a_message_id() -> None:
    pytest.importorskip("aiormq", reason="needs the 'amqp' extra")
    import aiormq

    from sds_plugins._worker._amqp_strings import request_id_of, undecodable_fields

    def lenient(raw: bytes) -> str:
        return raw.decode("utf-8", "surrogateescape")

    assert request_id_of("order-1") == "order-1"
    assert request_id_of(None) is None
    assert request_id_of(lenient(b"caf\xe9")) == "caf\\xe9"
    long = request_id_of(lenient(b"\xff" * 255))
    assert long is not None and len(long.encode()) <= 255
    assert long == request_id_of(lenient(b"\xff" * 255))
    assert long != request_id_of(lenient(b"\xff" * 254 + b"\xfe"))

    properties = aiormq.spec.Basic.Properties(
        reply_to=lenient(b"q\x80"), headers={"ok": {lenient(b"\xc3("): [{lenient(b"\xff"): 1}]}}
    )
    assert undecodable_fields(properties, properties.headers) == [
        'reply_to "q\\x80"',
        'header name "\\xc3("',
        'header name "\\xff"',
    ]


def test_the_worker_asks_for_heartbeats_unless_the_url_sets_them() -> None:
    pytest.importorskip("aiormq", reason="needs the 'amqp' extra")
    from sds_plugins._worker._amqp import HEARTBEAT_S, with_heartbeat

    url = with_heartbeat("amqps://svc:p%40ss@mq.example.com/prod?name=x")
    assert url.query["heartbeat"] == str(HEARTBEAT_S)
    assert (url.user, url.password, url.path) == ("svc", "p@ss", "/prod")
    assert with_heartbeat("amqp://mq/?heartbeat=30").query["heartbeat"] == "30"


def test_only_refusals_of_the_message_itself_count_towards_giving_up() -> None:
    pytest.importorskip("aiormq", reason="needs the 'amqp' extra")
    pytest.importorskip("nats", reason="needs the 'nats' extra")
    import aiormq
    import nats.errors
    import nats.js.errors

    from sds_plugins._worker import _amqp, _nats

    nack = aiormq.exceptions.DeliveryError(None, None)
    assert _amqp._is_refusal(nack)
    assert _amqp._is_refusal(TypeError("string exceeds maximum length"))
    assert not _amqp._is_refusal(TimeoutError())  # a blocked broker (disk alarm) is waited out
    assert not _amqp._is_refusal(aiormq.exceptions.ChannelInvalidStateError())
    assert _nats._is_refusal(nats.errors.MaxPayloadError())
    assert not _nats._is_refusal(nats.js.errors.NoStreamResponseError())  # a stream gone
    assert _nats._is_refusal(nats.js.errors.BadRequestError())
    assert not _nats._is_refusal(nats.js.errors.ServiceUnavailableError())
    assert not _nats._is_refusal(nats.errors.TimeoutError())


@pytest.mark.parametrize(
    ("pattern", "subject", "captured"),
    [
        ("orders.requests", "orders.requests", True),
        ("orders.requests", "orders.requests.x", False),
        ("orders.*", "orders.requests", True),
        ("orders.*", "orders.requests.x", False),
        ("orders.>", "orders.requests.x", True),
        ("orders.>", "orders", False),
        (">", "anything.at.all", True),
        ("*.requests", "orders.requests", True),
        ("*.requests", "orders.replies", False),
    ],
)
def test_a_reply_to_is_refused_when_the_requests_stream_captures_it(
    pattern: str, subject: str, captured: bool
) -> None:
    pytest.importorskip("nats", reason="needs the 'nats' extra")
    from sds_plugins._worker._nats_streams import subject_matches

    assert subject_matches(pattern, subject) is captured


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("amqp://mq/", {"envelopes": "sds-plugins.requests"}),
        ("nats://mq", {"failures": "sds-plugins.requests"}),
        ("amqp://mq/", {"requests": "in", "failures": "in.retry.8s"}),
    ],
)
def test_outcomes_cannot_be_configured_into_the_requests(url: str, options: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match="is where requests are taken"):
        WorkerSettings(broker_url=url, **options)


def test_a_nats_subject_like_a_retry_queue_is_only_a_subject() -> None:
    settings = WorkerSettings(broker_url="nats://mq", requests="in", failures="in.retry.8s")
    assert settings.failures == "in.retry.8s"


def test_refusal_counts_give_up_at_the_limit_and_stay_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sds_plugins._worker import _refusals

    refusals = _refusals.Refusals[str]()
    counts = [refusals.refused("a") for _ in range(_refusals.MAX_PUBLISH_REFUSALS)]
    assert counts == list(range(1, _refusals.MAX_PUBLISH_REFUSALS + 1))
    assert refusals.refused("a") == 1  # given up, and forgotten
    refusals.published("a")
    assert refusals.refused("a") == 1
    monkeypatch.setattr(_refusals, "_KEPT", 3)
    for key in "bcde":
        refusals.refused(key)
    assert refusals.refused("a") == 1  # the oldest went first
    assert refusals.refused("e") == 2
