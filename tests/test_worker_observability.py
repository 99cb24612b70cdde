"""The worker's metrics and trace context: counted messages, a broker header's ``traceparent``
as the route span's parent, and ``--metrics-port`` on a real broker."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sds_plugins_example_ebxml as example
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from sds_plugins import (
    OpenTelemetryTracing,
    PluginHost,
    PrometheusMetrics,
    Router,
    RouteWorker,
    Settings,
)
from sds_plugins.sandbox import Sandbox

from ._reference import PSIS
from ._worker_support import AMQP_URL, AmqpBroker, Outcomes, WorkerProcess, unique_prefix

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


def _body(org: str = "YES") -> bytes:
    return json.dumps({"adapter": "example-ebxml", "org": org, "interaction": PSIS}).encode()


def _value(text: str, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


@pytest.fixture
async def observed(
    sandbox: Sandbox, spans: tuple[Any, Any]
) -> AsyncIterator[tuple[RouteWorker, PrometheusMetrics]]:
    provider, _ = spans
    metrics = PrometheusMetrics(registry=CollectorRegistry())
    host = PluginHost(load_entrypoints=False, environ={})
    host.register(example, name="example_ebxml")
    host.register(metrics, name="sds_plugins.metrics")
    host.register(OpenTelemetryTracing(tracer_provider=provider), name="sds_plugins.tracing")
    settings = Settings(base_url=sandbox.base_url, retry_attempts=1)
    async with Router(settings, host=host) as router:
        yield RouteWorker(router, metrics=metrics), metrics


async def test_a_message_headers_trace_context_is_the_route_spans_parent(
    observed: tuple[RouteWorker, PrometheusMetrics], spans: tuple[Any, Any]
) -> None:
    worker, _ = observed
    _, exporter = spans
    # AMQP header values may arrive as bytes; names in any case.
    headers = {"TraceParent": f"00-{TRACE_ID}-{CALLER_SPAN}-01".encode(), "x-attempts": 0}
    outcome = await worker.handle(_body(), request_id="r-1", headers=headers)
    assert outcome.disposition == "envelope"
    [route] = [s for s in exporter.get_finished_spans() if s.name.startswith("sds route")]
    assert format(route.context.trace_id, "032x") == TRACE_ID
    assert route.parent is not None and format(route.parent.span_id, "016x") == CALLER_SPAN
    # Without a trace context, the next route starts a trace of its own.
    await worker.handle(_body(), request_id="r-2", headers={})
    routes = [s for s in exporter.get_finished_spans() if s.name.startswith("sds route")]
    assert routes[-1].parent is None


async def test_worker_messages_are_counted_in_out_retried_failed(
    observed: tuple[RouteWorker, PrometheusMetrics], sandbox: Sandbox
) -> None:
    worker, metrics = observed
    await worker.handle(_body())  # out
    await worker.handle(b"{not json")  # failed
    sandbox.set_faults(outage=True)
    await worker.handle(_body("B82617"))  # retried
    text = metrics.render()[0].decode()
    counted = {
        event: _value(text, "sds_plugins_worker_messages_total", event=event)
        for event in ("in", "out", "retried", "failed")
    }
    assert counted == {"in": 3, "out": 1, "retried": 1, "failed": 1}


@pytest.mark.amqp
@pytest.mark.slow
@pytest.mark.skipif(not AMQP_URL, reason="needs RabbitMQ: set SDS_TEST_AMQP_URL")
async def test_worker_metrics_port_serves_metrics_that_move_with_messages(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    broker = AmqpBroker(AMQP_URL, unique_prefix())
    await broker.open()
    worker = WorkerProcess(
        broker,
        tmp_path / "worker.log",
        base_url=sandbox.base_url,
        args=("--metrics-port", "0", "--log-level", "info"),
    )
    try:
        await worker.ready()
        match = re.search(r"metrics on (http://\S+/metrics)", worker.text())
        assert match, worker.text()
        url = match.group(1)
        async with httpx.AsyncClient(timeout=30) as client:
            before = (await client.get(url)).text
            assert _value(before, "sds_plugins_worker_messages_total", event="in") == 0
            await broker.publish(_body(), "m-1", reply_to=None)
            outcomes = Outcomes(broker)
            await outcomes.until(lambda: len(outcomes.received) >= 1, "the envelope")
            deadline = time.monotonic() + 30
            while True:  # the outcome is published just before the counter moves
                after = (await client.get(url)).text
                if _value(after, "sds_plugins_worker_messages_total", event="out") == 1:
                    break
                assert time.monotonic() < deadline, after
                await asyncio.sleep(0.05)
        assert _value(after, "sds_plugins_worker_messages_total", event="in") == 1
        assert _value(after, "sds_plugins_routes_total", outcome="ok") == 1
        assert _value(after, "sds_plugins_directory_responses_total", status="200") == 2
    finally:
        worker.stop()
        await broker.close()


def test_histograms_are_cumulative_with_count_and_sum() -> None:
    from datetime import UTC, datetime

    from sds_plugins import LookupEvent

    metrics = PrometheusMetrics(registry=CollectorRegistry())
    for seconds in (0.0003, 0.003, 0.3, 50.0):
        metrics.sds_lookup_completed(
            LookupEvent(
                time=datetime.now(UTC),
                source="sds",
                query="Device?organization=YES",
                namespace="n",
                cache="miss",
                attempts=1,
                duration_s=seconds,
                outcome="found",
                records=1,
                correlation_id="c",
            )
        )
    text = metrics.render()[0].decode()
    bucket = "sds_plugins_lookup_duration_seconds_bucket"
    assert _value(text, bucket, le="0.0001") == 0
    assert _value(text, bucket, le="0.0005") == 1
    assert _value(text, bucket, le="0.005") == 2
    assert _value(text, bucket, le="0.5") == 3
    assert _value(text, bucket, le="30.0") == 3
    assert _value(text, bucket, le="+Inf") == 4
    assert _value(text, "sds_plugins_lookup_duration_seconds_count") == 4
    assert abs(_value(text, "sds_plugins_lookup_duration_seconds_sum") - 50.3033) < 1e-9
    assert _value(text, "sds_plugins_lookups_total", outcome="found", cache="miss") == 4
