"""Notification payloads: one frozen object per event, so fields can grow without breaking hooks."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ._envelope import CacheStatus

__all__ = ["LookupEvent", "RouteEvent"]

Outcome = Literal["found", "not_found", "error"]
RouteOutcome = Literal["ok", "not_found", "ambiguous", "invalid", "vetoed", "error"]


class LookupEvent(BaseModel):
    """One directory lookup as the engine saw it (cache hits included)."""

    model_config = ConfigDict(frozen=True)

    time: datetime
    source: str
    query: str
    namespace: str
    cache: CacheStatus | Literal["coalesced"]
    attempts: int
    duration_s: float
    outcome: Outcome
    records: int = 0
    error: str | None = None
    correlation_id: str


class RouteEvent(BaseModel):
    """One ``Router.route`` call, finished: an envelope or the reason there is none."""

    model_config = ConfigDict(frozen=True)

    time: datetime
    adapter: str
    org: str | None
    interaction: str | None
    correlation_id: str | None
    outcome: RouteOutcome
    cache: CacheStatus | None = None
    lookups: tuple[str, ...] = ()
    duration_s: float
    error: str | None = None
    details: dict[str, Any] = {}
