"""The ``mesh`` plugin: what the ``sds_plugins`` entry point loads (``plugin``).

Registers the ``mesh`` adapter, its mailbox-lookup directory source, and the lookups' auth
(real MESH wants every request signed), from ``MESH_*`` settings read when a router starts.
To configure it in code (tests, one process talking to two environments), register
``MeshPlugin(MeshSettings(...))`` on a host that does not load entry points, or block this
one with ``SDS_PLUGINS_DISABLE=mesh``. Bad settings make the adapter refuse every route with
the error that names the setting; other adapters keep working.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

import httpx
from sds_plugins import (
    Adapter,
    ConfiguredPlugin,
    DirectorySource,
    RetryPolicy,
    SourceContext,
    hookimpl,
)

from ._adapter import MeshAdapter
from ._auth import MeshAuth
from ._config import MeshSettings
from ._handshake import HANDSHAKE_INTERVAL, validate_mailbox
from ._lookup import MeshLookupSource

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["MeshPlugin", "plugin"]


class MeshPlugin(ConfiguredPlugin[MeshSettings]):
    """The ``mesh`` adapter and source, and the signing of mailbox lookups, from ``settings``."""

    settings_class = MeshSettings
    adapter_names = ("mesh",)

    def check(self, settings: MeshSettings) -> None:
        settings.resolved_url()  # each raises naming MESH_URL, MESH_MAILBOX...
        settings.credentials()

    def adapters(self, settings: MeshSettings) -> Iterable[Adapter]:
        return (MeshAdapter(settings),)

    def sources(self, settings: MeshSettings, context: SourceContext) -> Iterable[DirectorySource]:
        engine = context.settings
        lookup = MeshLookupSource(
            settings,
            auth=context.auth_for("mesh"),
            # The router's retry budget and timeouts apply to every directory it asks.
            retry=RetryPolicy.from_settings(engine),
            connect_timeout_s=engine.connect_timeout_s,
            read_timeout_s=engine.read_timeout_s,
        )
        return (lookup,)

    def auth(self, settings: MeshSettings, source: str) -> httpx.Auth | None:
        # Without credentials the lookup goes unsigned (mesh-sandbox accepts that; real MESH
        # answers 403).
        if source != "mesh":
            return None
        credentials = settings.credentials()
        return MeshAuth(credentials) if credentials is not None else None

    @hookimpl
    def sds_register_demos(
        self, register: Callable[[str, Callable[[Console], None]], None]
    ) -> None:
        # The SDS sandbox cannot show MESH: the demo starts NHS's mesh-sandbox itself.
        from ._demo import demo

        register("mesh", demo)

    @hookimpl
    def sds_register_keepalives(
        self, register: Callable[[str, float, Callable[[], Awaitable[object]]], None]
    ) -> None:
        # MESH: "validate your mailbox every 24 hours to let Spine know it's still active"
        # (the handshake). Only when MESH is configured: host and the sender's credentials.
        settings, error = self._settings_or_error()
        if error is not None or settings is None:
            return
        if settings.resolved_url() is None or settings.credentials() is None:
            return

        async def handshake() -> object:
            return await validate_mailbox(settings)

        register("mesh handshake", HANDSHAKE_INTERVAL.total_seconds(), handshake)


#: What the entry point loads: configured from ``MESH_*`` when a router starts.
plugin = MeshPlugin()
