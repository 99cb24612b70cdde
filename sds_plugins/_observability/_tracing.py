"""OpenTelemetry spans and W3C trace context, as an ordinary plugin (extra ``[otel]``).

:class:`OpenTelemetryTracing` turns the engine's events into one span per route with a child
span per lookup, and wraps every directory source's auth (``sds_provide_auth``) so that each
directory request carries the current trace context (``traceparent``, ``tracestate``). Only
the OpenTelemetry *API* is used: without an SDK configured by the application, spans cost
next to nothing and go nowhere. See docs/operations.md for a console or OTLP exporter set-up.

The events arrive when the work is done (the hooks are notifications), so spans are recorded
afterwards with the times the events carry: each lookup event waits, by its correlation id,
for its route's event, and then the route span is started with the context current in the
caller (the HTTP request's or broker message's extracted ``traceparent``, or the caller's own
span) as its parent, and the lookups as its children. Directory requests are sent while the
route is in progress, so their ``traceparent`` names the caller's span: the same trace.

Attributes: adapter, interaction, organisation (ODS code), correlation id, cache state,
attempts, outcome, error class; never headers, options, tokens or keys.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Generator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import httpx

from .._exceptions import ConfigurationError
from ..hookspecs import hookimpl
from ._observed_auth import ObservedAuth

if TYPE_CHECKING:
    from .._events import LookupEvent, RouteEvent
    from .._settings import Settings

__all__ = ["OpenTelemetryTracing", "incoming_trace_context"]

#: Routes whose lookups are held while waiting for the route's event (a lookup made outside
#: any route, with ``Router.lookup``, is dropped when this many newer ones are waiting).
_PENDING_ROUTES = 10_000
_TRACE_HEADERS = ("traceparent", "tracestate")


def _import_otel() -> Any:
    try:
        from opentelemetry import trace
    except ImportError:
        raise ConfigurationError(
            "tracing needs the 'otel' extra: pip install 'sds-plugins[otel]'"
        ) from None
    return trace


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


class OpenTelemetryTracing:
    """A span per route with a child per lookup; trace context on every directory request.

    ``Router(settings, plugins=[OpenTelemetryTracing()])``. ``tracer_provider`` defaults to
    the global one (``opentelemetry.trace.set_tracer_provider``); tests pass their own.
    """

    def __init__(self, tracer_provider: Any = None) -> None:
        trace = _import_otel()
        from opentelemetry import context, propagate

        from .._plugins import _own_version

        self._trace = trace
        self._context = context
        self._propagate = propagate
        self._tracer = trace.get_tracer("sds_plugins", _own_version(), tracer_provider)
        self._provider = tracer_provider
        # Providers that never record: with one of these (no SDK configured), events are
        # dropped at once instead of being turned into spans nobody keeps.
        self._silent = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
        self._ask_again_at = 0.0
        self._pending: OrderedDict[str, list[LookupEvent]] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "OpenTelemetryTracing()"

    # -- hooks --------------------------------------------------------------------------------

    def wants_events(self) -> bool:
        """Whether a tracer provider records (the host builds no events for this plugin
        while none is configured)."""
        return self._recording()

    def _recording(self) -> bool:
        if self._provider is not None:
            return True
        # The global provider may be set after this plugin was made (the SDK set-up runs
        # later in many applications), but looking it up costs an environment lookup while
        # none is set: ask again at most once a second, and never again once one is set.
        now = time.monotonic()
        if now >= self._ask_again_at:
            if isinstance(self._trace.get_tracer_provider(), self._silent):
                self._ask_again_at = now + 1.0
            else:
                self._provider = self._trace.get_tracer_provider()
                return True
        return False

    @hookimpl
    def sds_lookup_completed(self, event: LookupEvent) -> None:
        if not self._recording():
            return
        with self._lock:
            waiting = self._pending.get(event.correlation_id)
            if waiting is None:
                waiting = self._pending[event.correlation_id] = []
                if len(self._pending) > _PENDING_ROUTES:
                    self._pending.popitem(last=False)
            waiting.append(event)

    @hookimpl
    def sds_route_completed(self, event: RouteEvent) -> None:
        if not self._recording():
            return
        lookups: list[LookupEvent] = []
        if event.correlation_id is not None:
            with self._lock:
                lookups = self._pending.pop(event.correlation_id, [])
        trace = self._trace
        end = event.time.timestamp()
        attributes: dict[str, Any] = {
            "sds.adapter": event.adapter,
            "sds.outcome": event.outcome,
            "sds.lookups": len(lookups),
        }
        for name, value in (
            ("sds.interaction", event.interaction),
            ("sds.organisation", event.org),
            ("sds.correlation_id", event.correlation_id),
            ("sds.cache", event.cache),
            ("sds.error", _error_class(event.error)),
        ):
            if value is not None:
                attributes[name] = value
        span = self._tracer.start_span(
            f"sds route {event.adapter}",
            context=self._context.get_current(),
            kind=trace.SpanKind.INTERNAL,
            attributes=attributes,
            start_time=_ns(end - event.duration_s),
        )
        if event.outcome == "error":
            span.set_status(trace.Status(trace.StatusCode.ERROR, event.error or None))
        parent = trace.set_span_in_context(span)
        for lookup in lookups:
            self._lookup_span(lookup, parent)
        span.end(end_time=_ns(end))

    def _lookup_span(self, event: LookupEvent, parent: Any) -> None:
        trace = self._trace
        end = event.time.timestamp()
        attributes: dict[str, Any] = {
            "sds.source": event.source,
            "sds.query": event.query,
            "sds.cache": event.cache,
            "sds.attempts": event.attempts,
            "sds.outcome": event.outcome,
            "sds.records": event.records,
            "sds.correlation_id": event.correlation_id,
        }
        error = _error_class(event.error)
        if error is not None:
            attributes["sds.error"] = error
        span = self._tracer.start_span(
            f"sds lookup {event.source}",
            context=parent,
            kind=trace.SpanKind.CLIENT,
            attributes=attributes,
            start_time=_ns(end - event.duration_s),
        )
        if event.outcome == "error":
            span.set_status(trace.Status(trace.StatusCode.ERROR, event.error or None))
        span.end(end_time=_ns(end))

    @hookimpl(wrapper=True)
    def sds_provide_auth(
        self, source: str, settings: Settings
    ) -> Generator[None, httpx.Auth | None, httpx.Auth | None]:
        auth = yield
        inject = self._propagate.inject

        def add_trace_context(request: httpx.Request) -> None:
            # The context current in the task sending the request: the route's caller's.
            inject(request.headers)

        return ObservedAuth(auth, before_send=add_trace_context)


def _error_class(error: str | None) -> str | None:
    return error.split(":", 1)[0] if error else None


#: What incoming_trace_context gives when there is nothing to attach (reusable: it holds no
#: state), so that a message or request without a trace context costs no generator.
_NO_CONTEXT = contextlib.nullcontext()


def incoming_trace_context(
    headers: Mapping[str, Any] | None,
) -> contextlib.AbstractContextManager[None]:
    """Make the W3C trace context in ``headers`` (HTTP or broker message headers) current.

    Does nothing without the ``otel`` extra or without a ``traceparent`` header. Header values
    may be bytes (AMQP); names are matched case-insensitively.
    """
    if not headers:
        return _NO_CONTEXT
    carrier: dict[str, str] = {}
    for name, value in headers.items():
        key = str(name).lower()
        if key in _TRACE_HEADERS:
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            if isinstance(text, str):
                carrier[key] = text
    if "traceparent" not in carrier:
        return _NO_CONTEXT
    return _attached(carrier)


@contextlib.contextmanager
def _attached(carrier: dict[str, str]) -> Iterator[None]:
    try:
        from opentelemetry import context, propagate
    except ImportError:
        yield
        return
    token = context.attach(propagate.extract(carrier))
    try:
        yield
    finally:
        context.detach(token)
