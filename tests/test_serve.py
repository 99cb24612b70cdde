"""``sds-plugins serve`` over real sockets: the service under uvicorn, the sandbox behind it.

Every error class maps to its status and problem document; the service token keeps callers
out (and nothing is routed for them); concurrent identical requests coalesce; ``/metrics``
moves with traffic; ``/readyz`` reports a sandbox outage (degraded, still ready); a trace
context sent in becomes the parent of the route span and travels on to the directory.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import sds_plugins_example_ebxml as example
from click.testing import CliRunner
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from sds_plugins import (
    EnvelopeVetoedError,
    PluginHost,
    PrometheusMetrics,
    Router,
    RouteRequest,
    RoutingEnvelope,
    Settings,
    create_service_app,
    hookimpl,
)
from sds_plugins._tools._cli import cli
from sds_plugins.sandbox import AppServer, Sandbox
from sds_plugins.testing import SandboxFactory, accredited_system_record, mhs_record

from ._adapters import BearerToken
from ._hostile import Case, HostileServer
from ._reference import PSIS

ADAPTER = "example-ebxml"

SECRET = "Bearer s3cr3t-envelope-t0ken"
SERVICE_TOKEN = "service-t0ken-0123456789abcdef-0123456789"
VETOED_ASID = "999999999999"
PROBLEM_KEYS = {"type", "title", "status", "detail", "error", "correlation_id", "retryable"}


class Policy:
    """Vetoes one sender; fails like a buggy plugin for another."""

    @hookimpl
    def sds_finalize_envelope(
        self, envelope: RoutingEnvelope, request: RouteRequest
    ) -> RoutingEnvelope | None:
        if request.option("from_asid") == VETOED_ASID:
            raise EnvelopeVetoedError("policy: this sender may not send to Spine")
        if request.option("from_asid") == "111111111111":
            raise RuntimeError(f"plugin bug near {SECRET}")
        return None


@dataclass
class Service:
    url: str
    router: Router
    metrics: PrometheusMetrics

    def client(self, token: str | None = SERVICE_TOKEN, **kwargs: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=60, **kwargs)

    def metric(self, name: str, **labels: str) -> float:
        """The current value of one sample of this service's registry (0 when absent)."""
        body, _ = self.metrics.render()
        total = 0.0
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
        return total


ServiceFactory = Callable[..., Service]


@pytest.fixture
def start_service() -> Iterator[ServiceFactory]:
    servers: list[AppServer] = []

    def start(
        base_url: str,
        *,
        token: str | None = SERVICE_TOKEN,
        with_secrets: bool = False,
        plugins: tuple[object, ...] = (),
        readiness_interval_s: float = 5.0,
        **settings: Any,
    ) -> Service:
        host = PluginHost(load_entrypoints=False, environ={})
        host.register(example, name="example_ebxml")
        host.register(BearerToken(SECRET))
        host.register(Policy())
        metrics = PrometheusMetrics(registry=CollectorRegistry())
        host.register(metrics, name="sds_plugins.metrics")
        for plugin in plugins:
            host.register(plugin)
        settings.setdefault("retry_attempts", 1)
        router = Router(Settings(base_url=base_url, **settings), host=host)
        app = create_service_app(
            router,
            token=token,
            with_secrets=with_secrets,
            metrics=metrics,
            readiness_interval_s=readiness_interval_s,
            readiness_timeout_s=5.0,
        )
        server = AppServer(app, lifespan=True).start()
        servers.append(server)
        return Service(server.url, router, metrics)

    yield start
    for server in servers:
        server.stop()


def _request(org: str = "YES", **fields: Any) -> dict[str, Any]:
    return {"org": org, "interaction": PSIS, **fields}


def _assert_problem(response: httpx.Response, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    document: dict[str, Any] = response.json()
    assert set(document) >= PROBLEM_KEYS, document
    assert document["status"] == status
    assert document["error"] == error
    assert document["type"].startswith("https://")
    assert SECRET not in response.text and SERVICE_TOKEN not in response.text
    return document


# --------------------------------------------------------------------------- the happy path


async def test_route_returns_the_envelope_with_credentials_masked(
    sandbox: Sandbox, start_service: ServiceFactory
) -> None:
    service = start_service(sandbox.base_url)
    correlation_id = str(uuid.uuid4())
    async with service.client() as client:
        response = await client.post(
            f"/route/{ADAPTER}", json=_request(correlation_id=correlation_id)
        )
    assert response.status_code == 200, response.text
    envelope = response.json()
    assert envelope["adapter"] == ADAPTER
    assert envelope["target"]["ods_code"] == "YES"
    assert envelope["provenance"]["correlation_id"] == correlation_id
    assert response.headers["x-correlation-id"] == correlation_id
    assert SECRET not in response.text
    assert envelope["request"]["headers"]["Authorization"] != SECRET


@pytest.mark.parametrize("given", ["0F0E0D0C-AAAA-4BBB-8CCC-123456789012", "order-42/ward 7"])
async def test_the_callers_correlation_id_comes_back_byte_for_byte(
    sandbox: Sandbox, start_service: ServiceFactory, given: str
) -> None:
    # Only SDS requires a UUID (it is sent one derived from another id); PDS and e-RS take any
    # string, and a caller matches answers by its own id exactly as it sent it.
    service = start_service(sandbox.base_url)
    async with service.client() as client:
        response = await client.post(
            f"/route/{ADAPTER}", json=_request(), headers={"X-Correlation-ID": given}
        )
        refused = await client.post(
            f"/route/{ADAPTER}", json=_request(org="Q99"), headers={"X-Correlation-ID": given}
        )
    assert response.status_code == 200, response.text
    assert response.headers["x-correlation-id"] == given
    assert response.json()["provenance"]["correlation_id"] == given
    assert refused.headers["x-correlation-id"] == given
    assert refused.json()["correlation_id"] == given


async def test_a_correlation_id_a_plugin_rewrote_is_answered_as_it_is(
    sandbox: Sandbox, start_service: ServiceFactory
) -> None:
    class Rewriting:
        @hookimpl(wrapper=True)
        def sds_finalize_envelope(
            self, envelope: RoutingEnvelope, request: RouteRequest
        ) -> Generator[None, RoutingEnvelope, RoutingEnvelope]:
            final = yield
            provenance = final.provenance.model_copy(update={"correlation_id": "Tracé-42"})
            return final.model_copy(update={"provenance": provenance})

    service = start_service(sandbox.base_url, plugins=(Rewriting(),))
    async with service.client() as client:
        response = await client.post(f"/route/{ADAPTER}", json=_request())
    assert response.status_code == 200, response.text
    assert response.json()["provenance"]["correlation_id"] == "Tracé-42"
    assert response.headers["x-correlation-id"] == "Tracé-42"  # latin-1, as HTTP has it


async def test_with_secrets_returns_credentials(
    sandbox: Sandbox, start_service: ServiceFactory
) -> None:
    service = start_service(sandbox.base_url, with_secrets=True)
    async with service.client() as client:
        response = await client.post(f"/route/{ADAPTER}", json=_request())
    assert response.status_code == 200
    assert response.json()["request"]["headers"]["Authorization"] == SECRET


async def test_adapters_lists_names_descriptions_and_typed_options(
    sandbox: Sandbox, start_service: ServiceFactory
) -> None:
    service = start_service(sandbox.base_url)
    async with service.client() as client:
        response = await client.get("/adapters")
    assert response.status_code == 200
    (listed,) = response.json()["adapters"]
    assert listed["name"] == ADAPTER
    assert listed["description"]
    options = {option["name"]: option for option in listed["options"]}
    assert options["from_asid"]["required"] is False
    assert "string" in options["from_asid"]["type"]


async def test_healthz_and_a_valid_openapi_document(
    sandbox: Sandbox, start_service: ServiceFactory
) -> None:
    service = start_service(sandbox.base_url)
    async with service.client(token=None) as client:
        health = await client.get("/healthz")
        document = (await client.get("/openapi.json")).json()
        ready = await client.get("/readyz")
    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200, ready.text
    assert ready.json()["directory"]["ok"] is True
    assert ready.json()["redis"] == {"configured": False}
    schema = schemathesis.openapi.from_dict(document)
    schema.validate()  # against the OpenAPI 3.1 meta-schema
    assert set(document["paths"]) == {
        "/route/{adapter}",
        "/adapters",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    }
    statuses = set(document["paths"]["/route/{adapter}"]["post"]["responses"])
    assert {"200", "400", "401", "403", "404", "409", "415", "502", "503"} <= statuses


# --------------------------------------------------------------------------- the token


@pytest.mark.parametrize("token", [None, "wrong", SERVICE_TOKEN[:-1], SERVICE_TOKEN + "x"])
async def test_without_the_right_token_nothing_is_routed(
    sandbox: Sandbox, start_service: ServiceFactory, token: str | None
) -> None:
    service = start_service(sandbox.base_url)
    async with service.client(token=token) as client:
        response = await client.post(f"/route/{ADAPTER}", json=_request())
        adapters = await client.get("/adapters")
    _assert_problem(response, 401, "Unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert adapters.status_code == 401
    assert sandbox.stats()["requests"] == {}
    assert service.metric("sds_plugins_routes_total") == 0


# --------------------------------------------------------------------------- error mapping


async def test_invalid_input_is_400(sandbox: Sandbox, start_service: ServiceFactory) -> None:
    service = start_service(sandbox.base_url)
    async with service.client() as client:
        bad_org = await client.post(f"/route/{ADAPTER}", json=_request(org="not an ods code!"))
        json_type = {"Content-Type": "application/json"}
        not_json = await client.post(f"/route/{ADAPTER}", content=b"{nope", headers=json_type)
        unknown = await client.post(f"/route/{ADAPTER}", json=_request(colour="blue"))
        adapter_in_body = await client.post(f"/route/{ADAPTER}", json=_request(adapter=ADAPTER))
        bad_option = await client.post(
            f"/route/{ADAPTER}", json=_request(options={"pattern": "carrier-pigeon"})
        )
        too_large = await client.post(
            f"/route/{ADAPTER}", content=b" " * (65 * 1024), headers=json_type
        )
    assert _assert_problem(bad_org, 400, "InvalidInputError")["field"] == "org"
    _assert_problem(not_json, 400, "InvalidInputError")
    assert _assert_problem(unknown, 400, "InvalidInputError")["field"] == "colour"
    _assert_problem(adapter_in_body, 400, "InvalidInputError")
    _assert_problem(bad_option, 400, "InvalidInputError")
    _assert_problem(too_large, 413, "RequestTooLarge")
    assert sandbox.stats()["requests"] == {}


async def test_not_found_is_404_and_vetoed_is_403(
    sandbox: Sandbox, start_service: ServiceFactory
) -> None:
    service = start_service(sandbox.base_url)
    correlation_id = str(uuid.uuid4())
    async with service.client() as client:
        missing = await client.post(
            f"/route/{ADAPTER}", json=_request(org="Q99", correlation_id=correlation_id)
        )
        vetoed = await client.post(
            f"/route/{ADAPTER}", json=_request(options={"from_asid": VETOED_ASID})
        )
    document = _assert_problem(missing, 404, "NotFoundError")
    assert document["correlation_id"] == correlation_id
    assert document["retryable"] is False
    _assert_problem(vetoed, 403, "EnvelopeVetoedError")


async def test_ambiguous_is_409_with_the_candidates(
    make_sandbox: SandboxFactory, start_service: ServiceFactory
) -> None:
    sandbox = make_sandbox(
        [
            mhs_record("A12345", PSIS, party_key="A12345-0000001"),
            mhs_record("A12345", PSIS, party_key="A12345-0000002"),
        ],
        [
            accredited_system_record("A12345", PSIS, party_key="A12345-0000001"),
            accredited_system_record("A12345", PSIS, party_key="A12345-0000002"),
        ],
    )
    service = start_service(sandbox.base_url)
    async with service.client() as client:
        response = await client.post(f"/route/{ADAPTER}", json=_request(org="A12345"))
    document = _assert_problem(response, 409, "AmbiguousError")
    assert sorted(c["party_key"] for c in document["candidates"]) == [
        "A12345-0000001",
        "A12345-0000002",
    ]


async def test_an_unusable_directory_answer_is_502(
    make_sandbox: SandboxFactory, start_service: ServiceFactory
) -> None:
    locked = make_sandbox(api_key="the-right-key")
    wrong_key = start_service(locked.base_url, api_key="a-wrong-key")
    async with wrong_key.client() as client:
        refused = await client.post(f"/route/{ADAPTER}", json=_request())
    _assert_problem(refused, 502, "AuthenticationError")
    assert "a-wrong-key" not in refused.text

    cases = {path: Case(body=b"{not json") for path in ("/Endpoint", "/Device")}
    with HostileServer(cases) as hostile:
        malformed = start_service(hostile.url)
        async with malformed.client() as client:
            response = await client.post(f"/route/{ADAPTER}", json=_request())
    document = _assert_problem(response, 502, "MalformedResponseError")
    assert "retry-after" not in response.headers
    assert document["retryable"] is True


async def test_an_unavailable_directory_is_503_with_retry_after(
    sandbox: Sandbox, start_service: ServiceFactory
) -> None:
    service = start_service(sandbox.base_url)
    sandbox.set_faults(outage=True, retry_after=7)
    async with service.client() as client:
        first = await client.post(f"/route/{ADAPTER}", json=_request())
        second = await client.post(f"/route/{ADAPTER}", json=_request(org="B82617"))
    document = _assert_problem(first, 503, "DirectoryUnavailableError")
    assert document["retryable"] is True
    assert first.headers["retry-after"] == "7"
    # The failure opened the breaker: the next cold lookup is refused without a request.
    breaker = _assert_problem(second, 503, "BreakerOpenError")
    assert int(second.headers["retry-after"]) >= 1
    assert breaker["retry_after_s"] > 0


async def test_rate_limited_is_503_and_an_unexpected_failure_500(
    sandbox: Sandbox, start_service: ServiceFactory
) -> None:
    service = start_service(sandbox.base_url)
    async with service.client() as client:
        broken = await client.post(
            f"/route/{ADAPTER}", json=_request(options={"from_asid": "111111111111"})
        )
        sandbox.set_faults(error_rate=1.0, error_status=429)
        limited = await client.post(f"/route/{ADAPTER}", json=_request(org="B82617"))
    document = _assert_problem(broken, 500, "RuntimeError")
    assert "plugin bug" not in document["detail"]
    _assert_problem(limited, 503, "RateLimitedError")
    assert int(limited.headers["retry-after"]) >= 1


# --------------------------------------------------------------------------- coalescing


async def test_500_concurrent_identical_requests_make_one_directory_request_per_lookup(
    make_sandbox: SandboxFactory, start_service: ServiceFactory
) -> None:
    # Slow answers keep the first fetch in flight while the other requests arrive.
    sandbox = make_sandbox(latency_ms=300)
    service = start_service(sandbox.base_url)
    limits = httpx.Limits(max_connections=500, max_keepalive_connections=500)
    async with service.client(limits=limits) as client:
        responses = await asyncio.gather(
            *(client.post(f"/route/{ADAPTER}", json=_request()) for _ in range(500))
        )
    assert [r.status_code for r in responses] == [200] * 500
    requests = sandbox.stats()["requests"]
    assert requests == {
        "/spine-directory/FHIR/R4/Endpoint": 1,
        "/spine-directory/FHIR/R4/Device": 1,
    }, requests
    lookups = service.metric("sds_plugins_lookups_total", source="sds")
    assert lookups == 1000  # two per route, whether led, coalesced or a cache hit
    print(
        "500 concurrent routes:",
        {
            cache: service.metric("sds_plugins_lookups_total", cache=cache)
            for cache in ("miss", "coalesced", "hit")
        },
        "directory requests:",
        requests,
    )


# --------------------------------------------------------------------------- metrics


async def test_metrics_move_with_traffic_and_show_a_429_storm(
    sandbox: Sandbox, start_service: ServiceFactory
) -> None:
    service = start_service(sandbox.base_url, retry_attempts=3, retry_budget_s=10)
    async with service.client(token=None) as scraper, service.client() as client:
        assert (await client.post(f"/route/{ADAPTER}", json=_request())).status_code == 200
        assert (await client.post(f"/route/{ADAPTER}", json=_request())).status_code == 200
        exposition = await scraper.get("/metrics")
        assert exposition.status_code == 200
        assert exposition.headers["content-type"].startswith("text/plain")
        assert service.metric("sds_plugins_routes_total", adapter=ADAPTER, outcome="ok") == 2
        assert service.metric("sds_plugins_lookups_total", cache="miss") == 2
        assert service.metric("sds_plugins_lookups_total", cache="hit") == 2
        assert service.metric("sds_plugins_directory_responses_total", status="200") == 2
        assert service.metric("sds_plugins_breaker_state", source="sds", state="closed") == 1

        sandbox.set_faults(error_rate=1.0, error_status=429, retry_after=0)
        for org in ("B82617", "B86041", "A20047"):
            response = await client.post(f"/route/{ADAPTER}", json=_request(org=org))
            assert response.status_code == 503
    # Each cold route's two lookups were tried three times each, all refused with 429.
    assert service.metric("sds_plugins_directory_responses_total", status="429") >= 6
    assert service.metric("sds_plugins_lookup_errors_total", error="RateLimitedError") >= 2
    assert service.metric("sds_plugins_routes_total", outcome="error") == 3
    text = (await httpx.AsyncClient(base_url=service.url).get("/metrics")).text
    assert 'status="429"' in text
    assert "YES" not in text and SECRET not in text  # no organisations, no credentials


# --------------------------------------------------------------------------- readiness


async def _wait_for_status(client: httpx.AsyncClient, path: str, status: int) -> httpx.Response:
    async with asyncio.timeout(30):
        while True:
            response = await client.get(path)
            if response.status_code == status:
                return response
            await asyncio.sleep(0.05)


async def _wait_for_readiness(client: httpx.AsyncClient, status: str) -> httpx.Response:
    """The first ``/readyz`` answer of ``status``; every answer on the way is a 200."""
    async with asyncio.timeout(30):
        while True:
            response = await client.get("/readyz")
            assert response.status_code == 200, response.text
            if response.json()["status"] == status:
                return response
            await asyncio.sleep(0.05)


async def test_readyz_stays_ready_but_degraded_during_an_outage(
    sandbox: Sandbox, start_service: ServiceFactory
) -> None:
    # The directory is every replica's: following it would take them all out of a load
    # balancer at once, although each still answers from its cache (and says why for the rest).
    service = start_service(sandbox.base_url, readiness_interval_s=0, breaker_cooldown_s=0.2)
    async with service.client(token=None) as probe, service.client() as client:
        ready = await _wait_for_status(probe, "/readyz", 200)
        assert ready.json()["ready"] is True and ready.json()["status"] == "ok"
        assert (await client.post(f"/route/{ADAPTER}", json=_request())).status_code == 200
        sandbox.set_faults(outage=True)
        degraded = await _wait_for_readiness(probe, "degraded")
        document = degraded.json()
        assert document["ready"] is True
        assert document["directory"]["ok"] is False
        assert document["reasons"]
        # What it has, it serves: the route looked up before the outage, from its cache.
        assert (await client.post(f"/route/{ADAPTER}", json=_request())).status_code == 200
        sandbox.set_faults(outage=False)
        again = await _wait_for_readiness(probe, "ok")
        assert again.json()["directory"]["ok"] is True
        assert (await probe.get("/healthz")).status_code == 200


@pytest.mark.redis
async def test_readyz_reports_redis(sandbox: Sandbox, start_service: ServiceFactory) -> None:
    url = os.environ.get("SDS_TEST_REDIS_URL")
    if not url:
        pytest.skip("SDS_TEST_REDIS_URL is not set")
    prefix = f"sds-test-serve-{uuid.uuid4().hex}:"
    service = start_service(sandbox.base_url, redis_url=url, redis_prefix=prefix)
    async with service.client(token=None) as client:
        response = await client.get("/readyz")
    redis = response.json()["redis"]
    assert redis["configured"] is True and redis["ok"] is True
    assert "@" not in redis["location"] or ":***@" in redis["location"]


# --------------------------------------------------------------------------- the command


def test_serve_refuses_to_listen_beyond_loopback_without_a_token() -> None:
    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "without a service token" in result.output
    assert "Traceback" not in result.output


def test_serve_help_names_every_environment_variable() -> None:
    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0
    for variable in ("SDS_SERVE_HOST", "SDS_SERVE_PORT", "SDS_SERVE_TOKEN_FILE", "SDS_BASE_URL"):
        assert variable in result.output


def test_serve_runs_and_stops_on_sigterm(sandbox: Sandbox, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(SERVICE_TOKEN + "\n")
    token_file.chmod(0o600)
    env = {
        **os.environ,
        "SDS_BASE_URL": sandbox.base_url,
        "SDS_PLUGINS_LOAD": "sds-plugins-example-ebxml",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sds_plugins",
            "serve",
            "--port",
            "0",
            "--token-file",
            str(token_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("serving on "), process.stderr.read() if process.stderr else line
        url = line.removeprefix("serving on ")
        headers = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
        routed = httpx.post(f"{url}/route/{ADAPTER}", json=_request(), headers=headers, timeout=30)
        assert routed.status_code == 200, routed.text
        assert httpx.get(f"{url}/adapters", timeout=30).status_code == 401
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


# --------------------------------------------------------------------------- traces

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


class RecordingHeaders:
    """ASGI middleware: keeps the headers of every request the wrapped app receives."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[dict[str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await self.app(scope, receive, send)


async def test_a_trace_context_sent_in_is_the_route_spans_parent_and_reaches_the_directory(
    start_service: ServiceFactory, spans: tuple[Any, Any]
) -> None:
    from sds_plugins import OpenTelemetryTracing
    from sds_plugins.sandbox import SandboxConfig, create_app

    provider, exporter = spans
    directory = RecordingHeaders(create_app(SandboxConfig()))
    with AppServer(directory) as sandbox_server:
        service = start_service(
            sandbox_server.url + "/spine-directory/FHIR/R4",
            plugins=(OpenTelemetryTracing(tracer_provider=provider),),
        )
        headers = {"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"}
        async with service.client() as client:
            response = await client.post(f"/route/{ADAPTER}", json=_request(), headers=headers)
    assert response.status_code == 200, response.text

    finished = exporter.get_finished_spans()
    [route] = [span for span in finished if span.name == f"sds route {ADAPTER}"]
    lookups = [span for span in finished if span.name == "sds lookup sds"]
    assert format(route.context.trace_id, "032x") == TRACE_ID
    assert route.parent is not None and format(route.parent.span_id, "016x") == CALLER_SPAN
    assert len(lookups) == 2
    assert all(span.parent.span_id == route.context.span_id for span in lookups)
    assert all(span.context.trace_id == route.context.trace_id for span in lookups)
    assert route.attributes["sds.adapter"] == ADAPTER
    assert route.attributes["sds.organisation"] == "YES"
    assert route.attributes["sds.interaction"] == PSIS
    assert route.attributes["sds.outcome"] == "ok"
    assert {span.attributes["sds.cache"] for span in lookups} == {"miss"}
    assert all(span.attributes["sds.attempts"] == 1 for span in lookups)
    assert all(
        route.start_time <= span.start_time <= span.end_time <= route.end_time for span in lookups
    )
    every_attribute = " ".join(str(dict(span.attributes)) for span in finished)
    assert SECRET not in every_attribute and SERVICE_TOKEN not in every_attribute

    sent = [h for h in directory.seen if h.get("x-correlation-id")]
    assert len(sent) == 2
    assert all(h["traceparent"].startswith(f"00-{TRACE_ID}-") for h in sent)


async def test_a_failed_route_span_is_marked_as_an_error(
    sandbox: Sandbox, start_service: ServiceFactory, spans: tuple[Any, Any]
) -> None:
    from opentelemetry.trace import StatusCode

    from sds_plugins import OpenTelemetryTracing

    provider, exporter = spans
    service = start_service(
        sandbox.base_url, plugins=(OpenTelemetryTracing(tracer_provider=provider),)
    )
    sandbox.set_faults(outage=True)
    async with service.client() as client:
        response = await client.post(f"/route/{ADAPTER}", json=_request())
    assert response.status_code == 503
    [route] = [s for s in exporter.get_finished_spans() if s.name.startswith("sds route")]
    assert route.parent is None  # no trace context sent: a new trace
    assert route.status.status_code is StatusCode.ERROR
    assert route.attributes["sds.error"] == "DirectoryUnavailableError"


@pytest.mark.redis
@pytest.mark.slow
async def test_several_workers_share_redis_and_look_each_route_up_once(
    make_sandbox: SandboxFactory, tmp_path: Path
) -> None:
    redis_url = os.environ.get("SDS_TEST_REDIS_URL")
    if not redis_url:
        pytest.skip("needs a real Redis: set SDS_TEST_REDIS_URL")
    import redis

    sandbox = make_sandbox(latency_ms=300)
    prefix = f"sds-test-serve-{uuid.uuid4().hex}:"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SDS_")},
        "SDS_BASE_URL": sandbox.base_url,
        "SDS_REDIS_URL": redis_url,
        "SDS_REDIS_PREFIX": prefix,
        "SDS_FLEET_SIZE": "2",
        "SDS_PLUGINS_LOAD": "sds-plugins-example-ebxml",
    }
    log = (tmp_path / "serve.log").open("w")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "sds_plugins", "serve", "--port", "0", "--workers", "2"),
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        assert line.startswith("serving on "), (tmp_path / "serve.log").read_text()
        url = line.split()[2]
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
            async with asyncio.timeout(60):
                while True:  # both workers start in their own time; connections wait meanwhile
                    try:
                        if (await client.get("/healthz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.1)
            responses = await asyncio.gather(
                *(client.post(f"/route/{ADAPTER}", json=_request()) for _ in range(100))
            )
        assert [r.status_code for r in responses] == [200] * 100
        assert sandbox.stats()["requests"] == {
            "/spine-directory/FHIR/R4/Endpoint": 1,
            "/spine-directory/FHIR/R4/Device": 1,
        }
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 60) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        log.close()
        client_redis = redis.Redis.from_url(redis_url)
        try:
            keys = list(client_redis.scan_iter(match=f"{prefix}*"))
            if keys:
                client_redis.delete(*keys)
        finally:
            client_redis.close()


def test_metrics_and_tracing_register_like_the_defaults_and_can_be_disabled() -> None:
    from sds_plugins._observability import register_observability

    host = PluginHost(load_entrypoints=False, environ={})
    assert isinstance(register_observability(Router(Settings(), host=host)), PrometheusMetrics)
    assert host.pm.has_plugin("sds_plugins.metrics") and host.pm.has_plugin("sds_plugins.tracing")
    blocked = PluginHost(
        load_entrypoints=False,
        environ={"SDS_PLUGINS_DISABLE": "sds_plugins.metrics,sds_plugins.tracing"},
    )
    assert register_observability(Router(Settings(), host=blocked)) is None
    assert not blocked.pm.has_plugin("sds_plugins.tracing")


# --------------------------------------------------------------------------- patients


async def test_routes_to_a_patient_and_pds_outcomes_are_problems_without_the_number(
    sandbox: Sandbox, start_service: ServiceFactory
) -> None:
    from sds_plugins_gpconnect import EXAMPLE_CONSUMER, GpConnectPlugin

    from sds_plugins.sandbox import SANDBOX_PATIENTS

    gpc = "urn:nhs:names:services:gpconnect:fhir:operation:gpc.getstructuredrecord-1"
    service = start_service(sandbox.base_url, plugins=(GpConnectPlugin(),))

    def structured(case: str) -> dict[str, Any]:
        return {
            "patient": SANDBOX_PATIENTS[case],
            "interaction": gpc,
            "encounter": f"e-{case}",
            "options": dict(EXAMPLE_CONSUMER),
        }

    async with service.client() as client:
        routed = await client.post(
            f"/route/{ADAPTER}", json={"patient": SANDBOX_PATIENTS["spine"], "interaction": PSIS}
        )
        answers = {
            case: await client.post("/route/gpconnect", json=structured(case))
            for case in ("deceased", "unknown", "unregistered", "restricted", "invalidated")
        }
        both = await client.post(
            f"/route/{ADAPTER}", json={**_request(), "patient": SANDBOX_PATIENTS["spine"]}
        )
        sandbox.set_faults(outage=True)
        down = await client.post("/route/gpconnect", json=structured("mesh"))
    assert routed.status_code == 200, routed.text
    assert routed.json()["target"]["ods_code"] == "YES"
    expected = {
        "deceased": (404, "PatientNotFoundError", "deceased"),
        "unknown": (404, "PatientNotFoundError", "unknown"),
        "unregistered": (404, "PatientNotFoundError", "no_registration"),
        "restricted": (403, "PatientRestrictedError", None),
        "invalidated": (410, "PatientInvalidatedError", None),
    }
    for case, (status, error, reason) in expected.items():
        document = _assert_problem(answers[case], status, error)
        assert document.get("reason") == reason, case
        assert SANDBOX_PATIENTS[case] not in answers[case].text
    _assert_problem(both, 400, "InvalidInputError")
    _assert_problem(down, 503, "DirectoryUnavailableError")
    assert SANDBOX_PATIENTS["mesh"] not in down.text
