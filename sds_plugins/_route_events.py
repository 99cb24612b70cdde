"""The events a route and its lookups report: built here, handed to the plugin host.

``sds_lookup_completed`` and ``sds_route_completed`` observers (audit, metrics, tracing, a
user's plugin) see one :class:`~sds_plugins.LookupEvent` per lookup and one
:class:`~sds_plugins.RouteEvent` per route. Nothing is built when no plugin listens.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ._adapter import replaced
from ._events import LookupEvent, RouteEvent, RouteOutcome
from ._exceptions import (
    AmbiguousError,
    DirectoryError,
    EnvelopeVetoedError,
    InvalidInputError,
    NotFoundError,
    SdsPluginsError,
)

if TYPE_CHECKING:
    from ._adapter import Resolution, RouteRequest
    from ._patients import PatientRegistration
    from ._plugins import PluginHost
    from ._sources import DirectorySource
    from ._warm import WarmState

__all__ = ["emit_lookup", "emit_route", "lookup_event"]


def lookup_event(
    source: DirectorySource,
    query: str,
    cache: str,
    attempts: int,
    duration_s: float,
    correlation_id: str,
    records: int = 0,
    error: DirectoryError | None = None,
) -> LookupEvent:
    return LookupEvent(
        time=datetime.now(UTC),
        source=source.name,
        query=query,
        namespace=source.namespace,
        cache=cache,
        attempts=attempts,
        duration_s=duration_s,
        outcome="error" if error is not None else ("found" if records else "not_found"),
        records=records,
        error=f"{type(error).__name__}: {error.message}" if error is not None else None,
        correlation_id=correlation_id,
    )


def emit_lookup(
    host: PluginHost,
    source: DirectorySource,
    query: str,
    cache: str,
    attempts: int,
    started: float,
    correlation_id: str,
    records: int = 0,
    error: DirectoryError | None = None,
) -> None:
    """Tell ``sds_lookup_completed`` observers how one lookup went."""
    if host.has_listeners("sds_lookup_completed"):
        host.lookup_completed(
            lookup_event(
                source,
                query,
                cache,
                attempts,
                time.perf_counter() - started,
                correlation_id,
                records=records,
                error=error,
            )
        )


def emit_route(
    host: PluginHost,
    audit_nhs_numbers: bool,
    adapter: str,
    request: RouteRequest | None,
    resolution: Resolution | None,
    started: float,
    error: SdsPluginsError | None,
    org: str | None,
    interaction: str,
    registration: tuple[PatientRegistration, str, str] | None = None,
    warm: WarmState | None = None,
) -> None:
    """Tell ``sds_route_completed`` observers how a route went (nothing when there are none).

    A route that went well on a prepared route copies the last such event's template
    (:class:`~sds_plugins._warm.WarmState`), its own time, duration and correlation id.
    """
    if not host.has_listeners("sds_route_completed"):
        return
    outcome: RouteOutcome = "ok"
    details: dict[str, Any] = {}
    if registration is not None:
        details["patient"] = registration[0].patient
        details["superseded"] = registration[0].superseded
        if audit_nhs_numbers:  # the operator's governance asks for it
            details["nhs_number"] = registration[2]
    if isinstance(error, AmbiguousError):
        outcome = "ambiguous"
        details["candidates"] = error.candidates
    elif isinstance(error, NotFoundError):
        outcome = "not_found"
    elif isinstance(error, InvalidInputError):
        outcome = "invalid"
    elif isinstance(error, EnvelopeVetoedError):
        outcome = "vetoed"
    elif error is not None:
        outcome = "error"
    # A route that went well says what the last one with the same cache status said
    # (adapter, organisation, interaction and lookups are the prepared route's own), but
    # for its time, duration and correlation id: copied from the first one's event.
    template_key = None
    if warm is not None and error is None and request and resolution and not details:
        template_key = resolution.cache
        template = warm.route_events.get(template_key)
        if template is not None:
            changes = {
                "time": datetime.now(UTC),
                "duration_s": time.perf_counter() - started,
                "correlation_id": request.correlation_id,
                "details": {},  # its own: an observer writing to it must not touch the next
            }
            host.route_completed(replaced(template, changes))
            return
    correlation_id = request.correlation_id if request else getattr(error, "correlation_id", None)
    event = RouteEvent(
        time=datetime.now(UTC),
        adapter=adapter,
        org=request.org if request else org,
        interaction=request.interaction if request else interaction,
        correlation_id=correlation_id,
        outcome=outcome,
        cache=resolution.cache if resolution else None,
        lookups=tuple(o.lookup.key() for o in resolution.outcomes.values()) if resolution else (),
        duration_s=time.perf_counter() - started,
        error=f"{type(error).__name__}: {error}" if error is not None else None,
        details=details,
    )
    if template_key is not None and warm is not None:
        # Not the dict observers get: theirs is their own.
        warm.route_events[template_key] = replaced(event, {"details": {}})
    host.route_completed(event)
