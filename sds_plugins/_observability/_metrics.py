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

import bisect
import threading
import weakref
from collections.abc import Generator, Iterable
from typing import TYPE_CHECKING, Any

import httpx

from .._exceptions import ConfigurationError
from ..hookspecs import hookimpl
from ._observed_auth import ObservedAuth

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from .._engine import Router
    from .._events import LookupEvent, RouteEvent
    from .._settings import Settings

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


class _Counter:
    """A counter family kept as plain numbers: ``{label values: count}``."""

    kind = "counter"

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.values: dict[tuple[str, ...], float] = {}


class _Histogram(_Counter):
    """A histogram family: ``{label values: [count per bucket..., count above, sum]}``."""

    kind = "histogram"

    def __init__(
        self, name: str, documentation: str, labels: tuple[str, ...], buckets: tuple[float, ...]
    ) -> None:
        super().__init__(name, documentation, labels)
        self.buckets = buckets
        self.series: dict[tuple[str, ...], list[float]] = {}


class _Metrics:
    """The metrics of one registry, updated with plain arithmetic under one lock.

    The hooks run for every lookup and route, cache hits included, so they stay cheap:
    prometheus-client's own metric objects take a lock per value and validate labels on every
    call, several microseconds per event. Here an update is a dict lookup and an addition;
    the exposition is built when Prometheus scrapes (:class:`_Collector`).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        prometheus = _import_prometheus()
        self.lock = threading.Lock()
        self.lookups = _Counter(
            "sds_plugins_lookups",
            "Directory lookups by source, outcome (found, not_found, error) and cache state.",
            ("source", "outcome", "cache"),
        )
        self.lookup_errors = _Counter(
            "sds_plugins_lookup_errors",
            "Failed lookups by source and error class (RateLimitedError, BreakerOpenError...).",
            ("source", "error"),
        )
        self.lookup_seconds = _Histogram(
            "sds_plugins_lookup_duration_seconds",
            "Lookup duration (cache hits included) by source and cache state.",
            ("source", "cache"),
            _LOOKUP_BUCKETS,
        )
        self.stale = _Counter(
            "sds_plugins_cache_fallbacks",
            "Lookups answered from a stale cache entry because the directory failed.",
            ("source",),
        )
        self.routes = _Counter(
            "sds_plugins_routes",
            "Routes by adapter and outcome (ok, not_found, ambiguous, invalid, vetoed, error).",
            ("adapter", "outcome"),
        )
        self.route_seconds = _Histogram(
            "sds_plugins_route_duration_seconds",
            "Route duration by adapter and outcome.",
            ("adapter", "outcome"),
            _LOOKUP_BUCKETS,
        )
        self.responses = _Counter(
            "sds_plugins_directory_responses",
            "HTTP answers from directories (and their token endpoints) by source and status; "
            "status 429 counts every rate-limited answer, retried or not.",
            ("source", "status"),
        )
        self.worker = _Counter(
            "sds_plugins_worker_messages",
            "Broker worker messages: in (received), out (envelope published), retried, failed "
            "(failure document published).",
            ("event",),
        )
        self.families: tuple[_Counter, ...] = (
            self.lookups,
            self.lookup_errors,
            self.lookup_seconds,
            self.stale,
            self.routes,
            self.route_seconds,
            self.responses,
            self.worker,
        )
        self.routers: weakref.WeakSet[Router] = weakref.WeakSet()
        registry.register(_Collector(self, prometheus))

    def count(self, family: _Counter, labels: tuple[str, ...]) -> None:
        with self.lock:
            family.values[labels] = family.values.get(labels, 0.0) + 1.0

    @staticmethod
    def _observe(family: _Histogram, labels: tuple[str, ...], value: float) -> None:
        series = family.series.get(labels)
        if series is None:
            series = family.series[labels] = [0.0] * (len(family.buckets) + 2)
        # le is inclusive: the first bucket whose bound is at least the value.
        series[bisect.bisect_left(family.buckets, value)] += 1.0
        series[-1] += value

    def counted_and_observed(
        self,
        counter: _Counter,
        counter_labels: tuple[str, ...],
        histogram: _Histogram,
        histogram_labels: tuple[str, ...],
        value: float,
    ) -> None:
        """One event counted and its duration observed, under one hold of the lock (twice per
        warm route: the lock is most of what a count costs)."""
        with self.lock:
            values = counter.values
            values[counter_labels] = values.get(counter_labels, 0.0) + 1.0
            self._observe(histogram, histogram_labels, value)


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
        self._metrics.count(self._metrics.worker, (event,))

    # -- hooks --------------------------------------------------------------------------------

    @hookimpl
    def sds_lookup_completed(self, event: LookupEvent) -> None:
        metrics = self._metrics
        source = event.source
        metrics.counted_and_observed(
            metrics.lookups,
            (source, event.outcome, event.cache),
            metrics.lookup_seconds,
            (source, event.cache),
            event.duration_s,
        )
        if event.error is not None:
            metrics.count(metrics.lookup_errors, (source, event.error.split(":", 1)[0]))
        if event.cache == "stale":
            metrics.count(metrics.stale, (source,))

    @hookimpl
    def sds_route_completed(self, event: RouteEvent) -> None:
        metrics = self._metrics
        labels = (event.adapter, event.outcome)
        metrics.counted_and_observed(
            metrics.routes, labels, metrics.route_seconds, labels, event.duration_s
        )

    @hookimpl(wrapper=True)
    def sds_provide_auth(
        self, source: str, settings: Settings
    ) -> Generator[None, httpx.Auth | None, httpx.Auth | None]:
        auth = yield
        metrics = self._metrics

        def count(response: httpx.Response) -> None:
            metrics.count(metrics.responses, (source, str(response.status_code)))

        return ObservedAuth(auth, after_response=count)


class _Collector:
    """Builds the exposition when Prometheus scrapes: the counted families, and gauges read
    from the watched routers."""

    def __init__(self, metrics: _Metrics, prometheus: Any) -> None:
        self._metrics = metrics
        self._routers = metrics.routers
        self._core = prometheus.metrics_core

    def describe(self) -> Iterable[Metric]:
        return ()  # collected on demand: nothing to check against at registration

    def _counted(self) -> Iterable[Metric]:
        core = self._core
        with self._metrics.lock:  # a consistent copy; the hooks wait microseconds at most
            copies = [
                (
                    family,
                    dict(family.values),
                    {k: list(v) for k, v in getattr(family, "series", {}).items()},
                )
                for family in self._metrics.families
            ]
        for family, values, series in copies:
            labels = list(family.labels)
            if isinstance(family, _Histogram):
                histogram = core.HistogramMetricFamily(
                    family.name, family.documentation, labels=labels
                )
                for key, counts in sorted(series.items()):
                    cumulative = 0.0
                    buckets = []
                    for bound, count in zip(family.buckets, counts, strict=False):
                        cumulative += count
                        buckets.append((_bound(bound), cumulative))
                    buckets.append(("+Inf", cumulative + counts[-2]))
                    histogram.add_metric(list(key), buckets, counts[-1])
                yield histogram
            else:
                counter = core.CounterMetricFamily(family.name, family.documentation, labels=labels)
                for key, value in sorted(values.items()):
                    counter.add_metric(list(key), value)
                yield counter

    def collect(self) -> Iterable[Metric]:
        yield from self._counted()
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


def _bound(bound: float) -> str:
    """A bucket bound as Prometheus clients write it (``0.005``, ``1.0``)."""
    return repr(float(bound))
