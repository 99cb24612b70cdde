"""Running the sandbox app under uvicorn: in a background thread, or in the foreground."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from types import TracebackType
from typing import Any

import httpx
import uvicorn

from .._http_server import bind as _bind
from .._http_server import bounded_protocol, run_in_foreground, server_config
from .._http_server import url as _url
from .._models import INTERACTION_SYSTEM, ODS_SYSTEM
from ._app import FHIR_BASE, TOKEN_PATH, SandboxConfig, create_app

_STARTUP_TIMEOUT_S = 30.0
#: A request's headers must be complete within this of its first byte (read when a server
#: starts: the protocol is shared with ``sds-plugins serve``, in ``sds_plugins._http_server``).
HEADER_TIMEOUT_S = 10.0
_SHUTDOWN_TIMEOUT_S = 10.0


def _server(app: Any, access_log: bool, lifespan: bool = False) -> uvicorn.Server:
    return uvicorn.Server(
        server_config(
            app,
            http=bounded_protocol(header_timeout_s=HEADER_TIMEOUT_S),
            lifespan=lifespan,
            log_level="warning",
            access_log=access_log,
            timeout_graceful_shutdown=2,
        )
    )


class AppServer:
    """Any ASGI application served over real sockets from a background thread.

    ``with AppServer(app) as server: httpx.get(server.url)``. Starting blocks until connections
    are accepted; the port is free-chosen unless given. The sandbox runs on it, and so can a
    test's stub services (an SSP, a provider, NHS's mesh-sandbox). ``lifespan=True`` runs the
    app's startup and shutdown (the routing service starts and closes its router there).
    """

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        access_log: bool = False,
        lifespan: bool = False,
    ) -> None:
        self.app = app
        self._lifespan = lifespan
        self._host = host
        self._port = port
        self._access_log = access_log
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._failure: BaseException | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """Root URL, e.g. ``http://127.0.0.1:54321``."""
        if self._url is None:
            raise RuntimeError("server is not running")
        return self._url

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> AppServer:
        if self._thread is not None:
            raise RuntimeError("server already started")
        sock = _bind(self._host, self._port)
        try:
            server = _server(self.app, self._access_log, self._lifespan)
        except BaseException:
            sock.close()
            raise
        port = sock.getsockname()[1]
        self._socket, self._server = sock, server
        self._failure = None
        thread = threading.Thread(
            target=self._run, args=(server, sock), name=f"asgi-server-{port}", daemon=True
        )
        self._thread = thread
        thread.start()
        deadline = time.monotonic() + _STARTUP_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self._cleanup()
                raise RuntimeError("server failed to start") from self._failure
            time.sleep(0.005)
        self._url = _url(self._host, port)
        return self

    def _run(self, server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as error:  # reported to start() rather than lost in the thread
            self._failure = error

    def stop(self) -> None:
        """Stop serving and wait for the thread; safe to call twice."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(_SHUTDOWN_TIMEOUT_S)
            if self._thread.is_alive() and self._server is not None:
                self._server.force_exit = True
                self._thread.join(_SHUTDOWN_TIMEOUT_S)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._socket is not None:
            self._socket.close()
        self._socket = None
        self._server = None
        self._thread = None
        self._url = None

    def __enter__(self) -> AppServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Sandbox(AppServer):
    """The sandbox served over real sockets from a background thread.

    ``with Sandbox(SandboxConfig(...)) as sb: httpx.get(sb.base_url + "/Device", ...)``; or call
    :meth:`start` and :meth:`stop` yourself. Starting blocks until connections are accepted.
    """

    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        access_log: bool = False,
    ) -> None:
        self.config = config or SandboxConfig()
        # The app is built at start(): a Sandbox that never starts loads no data.
        super().__init__(None, host=host, port=port, access_log=access_log)
        self._http: httpx.Client | None = None

    @property
    def base_url(self) -> str:
        """The FHIR base: ``url + "/spine-directory/FHIR/R4"``."""
        return self.url + FHIR_BASE

    @property
    def token_url(self) -> str:
        """The OAuth token endpoint: ``url + "/oauth2/token"``."""
        return self.url + TOKEN_PATH

    def start(self) -> Sandbox:
        if self.running:
            raise RuntimeError("sandbox already started")
        self.app = create_app(self.config)
        super().start()
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread; safe to call twice."""
        if self._http is not None:
            self._http.close()
            self._http = None
        super().stop()

    def __enter__(self) -> Sandbox:
        return self.start()

    # ----------------------------------------------------------------- controls over HTTP

    def _control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        if self._http is None:
            self._http = httpx.Client(base_url=f"{self.url}/_sandbox/", timeout=10)
        response = self._http.request(method, path, json=body)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        """``{"requests": {path: count}, "statuses": {"200": count}}`` since start or reset."""
        result: dict[str, Any] = self._control("GET", "stats")
        return result

    def set_faults(self, **fields: Any) -> dict[str, Any]:
        """Change any of latency_ms, error_rate, error_status, outage, retry_after,
        ldap_timeout, ldap_timeout_ms."""
        result: dict[str, Any] = self._control("POST", "faults", fields)
        return result

    def reset(self) -> None:
        """Clear stats and rate-limit counters; restore the configured faults."""
        self._control("POST", "reset")


class SandboxProcess:
    """``sds-plugins sandbox`` in a process of its own, with the same controls as :class:`Sandbox`.

    For measurements and timing-sensitive tests: an in-thread sandbox shares the test's
    interpreter (and its GIL), so its answers, and the arrival times its gateway judges, wait
    whenever the test's own code runs. ``SandboxProcess(synthetic=1000, gateway=True)``.
    Options: ``synthetic``, ``latency_ms``, ``spike_arrest_per_s``, ``quota_per_min``,
    ``response_cache_s``, ``gateway`` (the live proxy's policy literals), ``api_key``,
    ``page_size``, ``data_dir``, ``ldap_timeout`` (true: every search times out in LDAP) and
    ``ldap_timeout_ms``.
    """

    _FLAGS = {
        "synthetic": "--synthetic",
        "latency_ms": "--latency-ms",
        "spike_arrest_per_s": "--spike-arrest",
        "quota_per_min": "--quota",
        "response_cache_s": "--response-cache",
        "api_key": "--api-key",
        "page_size": "--page-size",
        "data_dir": "--data",
        "ldap_timeout_ms": "--ldap-timeout-ms",
    }

    def __init__(
        self, *, gateway: bool = False, ldap_timeout: bool = False, **options: Any
    ) -> None:
        unknown = sorted(set(options) - set(self._FLAGS))
        if unknown:
            raise TypeError(f"SandboxProcess does not take {', '.join(unknown)}")
        self._args = ["--gateway"] if gateway else []
        if ldap_timeout:
            self._args.append("--ldap-timeout")
        self._api_key = options.get("api_key")
        for name, value in options.items():
            if value is not None:
                self._args += [self._FLAGS[name], str(value)]
        self._process: subprocess.Popen[str] | None = None
        self._http: httpx.Client | None = None
        self.url = ""

    @property
    def base_url(self) -> str:
        return self.url + FHIR_BASE

    @property
    def pid(self) -> int | None:
        """The sandbox's process id while it runs (to watch it, or change its priority)."""
        return self._process.pid if self._process is not None else None

    def start(self) -> SandboxProcess:
        process = subprocess.Popen(  # noqa: S603 - our own CLI, fixed arguments
            [sys.executable, "-m", "sds_plugins", "sandbox", "--port", "0", *self._args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if not line.startswith("sandbox listening on "):
            process.kill()
            _, err = process.communicate(timeout=10)
            raise RuntimeError(f"sandbox did not start: {line or err.strip()}")
        self._process = process
        self.url = line.removeprefix("sandbox listening on ")
        self._http = httpx.Client(base_url=f"{self.url}/_sandbox/", timeout=10)
        # A first request costs a fresh interpreter some lazy imports and first-time work:
        # spend that now, so no measured request (or gateway arrival time) pays for it.
        httpx.get(
            self.base_url + "/Device",
            params={"organization": f"{ODS_SYSTEM}|YES", "identifier": f"{INTERACTION_SYSTEM}|x"},
            headers={"apikey": self._api_key or ""},
            timeout=10,
        )
        self.reset()
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=_SHUTDOWN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> SandboxProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        if self._http is None:
            raise RuntimeError("sandbox process is not running")
        response = self._http.request(method, path, json=body)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._control("GET", "stats")
        return result

    def set_faults(self, **fields: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._control("POST", "faults", fields)
        return result

    def reset(self) -> None:
        self._control("POST", "reset")


def serve(config: SandboxConfig | None = None, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve in the foreground until SIGINT/SIGTERM.

    Prints ``sandbox listening on http://HOST:PORT`` once connections are accepted (``port`` 0
    picks a free port and prints it).
    """
    sock = _bind(host, port)
    server = _server(create_app(config or SandboxConfig()), access_log=False)
    url = _url(host, sock.getsockname()[1])
    run_in_foreground(server, sock, lambda: print(f"sandbox listening on {url}", flush=True))
