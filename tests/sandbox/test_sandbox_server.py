"""Running the sandbox: background thread lifecycle, and serve() in the foreground."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from sds_plugins import sandbox as public
from sds_plugins.sandbox import Sandbox, SandboxConfig, SandboxProcess

from .conftest import GP2GP, interaction, org


def test_public_surface() -> None:
    assert set(public.__all__) == {
        "SANDBOX_PATIENTS",
        "AppServer",
        "Sandbox",
        "SandboxConfig",
        "SandboxProcess",
        "create_app",
        "serve",
    }
    assert public.__doc__


def _running(sandbox: Sandbox) -> bool:
    return sandbox.running


def test_context_manager_serves_and_stops_cleanly() -> None:
    threads_before = set(threading.enumerate())
    with Sandbox() as sandbox:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", sandbox.url)
        assert sandbox.base_url == sandbox.url + "/spine-directory/FHIR/R4"
        assert sandbox.token_url == sandbox.url + "/oauth2/token"
        assert _running(sandbox)
        # Accepting as soon as start() returns: no retry needed.
        response = httpx.get(sandbox.base_url + "/Device", params=[org("X26"), interaction(GP2GP)])
        assert response.status_code == 200
        url = sandbox.url
        stopping = time.perf_counter()
    assert time.perf_counter() - stopping < 2
    assert not _running(sandbox)
    assert set(threading.enumerate()) <= threads_before
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/_sandbox/stats")
    with pytest.raises(RuntimeError):
        _ = sandbox.url


def test_sandbox_process_runs_in_a_process_of_its_own() -> None:
    sandbox = SandboxProcess(synthetic=10)
    assert sandbox.pid is None
    with sandbox:
        pid = sandbox.pid
        assert pid is not None and pid != os.getpid()
        os.kill(pid, 0)  # alive
        response = httpx.get(sandbox.base_url + "/Device", params=[org("X26"), interaction(GP2GP)])
        assert response.status_code == 200
    assert sandbox.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped and reaped


def test_start_stop_and_restart() -> None:
    sandbox = Sandbox(SandboxConfig())
    first = sandbox.start()
    assert first is sandbox
    with pytest.raises(RuntimeError):
        sandbox.start()
    sandbox.stop()
    sandbox.stop()
    sandbox.start()
    assert httpx.get(sandbox.url + "/_sandbox/stats").status_code == 200
    sandbox.stop()


def test_stop_with_an_open_keep_alive_connection_is_quick() -> None:
    sandbox = Sandbox().start()
    http = httpx.Client()
    http.get(sandbox.url + "/_sandbox/stats")
    started = time.perf_counter()
    sandbox.stop()
    http.close()
    assert time.perf_counter() - started < 2


def test_many_sandboxes_get_their_own_ports() -> None:
    sandboxes = [Sandbox().start() for _ in range(4)]
    try:
        assert len({s.url for s in sandboxes}) == 4
    finally:
        for running in sandboxes:
            running.stop()


def test_fixed_port(unused_tcp_port: int) -> None:
    with Sandbox(port=unused_tcp_port) as sandbox:
        assert sandbox.url == f"http://127.0.0.1:{unused_tcp_port}"


def test_port_in_use_fails_fast() -> None:
    with Sandbox() as sandbox:
        port = int(sandbox.url.rsplit(":", 1)[1])
        with pytest.raises(OSError, match=r"[Aa]ddress"):
            Sandbox(port=port).start()


def _serve(signum: int) -> tuple[int, str, str]:
    code = (
        "from sds_plugins.sandbox import serve, SandboxConfig; "
        "serve(SandboxConfig(), '127.0.0.1', 0)"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().rstrip("\n")
        match = re.fullmatch(r"sandbox listening on (http://127\.0\.0\.1:\d+)", line)
        assert match, line
        response = httpx.get(
            match.group(1) + "/spine-directory/FHIR/R4/Device",
            params=[org("X26"), interaction(GP2GP)],
        )
        assert response.status_code == 200
        process.send_signal(signum)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, out, err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_serve_prints_once_listening_and_stops_on_signal(signum: int) -> None:
    returncode, out, err = _serve(signum)
    assert returncode == 0, err
    assert out == ""  # only the listening line, and no access log
    assert "Traceback" not in err


def test_app_server_serves_any_asgi_app() -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from sds_plugins.sandbox import AppServer

    async def hello(request: object) -> PlainTextResponse:
        return PlainTextResponse("hello")

    with AppServer(Starlette(routes=[Route("/", hello)])) as server:
        assert server.running
        assert httpx.get(server.url).text == "hello"
    assert not server.running
