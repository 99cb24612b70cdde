"""The routing service's ASGI application (starlette): ``POST /route/{adapter}`` and friends.

One :class:`~sds_plugins.Router` per process, started by the app's lifespan and shared by
every request, so concurrent identical requests coalesce like any routes do (one directory
request per lookup), and several processes (uvicorn workers, replicas) share one cache, one
single-flight and one pace through Redis when ``SDS_REDIS_URL`` is set.

Every error is a problem document (405 and unknown paths included); a route request must be
JSON (``415`` otherwise: a web page cannot drive the service with a "simple" cross-origin
POST); an adapter that is not installed is ``404`` and counted under one metric label,
:data:`UNKNOWN_ADAPTER`, never under the name sent; every request is one line of the access
log (:data:`ACCESS_LOGGER`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._events import RouteEvent
from .._exceptions import InvalidInputError, SdsPluginsError
from .._keepalive import start_keepalives
from .._observability._tracing import incoming_trace_context
from .._requests import decode_body, parse_request
from .._validation import check_correlation_id
from ._catalogue import describe_adapters
from ._health import Readiness
from ._openapi import openapi_document
from ._problems import MEDIA_TYPE, plain_problem, problem_for, problem_response

if TYPE_CHECKING:
    from .._engine import Router
    from .._observability._metrics import PrometheusMetrics

__all__ = [
    "ACCESS_LOGGER",
    "BODY_TIMEOUT_S",
    "MAX_BODY_BYTES",
    "UNKNOWN_ADAPTER",
    "create_service_app",
]

logger = logging.getLogger("sds_plugins.serve")

#: The access log's logger: one INFO line per request.
ACCESS_LOGGER = "sds_plugins.serve.access"
access_logger = logging.getLogger(ACCESS_LOGGER)

#: The largest request body read: a route request is a few hundred bytes.
MAX_BODY_BYTES = 64 * 1024
#: A route request's body must be complete within this of its headers (else ``408``).
BODY_TIMEOUT_S = 10.0
#: The ``adapter`` of the route event (and so of the metrics' label) for a request naming an
#: adapter that is not installed: names sent by callers never become label values.
UNKNOWN_ADAPTER = "(unknown)"
#: How much of an unknown adapter's name a problem document quotes.
_SHOWN_NAME = 100


class _TooLarge(Exception):
    pass


#: The request headers the routing endpoint reads (raw, lower case as ASGI gives them).
_READ = frozenset(
    (b"authorization", b"content-length", b"content-type", b"x-correlation-id", b"traceparent")
)


def _is_json(content_type: str | None) -> bool:
    """``application/json`` or ``application/<anything>+json``, parameters aside."""
    if content_type is None:
        return False
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _read_headers(request: Request) -> dict[bytes, str]:
    """The headers the routing endpoint reads, in one pass over the raw list (the first of
    each, as starlette's ``headers.get`` would give it)."""
    found: dict[bytes, str] = {}
    for name, value in request.scope["headers"]:
        if name in _READ and name not in found:
            found[name] = value.decode("latin-1")
    return found


async def _bounded_body(request: Request, declared: str | None) -> bytes:
    if declared is not None and declared.isdigit():
        if int(declared) > MAX_BODY_BYTES:
            raise _TooLarge
        return await request.body()  # the server stops at Content-Length
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class _EnvelopeResponse(Response):
    """200 with an envelope: its three headers written straight away (starlette's general
    header handling is a tenth of a warm route's time in the service)."""

    media_type = "application/json"

    def __init__(self, body: bytes, correlation_id: str) -> None:
        self.status_code = 200
        self.background = None
        self.body = body
        # The correlation id is printable ASCII here (the caller checks; the router made or
        # normalised it, unless a plugin changed it).
        self.raw_headers = [
            (b"content-length", str(len(body)).encode()),
            (b"content-type", b"application/json"),
            (b"x-correlation-id", correlation_id.encode("ascii")),
        ]


class _Service:
    def __init__(
        self,
        router: Router,
        *,
        token: SecretStr | None,
        with_secrets: bool,
        metrics: PrometheusMetrics | None,
        readiness: Readiness,
        body_timeout_s: float = BODY_TIMEOUT_S,
    ) -> None:
        self.router = router
        self._token = token.get_secret_value().encode() if token is not None else None
        self.with_secrets = with_secrets
        self.metrics = metrics
        self.readiness = readiness
        self.body_timeout_s = body_timeout_s

    def _authorised(self, request: Request, authorization: str | None = None) -> bool:
        if self._token is None:
            return True
        if authorization is None:
            authorization = request.headers.get("authorization", "")
        scheme, _, given = authorization.partition(" ")
        # Constant time: how much of a guess matched must not show in the response time.
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), self._token
        )

    def _unauthorised(self) -> Response:
        return plain_problem(
            "unauthorized",
            "this service needs 'Authorization: Bearer <token>' with the service token",
            "Unauthorized",
            headers={"WWW-Authenticate": 'Bearer realm="sds-plugins"'},
        )

    def _unknown_adapter(self, adapter: str, correlation_id: str | None) -> Response:
        """``404``, counted as an invalid route of :data:`UNKNOWN_ADAPTER` (one label value
        whatever the names sent)."""
        known = _plain(correlation_id)
        router = self.router
        if router.host.has_listeners("sds_route_completed"):
            router.host.route_completed(
                RouteEvent(
                    time=datetime.now(UTC),
                    adapter=UNKNOWN_ADAPTER,
                    org=None,
                    interaction=None,
                    correlation_id=known,
                    outcome="invalid",
                    duration_s=0.0,
                    error="UnknownAdapter: no adapter by the name in the path is installed",
                )
            )
        shown = adapter if len(adapter) <= _SHOWN_NAME else adapter[:_SHOWN_NAME] + "..."
        installed = ", ".join(sorted(router.adapters)) or "none"
        return problem_response(
            "unknown-adapter",
            f"no adapter named {shown!r} is installed (installed: {installed}; "
            "GET /adapters lists them)",
            headers={"X-Correlation-ID": known},
            error="UnknownAdapter",
            correlation_id=known,
            retryable=False,
            retry_after_s=None,
            field="adapter",
        )

    async def route(self, request: Request) -> Response:
        headers = _read_headers(request)
        if not self._authorised(request, headers.get(b"authorization", "")):
            return self._unauthorised()
        adapter = request.path_params["adapter"]
        # The router checks and normalises it; an error document falls back on it.
        correlation_id = headers.get(b"x-correlation-id")
        if not self.router.started:
            await self.router.start()  # the lifespan starts it; an app run without one, here
        if adapter not in self.router.adapters:
            return self._unknown_adapter(adapter, correlation_id)
        if not _is_json(headers.get(b"content-type")):
            # Only JSON: a web page can send text/plain (or form data, or no type) to a
            # token-less loopback service without asking first; application/json it cannot.
            return plain_problem(
                "unsupported-media-type",
                "a route request is JSON: send it with 'Content-Type: application/json'",
                "UnsupportedMediaType",
            )
        try:
            try:
                async with asyncio.timeout(self.body_timeout_s):
                    sent = await _bounded_body(request, headers.get(b"content-length"))
            except _TooLarge:
                return plain_problem(
                    "too-large",
                    f"the request body is larger than {MAX_BODY_BYTES} bytes",
                    "RequestTooLarge",
                )
            except TimeoutError:
                return plain_problem(
                    "request-timeout",
                    f"the request body was not received within {self.body_timeout_s:g}s",
                    "RequestTimeout",
                    headers={"Connection": "close"},
                )
            except ClientDisconnect:
                # Nobody is there to read it; the access log has the line.
                return plain_problem(
                    "malformed-request",
                    "the client went away before sending the whole body",
                    "ClientDisconnect",
                    headers={"Connection": "close"},
                )
            raw = decode_body(sent)
            if isinstance(raw, dict):
                if "adapter" in raw:
                    raise InvalidInputError(
                        "the adapter is named in the path (/route/{adapter}), not the body",
                        field="adapter",
                    )
                raw = {"adapter": adapter, **raw}
                if raw.get("correlation_id") is None and correlation_id is not None:
                    raw["correlation_id"] = correlation_id
            parsed = parse_request(raw)
            correlation_id = parsed.correlation_id
            # Only a request with a trace context pays for reading all its headers.
            traced = request.headers if b"traceparent" in headers else None
            with incoming_trace_context(traced):
                envelope = await self.router.route(
                    parsed.adapter,
                    org=parsed.org,
                    patient=parsed.patient,
                    interaction=parsed.interaction,
                    correlation_id=correlation_id,
                    encounter=parsed.encounter,
                    requesting_org=parsed.requesting_org,
                    **parsed.options,
                )
        except SdsPluginsError as exc:
            return problem_for(exc, _plain(correlation_id))
        except Exception as exc:
            known = _plain(correlation_id)  # the same id in the log and the answer
            logger.error(
                "unexpected %s while routing (correlation_id=%r)",
                type(exc).__name__,
                known,
                exc_info=True,
            )
            return problem_for(exc, known)
        body = (
            envelope.model_dump_json(context={"reveal_secrets": True})
            if self.with_secrets
            else envelope.model_dump_json()
        )
        correlation_id = envelope.provenance.correlation_id
        if not (correlation_id.isascii() and correlation_id.isprintable()):
            # Changed by a plugin into something else: starlette's general header handling
            # (and the server's own checks) take it from here.
            return Response(
                body, media_type="application/json", headers={"X-Correlation-ID": correlation_id}
            )
        return _EnvelopeResponse(body.encode(), correlation_id)

    async def adapters(self, request: Request) -> Response:
        if not self._authorised(request):
            return self._unauthorised()
        return JSONResponse({"adapters": describe_adapters(self.router)})

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        ready, document = await self.readiness.check()
        return JSONResponse(document, status_code=200 if ready else 503)

    async def metrics_endpoint(self, request: Request) -> Response:
        if self.metrics is None:
            return plain_problem(
                "not-enabled",
                "metrics are off: install the 'metrics' extra (pip install 'sds-plugins[metrics]')",
                "MetricsUnavailable",
            )
        body, content_type = self.metrics.render()
        return Response(body, headers={"Content-Type": content_type})

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document())


async def _http_problem(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no such path, method not allowed) as problem documents."""
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        allowed = headers.get("Allow", "")
        return plain_problem(
            "method-not-allowed",
            f"{request.method} is not allowed here (allowed: {allowed or 'none'})",
            "MethodNotAllowed",
            headers=headers,
        )
    if exc.status_code == 404:
        return plain_problem(
            "no-such-path",
            "no such path: see GET /openapi.json for this service's paths",
            "NoSuchPath",
            headers=headers,
        )
    # Any other status starlette raises: a problem document of the generic type.
    document = {
        "type": "about:blank",
        "title": exc.detail,
        "status": exc.status_code,
        "detail": exc.detail,
        "error": "HTTPException",
        "correlation_id": None,
        "retryable": False,
        "retry_after_s": None,
    }
    return JSONResponse(
        document, status_code=exc.status_code, headers=headers, media_type=MEDIA_TYPE
    )


async def _internal_problem(request: Request, exc: Exception) -> Response:
    """A failure outside the routing endpoint's own handling (it logs and answers its own)."""
    return plain_problem(
        "internal",
        "unexpected error (the service's log has the details)",
        type(exc).__name__,
    )


def _printable(text: str, limit: int) -> str:
    """``text`` for one log line: control characters escaped, at most ``limit`` characters."""
    if not (text.isascii() and text.isprintable()):
        text = text.encode("ascii", "backslashreplace").decode("ascii")
        text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text if len(text) <= limit else text[:limit] + "..."


class AccessLog:
    """ASGI middleware: one INFO line per HTTP request on :data:`ACCESS_LOGGER`.

    ``POST /route/example-ebxml 200 3.1ms correlation_id=0f6c1e8a-...``: method, path (as sent,
    still percent-encoded, without the query string, at most 200 characters), status, duration
    (from the request's start to its answer's last byte) and the correlation id of the answer
    (``-`` without one). Never a body, a header other than the correlation id, or a token.
    The record also carries them as attributes (``http_method``, ``http_path``,
    ``http_status``, ``duration_ms``, ``correlation_id``) for structured formatters.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not access_logger.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless an answer starts
        correlation_id: str | None = None

        async def sending(message: Message) -> None:
            nonlocal status, correlation_id
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    if name.lower() == b"x-correlation-id":
                        correlation_id = value.decode("latin-1")
                        break
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            raw = scope.get("raw_path")
            path = raw.decode("latin-1") if raw else scope.get("path", "")
            path = _printable(path.partition("?")[0], 200)
            duration_ms = round((time.perf_counter() - started) * 1000, 1)
            shown_id = _printable(correlation_id, 200) if correlation_id else "-"
            access_logger.info(
                "%s %s %d %.1fms correlation_id=%s",
                scope.get("method", "-"),
                path,
                status,
                duration_ms,
                shown_id,
                extra={
                    "http_method": scope.get("method"),
                    "http_path": path,
                    "http_status": status,
                    "duration_ms": duration_ms,
                    "correlation_id": correlation_id,
                },
            )


def _plain(correlation_id: str | None) -> str:
    """The correlation id for a problem document: the caller's when well-formed, else a new
    one, so that every failed request can be found in the logs."""
    try:
        return check_correlation_id(correlation_id)
    except InvalidInputError:
        return str(uuid.uuid4())


def create_service_app(
    router: Router,
    *,
    token: str | SecretStr | None = None,
    with_secrets: bool = False,
    metrics: PrometheusMetrics | None = None,
    readiness_interval_s: float = 5.0,
    readiness_timeout_s: float = 3.0,
    body_timeout_s: float = BODY_TIMEOUT_S,
    access_log: bool = True,
) -> Starlette:
    """The routing service around ``router`` (started and closed by the app's lifespan).

    ``token``: callers of ``/route`` and ``/adapters`` must send ``Authorization: Bearer
    <token>`` (compared in constant time). ``with_secrets``: envelopes keep their credentials.
    ``metrics``: the :class:`PrometheusMetrics` registered on ``router`` (served at
    ``/metrics``). Register plugins (metrics, tracing) on the router before passing it.
    ``body_timeout_s``: a route request's body must arrive within it (else ``408``).
    ``access_log``: one line per request on the ``sds_plugins.serve.access`` logger (at INFO:
    shown when that logger's effective level allows it).
    """
    secret = SecretStr(token) if isinstance(token, str) else token
    if secret is not None and not secret.get_secret_value().strip():
        raise InvalidInputError("the service token is empty", field="token")
    service = _Service(
        router,
        token=secret,
        with_secrets=with_secrets,
        metrics=metrics,
        readiness=Readiness(router, interval_s=readiness_interval_s, timeout_s=readiness_timeout_s),
        body_timeout_s=body_timeout_s,
    )
    if metrics is not None:
        metrics.watch(router)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        keepalives = None
        try:
            await router.start()
            unknown = sorted(set(router.adapter_options) - set(router.adapters))
            if unknown:
                logger.warning(
                    "adapter options for adapters that are not installed: %s", ", ".join(unknown)
                )
            service.readiness.stopping = False
            # The plugins' keepalives (the MESH handshake): at start, then every interval.
            keepalives = start_keepalives(router.host)
            yield
        finally:
            service.readiness.stopping = True
            if keepalives is not None:
                await keepalives.aclose()
            await router.aclose()

    app = Starlette(
        routes=[
            Route("/route/{adapter}", service.route, methods=["POST"]),
            Route("/adapters", service.adapters, methods=["GET"]),
            Route("/healthz", service.healthz, methods=["GET"]),
            Route("/readyz", service.readyz, methods=["GET"]),
            Route("/metrics", service.metrics_endpoint, methods=["GET"]),
            Route("/openapi.json", service.openapi, methods=["GET"]),
        ],
        lifespan=lifespan,
        middleware=[Middleware(AccessLog)] if access_log else [],
        exception_handlers={HTTPException: _http_problem, Exception: _internal_problem},
    )
    app.state.service = service
    return app
