"""The ``gpconnect`` plugin: what the ``sds_plugins`` entry point loads (``plugin``).

Registers the GP Connect adapter, configured from ``SDS_GPCONNECT_*`` settings read when a
router starts (shared caching, the SSP client TLS, plain-http mocks). To configure it in code,
register ``GpConnectPlugin(GpConnectSettings(...))`` instead. Bad settings make the adapter
refuse every route with the error that names the setting; other adapters keep working.
"""

from __future__ import annotations

from collections.abc import Iterable

from sds_plugins import Adapter, ConfiguredPlugin
from sds_plugins_gpconnect._adapter import GpConnectAdapter
from sds_plugins_gpconnect._settings import GpConnectSettings

__all__ = ["GpConnectPlugin", "plugin"]


class GpConnectPlugin(ConfiguredPlugin[GpConnectSettings]):
    """The GP Connect adapter, from ``settings``."""

    settings_class = GpConnectSettings
    adapter_names = ("gpconnect",)

    def adapters(self, settings: GpConnectSettings) -> Iterable[Adapter]:
        adapter = GpConnectAdapter(
            shared_cache=settings.shared_cache,
            tls=settings.client_tls(),
            allow_insecure_ssp=settings.allow_insecure_ssp,
        )
        return (adapter,)


#: What the entry point loads: configured from ``SDS_GPCONNECT_*`` when a router starts.
plugin = GpConnectPlugin()
