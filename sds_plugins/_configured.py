"""One shape for plugins configured by settings: what GP Connect, MESH and e-RS all are.

A plugin says which settings class it reads and what it registers with them; this base turns
that into the hooks, reads the settings when a router starts (never at import, so a changed
environment is picked up and loading the plugin has no side effects), and applies the one
policy for a misconfigured plugin: **its own routes fail** with the :class:`ConfigurationError`
that names the setting, while every other adapter keeps working. The router still starts; the
operator sees the problem in a warning at start and in each refused route.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Generic, TypeVar

import httpx

from ._adapter import Adapter, Lookup, Resolution, RouteRequest
from ._envelope import RoutingEnvelope
from ._exceptions import ConfigurationError
from ._settings import PluginSettings, Settings
from ._sources import DirectorySource, SourceContext
from .hookspecs import hookimpl

__all__ = ["ConfiguredPlugin", "UnconfiguredAdapter"]

logger = logging.getLogger("sds_plugins.plugins")

S = TypeVar("S", bound=PluginSettings)


class UnconfiguredAdapter(Adapter):
    """Stands in for an adapter whose plugin's settings are wrong: every route to it fails
    with that :class:`ConfigurationError` (before any lookup), naming the setting."""

    options = None

    def __init__(self, name: str, error: ConfigurationError) -> None:
        self.name = name  # type: ignore[misc]  # an instance's name, for a class-level field
        self.error = error
        self.description = f"not configured: {error}"  # type: ignore[misc]

    def normalise_interaction(self, interaction: str) -> str:
        # The first thing the engine asks an adapter: refuse here, so the configuration error
        # wins over whatever the real adapter's own interaction syntax would have said.
        raise ConfigurationError(f"{self.name}: {self.error}")

    def parse_options(self, options: Mapping[str, Any]) -> Any:
        raise ConfigurationError(f"{self.name}: {self.error}")  # pragma: no cover - see above

    def plan(self, request: RouteRequest) -> Mapping[str, Lookup]:
        raise ConfigurationError(f"{self.name}: {self.error}")  # pragma: no cover - parse first

    def build(self, request: RouteRequest, resolved: Resolution) -> RoutingEnvelope:
        raise ConfigurationError(f"{self.name}: {self.error}")  # pragma: no cover - parse first


class ConfiguredPlugin(Generic[S]):
    """Base for a plugin whose adapters, sources and auth follow from its settings.

    Subclasses set :attr:`settings_class` and :attr:`adapter_names`, and override
    :meth:`adapters`, :meth:`sources` and :meth:`auth` as needed; an entry point loads an
    instance (``plugin = MyPlugin()``: settings from the environment at each router start),
    and code that configures it directly passes settings (``MyPlugin(MySettings(...))``).
    """

    #: The settings class read from the environment when no settings were given.
    settings_class: ClassVar[type[PluginSettings]]
    #: The adapters this plugin registers, by name: with bad settings each is still
    #: registered, and fails every route with the error that names the setting.
    adapter_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: S | None = None) -> None:
        self._given = settings

    @property
    def settings(self) -> S:
        """The given settings, or the environment's, read now (:meth:`PluginSettings.load`),
        after :meth:`check`; a :class:`ConfigurationError` names the setting at fault."""
        settings = self._given
        if settings is None:
            settings = self.settings_class.load()  # type: ignore[assignment]
        assert settings is not None
        self.check(settings)
        return settings

    # -- what a plugin provides ---------------------------------------------------------------

    def check(self, settings: S) -> None:
        """Raise :class:`ConfigurationError` for settings that load but cannot work together
        (what the settings class cannot see alone, e.g. half of a set of credentials)."""

    def adapters(self, settings: S) -> Iterable[Adapter]:
        """The adapters to register."""
        return ()

    def sources(self, settings: S, context: SourceContext) -> Iterable[DirectorySource]:
        """The directory sources to register (``context`` has the router's settings and the
        auth of each source, ``context.auth_for(name)``)."""
        return ()

    def auth(self, settings: S, source: str) -> httpx.Auth | None:
        """The auth for directory source ``source`` (``None``: not ours, or none)."""
        return None

    # -- the hooks ------------------------------------------------------------------------------

    def _settings_or_error(self) -> tuple[S | None, ConfigurationError | None]:
        try:
            return self.settings, None
        except ConfigurationError as exc:
            return None, exc

    @hookimpl
    def sds_register_adapters(self, register: Callable[[Adapter], None]) -> None:
        settings, error = self._settings_or_error()
        if settings is not None:
            try:
                adapters = list(self.adapters(settings))
            except ConfigurationError as exc:
                error = exc
        if error is not None:
            logger.warning(
                "%s is misconfigured; its adapters (%s) refuse every route: %s",
                type(self).__name__,
                ", ".join(self.adapter_names) or "none",
                error,
            )
            adapters = [UnconfiguredAdapter(name, error) for name in self.adapter_names]
        for adapter in adapters:
            register(adapter)

    @hookimpl
    def sds_register_sources(
        self, register: Callable[[DirectorySource], None], context: SourceContext
    ) -> None:
        mine, _error = self._settings_or_error()
        if mine is None:
            return  # misconfigured: the adapters that would plan on these sources refuse first
        for source in self.sources(mine, context):
            register(source)

    @hookimpl(trylast=True)
    def sds_provide_auth(self, source: str, settings: Settings) -> httpx.Auth | None:
        mine, _error = self._settings_or_error()
        # An error building the auth itself (a missing key id...) is raised: the lookup that
        # needs it fails with it, naming the setting.
        return None if mine is None else self.auth(mine, source)

    def __repr__(self) -> str:
        where = "configured" if self._given is not None else "env"
        return f"{type(self).__name__}({where})"
