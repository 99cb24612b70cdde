"""The worker on real brokers, RabbitMQ and NATS JetStream: nothing lost, nothing misfiled.

Needs ``SDS_TEST_AMQP_URL`` (e.g. ``amqp://guest:guest@127.0.0.1:5672/``) and/or
``SDS_TEST_NATS_URL`` (e.g. ``nats://127.0.0.1:4222``); the fleet test also needs
``SDS_TEST_REDIS_URL``. Each test runs ``sds-plugins worker`` as subprocesses against its own
queues/subjects and sandbox, and removes what it declared. Nothing here measures time: tests
wait for conditions, with generous limits.
"""

from __future__ import annotations

import json
import re
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from sds_plugins.sandbox import Sandbox
from sds_plugins.testing import accredited_system_record, mhs_record

from ._reference import GP2GP, PSIS
from ._worker_support import (
    REDIS_URL,
    AmqpBroker,
    Broker,
    Outcomes,
    WorkerProcess,
    broker_fixture,  # noqa: F401 - the broker fixture (RabbitMQ and NATS)
    unique_prefix,
    workers_fixture,  # noqa: F401 - the workers fixture
)

EXAMPLE = "example-ebxml"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _request(org: str, interaction: str = PSIS, **fields: Any) -> bytes:
    return json.dumps(
        {"adapter": EXAMPLE, "org": org, "interaction": interaction, **fields}
    ).encode()


def _practices(count: int, make_sandbox: Callable[..., Sandbox], **config: Any) -> Sandbox:
    """A sandbox with ``count`` practices (W0000, W0001...) that each route for PSIS."""
    orgs = [f"W{index:04d}" for index in range(count)]
    return make_sandbox(
        # Reliability as SDS holds it for PSIS (async-reliable), so the pattern is determined.
        [
            mhs_record(org, PSIS, ack_requested="always", sync_reply_mode="MSHSignalsOnly")
            for org in orgs
        ],
        [accredited_system_record(org, PSIS) for org in orgs],
        **config,
    )


def _retry_lines(*processes: WorkerProcess) -> list[str]:
    return [line for p in processes for line in p.outcome_lines() if "outcome=retry" in line]


# --------------------------------------------------------------------------- mixed batch


async def test_a_mixed_batch_gets_one_outcome_each_in_the_right_place(
    broker: Broker, sandbox: Sandbox, workers: Callable[..., WorkerProcess]
) -> None:
    replies = broker.requests.replace("requests", "replies")
    worker = workers(sandbox.base_url, "--concurrency", "4")
    await worker.ready()
    await broker.add_reply_destination(replies)
    given = str(uuid.uuid4())
    batch: dict[str, tuple[bytes, str, str, int | None]] = {
        # request id: body, where the outcome goes, its kind, the failure's exit code
        "valid": (_request("YES"), broker.envelopes, "envelope", None),
        "valid-options": (
            _request("YES", options={"from_asid": "200000000359"}, correlation_id=given),
            broker.envelopes,
            "envelope",
            None,
        ),
        "not-found": (_request("A99999"), broker.failures, "failure", 3),
        "ambiguous": (_request("X26", GP2GP), broker.failures, "failure", 4),
        "invalid-org": (_request("not an ods code"), broker.failures, "failure", 2),
        "invalid-option": (
            _request("YES", options={"from_asid": "12"}),
            broker.failures,
            "failure",
            2,
        ),
        "not-json": (b"{adapter: example-ebxml", broker.failures, "failure", 2),
        "missing-field": (
            json.dumps({"adapter": EXAMPLE, "org": "YES"}).encode(),
            broker.failures,
            "failure",
            2,
        ),
        "unknown-adapter": (
            json.dumps({"adapter": "nope", "org": "YES", "interaction": PSIS}).encode(),
            broker.failures,
            "failure",
            2,
        ),
        "reply": (_request("YES"), replies, "envelope", None),
        "reply-failure": (_request("A99999"), replies, "failure", 3),
        # Nobody takes what is published there: the outcome goes where it would have gone.
        "reply-nowhere": (_request("YES"), broker.envelopes, "envelope", None),
    }
    reply_to = {"reply": replies, "reply-failure": replies, "reply-nowhere": f"{replies}.gone"}
    for request_id, (body, *_) in batch.items():
        await broker.publish(body, request_id, reply_to=reply_to.get(request_id))
    await broker.publish(_request("YES"), None)  # no id: the worker assigns one

    outcomes = Outcomes(broker, extra=[replies])
    await outcomes.until(lambda: len(outcomes.received) >= len(batch) + 1, "every outcome")
    await outcomes.collect()  # anything extra would be a duplicate: there must be none
    grouped = outcomes.by_id()
    assert set(grouped) - set(batch) != set(), "the request without an id got no outcome"
    [assigned] = set(grouped) - set(batch)
    assert assigned is not None and uuid.UUID(assigned)
    assert all(len(received) == 1 for received in grouped.values()), grouped

    for request_id, (_, destination, kind, exit_code) in batch.items():
        [received] = grouped[request_id]
        assert (received.destination, received.kind) == (destination, kind), request_id
        assert received.attempts == 1
        assert received.correlation_id is not None and uuid.UUID(received.correlation_id)
        assert received.properties["content_type"] == "application/json"
        if broker.transport == "amqp":
            assert received.properties["persistent"] is True
            assert received.properties["app_id"] == "sds-plugins"
            assert abs(received.properties["timestamp"] - time.time()) < 300
        document = received.json()
        if kind == "envelope":
            assert document["provenance"]["correlation_id"] == received.correlation_id
        else:
            assert document["request_id"] == request_id
            assert document["error"]["exit_code"] == exit_code, document
            assert document["error"]["retryable"] is False
            assert document["error"]["correlation_id"] == received.correlation_id
            assert document["gave_up"] is False

    assert grouped["valid-options"][0].correlation_id == given
    assert grouped["valid-options"][0].json()["source"]["asid"] == "200000000359"
    assert grouped["not-json"][0].json()["request"] == "{adapter: example-ebxml"
    assert await broker.requests_left() == 0
    # One log line per request, none with a retry.
    assert len(worker.outcome_lines()) == len(batch) + 1
    password = urlsplit(broker.url).password
    if password:
        assert f":{password}@" not in worker.text()


# --------------------------------------------------------------------------- crash


async def test_a_worker_killed_mid_batch_loses_nothing(
    broker: Broker,
    make_sandbox: Callable[..., Sandbox],
    workers: Callable[..., WorkerProcess],
) -> None:
    count = 100
    sandbox = _practices(count, make_sandbox, latency_ms=20)
    # Cold, distinct routes at the rate limiter's 40 lookups/s: the batch takes seconds.
    args = ("--concurrency", "8", "--ack-wait-s", "2")
    first = workers(sandbox.base_url, *args)
    await first.ready()
    ids = [f"crash-{index}" for index in range(count)]
    for index, request_id in enumerate(ids):
        await broker.publish(_request(f"W{index:04d}"), request_id)

    outcomes = Outcomes(broker)
    await outcomes.until(lambda: len(outcomes.answered(ids)) >= 10, "the first outcomes")
    first.signal(signal.SIGKILL)
    await first.exited()
    await outcomes.collect()
    assert len(outcomes.answered(ids)) < count, "the batch finished before the kill"

    second = workers(sandbox.base_url, *args)
    await second.ready()
    await outcomes.until(lambda: outcomes.answered(ids) == set(ids), "an outcome for every id")
    for request_id, received in outcomes.by_id().items():
        # Redelivered after the kill: a duplicate may appear, always as the same outcome.
        assert {r.kind for r in received} == {"envelope"}, request_id
        assert len({r.correlation_id for r in received}) == 1, request_id
    assert set(outcomes.by_id()) == set(ids)
    assert await broker.requests_left() == 0
    second.signal(signal.SIGTERM)
    assert await second.exited() == 0


# --------------------------------------------------------------------------- outage


async def test_a_directory_outage_mid_batch_ends_in_envelopes(
    broker: Broker,
    make_sandbox: Callable[..., Sandbox],
    workers: Callable[..., WorkerProcess],
) -> None:
    sandbox = _practices(15, make_sandbox)
    worker = workers(
        sandbox.base_url,
        "--concurrency", "4",
        "--retry-initial-s", "0.5",
        "--retry-max-s", "2",
        "--max-attempts", "50",
        # No retries inside the client: the first 503 reaches the worker, and opens the breaker.
        env={"SDS_RETRY_ATTEMPTS": "1", "SDS_BREAKER_COOLDOWN_S": "1"},
    )  # fmt: skip
    await worker.ready()
    outcomes = Outcomes(broker)
    before = [f"before-{index}" for index in range(5)]
    for index, request_id in enumerate(before):
        await broker.publish(_request(f"W{index:04d}"), request_id)
    await outcomes.until(lambda: outcomes.answered(before) == set(before), "the first outcomes")

    sandbox.set_faults(outage=True)
    during = [f"during-{index}" for index in range(10)]
    for index, request_id in enumerate(during):
        await broker.publish(_request(f"W{index + 5:04d}"), request_id)
    await outcomes.until(lambda: len(_retry_lines(worker)) >= 10, "retries during the outage")
    # The outage lasts until each of those requests has been retried once more (not a time).
    await outcomes.until(lambda: len(_retry_lines(worker)) >= 20, "a second round of retries")
    sandbox.set_faults(outage=False)

    everything = before + during
    await outcomes.until(
        lambda: outcomes.answered(everything) == set(everything), "an outcome for every id"
    )
    failures = [r for r in outcomes.received if r.kind != "envelope"]
    assert not failures, [r.json() for r in failures]
    assert max(r.attempts or 0 for r in outcomes.received) > 1
    assert sandbox.stats()["statuses"].get("503", 0) >= 1

    # Every retry waited at least as long as the directory (or the breaker) asked.
    waits = [
        (float(m["in"]), float(m["after"]))
        for line in _retry_lines(worker)
        if (m := re.search(r"retry_in_s=(?P<in>[\d.]+) retry_after_s=(?P<after>[\d.]+)", line))
    ]
    assert waits, "no retry said how long the breaker asked to wait"
    assert all(wait >= asked for wait, asked in waits), waits
    assert await broker.requests_left() == 0


# --------------------------------------------------------------------------- giving up


async def test_an_outage_that_outlasts_max_attempts_ends_in_gave_up_failures(
    broker: Broker,
    make_sandbox: Callable[..., Sandbox],
    workers: Callable[..., WorkerProcess],
) -> None:
    """Retries go round the broker (RabbitMQ's retry queue and dead-lettering; NATS's nak with
    delay), each counted, until --max-attempts: then one failure with gave_up, nothing more."""
    sandbox = _practices(3, make_sandbox)
    sandbox.set_faults(outage=True)
    worker = workers(
        sandbox.base_url,
        "--concurrency", "4",
        "--max-attempts", "3",
        "--retry-initial-s", "0.2",
        "--retry-max-s", "0.4",
        # The first 503 reaches the worker; no breaker, so every attempt asks the directory.
        env={"SDS_RETRY_ATTEMPTS": "1", "SDS_BREAKER_COOLDOWN_S": "0"},
    )  # fmt: skip
    await worker.ready()
    ids = [f"give-up-{index}" for index in range(3)]
    for index, request_id in enumerate(ids):
        await broker.publish(_request(f"W{index:04d}"), request_id)

    outcomes = Outcomes(broker)
    await outcomes.until(lambda: outcomes.answered(ids) == set(ids), "an outcome for every id")
    await outcomes.collect()
    assert sorted(r.message_id or "" for r in outcomes.received) == sorted(ids)
    for received in outcomes.received:
        assert (received.destination, received.kind, received.attempts) == (
            broker.failures,
            "failure",
            3,
        )
        document = received.json()
        assert document["gave_up"] is True
        assert document["attempts"] == 3
        assert document["error"]["retryable"] is True
        assert document["error"]["exit_code"] == 5
        assert document["error"]["correlation_id"] == received.correlation_id
    assert len(_retry_lines(worker)) == 2 * len(ids)
    assert sandbox.stats()["statuses"].get("503", 0) >= 3 * len(ids)
    assert await broker.requests_left() == 0


# --------------------------------------------------------------------------- shutdown


async def test_sigterm_finishes_the_requests_in_flight_and_exits_0(
    broker: Broker,
    make_sandbox: Callable[..., Sandbox],
    workers: Callable[..., WorkerProcess],
) -> None:
    count = 40
    sandbox = _practices(count, make_sandbox, latency_ms=300)
    args = ("--concurrency", "8", "--ack-wait-s", "2")
    first = workers(sandbox.base_url, *args)
    await first.ready()
    ids = [f"drain-{index}" for index in range(count)]
    for index, request_id in enumerate(ids):
        await broker.publish(_request(f"W{index:04d}"), request_id)
    outcomes = Outcomes(broker)
    await outcomes.until(lambda: len(outcomes.answered(ids)) >= 4, "the first outcomes")

    first.signal(signal.SIGTERM)
    assert await first.exited() == 0, first.text()
    assert "SIGTERM: stopping" in first.text()
    assert re.search(r"draining: [1-9]\d* request\(s\) in flight", first.text()), first.text()
    assert "stopped: every request taken was answered and acknowledged" in first.text()
    await outcomes.collect()
    answered_by_first = outcomes.answered(ids)
    assert len(answered_by_first) < count, "the batch finished before SIGTERM"

    second = workers(sandbox.base_url, *args)
    await second.ready()
    await outcomes.until(lambda: outcomes.answered(ids) == set(ids), "an outcome for every id")
    await outcomes.collect()
    # Exactly one outcome each: the first worker acknowledged everything it answered, so
    # nothing it published came back to the second.
    assert sorted(r.message_id or "" for r in outcomes.received) == sorted(ids)
    assert {r.kind for r in outcomes.received} == {"envelope"}
    second.signal(signal.SIGINT)
    assert await second.exited() == 0


async def test_a_worker_whose_requests_queue_is_deleted_exits_1_to_be_restarted(
    broker: Broker,
    make_sandbox: Callable[..., Sandbox],
    workers: Callable[..., WorkerProcess],
) -> None:
    """RabbitMQ cancels the consumer and keeps the connection; JetStream answers pulls on a
    deleted consumer as it does on an empty stream. Without an exit the worker would idle for
    ever, even once the queue or stream is declared again."""
    sandbox = _practices(1, make_sandbox)
    worker = workers(sandbox.base_url)
    await worker.ready()
    await broker.publish(_request("W0000"), "before")
    outcomes = Outcomes(broker)
    await outcomes.until(lambda: outcomes.answered(["before"]) == {"before"}, "the first outcome")

    await broker.delete_requests()

    assert await worker.exited(timeout_s=30) == 1
    assert re.search(r"cancelled the consumer|consumer of \S+ on \S+ is gone", worker.text())


# --------------------------------------------------------------------------- fleet


@pytest.mark.redis
@pytest.mark.skipif(not REDIS_URL, reason="needs Redis: set SDS_TEST_REDIS_URL")
async def test_two_workers_sharing_redis_look_each_route_up_once(
    broker: Broker,
    make_sandbox: Callable[..., Sandbox],
    workers: Callable[..., WorkerProcess],
) -> None:
    import redis

    distinct = 10
    sandbox = _practices(distinct, make_sandbox, latency_ms=200)
    prefix = f"{unique_prefix()}:"
    env = {"SDS_REDIS_URL": REDIS_URL, "SDS_REDIS_PREFIX": prefix}
    fleet = [workers(sandbox.base_url, "--concurrency", "4", env=env) for _ in range(2)]
    try:
        for worker in fleet:
            await worker.ready()
        ids = []
        for copy in range(6):  # each route six times, interleaved, competing for the same keys
            for index in range(distinct):
                ids.append(f"fleet-{copy}-{index}")
                await broker.publish(_request(f"W{index:04d}"), ids[-1])
        for copy in range(3):  # and one that is not there: negative caching is shared too
            ids.append(f"fleet-missing-{copy}")
            await broker.publish(_request("W9999"), ids[-1])

        outcomes = Outcomes(broker)
        await outcomes.until(lambda: outcomes.answered(ids) == set(ids), "an outcome for each")
        assert all(worker.outcome_lines() for worker in fleet), "one worker did nothing"
        requests = sandbox.stats()["requests"]
        # W9999's empty answers are asked twice each (past the gateway's cache the second time).
        assert requests["/spine-directory/FHIR/R4/Device"] == distinct + 2, requests
        assert requests["/spine-directory/FHIR/R4/Endpoint"] == distinct + 2, requests
        kinds = [r.kind for r in outcomes.received if r.message_id in set(ids)]
        assert kinds.count("failure") == 3
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        try:
            names = list(client.scan_iter(match=prefix + "*", count=500))
            if names:
                client.delete(*names)
        finally:
            client.close()


# --------------------------------------------------------------------------- RabbitMQ only


async def test_patients_are_routed_and_pds_refusals_keep_no_number(
    broker: Broker, sandbox: Sandbox, workers: Callable[..., WorkerProcess]
) -> None:
    from sds_plugins_gpconnect import EXAMPLE_CONSUMER

    from sds_plugins.sandbox import SANDBOX_PATIENTS

    gpc = "urn:nhs:names:services:gpconnect:fhir:operation:gpc.getstructuredrecord-1"
    worker = workers(sandbox.base_url)
    await worker.ready()
    spine = json.dumps(
        {"adapter": EXAMPLE, "patient": SANDBOX_PATIENTS["spine"], "interaction": PSIS}
    )
    deceased = json.dumps(
        {
            "adapter": "gpconnect",
            "patient": SANDBOX_PATIENTS["deceased"],
            "interaction": gpc,
            "encounter": "e1",
            "options": dict(EXAMPLE_CONSUMER),
        }
    )
    # A body that is not JSON, with a number in it: echoed, but not the number.
    broken = f'{{"patient": "{SANDBOX_PATIENTS["mesh"]}", oops'
    for request_id, body in (("p-1", spine), ("p-2", deceased), ("p-3", broken)):
        await broker.publish(body.encode(), request_id)
    outcomes = Outcomes(broker)
    await outcomes.until(lambda: len(outcomes.received) >= 3, "three outcomes")
    grouped = outcomes.by_id()
    [routed], [refused], [unparsed] = grouped["p-1"], grouped["p-2"], grouped["p-3"]
    assert routed.kind == "envelope"
    assert routed.json()["target"]["ods_code"] == "YES"
    assert refused.kind == "failure"
    document = refused.json()
    assert document["error"]["type"] == "PatientNotFoundError", document
    assert document["error"]["reason"] == "deceased"
    assert document["error"]["exit_code"] == 3
    assert document["request"]["patient"].startswith("pt-")
    assert unparsed.kind == "failure"
    everything = b"".join(r.body for r in outcomes.received) + worker.log.read_bytes()
    for number in (
        SANDBOX_PATIENTS["spine"],
        SANDBOX_PATIENTS["deceased"],
        SANDBOX_PATIENTS["mesh"],
    ):
        assert number.encode() not in everything


async def test_an_rpc_reply_carries_the_callers_correlation_id_exactly(
    broker: Broker, sandbox: Sandbox, workers: Callable[..., WorkerProcess]
) -> None:
    """RabbitMQ's RPC pattern: the caller sets ``reply_to`` and a ``correlation_id`` property
    and matches the reply by it, byte for byte; the route keeps it too unless the body names
    its own. Ids need not be UUIDs (SDS is sent a UUID derived from them)."""
    if not isinstance(broker, AmqpBroker):
        pytest.skip("the correlation_id property is AMQP's")
    replies = broker.requests.replace("requests", "replies")
    worker = workers(sandbox.base_url)
    await worker.ready()
    await broker.add_reply_destination(replies)
    await broker.publish(_request("YES"), "a", reply_to=replies, correlation_id="Rpc-Caller-42")
    await broker.publish(
        _request("YES", correlation_id="Body-Id 7"), "b", reply_to=replies, correlation_id="rpc-9"
    )
    outcomes = Outcomes(broker, extra=[replies])
    await outcomes.until(lambda: len(outcomes.received) >= 2, "both replies")
    grouped = outcomes.by_id()
    [first], [second] = grouped["a"], grouped["b"]
    assert (first.destination, first.kind) == (replies, "envelope")
    assert first.correlation_id == "Rpc-Caller-42"
    assert first.json()["provenance"]["correlation_id"] == "Rpc-Caller-42"
    assert second.correlation_id == "rpc-9"  # the caller's property, for matching
    assert second.json()["provenance"]["correlation_id"] == "Body-Id 7"  # the route's own


async def test_a_retry_copy_keeps_headers_that_are_not_utf8_and_its_first_seen_to_the_second(
    broker: Broker,
    make_sandbox: Callable[..., Sandbox],
    workers: Callable[..., WorkerProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A string header that is not UTF-8 (legal AMQP; a Java or Go client may send one) reaches
    the worker as bytes, which the client library cannot write back: the retry copy must still
    be published, or the request comes back for ever with its attempt never counted. And the
    first-seen time must survive the copy (a float header travels as a 32-bit float, minutes
    out at today's epoch)."""
    if not isinstance(broker, AmqpBroker):
        pytest.skip("RabbitMQ's retry copies: NATS redelivers the request itself (nak)")
    rabbitmq = broker
    import pamqp.encode

    from sds_plugins._worker._amqp import FIRST_SEEN_HEADER, retry_queue_name

    sandbox = _practices(1, make_sandbox)
    sandbox.set_faults(outage=True)
    # A long delay: the retry copy waits in its retry queue, where the test reads it.
    worker = workers(
        sandbox.base_url, "--retry-initial-s", "40", "--retry-max-s", "40",
        env={"SDS_RETRY_ATTEMPTS": "1"},
    )  # fmt: skip
    await worker.ready()

    encode = pamqp.encode.encode_table_value

    def raw_long_string(value: Any) -> bytes:
        # What another client sends: a long string ('S') whose bytes are not UTF-8.
        if type(value) is bytes:
            return b"S" + len(value).to_bytes(4, "big") + value
        return encode(value)

    published = time.time()
    with monkeypatch.context() as patch:
        patch.setattr(pamqp.encode, "encode_table_value", raw_long_string)
        headers = {"x-name": b"caf\xe9", "x-table": {"inner": b"\xff"}, "x-list": [b"\x80", 1]}
        await rabbitmq.publish(_request("W0000"), "latin-1", headers=headers)

    outcomes = Outcomes(rabbitmq)
    await outcomes.until(lambda: bool(_retry_lines(worker)), "the first attempt's retry")
    [line] = _retry_lines(worker)
    match = re.search(r"retry_in_s=(?P<delay>[\d.]+)", line)
    assert match, line
    copy = await rabbitmq.get(retry_queue_name(rabbitmq.requests, float(match["delay"])))
    assert copy is not None, worker.text()
    assert copy.message_id == "latin-1"
    assert copy.headers["x-name"] == b"caf\xe9"
    assert copy.headers["x-table"] == {"inner": b"\xff"}
    assert copy.headers["x-list"] == [b"\x80", 1]
    assert copy.headers["x-sds-attempts"] == 1
    first_seen = copy.headers[FIRST_SEEN_HEADER]
    assert isinstance(first_seen, int)
    assert published - 1 <= first_seen <= time.time()
    assert "could not publish" not in worker.text()
