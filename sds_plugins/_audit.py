"""The audit log: one JSON line per lookup and per route, for operators and investigations.

On when ``SDS_AUDIT_LOG=<path>`` is set. Lines hold times, correlation ids, adapters,
organisations, interactions, directory queries, cache states and outcomes; never headers,
tokens, keys or passwords (events do not carry them in the first place).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from ._events import LookupEvent, RouteEvent
from .hookspecs import hookimpl

__all__ = ["AuditLog"]


class AuditLog:
    """Appends events to ``path`` as JSON lines (one ``write`` per line, so lines never mix)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _write(self, kind: str, payload: dict[str, object]) -> None:
        line = json.dumps({"event": kind, **payload}, separators=(",", ":"), default=str) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)

    @hookimpl
    def sds_lookup_completed(self, event: LookupEvent) -> None:
        self._write("lookup", event.model_dump(mode="json"))

    @hookimpl
    def sds_route_completed(self, event: RouteEvent) -> None:
        self._write("route", event.model_dump(mode="json"))

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r})"
