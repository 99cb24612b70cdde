"""The ``gp2gp`` plugin: what the ``sds_plugins`` entry point loads (``plugin``).

Registers the ``gp2gp`` adapter, from ``SDS_GP2GP_*`` settings read when a router starts, and a
demo of a whole transfer for ``sds-plugins demo``. To configure it in code, register
``Gp2gpPlugin(Gp2gpSettings(...))`` instead. Bad settings make the adapter refuse every route
with the error that names the setting; other adapters keep working.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from sds_plugins import Adapter, ConfiguredPlugin, hookimpl

from ._adapter import Gp2gpAdapter
from ._settings import Gp2gpSettings

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["Gp2gpPlugin", "plugin"]


class Gp2gpPlugin(ConfiguredPlugin[Gp2gpSettings]):
    """The ``gp2gp`` adapter, from ``settings``."""

    settings_class = Gp2gpSettings
    adapter_names = ("gp2gp",)

    def adapters(self, settings: Gp2gpSettings) -> Iterable[Adapter]:
        return (Gp2gpAdapter(settings),)

    @hookimpl
    def sds_register_demos(
        self, register: Callable[[str, Callable[[Console], None]], None]
    ) -> None:
        # The sandbox's default data has no practice with the four interactions and a matching
        # accredited system: the demo starts a sandbox with two.
        from ._demo import demo

        register("gp2gp", demo)


#: What the entry point loads: configured from ``SDS_GP2GP_*`` when a router starts.
plugin = Gp2gpPlugin()
