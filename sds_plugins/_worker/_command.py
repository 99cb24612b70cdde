"""``sds-plugins worker BROKER_URL``: every option also an ``SDS_WORKER_*`` variable."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from pydantic import ValidationError

from .._exceptions import SdsPluginsError
from ._settings import WorkerSettings

__all__ = ["worker"]

_FIELDS = WorkerSettings.model_fields
_F = TypeVar("_F", bound=Callable[..., Any])


def _option(name: str, help_text: str, **kwargs: Any) -> Callable[[_F], _F]:
    """A ``--name`` option read from ``SDS_WORKER_NAME`` too, defaulting as the settings do."""
    field = name.replace("-", "_")
    kwargs.setdefault("default", _FIELDS[field].default)
    kwargs.setdefault("show_default", kwargs["default"] is not None)
    return click.option(
        f"--{name}",
        field,
        envvar=f"SDS_WORKER_{field.upper()}",
        show_envvar=True,
        help=help_text,
        **kwargs,
    )


@click.command()
@click.argument("broker_url", envvar="SDS_WORKER_BROKER_URL", metavar="BROKER_URL")
@_option("requests", "Queue (RabbitMQ) or subject (NATS) of the requests.")
@_option("envelopes", "Where envelopes are published (unless a request says reply_to).")
@_option("failures", "Where failure documents are published (likewise).")
@_option(
    "config",
    "TOML file of per-adapter options ([ADAPTER] tables, as for route --config).",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@_option("concurrency", "Requests routed at once.", type=click.IntRange(1, 10_000))
@_option(
    "max-attempts",
    "Attempts for a retryable failure before it is published with gave_up.",
    type=click.IntRange(1, 1000),
)
@_option(
    "max-age-s",
    "Seconds after first seeing a request when retrying stops (gave_up).",
    type=click.FloatRange(min=0, min_open=True),
)
@_option(
    "retry-initial-s",
    "First retry delay; it doubles each attempt (with jitter), never below retry_after_s.",
    type=click.FloatRange(min=0, min_open=True),
)
@_option("retry-max-s", "Longest retry delay.", type=click.FloatRange(min=0, min_open=True))
@_option(
    "with-secrets",
    "Publish envelopes with credentials in their headers (secure the queues first).",
    is_flag=True,
)
@_option(
    "drain-timeout-s",
    "On SIGTERM/SIGINT, how long to wait for requests in flight.",
    type=click.FloatRange(min=0, min_open=True),
)
@_option(
    "ack-wait-s",
    "NATS: the durable consumer's ack wait (when the worker creates it).",
    type=click.FloatRange(min=1),
)
@_option(
    "metrics-port",
    "Serve Prometheus metrics at http://METRICS_HOST:PORT/metrics (0: a free port, logged); "
    "needs the 'metrics' extra.",
    type=click.IntRange(0, 65535),
)
@_option("metrics-host", "Address the metrics endpoint listens on.")
@click.option(
    "--base-url",
    envvar="SDS_BASE_URL",
    show_envvar=True,
    help="SDS base URL or environment name (default: SDS_ENV).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    envvar="SDS_WORKER_LOG_LEVEL",
    show_envvar=True,
    help="Level of the worker's log (info: one line per request).",
)
def worker(broker_url: str, base_url: str | None, log_level: str, **options: Any) -> None:
    """Route requests from RabbitMQ (amqp://, amqps://) or NATS JetStream (nats://, tls://).

    Each request is a JSON body {"adapter", "org", "interaction", "options", "encounter",
    "correlation_id"}; its envelope goes to --envelopes, or a failure document to --failures.
    Retryable failures are retried with back-off. SIGTERM/SIGINT finish the requests in
    flight, then exit 0. BROKER_URL may come from SDS_WORKER_BROKER_URL (better: a password
    on the command line shows in ps). SDS settings come from SDS_* as for the other commands.
    See docs/worker.md.
    """
    from .._settings import Settings
    from ._runtime import run_worker

    logging.getLogger("sds_plugins.worker").setLevel(log_level.upper())
    try:
        settings = WorkerSettings(broker_url=broker_url, **options)
        sds = Settings(base_url=base_url) if base_url else Settings()
    except ValidationError as exc:
        _exit(f"invalid configuration: {_errors(exc)}", 2)
    except SdsPluginsError as exc:
        _exit(str(exc), exc.exit_code)
    try:
        asyncio.run(run_worker(settings, sds_settings=sds))
    except SdsPluginsError as exc:
        _exit(f"{type(exc).__name__}: {exc}", exc.exit_code)
    except asyncio.CancelledError:
        _exit("stopped before the requests in flight were finished (they are delivered again)", 1)


def _errors(exc: ValidationError) -> str:
    # Locations and messages only: pydantic's own text would quote the values (the URL).
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'value'}: {error['msg']}"
        for error in exc.errors()
    )


def _exit(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)
