"""The plugin host: one owned ``pluggy.PluginManager``, its defaults, and discovery.

Nothing happens at import time. A :class:`PluginHost` registers the built-in defaults (ordinary
plugins, ``trylast``), then, unless told not to, the ``sds_plugins`` entry points, restricted by

- ``SDS_PLUGINS_LOAD``: comma-separated distribution (or entry-point) names; only these load;
- ``SDS_PLUGINS_DISABLE``: comma-separated plugin names to block (built-ins included);
- ``SDS_PLUGINS_TRACE``: any non-empty value logs every hook call to stderr.

An installed plugin that cannot be loaded (its module raises on import, or it fails the checks
below) does not stop the others: it is skipped with an error logged that names the line to
disable it (``SDS_PLUGINS_DISABLE=<name>``), and recorded in :attr:`PluginHost.failed`, which
``sds-plugins plugins`` lists and ``sds-plugins doctor`` fails on.

Every registration is checked: ``check_pending()`` (a misspelt hook name fails loudly), no
``async def`` hook implementations (hooks are synchronous; a coroutine would always "win" a
first-result hook), and no plugin implementing a start-time hook (``hookspecs.START_HOOKS``)
while a router on this host is running (it would silently do nothing).

The engine and tools call hooks through the typed methods below (``host.register_adapters``,
``host.select_candidate``...), so a type checker sees what each hook takes and returns;
``host.hook`` is pluggy's untyped relay, for anything else.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import inspect
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import pluggy

from . import hookspecs
from ._exceptions import PluginError

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

__all__ = ["PluginFailure", "PluginHost"]

logger = logging.getLogger("sds_plugins.plugins")


def _names(value: str | None) -> set[str]:
    return {part.strip() for part in (value or "").split(",") if part.strip()}


def _parameters(method: object) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(method).parameters.values())  # type: ignore[arg-type]
    except (TypeError, ValueError):  # not introspectable: let a call decide
        return []


def _describe(plugin: object) -> str:
    """A plugin as a log line names it: a module by its name, an object by its class."""
    if inspect.ismodule(plugin):
        return plugin.__name__
    return f"plugin {type(plugin).__qualname__}"


def _normalise_dist(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


class PluginHost:
    """Owns the ``PluginManager`` for one router (or one CLI command)."""

    def __init__(
        self,
        *,
        load_entrypoints: bool = True,
        defaults: bool = True,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._distributions: dict[str, tuple[str, str]] = {}
        #: Installed plugins that could not be loaded, by entry-point name (skipped; see
        #: :meth:`load_entrypoints`).
        self.failed: dict[str, PluginFailure] = {}
        self._running = 0  # routers started on this host and not closed
        self._only = {_normalise_dist(name) for name in _names(env.get("SDS_PLUGINS_LOAD"))}
        self._disabled = sorted(_names(env.get("SDS_PLUGINS_DISABLE")))
        for name in self._disabled:
            self.pm.set_blocked(name)
        self._traced = bool(env.get("SDS_PLUGINS_TRACE"))
        # Per notification hook: its implementations when last looked at, and their
        # wants_events methods when every one has one (see has_listeners).
        self._listening: dict[str, tuple[list[Any], tuple[Any, ...] | None]] = {}
        self._notifying: dict[str, tuple[list[Any], tuple[tuple[str, Any], ...]]] = {}
        if self._traced:
            self.pm.trace.root.setwriter(sys.stderr.write)
            self.pm.enable_tracing()
        if defaults:
            from ._defaults import default_plugins

            for name, plugin in default_plugins():
                self.register(plugin, name=name)
        if load_entrypoints:
            self.load_entrypoints()

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def load_entrypoints(self) -> None:
        """Load plugins from the ``sds_plugins`` entry-point group (once per name).

        A plugin that cannot be loaded (its module raises on import; it implements an unknown
        hook, an ``async def`` hook...) is skipped: an error is logged naming the line that
        disables it, it is recorded in :attr:`failed`, and every other plugin still loads.
        """
        for ep in importlib.metadata.entry_points(group=hookspecs.PROJECT):
            dist = getattr(ep, "dist", None)
            dist_name = dist.name if dist is not None else ""
            if self._only and not (
                {_normalise_dist(dist_name), _normalise_dist(ep.name)} & self._only
            ):
                continue
            if self.pm.is_blocked(ep.name) or self.pm.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                self._failed(ep.name, ep.value, dist, f"{type(exc).__name__}: {exc}")
                continue
            try:
                self.register(plugin, name=ep.name)
            except PluginError as exc:
                if self.pm.is_registered(plugin):  # pluggy may have kept part of it
                    self.pm.unregister(plugin)
                self._failed(ep.name, ep.value, dist, str(exc))
                continue
            if dist is not None:
                self._distributions[ep.name] = (dist.name, dist.version)

    def disable_line(self, name: str) -> str:
        """The environment setting that keeps plugin ``name`` from loading, the operator's
        current ``SDS_PLUGINS_DISABLE`` list kept."""
        names = [*(n for n in self._disabled if n != name), name]
        return f"SDS_PLUGINS_DISABLE={','.join(names)}"

    def _failed(self, name: str, value: str, dist: Any, error: str) -> None:
        dist_name = getattr(dist, "name", None) or "?"
        version = getattr(dist, "version", None) or "?"
        # One line, bounded: an exception's text may be anything (a whole traceback, a page).
        error = " ".join(error.split())[:500]
        failure = PluginFailure(
            name=name,
            entry_point=value,
            distribution=dist_name,
            version=version,
            error=error,
            disable=self.disable_line(name),
        )
        self.failed[name] = failure
        logger.error("%s", failure.message())

    def register(self, plugin: object, name: str | None = None) -> str | None:
        """Register ``plugin``; refuses async hook implementations, unknown hooks and side
        protocols that are misspelt or misplaced (``hookspecs.SIDE_PROTOCOLS``)."""
        self._reject_async(plugin, name)
        self._check_side_protocols(plugin, name)
        try:
            registered = self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:  # e.g. a misspelt hook argument
            raise PluginError(f"plugin {name or plugin!r}: {exc}", plugin=name) from exc
        except ValueError as exc:  # name already registered or blocked
            raise PluginError(str(exc), plugin=name) from exc
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(plugin)
            raise PluginError(
                f"plugin {registered or name!r} implements unknown hooks: {exc}", plugin=name
            ) from exc
        if self._running:
            late = hookspecs.START_HOOKS.intersection(
                caller.name for caller in self.pm.get_hookcallers(plugin) or []
            )
            if late:
                self.pm.unregister(plugin)
                raise PluginError(
                    f"plugin {registered or name!r} implements {', '.join(sorted(late))}, which "
                    "a router calls only when it starts, and a router on this host is running: "
                    "register it before starting the router (or on a new host)",
                    plugin=name,
                )
        return registered

    def router_started(self) -> None:
        """Called by a router when it has started (from then on, start-time hooks are closed)."""
        self._running += 1

    def router_closed(self) -> None:
        """Called by a router when it has closed."""
        self._running = max(0, self._running - 1)

    @property
    def running(self) -> bool:
        """Whether a router on this host is running (then start-time plugins are refused)."""
        return self._running > 0

    # -- the hooks, typed ---------------------------------------------------------------------

    def register_adapters(self, register: Callable[[Adapter], None]) -> None:
        self.pm.hook.sds_register_adapters(register=register)

    def register_sources(
        self, register: Callable[[DirectorySource], None], context: SourceContext
    ) -> None:
        self.pm.hook.sds_register_sources(register=register, context=context)

    def provide_auth(self, source: str, settings: Settings) -> httpx.Auth | None:
        return cast(
            "httpx.Auth | None", self.pm.hook.sds_provide_auth(source=source, settings=settings)
        )

    def provide_cache(self, settings: Settings) -> CacheBackend | None:
        return cast("CacheBackend | None", self.pm.hook.sds_provide_cache(settings=settings))

    def provide_rate_limiter(self, settings: Settings) -> RateLimiter | None:
        return cast("RateLimiter | None", self.pm.hook.sds_provide_rate_limiter(settings=settings))

    def select_candidate(
        self,
        candidates: Sequence[Candidate],
        request: RouteRequest,
        role: str,
        option: str | None,
    ) -> Candidate | None:
        return cast(
            "Candidate | None",
            self.pm.hook.sds_select_candidate(
                candidates=candidates, request=request, role=role, option=option
            ),
        )

    def finalize_envelope(
        self, envelope: RoutingEnvelope, request: RouteRequest
    ) -> RoutingEnvelope | None:
        return cast(
            "RoutingEnvelope | None",
            self.pm.hook.sds_finalize_envelope(envelope=envelope, request=request),
        )

    def has_listeners(self, hook_name: str) -> bool:
        """Whether any plugin implements notification hook ``hook_name`` and wants its events
        now (events are built only when someone listens).

        An observer may define ``wants_events() -> bool`` (checked when it is registered):
        while every implementation of the hook answers ``False`` (a tracer with no SDK
        configured, say), nothing is built for it. Worked out again only when the hook's
        implementations change.
        """
        impls = getattr(self.pm.hook, hook_name).get_hookimpls()
        known = self._listening.get(hook_name)
        if known is None or known[0] != impls:
            wants = [getattr(impl.plugin, "wants_events", None) for impl in impls]
            gates = tuple(wants) if impls and all(callable(w) for w in wants) else None
            known = self._listening[hook_name] = (impls, gates)
        impls, gates = known
        if not impls:
            return False
        if gates is None:
            return True
        try:
            return any(wants() for wants in gates)
        except Exception:  # an observer must never break routing: it gets its events
            logger.exception("a plugin's wants_events failed")
            return True

    def notify(self, hook_name: str, event: object) -> None:
        """Give ``event`` to every implementation of notification hook ``hook_name``.

        Through pluggy's own dispatch, so hook-call monitoring (``add_hookcall_monitoring``,
        which datasette-style tracing builds on) and ``SDS_PLUGINS_TRACE`` see every call. Each
        observer on its own (pluggy's ``subset_hook_caller``, one per observer, made when the
        implementations change): one that raises is logged and the others still see the event
        (an observer must never break routing, nor another observer). Wrappers see every
        observer at once, so with one the hook is called whole.
        """
        for name, caller in self._notifiers(hook_name):
            try:
                caller(event=event)
            except Exception:
                logger.exception("%s's %s failed", name, hook_name)

    def _notifiers(self, hook_name: str) -> tuple[tuple[str, Any], ...]:
        hook = getattr(self.pm.hook, hook_name)
        impls = hook.get_hookimpls()
        known = self._notifying.get(hook_name)
        if known is not None and known[0] == impls:
            return known[1]
        if len(impls) <= 1 or any(impl.wrapper or impl.hookwrapper for impl in impls):
            callers: tuple[tuple[str, Any], ...] = ((hook_name, hook),) if impls else ()
        else:
            plugins = [impl.plugin for impl in impls]
            callers = tuple(
                (
                    _describe(impl.plugin),
                    self.pm.subset_hook_caller(
                        hook_name, [other for other in plugins if other is not impl.plugin]
                    ),
                )
                for impl in reversed(impls)  # pluggy's order: the last registered first
            )
        self._notifying[hook_name] = (impls, callers)
        return callers

    def lookup_completed(self, event: LookupEvent) -> None:
        self.notify("sds_lookup_completed", event)

    def route_completed(self, event: RouteEvent) -> None:
        self.notify("sds_route_completed", event)

    def register_demos(self, register: Callable[[str, Callable[[Console], None]], None]) -> None:
        self.pm.hook.sds_register_demos(register=register)

    def register_keepalives(
        self, register: Callable[[str, float, Callable[[], Awaitable[object]]], None]
    ) -> None:
        self.pm.hook.sds_register_keepalives(register=register)

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self._distributions.pop(name, None)

    def _check_side_protocols(self, plugin: object, name: str | None) -> None:
        shown = name or _describe(plugin)
        for attr in dir(plugin):
            if attr.startswith("__"):
                continue
            expected = hookspecs.SIDE_PROTOCOLS.get(attr)
            if expected is None:
                near = difflib.get_close_matches(attr, hookspecs.SIDE_PROTOCOLS, cutoff=0.85)
                if near:
                    raise PluginError(
                        f"plugin {shown!r} defines {attr!r}, which nothing calls: did you mean "
                        f"{hookspecs.SIDE_PROTOCOLS[near[0]]}?",
                        plugin=name,
                    )
                continue
            method = getattr(plugin, attr)
            required = [
                p
                for p in _parameters(method)
                if p.default is inspect.Parameter.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            ]
            if not callable(method) or required:
                raise PluginError(
                    f"plugin {shown!r}: {attr} must be a method taking no arguments ({expected})",
                    plugin=name,
                )
            observes = any(
                callable(getattr(plugin, hook, None)) for hook in hookspecs.NOTIFICATIONS
            )
            if not observes:
                raise PluginError(
                    f"plugin {shown!r} defines {attr} but implements none of "
                    f"{', '.join(sorted(hookspecs.NOTIFICATIONS))}: it would never be asked",
                    plugin=name,
                )

    def _reject_async(self, plugin: object, name: str | None) -> None:
        for attr in dir(plugin):
            if not attr.startswith("sds_"):
                continue
            function = getattr(plugin, attr, None)
            if inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
                spec = getattr(hookspecs, attr, None)
                firstresult = bool(
                    spec is not None
                    and getattr(spec, f"{hookspecs.PROJECT}_spec", {}).get("firstresult")
                )
                why = (
                    "a coroutine is never None, so it would always win this first-result hook"
                    if firstresult
                    else "pluggy cannot await it"
                )
                raise PluginError(
                    f"plugin {name or plugin!r}: hook {attr} is 'async def'; hooks must be "
                    f"synchronous ({why}). Return an object with async methods instead.",
                    plugin=name,
                )

    def plugins(self) -> list[dict[str, Any]]:
        """Name, distribution, version and implemented hooks of every registered plugin."""
        info = []
        for name, plugin in sorted(self.pm.list_name_plugin(), key=lambda item: item[0]):
            if plugin is None:  # blocked
                continue
            dist, version = self._distributions.get(name, ("sds-plugins", _own_version()))
            hooks = sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or [])
            info.append({"name": name, "distribution": dist, "version": version, "hooks": hooks})
        return info


@dataclasses.dataclass(frozen=True)
class PluginFailure:
    """An installed plugin that could not be loaded, and was skipped."""

    name: str
    entry_point: str
    distribution: str
    version: str
    error: str
    #: The line that keeps it from loading (``SDS_PLUGINS_DISABLE=<name>``).
    disable: str

    def message(self) -> str:
        return (
            f"cannot load plugin {self.name!r} ({self.entry_point}) from {self.distribution} "
            f"{self.version}: {self.error}; skipped, the other plugins work without it. Fix or "
            f"uninstall {self.distribution}, or set {self.disable} to stop loading it"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "status": "failed",
            "error": self.error,
            "disable": self.disable,
        }


def _own_version() -> str:
    try:
        return importlib.metadata.version("sds-plugins")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
