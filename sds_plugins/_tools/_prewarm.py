"""Bulk resolution: warm a shared cache for many organisations, paced below the gateway.

A prewarm only makes sense when what it warms outlives it: the cache must be shared (Redis)
and the adapter must store its lookups for reuse (GP Connect, for one, keeps SDS answers only
within an encounter unless the operator opted in). Both are checked before anything is sent.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from .._engine import Router
from .._events import LookupEvent
from .._exceptions import (
    AmbiguousError,
    ConfigurationError,
    InvalidInputError,
    NotFoundError,
    SdsPluginsError,
)
from .._settings import Settings
from .._validation import normalise_ods_code
from ..hookspecs import hookimpl

__all__ = ["prewarm"]


class _RequestCounter:
    """Counts the HTTP requests lookups made (cache hits and coalesced waits make none)."""

    def __init__(self) -> None:
        self.requests = 0

    @hookimpl
    def sds_lookup_completed(self, event: LookupEvent) -> None:
        self.requests += event.attempts


class _RateColumn(ProgressColumn):
    """Routes finished per second (rich's estimate over the last moments)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f}/s" if speed else "-/s")


def _unique(orgs: Sequence[str]) -> tuple[list[str], dict[str, dict[str, Any]], int]:
    """Normalised, de-duplicated codes in first-seen order; the invalid ones; duplicates."""
    seen: dict[str, None] = {}
    invalid: dict[str, dict[str, Any]] = {}
    duplicates = 0
    for raw in orgs:
        try:
            code = normalise_ods_code(raw)
        except InvalidInputError as exc:
            invalid[str(raw)] = {"error": "InvalidInputError", "message": str(exc)}
            continue
        if code in seen:
            duplicates += 1
        else:
            seen[code] = None
    return list(seen), invalid, duplicates


def _check_outlives(
    router: Router, adapter: str, interaction: str, org: str, options: dict[str, Any]
) -> None:
    """Refuse (before any request) a prewarm whose results would die with it."""
    scope = router.cache_scope(adapter, interaction, org=org, options=options)
    chosen = router.adapters[adapter]
    if not router.cache.backend.shared:
        raise ConfigurationError(
            f"nothing to prewarm into: the {router.cache.backend.name} cache lives in this "
            "process and dies with the command; set SDS_REDIS_URL to warm a shared cache"
        )
    if scope is None:
        raise ConfigurationError(
            f"nothing to prewarm: {chosen.unstored_reason or f'{adapter} stores no lookups'}"
        )


async def prewarm(
    settings: Settings,
    *,
    adapter: str,
    interaction: str,
    orgs: Sequence[str],
    options: dict[str, Any] | None = None,
    concurrency: int = 50,
    progress: bool = True,
    plugins: Sequence[object] = (),
    require_shared_cache: bool = True,
) -> dict[str, Any]:
    """Route ``interaction`` for every organisation into the cache; return a summary.

    Organisations are normalised and de-duplicated first. Failures are counted, not raised:
    one bad organisation must not stop a bulk run, and the summary lists each failure's
    error class, message and correlation id so it can be chased or retried. ``exit_code``
    in the summary is the CLI's: 0 when every organisation resolved or was definitively not
    found or ambiguous, 5 when any failed for directory reasons, 2 when any code was invalid.

    Raises :class:`ConfigurationError` before sending anything when what it would warm
    cannot outlive it (an in-process cache, an adapter that does not store its lookups),
    unless ``require_shared_cache`` is false (tests, benchmarks).
    """
    options = dict(options or {})
    unique, invalid, duplicates = _unique(orgs)
    counter = _RequestCounter()
    counts = {"resolved": 0, "not_found": 0, "ambiguous": 0, "invalid": len(invalid), "failed": 0}
    failures: dict[str, dict[str, Any]] = dict(invalid)
    gate = asyncio.Semaphore(concurrency)
    bar = Progress(
        TextColumn("prewarm {task.fields[adapter]}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(file=sys.stderr),
        disable=not progress,
        transient=False,
    )

    async with Router(settings, plugins=[counter, *plugins]) as router:
        if unique and require_shared_cache:
            _check_outlives(router, adapter, interaction, unique[0], options)
        started = time.perf_counter()

        async def one(org: str, task: Any) -> None:
            async with gate:
                try:
                    await router.route(adapter, org=org, interaction=interaction, **options)
                    counts["resolved"] += 1
                except (AmbiguousError, NotFoundError) as exc:
                    counts["ambiguous" if isinstance(exc, AmbiguousError) else "not_found"] += 1
                    failures[org] = _describe(exc)
                except InvalidInputError as exc:
                    if exc.field not in (None, "org"):
                        raise  # the whole run is wrong (adapter, interaction, options)
                    counts["invalid"] += 1
                    failures[org] = _describe(exc)
                except SdsPluginsError as exc:
                    counts["failed"] += 1
                    failures[org] = _describe(exc)
                finally:
                    bar.update(task, advance=1, failed=counts["failed"])

        with bar:
            task = bar.add_task("routes", total=len(unique), adapter=adapter, failed=0)
            await asyncio.gather(*(one(org, task) for org in unique))
        elapsed = time.perf_counter() - started
        throttles = getattr(router.rate_limiter, "throttles", None)

    if counts["failed"]:
        exit_code = 5
    elif counts["invalid"]:
        exit_code = 2
    else:
        exit_code = 0
    summary: dict[str, Any] = {
        "organisations": len(unique) + len(invalid),
        "duplicates": duplicates,
        **counts,
        "directory_requests": counter.requests,
        "elapsed_s": round(elapsed, 3),
        "routes_per_s": round(len(unique) / elapsed, 1) if elapsed > 0 else None,
        "exit_code": exit_code,
        "failures": failures,
    }
    if throttles is not None:
        summary["gateway_429s"] = dict(throttles)
    return summary


def _describe(exc: SdsPluginsError) -> dict[str, Any]:
    return {
        "error": type(exc).__name__,
        "message": getattr(exc, "message", None) or str(exc),
        "correlation_id": getattr(exc, "correlation_id", None),
    }
