"""The ``sds_plugins`` entry point: registers the GP Connect adapter."""

from __future__ import annotations

from collections.abc import Callable

from sds_plugins import Adapter, hookimpl

from ._adapter import GpConnectAdapter
from ._settings import load_settings

__all__ = ["sds_register_adapters"]


@hookimpl
def sds_register_adapters(register: Callable[[Adapter], None]) -> None:
    """Give each starting router a GP Connect adapter configured from ``SDS_GPCONNECT_*``
    (shared caching, the SSP client TLS, plain-http mocks)."""
    settings = load_settings()
    register(
        GpConnectAdapter(
            shared_cache=settings.shared_cache,
            tls=settings.client_tls(),
            allow_insecure_ssp=settings.allow_insecure_ssp,
        )
    )
