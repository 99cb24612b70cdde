"""``sds-plugins serve`` under hostile traffic, over real sockets (issue 23).

What a hostile or careless client can send: headers trickled for ever, thousands of headers,
a text/plain POST from a web page, a wrong method, thousands of made-up adapter names, a
5,000-digit integer, a body that never ends; and what an operator does: SIGTERM with clients
kept alive, a token file anyone can read. Each is answered with a problem document or cut off,
and none grows the service's memory or holds it up.

The runner's features (header deadline, head limits, shutdown) are tested on the real command
in a process of its own; the app's on the app under uvicorn in this process.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from sds_plugins import PluginHost, PrometheusMetrics, Router, Settings, create_service_app
from sds_plugins._tools._cli import cli
from sds_plugins.sandbox import AppServer, Sandbox
from sds_plugins.testing import SandboxFactory

from ._reference import PSIS

ADAPTER = "example-ebxml"
TOKEN = "hostile-t0ken-0123456789abcdef-0123456789"
ROOT = Path(__file__).resolve().parents[1]
PROBLEM_KEYS = {"type", "title", "status", "detail", "error", "correlation_id", "retryable"}
JSON = {"Content-Type": "application/json"}


def _request(org: str = "YES", **fields: Any) -> dict[str, Any]:
    return {"org": org, "interaction": PSIS, **fields}


def _problem(response: httpx.Response, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json", response.text
    document: dict[str, Any] = response.json()
    assert set(document) >= PROBLEM_KEYS, document
    assert document["status"] == status
    assert document["error"] == error
    assert document["type"].startswith("https://"), document
    assert TOKEN not in response.text
    return document


# --------------------------------------------------------------------------- the command


@contextmanager
def serve_process(
    base_url: str, tmp_path: Path, *args: str
) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    """``sds-plugins serve`` in a process of its own: ``(process, url, log file)``."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    log = tmp_path / "serve.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SDS_")},
        "SDS_BASE_URL": base_url,
        "SDS_PLUGINS_LOAD": "sds-plugins-example-ebxml",
        "SDS_RETRY_ATTEMPTS": "1",
    }
    with log.open("w") as errors:
        process = subprocess.Popen(
            [
                sys.executable,
                *("-m", "sds_plugins", "serve", "--port", "0"),
                *("--token-file", str(token_file)),
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env=env,
        )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("serving on "), log.read_text()
        yield process, line.removeprefix("serving on "), log
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether the peer closed the connection (an orderly end, not a reset)."""
    try:
        return sock.recv(65536) == b""
    except TimeoutError:
        return False


def _cut(sock: socket.socket) -> bool:
    """Whether the peer ended the connection, in order or not (unread bytes make it a reset)."""
    try:
        return sock.recv(65536) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_headers_trickled_for_ever_are_cut_off(sandbox: Sandbox, tmp_path: Path) -> None:
    # Without a deadline, each connection is held for as long as its client trickles (400 such
    # held a service for 60 s; with 256 file descriptors it became unreachable).
    with serve_process(sandbox.base_url, tmp_path, "--header-timeout", "1") as (_, url, _):
        address = _address(url)
        trickling = []
        for _ in range(100):
            sock = socket.create_connection(address, timeout=5)
            sock.sendall(b"POST /route/example-ebxml HTTP/1.1\r\nHost: x\r\n")
            trickling.append(sock)
        started = time.monotonic()
        cut = []
        try:
            for sock in trickling:
                sock.settimeout(0.2)
                while time.monotonic() - started < 5:
                    try:
                        sock.sendall(b"X-Trickle: 1\r\n")  # a header now and then...
                    except OSError:
                        cut.append(time.monotonic() - started)
                        break
                    if _cut(sock):  # ...and never the end of them
                        cut.append(time.monotonic() - started)
                        break
        finally:
            for sock in trickling:
                sock.close()
        assert len(cut) == 100, f"{100 - len(cut)} of 100 trickling connections still open"
        assert max(cut) < 4, max(cut)
        print(f"100 trickling connections cut after {min(cut):.2f}-{max(cut):.2f}s")
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200


def test_too_many_or_too_large_headers_are_431(sandbox: Sandbox, tmp_path: Path) -> None:
    with serve_process(sandbox.base_url, tmp_path) as (_, url, _):
        # httpx adds Host, Accept, Accept-Encoding, Connection and User-Agent: 100 fields.
        hundred = {f"x-h{i}": "v" for i in range(95)}
        assert httpx.get(f"{url}/healthz", headers=hundred, timeout=10).status_code == 200
        many = {f"x-h{i}": "v" for i in range(10_000)}
        _problem(httpx.get(f"{url}/healthz", headers=many, timeout=10), 431, "HeadersTooLarge")
        one_more = {f"x-h{i}": "v" for i in range(96)}
        _problem(httpx.get(f"{url}/healthz", headers=one_more, timeout=10), 431, "HeadersTooLarge")
        large = {"x-large": "a" * 20_000}
        _problem(httpx.get(f"{url}/healthz", headers=large, timeout=10), 431, "HeadersTooLarge")
        # The same head sent in pieces: h11's own limit on an incomplete head, answered alike.
        with socket.create_connection(_address(url), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Large: ")
            for _ in range(17):  # just past 16 KiB, all of it read by the server
                sock.sendall(b"a" * 1000)
                time.sleep(0.01)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert b"application/problem+json" in answer
        assert b"#problem-headers-too-large" in answer
        # A request line that is not HTTP: a problem document too.
        with socket.create_connection(_address(url), timeout=10) as sock:
            sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
        assert b"#problem-malformed-request" in answer
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200


def test_sigterm_closes_kept_alive_connections_and_exits_after_the_last_answer(
    make_sandbox: SandboxFactory, tmp_path: Path
) -> None:
    sandbox = make_sandbox(latency_ms=1000)  # routes in flight when the signal comes
    with serve_process(sandbox.base_url, tmp_path) as (process, url, log):
        headers = {"Authorization": f"Bearer {TOKEN}"}
        clients = [httpx.Client(base_url=url, headers=headers, timeout=30) for _ in range(4)]
        idle = socket.create_connection(_address(url), timeout=10)
        try:
            for client in clients:  # each holds a kept-alive connection
                assert client.get("/healthz").status_code == 200
            idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b'{"status":"ok"}'):  # the whole answer, nothing after
                answer += idle.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200 ")
            answers: list[tuple[httpx.Response, float]] = []
            failures: list[BaseException] = []

            def route(client: httpx.Client, org: str) -> None:
                try:
                    answer = client.post(f"/route/{ADAPTER}", json=_request(org=org))
                    answers.append((answer, time.monotonic()))
                    client.get("/healthz")  # the same client again: a new connection, refused
                except BaseException as exc:
                    failures.append(exc)

            threads = [
                threading.Thread(target=route, args=(client, org))
                for client, org in zip(clients, ("YES", "B82617", "B86041", "A20047"), strict=True)
            ]
            for thread in threads:
                thread.start()
            time.sleep(0.4)  # the four routes are waiting on the directory
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            idle.settimeout(5)
            assert _closed_by_peer(idle)  # the idle connection: closed, in order
            for thread in threads:
                thread.join(30)
            assert process.wait(30) == 0
            exited = time.monotonic()
        finally:
            idle.close()
            for client in clients:
                client.close()
    assert len(answers) == 4, (answers, failures)
    for answer, _ in answers:
        assert answer.status_code in (200, 404), answer.text
        assert answer.headers["connection"] == "close"  # told, not cut
    # Each client's next request met a closed port, not a connection cut under it.
    assert [type(failure) for failure in failures] == [httpx.ConnectError] * 4, failures
    last = max(at for _, at in answers)
    print(
        f"SIGTERM: last answer {last - signalled:.2f}s after it, "
        f"exit {exited - last:.2f}s after the last answer"
    )
    assert exited - last < 2.0
    text = log.read_text()
    assert "POST /route/example-ebxml 200 " in text  # the access log
    assert TOKEN not in text


# --------------------------------------------------------------------------- the token file


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620], ids=oct)
def test_a_token_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(mode)
    result = CliRunner().invoke(cli, ["serve", "--token-file", str(token_file)])
    assert result.exit_code == 2, result.output
    assert str(token_file) in result.output
    assert f"{mode:04o}" in result.output and "chmod 600" in result.output
    assert TOKEN not in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("token", ["t0k3n", "a" * 31])
def test_a_token_shorter_than_32_bytes_is_refused(tmp_path: Path, token: str) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    result = CliRunner().invoke(cli, ["serve", "--token-file", str(token_file)])
    assert result.exit_code == 2, result.output
    assert str(token_file) in result.output and "32 bytes" in result.output
    assert token not in result.output.replace(str(token_file), "")


# --------------------------------------------------------------------------- the app


@pytest.fixture
def start_app(sandbox: Sandbox) -> Iterator[Callable[..., tuple[str, PrometheusMetrics]]]:
    servers: list[AppServer] = []

    def start(
        *, lifespan: bool = True, token: str | None = TOKEN, **options: Any
    ) -> tuple[str, PrometheusMetrics]:
        import sds_plugins_example_ebxml as example

        host = PluginHost(load_entrypoints=False, environ={})
        host.register(example, name="example_ebxml")
        metrics = PrometheusMetrics(registry=CollectorRegistry())
        host.register(metrics, name="sds_plugins.metrics")
        router = Router(Settings(base_url=sandbox.base_url, retry_attempts=1), host=host)
        app = create_service_app(router, token=token, metrics=metrics, **options)
        server = AppServer(app, lifespan=lifespan).start()
        servers.append(server)
        return server.url, metrics

    yield start
    for server in servers:
        server.stop()


def _client(url: str, token: str | None = TOKEN) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=url, headers=headers, timeout=30)


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; b=x", "x/y"],
)
async def test_a_route_request_that_is_not_json_is_415(
    sandbox: Sandbox, start_app: Callable[..., tuple[str, PrometheusMetrics]], content_type: str
) -> None:
    # A web page can send these to a token-less loopback service without a CORS preflight.
    url, _ = start_app(token=None)
    body = b'{"org": "YES", "interaction": "%s"}' % PSIS.encode()
    headers = {"Content-Type": content_type} if content_type else {}
    async with _client(url, token=None) as client:
        refused = await client.post(f"/route/{ADAPTER}", content=body, headers=headers)
    _problem(refused, 415, "UnsupportedMediaType")
    assert sandbox.stats()["requests"] == {}  # nothing routed


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"]
)
async def test_json_is_routed(
    start_app: Callable[..., tuple[str, PrometheusMetrics]], content_type: str
) -> None:
    url, _ = start_app()
    body = b'{"org": "YES", "interaction": "%s"}' % PSIS.encode()
    async with _client(url) as client:
        routed = await client.post(
            f"/route/{ADAPTER}", content=body, headers={"Content-Type": content_type}
        )
    assert routed.status_code == 200, routed.text


async def test_every_error_is_a_problem_document(
    start_app: Callable[..., tuple[str, PrometheusMetrics]],
) -> None:
    url, _ = start_app()
    async with _client(url) as client:
        wrong_method = await client.get(f"/route/{ADAPTER}")
        wrong_method_probe = await client.post("/healthz")
        no_path = await client.get("/nowhere")
        unknown = await client.post("/route/no-such-adapter", json=_request())
        unknown_with_id = await client.post(
            "/route/no-such-adapter", json=_request(), headers={"X-Correlation-ID": "order-42"}
        )
    assert _problem(wrong_method, 405, "MethodNotAllowed")
    assert wrong_method.headers["allow"] == "POST"
    _problem(wrong_method_probe, 405, "MethodNotAllowed")
    _problem(no_path, 404, "NoSuchPath")
    document = _problem(unknown, 404, "UnknownAdapter")
    assert document["field"] == "adapter"
    assert "'no-such-adapter'" in document["detail"] and ADAPTER in document["detail"]
    assert _problem(unknown_with_id, 404, "UnknownAdapter")["correlation_id"] == "order-42"
    assert unknown_with_id.headers["x-correlation-id"] == "order-42"


async def test_unknown_adapter_names_never_become_metric_labels(
    start_app: Callable[..., tuple[str, PrometheusMetrics]],
) -> None:
    # Every name sent used to become a label value: 5,000 names, 105,000 series, 13 MB.
    url, _ = start_app()
    async with _client(url) as client, _client(url, token=None) as scraper:
        assert (await client.post(f"/route/{ADAPTER}", json=_request())).status_code == 200
        before = len((await scraper.get("/metrics")).content)
        names = [f"made-up-{i}" for i in range(299)] + ["x" * 8000]
        for name in names:
            response = await client.post(f"/route/{name}", json=_request())
            assert response.status_code == 404
            assert len(response.content) < 1000  # the name is quoted, not echoed whole
        exposition = await scraper.get("/metrics")
    text = exposition.text
    print(f"/metrics: {before} bytes, {len(exposition.content)} after 300 unknown adapters")
    assert "made-up-" not in text and "xxxxxxxx" not in text
    assert len(exposition.content) < before + 4000  # one counter and one histogram more
    assert 'sds_plugins_routes_total{adapter="(unknown)",outcome="invalid"} 300.0' in text, text
    labels = set(re.findall(r'adapter="([^"]*)"', text))
    assert labels == {ADAPTER, "(unknown)"}, labels


async def test_a_huge_integer_is_400(
    sandbox: Sandbox, start_app: Callable[..., tuple[str, PrometheusMetrics]]
) -> None:
    # json.loads refuses integers over 4,300 digits with a ValueError: it was a 500 and a
    # traceback. (Fixed in the body parser, sds_plugins._requests.)
    url, _ = start_app()
    body = b'{"org": "YES", "interaction": "%s", "options": {"n": %s}}' % (
        PSIS.encode(),
        b"9" * 5000,
    )
    async with _client(url) as client:
        response = await client.post(f"/route/{ADAPTER}", content=body, headers=JSON)
    _problem(response, 400, "InvalidInputError")
    assert sandbox.stats()["requests"] == {}


async def test_a_body_that_never_ends_is_408(
    start_app: Callable[..., tuple[str, PrometheusMetrics]],
) -> None:
    url, _ = start_app(body_timeout_s=0.5)
    head = (
        f"POST /route/{ADAPTER} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    started = time.monotonic()
    with socket.create_connection(_address(url), timeout=10) as sock:
        sock.sendall(head + b'{"org": ')  # ...and the rest never
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert time.monotonic() - started < 5
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
    assert b"connection: close" in answer.lower()
    assert b"#problem-request-timeout" in answer


async def test_the_access_log_has_one_line_per_request_and_no_secrets(
    start_app: Callable[..., tuple[str, PrometheusMetrics]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sds_plugins.serve.access")
    url, _ = start_app()
    marker = "a-body-value-never-logged"
    async with _client(url) as client:
        routed = await client.post(
            f"/route/{ADAPTER}?q=query-never-logged",
            json=_request(options={"from_asid": "123456789012"}, encounter=marker),
            headers={"X-Correlation-ID": "order-42/ward 7"},
        )
        refused = await client.post(f"/route/{ADAPTER}", content=b"{", headers=JSON)
        health = await client.get("/healthz")
        await client.post("/route/bad%0Aname", json=_request())
    assert routed.status_code == 200 and refused.status_code == 400
    assert health.status_code == 200
    lines = [r for r in caplog.records if r.name == "sds_plugins.serve.access"]
    assert len(lines) == 4, [r.getMessage() for r in lines]
    first = lines[0].getMessage()
    assert re.fullmatch(
        r"POST /route/example-ebxml 200 \d+\.\dms correlation_id=order-42/ward 7", first
    ), first
    assert re.fullmatch(
        r"POST /route/example-ebxml 400 \d+\.\dms correlation_id=[0-9a-f-]{36}",
        lines[1].getMessage(),
    )
    assert re.fullmatch(r"GET /healthz 200 \d+\.\dms correlation_id=-", lines[2].getMessage())
    assert "\n" not in lines[3].getMessage() and "/route/bad%0Aname 404" in lines[3].getMessage()
    assert getattr(lines[0], "http_status", None) == 200
    assert getattr(lines[0], "correlation_id", None) == "order-42/ward 7"
    everything = " ".join(r.getMessage() for r in caplog.records)
    for secret in (TOKEN, marker, "query-never-logged", "123456789012"):
        assert secret not in everything


async def test_readyz_is_503_only_before_the_router_starts(
    start_app: Callable[..., tuple[str, PrometheusMetrics]],
) -> None:
    url, _ = start_app(lifespan=False)  # the router never started
    async with _client(url, token=None) as client:
        response = await client.get("/readyz")
        health = await client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["ready"] is False and response.json()["status"] == "starting"
    assert health.status_code == 200  # liveness unchanged


async def test_an_open_breaker_is_reported_while_ready(
    sandbox: Sandbox, start_app: Callable[..., tuple[str, PrometheusMetrics]]
) -> None:
    url, _ = start_app(readiness_interval_s=0)
    async with _client(url) as client:
        sandbox.set_faults(outage=True)
        failed = await client.post(f"/route/{ADAPTER}", json=_request())
        assert failed.status_code == 503
        ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    document = ready.json()
    assert document["ready"] is True and document["status"] == "degraded"
    assert document["breakers"]["sds"] == "open"
    assert "breaker sds open" in document["reasons"]
    assert document["directory"]["ok"] is False


# --------------------------------------------------------------------------- documentation


def test_every_problem_type_has_its_anchor_in_the_operations_guide() -> None:
    from sds_plugins._service._problems import PROBLEM_TYPES

    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    missing = [slug for slug in PROBLEM_TYPES if f'id="problem-{slug}"' not in text]
    assert not missing, missing


def test_the_commands_copies_of_the_runners_constants_agree() -> None:
    from sds_plugins import _http_server
    from sds_plugins._service import _app, _command

    assert _command._HEADER_TIMEOUT_S == _http_server.HEADER_TIMEOUT_S
    assert _command._ACCESS_LOGGER == _app.ACCESS_LOGGER


def test_the_sandbox_shares_the_bounded_runner() -> None:
    from sds_plugins._http_server import BoundedH11Protocol
    from sds_plugins._sandbox._server import _server

    server = _server(None, access_log=False)
    assert issubclass(server.config.http, BoundedH11Protocol)
