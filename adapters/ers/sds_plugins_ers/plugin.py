"""The ``ers`` plugin: what the ``sds_plugins`` entry point loads.

Registers two adapters (``ers`` for Spine ebXML, ``ers-fhir`` for the e-RS FHIR API), the
bearer-token source the FHIR adapter plans its token lookup on, and (as a ``trylast`` default
that any plugin overrides) the signed-JWT auth for that source, from ``ERS_*`` settings.

The module-level hooks read ``ERS_*`` when a router starts. To use other settings (tests,
several configurations in one process) register an :class:`ErsPlugin` instance instead.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
from pydantic import ValidationError

from sds_plugins import (
    Adapter,
    ConfigurationError,
    DirectorySource,
    Settings,
    SourceContext,
    hookimpl,
)

from ._ebxml_adapter import ErsEbxmlAdapter
from ._fhir import ErsFhirAdapter
from ._settings import ErsSettings
from ._token import TOKEN_SOURCE, BearerTokenSource

__all__ = ["ErsPlugin", "sds_provide_auth", "sds_register_adapters", "sds_register_sources"]


class ErsPlugin:
    """The plugin's hooks, bound to ``settings`` (``None``: read ``ERS_*`` at router start)."""

    def __init__(self, settings: ErsSettings | None = None) -> None:
        self._settings = settings

    def settings(self) -> ErsSettings:
        if self._settings is not None:
            return self._settings
        try:
            return ErsSettings()
        except ValidationError as exc:
            # Name the variables, never their values: ERS_* holds keys and client ids.
            where = ", ".join(
                "ERS_" + "__".join(str(part) for part in error["loc"]).upper()
                for error in exc.errors()
            )
            raise ConfigurationError(f"invalid e-RS settings: {where}") from None

    @hookimpl
    def sds_register_adapters(self, register: Callable[[Adapter], None]) -> None:
        settings = self.settings()
        register(ErsEbxmlAdapter(settings))
        register(ErsFhirAdapter(settings))

    @hookimpl
    def sds_register_sources(
        self, register: Callable[[DirectorySource], None], context: SourceContext
    ) -> None:
        settings = self.settings()
        register(
            BearerTokenSource(
                lambda: context.auth_for(TOKEN_SOURCE),
                token_url=settings.resolved_token_url(),
                timeout_s=settings.token_timeout_s,
            )
        )

    @hookimpl(trylast=True)
    def sds_provide_auth(self, source: str, settings: Settings) -> httpx.Auth | None:
        return self.settings().build_auth() if source == TOKEN_SOURCE else None


_DEFAULT = ErsPlugin()


@hookimpl
def sds_register_adapters(register: Callable[[Adapter], None]) -> None:
    """Give each starting router the ``ers`` and ``ers-fhir`` adapters."""
    _DEFAULT.sds_register_adapters(register)


@hookimpl
def sds_register_sources(
    register: Callable[[DirectorySource], None], context: SourceContext
) -> None:
    """Register the e-RS bearer-token source."""
    _DEFAULT.sds_register_sources(register, context)


@hookimpl(trylast=True)
def sds_provide_auth(source: str, settings: Settings) -> httpx.Auth | None:
    """The signed-JWT auth for source ``ers``, from ``ERS_*`` settings (or ``None``)."""
    return _DEFAULT.sds_provide_auth(source, settings)
