"""Metrics and tracing for the long-running commands (``serve``, ``worker``).

Both are ordinary plugins, registered under the names ``sds_plugins.metrics`` and
``sds_plugins.tracing`` when their extras are installed, unless ``SDS_PLUGINS_DISABLE`` names
them (as with the built-in defaults). A library user registers them explicitly instead:
``Router(settings, plugins=[PrometheusMetrics(), OpenTelemetryTracing()])``.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._engine import Router
    from ._metrics import PrometheusMetrics

__all__ = ["METRICS_PLUGIN", "TRACING_PLUGIN", "register_observability"]

METRICS_PLUGIN = "sds_plugins.metrics"
TRACING_PLUGIN = "sds_plugins.tracing"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # a module object without a spec (tests may install one)
        return True


def register_observability(router: Router, *, metrics: bool = True) -> PrometheusMetrics | None:
    """Register tracing and (unless ``metrics`` is false) metrics on ``router`` before it
    starts; returns the metrics plugin, if there is one, for a ``/metrics`` endpoint."""
    pm = router.host.pm
    plugin: PrometheusMetrics | None = None
    if metrics and _installed("prometheus_client") and not pm.is_blocked(METRICS_PLUGIN):
        from ._metrics import PrometheusMetrics

        existing = pm.get_plugin(METRICS_PLUGIN)
        if existing is None:
            existing = PrometheusMetrics()
            router.host.register(existing, name=METRICS_PLUGIN)
        # A plugin of another kind under that name is the user's: it serves no /metrics here.
        plugin = existing if isinstance(existing, PrometheusMetrics) else None
    if (
        _installed("opentelemetry")
        and not pm.is_blocked(TRACING_PLUGIN)
        and not pm.has_plugin(TRACING_PLUGIN)
    ):
        from ._tracing import OpenTelemetryTracing

        router.host.register(OpenTelemetryTracing(), name=TRACING_PLUGIN)
    if plugin is not None:
        plugin.watch(router)
    return plugin
