"""The ``ers`` plugin: what the ``sds_plugins`` entry point loads (``plugin``).

Registers two adapters (``ers`` for Spine ebXML, ``ers-fhir`` for the e-RS FHIR API), the
bearer-token source the FHIR adapter plans its token lookup on, and (as a ``trylast`` default
that any plugin overrides) the signed-JWT auth for that source, from ``ERS_*`` settings read
when a router starts. To configure it in code (tests, several configurations in one process),
register ``ErsPlugin(ErsSettings(...))`` instead. Bad settings make the two adapters refuse
every route with the error that names the setting; other adapters keep working.
"""

from __future__ import annotations

from collections.abc import Iterable

import httpx

from sds_plugins import Adapter, ConfiguredPlugin, DirectorySource, SourceContext

from ._ebxml_adapter import ErsEbxmlAdapter
from ._fhir import ErsFhirAdapter
from ._settings import ErsSettings
from ._token import TOKEN_SOURCE, BearerTokenSource

__all__ = ["ErsPlugin", "plugin"]


class ErsPlugin(ConfiguredPlugin[ErsSettings]):
    """The e-RS adapters, their token source and its signed-JWT auth, from ``settings``."""

    settings_class = ErsSettings
    adapter_names = ("ers", "ers-fhir")

    def adapters(self, settings: ErsSettings) -> Iterable[Adapter]:
        return (ErsEbxmlAdapter(settings), ErsFhirAdapter(settings))

    def sources(self, settings: ErsSettings, context: SourceContext) -> Iterable[DirectorySource]:
        token_source = BearerTokenSource(
            lambda: context.auth_for(TOKEN_SOURCE),  # built when a token is first needed
            token_url=settings.resolved_token_url(),
            timeout_s=settings.token_timeout_s,
        )
        return (token_source,)

    def auth(self, settings: ErsSettings, source: str) -> httpx.Auth | None:
        return settings.build_auth() if source == TOKEN_SOURCE else None


#: What the entry point loads: configured from ``ERS_*`` when a router starts.
plugin = ErsPlugin()
