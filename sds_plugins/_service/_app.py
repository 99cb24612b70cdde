"""The routing service's ASGI application (starlette): ``POST /route/{adapter}`` and friends.

One :class:`~sds_plugins.Router` per process, started by the app's lifespan and shared by
every request, so concurrent identical requests coalesce like any routes do (one directory
request per lookup), and several processes (uvicorn workers, replicas) share one cache, one
single-flight and one pace through Redis when ``SDS_REDIS_URL`` is set.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._exceptions import InvalidInputError, SdsPluginsError
from .._tracing import incoming_trace_context
from .._validation import check_correlation_id
from .._worker._core import _decode, _parse
from ._catalogue import describe_adapters
from ._health import Readiness
from ._openapi import openapi_document
from ._problems import problem_for, problem_response

if TYPE_CHECKING:
    from .._engine import Router
    from .._metrics import PrometheusMetrics

__all__ = ["MAX_BODY_BYTES", "create_service_app"]

logger = logging.getLogger("sds_plugins.serve")

#: The largest request body read: a route request is a few hundred bytes.
MAX_BODY_BYTES = 64 * 1024


class _TooLarge(Exception):
    pass


#: The request headers the routing endpoint reads (raw, lower case as ASGI gives them).
_READ = frozenset((b"authorization", b"content-length", b"x-correlation-id", b"traceparent"))


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
    ) -> None:
        self.router = router
        self._token = token.get_secret_value().encode() if token is not None else None
        self.with_secrets = with_secrets
        self.metrics = metrics
        self.readiness = readiness

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
        return problem_response(
            "unauthorized",
            "this service needs 'Authorization: Bearer <token>' with the service token",
            headers={"WWW-Authenticate": 'Bearer realm="sds-plugins"'},
            error="Unauthorized",
            correlation_id=None,
            retryable=False,
            retry_after_s=None,
        )

    async def route(self, request: Request) -> Response:
        headers = _read_headers(request)
        if not self._authorised(request, headers.get(b"authorization", "")):
            return self._unauthorised()
        adapter = request.path_params["adapter"]
        # The router checks and normalises it; an error document falls back on it.
        correlation_id = headers.get(b"x-correlation-id")
        try:
            try:
                raw = _decode(await _bounded_body(request, headers.get(b"content-length")))
            except _TooLarge:
                return problem_response(
                    "too-large",
                    f"the request body is larger than {MAX_BODY_BYTES} bytes",
                    error="RequestTooLarge",
                    correlation_id=None,
                    retryable=False,
                    retry_after_s=None,
                )
            if isinstance(raw, dict):
                if "adapter" in raw:
                    raise InvalidInputError(
                        "the adapter is named in the path (/route/{adapter}), not the body",
                        field="adapter",
                    )
                raw = {"adapter": adapter, **raw}
                if raw.get("correlation_id") is None and correlation_id is not None:
                    raw["correlation_id"] = correlation_id
            parsed = _parse(raw)
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
            return problem_response(
                "not-enabled",
                "metrics are off: install the 'metrics' extra (pip install 'sds-plugins[metrics]')",
                error="MetricsUnavailable",
                correlation_id=None,
                retryable=False,
                retry_after_s=None,
            )
        body, content_type = self.metrics.render()
        return Response(body, headers={"Content-Type": content_type})

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document())


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
) -> Starlette:
    """The routing service around ``router`` (started and closed by the app's lifespan).

    ``token``: callers of ``/route`` and ``/adapters`` must send ``Authorization: Bearer
    <token>`` (compared in constant time). ``with_secrets``: envelopes keep their credentials.
    ``metrics``: the :class:`PrometheusMetrics` registered on ``router`` (served at
    ``/metrics``). Register plugins (metrics, tracing) on the router before passing it.
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
    )
    if metrics is not None:
        metrics.watch(router)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await router.start()
        unknown = sorted(set(router.adapter_options) - set(router.adapters))
        if unknown:
            logger.warning(
                "adapter options for adapters that are not installed: %s", ", ".join(unknown)
            )
        try:
            yield
        finally:
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
    )
    app.state.service = service
    return app
