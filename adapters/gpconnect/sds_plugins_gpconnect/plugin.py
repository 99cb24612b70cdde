"""The ``sds_plugins`` entry point: registers the GP Connect adapter."""

from __future__ import annotations

import os
from collections.abc import Callable

from sds_plugins import Adapter, hookimpl

from ._adapter import GpConnectAdapter

__all__ = ["sds_register_adapters"]


@hookimpl
def sds_register_adapters(register: Callable[[Adapter], None]) -> None:
    """Give each starting router a GP Connect adapter (``SDS_GPCONNECT_SHARED_CACHE`` opts in
    to reusing SDS answers across encounters)."""
    shared = os.environ.get("SDS_GPCONNECT_SHARED_CACHE", "").lower() in ("1", "true", "yes")
    register(GpConnectAdapter(shared_cache=shared))
