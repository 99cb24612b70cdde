"""The ``sds_plugins`` entry point: the ``mesh`` adapter, its directory source and lookup auth.

Installed, this distribution's entry point (``mesh = "sds_plugins_mesh.plugin:plugin"``) hands
every router that starts a :class:`MeshPlugin` reading ``MESH_*`` from the environment. To
configure it in code instead (tests, one process talking to two environments), register your own
``MeshPlugin(MeshSettings(...))`` on a host that does not load entry points, or block this one
with ``SDS_PLUGINS_DISABLE=mesh``.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
from pydantic import ValidationError
from sds_plugins import (
    Adapter,
    ConfigurationError,
    DirectorySource,
    RetryPolicy,
    Settings,
    SourceContext,
    hookimpl,
)

from ._adapter import MeshAdapter
from ._auth import MeshAuth
from ._config import MeshSettings
from ._lookup import MeshLookupSource

__all__ = ["MeshPlugin", "plugin"]


class MeshPlugin:
    """Registers the ``mesh`` adapter and source, and signs mailbox lookups.

    ``settings=None`` reads :class:`MeshSettings` (``MESH_*``) each time a router starts, not at
    import, so loading the plugin has no side effects and a changed environment is picked up.
    """

    def __init__(self, settings: MeshSettings | None = None) -> None:
        self._settings = settings

    @property
    def settings(self) -> MeshSettings:
        if self._settings is not None:
            return self._settings
        try:
            return MeshSettings()
        except ValidationError as exc:
            # Name the variables, not their values: MESH_* may hold secrets.
            where = ", ".join(
                "MESH_" + "__".join(str(part) for part in error["loc"]).upper()
                for error in exc.errors()
            )
            raise ConfigurationError(f"invalid MESH settings: {where}") from None

    @hookimpl
    def sds_register_adapters(self, register: Callable[[Adapter], None]) -> None:
        register(MeshAdapter(self.settings))

    @hookimpl
    def sds_register_sources(
        self, register: Callable[[DirectorySource], None], context: SourceContext
    ) -> None:
        engine = context.settings
        register(
            MeshLookupSource(
                self.settings,
                auth=context.auth_for("mesh"),
                # The router's retry budget and timeouts apply to every directory it asks.
                retry=RetryPolicy(attempts=engine.retry_attempts, budget_s=engine.retry_budget_s),
                connect_timeout_s=engine.connect_timeout_s,
                read_timeout_s=engine.read_timeout_s,
            )
        )

    @hookimpl(trylast=True)
    def sds_provide_auth(self, source: str, settings: Settings) -> httpx.Auth | None:
        # Real MESH wants every request signed, lookups included; without credentials the
        # lookup goes unsigned (mesh-sandbox accepts that; real MESH answers 403).
        if source != "mesh":
            return None
        credentials = self.settings.credentials()
        return MeshAuth(credentials) if credentials is not None else None

    def __repr__(self) -> str:
        return "MeshPlugin(configured)" if self._settings is not None else "MeshPlugin(env)"


#: What the entry point loads: configured from ``MESH_*`` when a router starts.
plugin = MeshPlugin()
