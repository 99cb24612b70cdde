"""The warm path's one home: what a prepared route remembers from one route to the next.

A route repeated with the same plain-valued arguments reuses its validated request and plan
(``Router._prepare``), and, while the cache hands back the very same record tuples, everything
that follows from them alone. :class:`WarmState` is that memory, one per prepared route, typed:

- ``hot``: the outcomes of the last warm route and the cache generation they were read at
  (while the in-process cache has changed nothing and they are fresh, not even a read);
- ``hits``: a hit on the same records is the same :class:`LookupOutcome`;
- ``hit_events`` and ``route_events``: the events of those outcomes, copied for each route
  with its own time and correlation id;
- ``core`` and ``adapter``: what :class:`~sds_plugins.Resolution` derived from the records,
  the router's own (choices, provenance) and the adapter's (``Resolution.derive``), apart, so
  an adapter's names can never collide with the router's.

Each technique's worth is measured by ``bench/warm_path.py --ablate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._adapter import LookupOutcome
    from ._events import LookupEvent, RouteEvent

__all__ = ["Derived", "WarmState"]

#: A derivation: the objects it was computed from (compared by identity) and its value.
Derived = tuple[tuple[Any, ...], Any]


@dataclass(slots=True)
class WarmState:
    """What one prepared route remembers between routes (see the module docstring)."""

    hot: tuple[int, float, dict[str, LookupOutcome]] | None = None
    hits: dict[str, LookupOutcome] = field(default_factory=dict)
    hit_events: dict[str, tuple[LookupOutcome, LookupEvent]] = field(default_factory=dict)
    route_events: dict[str, RouteEvent] = field(default_factory=dict)
    core: dict[str, Derived] = field(default_factory=dict)
    adapter: dict[str, Derived] = field(default_factory=dict)
