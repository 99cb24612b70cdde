"""Run the worker: a router, a transport, signals, and the bookkeeping both transports share."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
import threading
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from .._exceptions import ConfigurationError, SdsPluginsError
from .._keepalive import KeepaliveRunner, start_keepalives
from ._core import RouteWorker, WorkerOutcome, _text
from ._settings import WorkerSettings

if TYPE_CHECKING:
    from .._engine import Router
    from .._observability._metrics import PrometheusMetrics
    from .._settings import Settings

__all__ = ["BrokerError", "run_worker"]

logger = logging.getLogger("sds_plugins.worker")

_EXTRAS = {"amqp": ("aio_pika", "RabbitMQ"), "nats": ("nats", "NATS JetStream")}


class BrokerError(SdsPluginsError):
    """The broker could not be reached, refused a declaration, or the connection was lost.

    Nothing acknowledged is lost when this happens: requests in flight were not acknowledged,
    so the broker delivers them again (to this worker once restarted, or to another).
    """

    exit_code = 1


class Transport(Protocol):
    """Moves messages between a broker and a :class:`RouteWorker` until ``stop`` is set."""

    async def run(self, stop: asyncio.Event) -> None: ...


def import_extra(transport: str) -> ModuleType:
    """The client library of ``transport``, or a :class:`ConfigurationError` naming the extra."""
    module, broker = _EXTRAS[transport]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigurationError(
            f"the {broker} worker needs the {transport!r} extra: "
            f"pip install 'sds-plugins[{transport}]' (or 'sds-plugins[worker]' for both brokers)"
        ) from None


def redact(text: object, settings: WorkerSettings) -> str:
    """``text`` (an exception's message, say) without the broker URL's credentials."""
    out = str(text)
    from urllib.parse import unquote, urlsplit

    url = settings.broker_url.get_secret_value()
    out = out.replace(url, settings.broker)
    try:
        parts = urlsplit(url)
        secrets = [parts.password] if parts.password else []
        if parts.username and not parts.password:
            secrets.append(parts.username)  # nats://TOKEN@host: the user part is the secret
    except ValueError:
        secrets = []
    for secret in secrets:
        for form in {secret, unquote(secret)}:
            if form:
                out = out.replace(form, "***")
    return out


def explain(exc: BaseException, settings: WorkerSettings) -> str:
    """``Type: message`` of a broker library's exception, without credentials."""
    message = redact(exc, settings).strip()
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class InFlight:
    """Counts requests being handled, so a graceful stop can wait for the last one."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def begin(self) -> None:
        self.count += 1
        self._idle.clear()

    def end(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    def __enter__(self) -> None:
        self.begin()

    def __exit__(self, *exc_info: object) -> None:
        self.end()

    async def drained(self, timeout_s: float) -> bool:
        """Wait until nothing is in flight; ``False`` if ``timeout_s`` passed first."""
        if self.count:
            logger.info("draining: %d request(s) in flight", self.count)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            logger.warning(
                "%d request(s) still in flight after %.0f s: closing anyway; the broker will "
                "deliver them again",
                self.count,
                timeout_s,
            )
            return False
        return True


async def first_of(*waits: Awaitable[object]) -> None:
    """Return when the first of ``waits`` finishes; cancel the others."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def log_outcome(outcome: WorkerOutcome, destination: str) -> None:
    """The one info line per request: what happened, where it went; never options or secrets."""
    if not logger.isEnabledFor(logging.INFO):
        return
    request = outcome.request
    parts = [
        f"request_id={_text(outcome.request_id)}",
        f"outcome={outcome.disposition}",
        f"to={_text(destination)}",
    ]
    if request is not None:
        parts += [
            f"adapter={_text(request.adapter)}",
            f"org={_text(request.org)}",
            f"interaction={_text(request.interaction)}",
        ]
    parts += [f"correlation_id={_text(outcome.correlation_id)}", f"attempt={outcome.attempt}"]
    if outcome.error is not None:
        parts.append(f"error={type(outcome.error).__name__}")
    if outcome.disposition == "retry":
        retry_after = getattr(outcome.error, "retry_after_s", None)
        parts.append(f"retry_in_s={outcome.delay_s:.3f}")
        if retry_after is not None:
            parts.append(f"retry_after_s={retry_after:.3f}")
    elif outcome.disposition == "failure":
        parts.append(f"gave_up={'true' if outcome.gave_up else 'false'}")
    parts.append(f"ms={outcome.duration_s * 1000:.1f}")
    # Made and handed over directly: logger.info would first walk the stack to find its caller
    # (a quarter of the line's cost, on every message), which this format does not show.
    logger.handle(
        logger.makeRecord(logger.name, logging.INFO, __file__, 0, " ".join(parts), (), None)
    )


def build_router(settings: WorkerSettings, sds_settings: Settings | None = None) -> Router:
    """The router a worker runs: SDS settings from ``SDS_*``, adapter options from ``config``."""
    from .._adapter_options import load_adapter_options
    from .._engine import Router
    from .._settings import Settings

    sds = sds_settings if sds_settings is not None else Settings()
    options = load_adapter_options(settings.config) if settings.config is not None else {}
    # The cache and pacer come from SDS_* like everywhere else (SDS_REDIS_URL, SDS_REDIS_PREFIX).
    return Router(sds, adapter_options=options)


def _transport(settings: WorkerSettings, worker: RouteWorker) -> Transport:
    import_extra(settings.transport)  # a missing extra fails before anything connects
    if settings.transport == "amqp":
        from ._amqp import AmqpTransport

        return AmqpTransport(settings, worker)
    from ._nats import NatsTransport

    return NatsTransport(settings, worker)


async def run_worker(
    settings: WorkerSettings,
    *,
    router: Router | None = None,
    sds_settings: Settings | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Route requests from the broker until ``stop`` is set (or SIGTERM/SIGINT), then drain.

    Without ``router`` it builds one from ``sds_settings`` (default: ``SDS_*``) and
    ``settings.config``, and closes it at the end; a caller's router is started if needed and
    left open. Without ``stop``, SIGTERM and SIGINT stop it (when running in the main thread):
    consuming stops, in-flight requests are finished, published and acknowledged, then this
    returns. Raises :class:`BrokerError`
    when the broker is unreachable or lost, :class:`ConfigurationError` for bad settings.
    """
    own_router = router is None
    active = build_router(settings, sds_settings) if router is None else router
    metrics = None
    if own_router or settings.metrics_port is not None:
        from .._observability import register_observability

        # Metrics only with an endpoint to read them from; tracing whenever installed.
        metrics = register_observability(active, metrics=settings.metrics_port is not None)
    if settings.metrics_port is not None and metrics is None:
        raise ConfigurationError(
            "--metrics-port needs the 'metrics' extra: pip install 'sds-plugins[metrics]' "
            "(and sds_plugins.metrics must not be in SDS_PLUGINS_DISABLE)"
        )
    worker = RouteWorker(active, settings.policy(), metrics=metrics)
    transport = _transport(settings, worker)
    stop_event = stop if stop is not None else asyncio.Event()
    endpoint = _serve_metrics(metrics, settings) if metrics is not None else None
    restore = _handle_signals(stop_event) if stop is None else (lambda: None)
    keepalives: KeepaliveRunner | None = None
    try:
        await active.start()
        unknown = sorted(set(active.adapter_options) - set(active.adapters))
        if unknown:
            logger.warning(
                "adapter options for adapters that are not installed: %s", ", ".join(unknown)
            )
        # The plugins' keepalives (the MESH handshake): at start, then every interval.
        keepalives = start_keepalives(active.host)
        await transport.run(stop_event)
    finally:
        if keepalives is not None:
            await keepalives.aclose()
        restore()
        if endpoint is not None:
            # shutdown() waits for the serving thread's loop to notice (about half a second).
            await asyncio.to_thread(endpoint.shutdown)
            endpoint.server_close()
        if own_router:
            await active.aclose()


def _serve_metrics(metrics: PrometheusMetrics, settings: WorkerSettings) -> Any:
    """Prometheus' own small HTTP server, in a thread: it answers scrapes even while the event
    loop is busy routing (and the worker has no HTTP server of its own to add a route to)."""
    if settings.metrics_port is None:
        return None
    from prometheus_client import start_http_server

    try:
        server, _thread = start_http_server(
            settings.metrics_port, addr=settings.metrics_host, registry=metrics.registry
        )
    except OSError as exc:
        raise ConfigurationError(
            f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: "
            f"{exc.strerror or exc}"
        ) from None
    logger.info("metrics on http://%s:%d/metrics", settings.metrics_host, server.server_address[1])
    return server


def _handle_signals(stop: asyncio.Event) -> Callable[[], None]:
    """SIGTERM/SIGINT set ``stop``; a second one ends the drain at once."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    signals = (signal.SIGTERM, signal.SIGINT)

    def on_signal(signum: int) -> None:
        if not stop.is_set():
            logger.info("%s: stopping (finishing requests in flight)", signal.Signals(signum).name)
            stop.set()
        elif main is not None:
            # Impatient operator: abandon the drain. Unacknowledged requests are delivered
            # again by the broker, so this loses nothing either.
            logger.warning("%s again: stopping now", signal.Signals(signum).name)
            main.cancel()

    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)

    def restore() -> None:
        for signum in signals:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)

    return restore
