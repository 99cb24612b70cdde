"""The hooks sds-plugins calls: the public contract for adapter and plugin authors.

Implement any of them in a module or class, mark each function with :data:`hookimpl`, and
register the object under the ``sds_plugins`` entry-point group::

    [project.entry-points.sds_plugins]
    my_adapter = "my_package.plugin"

Rules every hook follows:

- Hooks are **synchronous and do no I/O** (pluggy cannot await). Asynchronous work lives in the
  objects hooks return: an ``httpx.Auth``, a cache backend, an adapter, a directory source.
  ``async def`` implementations of "first result" hooks are refused at load time (a coroutine is
  never ``None``, so it would always win).
- "First result" hooks stop at the first implementation that returns something other than
  ``None``; implementations registered later run first, and the built-in defaults are registered
  with ``trylast=True``, so any plugin overrides them by returning a value.
- To *wrap* a result instead of replacing it (decorate the default auth, veto an envelope), use
  ``@hookimpl(wrapper=True)`` and ``result = yield``.
- Notification hooks (``sds_*_completed``) receive one event object; new fields may appear.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import httpx
    from rich.console import Console

    from ._adapter import Adapter, Candidate, RouteRequest
    from ._cache import CacheBackend
    from ._envelope import RoutingEnvelope
    from ._events import LookupEvent, RouteEvent
    from ._pacing import RateLimiter
    from ._settings import Settings
    from ._sources import DirectorySource, SourceContext

__all__ = ["NOTIFICATIONS", "PROJECT", "SIDE_PROTOCOLS", "START_HOOKS", "hookimpl", "hookspec"]

#: The pluggy project name, and the entry-point group plugins are discovered under.
PROJECT = "sds_plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
#: Mark a plugin's hook implementations with this.
hookimpl = pluggy.HookimplMarker(PROJECT)

#: The hooks a router calls once, when it starts. A plugin implementing one of them cannot be
#: registered on a host while a router it serves is running (it would silently do nothing):
#: :meth:`PluginHost.register` raises :class:`~sds_plugins.PluginError` instead.
START_HOOKS = frozenset(
    {
        "sds_register_adapters",
        "sds_register_sources",
        "sds_provide_auth",
        "sds_provide_cache",
        "sds_provide_rate_limiter",
    }
)


#: The notification hooks: every observer is called on its own (one that raises is logged and
#: never hides the event from the others).
NOTIFICATIONS = frozenset({"sds_lookup_completed", "sds_route_completed"})

#: Methods a plugin object may define beside its hooks, by name, with what they answer. An
#: observer of :data:`NOTIFICATIONS` may define ``wants_events() -> bool``: while every
#: implementation of a notification hook answers ``False``, the router builds no event for it.
#: Checked when the plugin is registered: a near miss (``want_events``, ``wants_event``...) or
#: one on a plugin that observes nothing fails loudly instead of being ignored.
SIDE_PROTOCOLS: dict[str, str] = {"wants_events": "wants_events() -> bool"}


@hookspec
def sds_register_adapters(register: Callable[[Adapter], None]) -> None:
    """Called once when a router starts; call ``register(adapter)`` for each adapter you provide.

    :param register: takes an :class:`sds_plugins.Adapter` instance; its ``name`` is what callers
        pass to ``Router.route``. Registering a name twice is an error.

    .. versionadded:: 0.1
    """


@hookspec
def sds_register_sources(
    register: Callable[[DirectorySource], None], context: SourceContext
) -> None:
    """Called once when a router starts; call ``register(source)`` for each directory source.

    A directory source answers lookups that are not SDS (MESH mailbox lookup is one) and gets the
    same cache, single-flight, rate limiting and events as SDS. The built-in ``sds`` source is
    registered this way too. Build clients here, but connect lazily (no I/O in the hook).

    :param register: takes an :class:`sds_plugins.DirectorySource`.
    :param context: a :class:`sds_plugins.SourceContext`: the router's ``settings``, its shared
        ``rate_limiter``, and ``auth_for(source_name)`` (the ``sds_provide_auth`` answer).

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def sds_provide_auth(source: str, settings: Settings) -> httpx.Auth | None:
    """Return the ``httpx.Auth`` for requests to directory source ``source``, or ``None``.

    Stops at first non-None result. The default gives SDS its API-key or signed-JWT auth from
    ``settings``. To wrap the default (add a header, count tokens), use ``wrapper=True``.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def sds_provide_cache(settings: Settings) -> CacheBackend | None:
    """Return the cache backend shared by all lookups, or ``None`` to leave it to others.

    Stops at first non-None result. Defaults: Redis when ``settings.redis_url`` is set (falling
    back to memory when Redis is unreachable), otherwise an in-memory TTL cache.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def sds_provide_rate_limiter(settings: Settings) -> RateLimiter | None:
    """Return the client-side rate limiter every directory request waits on, or ``None``.

    Stops at first non-None result. Default: ``settings.rate_limit_per_s`` and
    ``settings.rate_limit_per_min``, shared through Redis when ``settings.redis_url`` is set.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def sds_select_candidate(
    candidates: Sequence[Candidate], request: RouteRequest, role: str, option: str | None
) -> Candidate | None:
    """Choose one of several candidate destinations, or return ``None`` to defer.

    Stops at first non-None result. Candidates are not only SDS's joined MHS records: MESH
    mailboxes (role ``"recipient mailbox"``) and GP Connect consumer systems (``"consumer"``)
    come through here too, each with its records. The default policy accepts exactly one
    candidate (after narrowing by the caller's ``option``) and otherwise raises
    :class:`sds_plugins.AmbiguousError` listing them, or :class:`sds_plugins.NotFoundError` when
    there are none. Raise those yourself to refuse.

    :param role: what is being chosen ("provider", "consumer", "recipient"...).
    :param option: the route option through which a caller chooses among such candidates
        (``"party_key"`` for MHS records, ``"mailbox_id"`` for MESH mailboxes; its value is
        compared with :attr:`Candidate.key`), or ``None`` when callers choose otherwise (GP
        Connect narrows consumer systems by ``consumer_supplier_ods`` in the lookup itself).

    .. versionadded:: 0.1
    .. versionchanged:: 0.2 ``option``, and candidates that are not MHS records.
    """


@hookspec(firstresult=True)
def sds_finalize_envelope(
    envelope: RoutingEnvelope, request: RouteRequest
) -> RoutingEnvelope | None:
    """Called with each envelope before it is returned; return it (or a changed copy).

    Stops at first non-None result; the default returns the envelope unchanged. Decorate with
    ``@hookimpl(wrapper=True)``: ``envelope = yield`` then return
    ``envelope.with_headers(...)`` (validated, unlike ``model_copy``). Veto by raising
    :class:`sds_plugins.EnvelopeVetoedError`.

    .. versionadded:: 0.1
    """


@hookspec
def sds_lookup_completed(event: LookupEvent) -> None:
    """Called after every directory lookup (cache hits, coalesced waits and failures included).

    :param event: a :class:`sds_plugins.LookupEvent`: query, source, cache status, attempts,
        duration, outcome and correlation id. Must not raise or block.

    .. versionadded:: 0.1
    """


@hookspec
def sds_route_completed(event: RouteEvent) -> None:
    """Called after every ``Router.route`` call, whether it produced an envelope or an error.

    :param event: a :class:`sds_plugins.RouteEvent`. Must not raise or block.

    .. versionadded:: 0.1
    """


@hookspec
def sds_register_demos(register: Callable[[str, Callable[[Console], None]], None]) -> None:
    """Called by ``sds-plugins demo`` (never by a router); call ``register(name, show)`` for each
    demonstration your plugin offers.

    :param register: takes a name and ``show(console)``, a callable the demo command calls with
        a ``rich.console.Console`` after its own part. ``show`` is tooling, not routing: it may
        start servers and do I/O (the hook itself does not). One demo failing does not stop
        the others. Adapters the embedded SDS sandbox can route need no demo: their
        ``Adapter.example`` is routed already; this is for those that need more (the MESH
        adapter starts NHS's mesh-sandbox).

    .. versionadded:: 0.2
    """


@hookspec
def sds_register_keepalives(
    register: Callable[[str, float, Callable[[], Awaitable[object]]], None],
) -> None:
    """Called by the long-running processes (the worker, ``serve``) when they start and by
    ``sds-plugins doctor``, never by a router; call ``register(name, interval_s, call)`` for
    each call your service asks its clients to make now and then, outside any route (MESH:
    validate the mailbox once every 24 hours).

    :param register: takes a name (for logs and doctor), the interval in seconds and ``call``,
        an async callable with no arguments. ``call`` does I/O (the hook itself does not); the
        processes make it at start and then every interval, a failure is logged and tried again
        within five minutes, and never stops the process. ``doctor`` makes it once and reports
        it.

    .. versionadded:: 0.3
    """
