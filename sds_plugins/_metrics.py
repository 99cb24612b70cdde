"""Prometheus metrics, as an ordinary plugin on the lookup and route events (extra ``[metrics]``).

:class:`PrometheusMetrics` counts what the engine already reports (``sds_lookup_completed``,
``sds_route_completed``), wraps the directory auth it is given (``sds_provide_auth``) to see
every directory answer's status (429s included, retried or not), and reads the state of the
routers it :meth:`~PrometheusMetrics.watch`-es (breakers, pacing, gateway throttles, Redis) when
scraped. ``sds-plugins serve`` exposes it at ``/metrics``, ``sds-plugins worker
--metrics-port`` on a port of its own.

Labels are sources, adapters, outcomes, cache states, error classes and HTTP statuses: never
organisations, correlation ids, URLs with credentials, or anything secret.

Metrics are process-wide (one set per ``CollectorRegistry``, as Prometheus clients expect):
every :class:`PrometheusMetrics` on the same registry shares them, so a test or an application
may create several.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Generator, Iterable
from typing import TYPE_CHECKING, Any

import httpx

from ._exceptions import ConfigurationError
from ._observed_auth import ObservedAuth
from .hookspecs import hookimpl

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from ._engine import Router
    from ._events import LookupEvent, RouteEvent
    from ._settings import Settings

__all__ = ["PrometheusMetrics"]

# Lookups range from a fresh hit (microseconds) to a retried cold lookup (the 20 s budget).
_LOOKUP_BUCKETS: tuple[float, ...] = (
    *(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
    *(1.0, 2.5, 5.0, 10.0, 20.0, 30.0),
)
_BREAKER_STATES = ("closed", "half-open", "open")


def _import_prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ConfigurationError(
            "metrics need the 'metrics' extra: pip install 'sds-plugins[metrics]'"
        ) from None
    return prometheus_client


class _Metrics:
    """The metric objects of one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        prometheus = _import_prometheus()
        counter, histogram = prometheus.Counter, prometheus.Histogram
        self.lookups = counter(
            "sds_plugins_lookups",
            "Directory lookups by source, outcome (found, not_found, error) and cache state.",
            ["source", "outcome", "cache"],
            registry=registry,
        )
        self.lookup_errors = counter(
            "sds_plugins_lookup_errors",
            "Failed lookups by source and error class (RateLimitedError, BreakerOpenError...).",
            ["source", "error"],
            registry=registry,
        )
        self.lookup_seconds = histogram(
            "sds_plugins_lookup_duration_seconds",
            "Lookup duration (cache hits included) by source and cache state.",
            ["source", "cache"],
            buckets=_LOOKUP_BUCKETS,
            registry=registry,
        )
        self.stale = counter(
            "sds_plugins_cache_fallbacks",
            "Lookups answered from a stale cache entry because the directory failed.",
            ["source"],
            registry=registry,
        )
        self.routes = counter(
            "sds_plugins_routes",
            "Routes by adapter and outcome (ok, not_found, ambiguous, invalid, vetoed, error).",
            ["adapter", "outcome"],
            registry=registry,
        )
        self.route_seconds = histogram(
            "sds_plugins_route_duration_seconds",
            "Route duration by adapter and outcome.",
            ["adapter", "outcome"],
            buckets=_LOOKUP_BUCKETS,
            registry=registry,
        )
        self.responses = counter(
            "sds_plugins_directory_responses",
            "HTTP answers from directories (and their token endpoints) by source and status; "
            "status 429 counts every rate-limited answer, retried or not.",
            ["source", "status"],
            registry=registry,
        )
        self.worker = counter(
            "sds_plugins_worker_messages",
            "Broker worker messages: in (received), out (envelope published), retried, failed "
            "(failure document published).",
            ["event"],
            registry=registry,
        )
        self.routers: weakref.WeakSet[Router] = weakref.WeakSet()
        registry.register(_RouterCollector(self.routers, prometheus))
        # labels() validates and locks on every call; the few label sets seen are kept.
        self._children: dict[tuple[Any, ...], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered (label sets are few: no organisations)."""
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found


_by_registry: weakref.WeakKeyDictionary[Any, _Metrics] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _metrics_for(registry: CollectorRegistry) -> _Metrics:
    with _lock:
        metrics = _by_registry.get(registry)
        if metrics is None:
            metrics = _by_registry[registry] = _Metrics(registry)
        return metrics


class PrometheusMetrics:
    """Prometheus metrics for every router it is registered on (a plugin).

    ``Router(settings, plugins=[PrometheusMetrics()])``, then :meth:`watch` the router for the
    gauges read at scrape time; :meth:`render` gives the text exposition. ``registry`` defaults
    to ``prometheus_client.REGISTRY`` (the one an application's own metrics use).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        prometheus = _import_prometheus()
        self.registry: CollectorRegistry = registry if registry is not None else prometheus.REGISTRY
        self._metrics = _metrics_for(self.registry)
        self._content_type: str = prometheus.CONTENT_TYPE_LATEST
        self._generate = prometheus.generate_latest

    def __repr__(self) -> str:
        return "PrometheusMetrics()"

    def watch(self, router: Router) -> None:
        """Report ``router``'s breakers, pacing, gateway throttles and Redis state when scraped."""
        self._metrics.routers.add(router)

    def render(self) -> tuple[bytes, str]:
        """``(body, content type)`` of the text exposition of the whole registry."""
        return self._generate(self.registry), self._content_type

    def worker_message(self, event: str) -> None:
        """Count one broker message: ``in``, ``out``, ``retried`` or ``failed``."""
        self._metrics.worker.labels(event).inc()

    # -- hooks --------------------------------------------------------------------------------

    @hookimpl
    def sds_lookup_completed(self, event: LookupEvent) -> None:
        metrics = self._metrics
        labels = metrics.child
        labels(metrics.lookups, event.source, event.outcome, event.cache).inc()
        labels(metrics.lookup_seconds, event.source, event.cache).observe(event.duration_s)
        if event.error is not None:
            labels(metrics.lookup_errors, event.source, event.error.split(":", 1)[0]).inc()
        if event.cache == "stale":
            labels(metrics.stale, event.source).inc()

    @hookimpl
    def sds_route_completed(self, event: RouteEvent) -> None:
        metrics = self._metrics
        labels = metrics.child
        labels(metrics.routes, event.adapter, event.outcome).inc()
        labels(metrics.route_seconds, event.adapter, event.outcome).observe(event.duration_s)

    @hookimpl(wrapper=True)
    def sds_provide_auth(
        self, source: str, settings: Settings
    ) -> Generator[None, httpx.Auth | None, httpx.Auth | None]:
        auth = yield
        responses = self._metrics.responses

        def count(response: httpx.Response) -> None:
            responses.labels(source, str(response.status_code)).inc()

        return ObservedAuth(auth, after_response=count)


class _RouterCollector:
    """Gauges read from the watched routers at scrape time."""

    def __init__(self, routers: weakref.WeakSet[Router], prometheus: Any) -> None:
        self._routers = routers
        self._core = prometheus.metrics_core

    def describe(self) -> Iterable[Metric]:
        return ()  # collected on demand: nothing to check against at registration

    def collect(self) -> Iterable[Metric]:
        core = self._core
        breaker = core.GaugeMetricFamily(
            "sds_plugins_breaker_state",
            "1 for each directory source's current breaker state (closed, half-open, open).",
            labels=["source", "state"],
        )
        waited = core.CounterMetricFamily(
            "sds_plugins_pacing_wait_seconds",
            "Seconds directory requests spent waiting for their pacing slot.",
        )
        throttled = core.CounterMetricFamily(
            "sds_plugins_gateway_throttles",
            "429s from the API gateway's spike arrest or quota that reached the pacer.",
            labels=["limit"],
        )
        redis = core.GaugeMetricFamily(
            "sds_plugins_redis_up",
            "1 when the shared Redis cache is in use, 0 while the router falls back to memory.",
        )
        states: dict[str, str] = {}
        wait_s = 0.0
        throttles: dict[str, int] = {}
        redis_states: list[bool] = []
        for router in list(self._routers):
            if not router.started:
                continue
            for namespace, state in router.cache.breaker_states().items():
                source = namespace.split(":", 1)[0]
                # Several routers in one process: report the worst state of a source.
                if _BREAKER_STATES.index(state) >= _BREAKER_STATES.index(
                    states.get(source, "closed")
                ):
                    states[source] = state
            limiter = router.rate_limiter
            wait_s += float(getattr(limiter, "waited_s", 0.0) or 0.0)
            for kind, count in (getattr(limiter, "throttles", None) or {}).items():
                throttles[kind] = throttles.get(kind, 0) + count
            link = getattr(router.cache.backend, "link", None)
            if link is not None:
                redis_states.append(not link.down)
        for source in sorted(set(states) | {"sds"}):
            current = states.get(source, "closed")
            for state in _BREAKER_STATES:
                breaker.add_metric([source, state], 1.0 if state == current else 0.0)
        waited.add_metric([], wait_s)
        for kind in sorted(set(throttles) | {"spike_arrest", "quota"}):
            throttled.add_metric([kind], throttles.get(kind, 0))
        yield breaker
        yield waited
        yield throttled
        if redis_states:
            redis.add_metric([], 1.0 if all(redis_states) else 0.0)
            yield redis
