"""The plugin host: one owned ``pluggy.PluginManager``, its defaults, and discovery.

Nothing happens at import time. A :class:`PluginHost` registers the built-in defaults (ordinary
plugins, ``trylast``), then, unless told not to, the ``sds_plugins`` entry points, restricted by

- ``SDS_PLUGINS_LOAD``: comma-separated distribution (or entry-point) names; only these load;
- ``SDS_PLUGINS_DISABLE``: comma-separated plugin names to block (built-ins included);
- ``SDS_PLUGINS_TRACE``: any non-empty value logs every hook call to stderr.

Every registration is checked: ``check_pending()`` (a misspelt hook name fails loudly) and no
``async def`` hook implementations (hooks are synchronous; a coroutine would always "win" a
first-result hook).
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

import pluggy

from . import hookspecs
from ._exceptions import PluginError

__all__ = ["PluginHost"]

logger = logging.getLogger("sds_plugins.plugins")


def _names(value: str | None) -> set[str]:
    return {part.strip() for part in (value or "").split(",") if part.strip()}


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
        self._only = {_normalise_dist(name) for name in _names(env.get("SDS_PLUGINS_LOAD"))}
        for name in _names(env.get("SDS_PLUGINS_DISABLE")):
            self.pm.set_blocked(name)
        if env.get("SDS_PLUGINS_TRACE"):
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
        """Load plugins from the ``sds_plugins`` entry-point group (once per name)."""
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
                raise PluginError(
                    f"cannot load plugin {ep.name!r} ({ep.value}) from {dist_name or '?'}: "
                    f"{type(exc).__name__}: {exc}",
                    plugin=ep.name,
                ) from exc
            self.register(plugin, name=ep.name)
            if dist is not None:
                self._distributions[ep.name] = (dist.name, dist.version)

    def register(self, plugin: object, name: str | None = None) -> str | None:
        """Register ``plugin``; refuses async hook implementations and unknown hooks."""
        self._reject_async(plugin, name)
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
        return registered

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self._distributions.pop(name, None)

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


def _own_version() -> str:
    try:
        return importlib.metadata.version("sds-plugins")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
