"""Bulk resolution: warm the cache for many organisations, within the rate limit."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ._engine import Router
from ._events import LookupEvent
from ._exceptions import AmbiguousError, InvalidInputError, NotFoundError, SdsPluginsError
from ._settings import Settings
from .hookspecs import hookimpl

__all__ = ["prewarm"]


class _RequestCounter:
    """Counts the HTTP requests lookups made (cache hits and coalesced waits make none)."""

    def __init__(self) -> None:
        self.requests = 0

    @hookimpl
    def sds_lookup_completed(self, event: LookupEvent) -> None:
        self.requests += event.attempts


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
) -> dict[str, Any]:
    """Route ``interaction`` for every organisation; return counts by outcome.

    Failures are counted, not raised: one bad organisation must not stop a bulk run. The summary
    lists the organisations that failed (with the error class) so they can be retried.
    """
    counter = _RequestCounter()
    counts = {"resolved": 0, "not_found": 0, "ambiguous": 0, "invalid": 0, "failed": 0}
    failures: dict[str, str] = {}
    started = time.perf_counter()
    gate = asyncio.Semaphore(concurrency)
    console = Console(file=sys.stderr)
    bar = Progress(
        TextColumn("prewarm {task.fields[adapter]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not progress,
        transient=False,
    )

    async with Router(settings, plugins=[counter, *plugins]) as router:

        async def one(org: str, task: Any) -> None:
            async with gate:
                try:
                    await router.route(adapter, org=org, interaction=interaction, **(options or {}))
                    counts["resolved"] += 1
                except AmbiguousError:
                    counts["ambiguous"] += 1
                    failures[org] = "AmbiguousError"
                except NotFoundError:
                    counts["not_found"] += 1
                    failures[org] = "NotFoundError"
                except InvalidInputError as exc:
                    if exc.field in ("adapter", "interaction"):
                        raise  # the whole run is wrong, not this organisation
                    counts["invalid"] += 1
                    failures[org] = "InvalidInputError"
                except SdsPluginsError as exc:
                    counts["failed"] += 1
                    failures[org] = type(exc).__name__
                finally:
                    bar.advance(task)

        with bar:
            task = bar.add_task("routes", total=len(orgs), adapter=adapter)
            await asyncio.gather(*(one(org, task) for org in orgs))

    return {
        "organisations": len(orgs),
        **counts,
        "directory_requests": counter.requests,
        "elapsed_s": round(time.perf_counter() - started, 3),
        "failures": failures,
    }
