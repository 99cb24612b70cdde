"""Settings drawn from the environment: one base for the core's ``SDS_*`` and every plugin's.

Each plugin names its variables with its own prefix (``ERS_``, ``MESH_``, ``SDS_GPCONNECT_``)
and gets the same behaviour: :meth:`PluginSettings.load` turns a validation error into a
:class:`ConfigurationError` that names the variables and never their values (they hold keys
and client ids); URL fields are checked when the settings load, with the core's rules; the
client TLS and the NHS API platform's signed-JWT auth are described the same way everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ._auth import SignedJwtAuth
from ._envelope import ClientTls
from ._environments import resolve_base_url
from ._exceptions import ConfigurationError

__all__ = ["ClientTlsSettings", "PluginSettings", "SignedJwtSettings"]


class PluginSettings(BaseSettings):
    """Base for settings read from ``<PREFIX><FIELD>`` environment variables.

    Subclasses set ``model_config = SettingsConfigDict(env_prefix="ERS_", ...)`` (the base's
    ``frozen=True, extra="ignore"`` are kept), :attr:`configures` for messages, and list in
    :attr:`url_fields` the fields that hold URLs.
    """

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    #: What the settings configure, for messages: "invalid e-RS settings: ERS_KID".
    configures: ClassVar[str] = "plugin"
    #: Fields holding an http(s) URL, validated when the settings load (ASCII, no credentials,
    #: spaces or controls, no query), so a bad value fails at start, naming the variable.
    url_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def variable(cls, field: str) -> str:
        """The environment variable of ``field`` (``"kid"`` → ``"ERS_KID"``)."""
        return (str(cls.model_config.get("env_prefix") or "") + field).upper()

    @classmethod
    def load(cls, **values: Any) -> Self:
        """The settings from ``values`` and the environment.

        Raises :class:`ConfigurationError` naming the offending variables, never their values.
        """
        try:
            return cls(**values)
        except ValidationError as exc:
            causes = [error.get("ctx", {}).get("error") for error in exc.errors()]
            if len(causes) == 1 and isinstance(causes[0], ConfigurationError):
                raise causes[0] from None  # our own message, which names the variable
            where = ", ".join(
                cls.variable("__".join(str(part) for part in error["loc"]))
                for error in exc.errors()
            )
            raise ConfigurationError(f"invalid {cls.configures} settings: {where}") from None

    @model_validator(mode="after")
    def _check_urls(self) -> Self:
        for field in self.url_fields:
            value = getattr(self, field)
            if value is None:
                continue
            if "://" not in value:
                raise ConfigurationError(f"{self.variable(field)} must be an http(s) URL")
            try:
                resolve_base_url(value)
            except ConfigurationError as exc:
                raise ConfigurationError(f"{self.variable(field)}: {exc}") from None
        return self


class ClientTlsSettings(PluginSettings):
    """``<PREFIX>TLS_CERT``, ``TLS_KEY``, ``TLS_CA_BUNDLE``: a client certificate and key (PEM
    files) and the CA bundle that verifies the server, as the envelope's :class:`ClientTls`."""

    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca_bundle: Path | None = None

    @model_validator(mode="after")
    def _key_needs_cert(self) -> Self:
        # A key alone is a half-done set-up that would otherwise send no client certificate
        # at all: refuse it when the settings load, naming both variables.
        if self.tls_key is not None and self.tls_cert is None:
            raise ConfigurationError(
                f"{self.variable('tls_key')} is set without {self.variable('tls_cert')}"
            )
        return self

    def client_tls(self) -> ClientTls | None:
        """The client TLS these settings describe, or ``None`` when none is configured."""
        if self.tls_cert is None and self.tls_ca_bundle is None:
            return None
        return ClientTls(
            cert_path=self.tls_cert, key_path=self.tls_key, ca_bundle_path=self.tls_ca_bundle
        )


class SignedJwtSettings(PluginSettings):
    """The NHS API platform's application-restricted auth: a signed JWT exchanged for a token.

    ``client_id`` is the application's API key (``api_key`` is accepted in its place), the
    private key is ``private_key_file`` (PEM file) or ``private_key`` (PEM text), ``kid`` its
    key id in the application's JWKS, ``token_url`` the token endpoint (each subclass says its
    default, usually ``/oauth2/token`` on the API's host).
    """

    url_fields: ClassVar[tuple[str, ...]] = ("token_url",)

    api_key: SecretStr | None = None
    client_id: SecretStr | None = None
    private_key_file: Path | None = None
    private_key: SecretStr | None = None
    kid: str | None = None
    token_url: str | None = None

    def configured_auth(self) -> bool:
        """Whether any signed-JWT setting beyond the API key is given (then all must be)."""
        return any((self.client_id, self.private_key_file, self.private_key, self.kid))

    def signed_jwt_auth(self, token_url: str, *, purpose: str = "signed-JWT auth") -> SignedJwtAuth:
        """The auth these settings describe, for ``token_url``; a :class:`ConfigurationError`
        lists every missing variable."""
        client_id = self.client_id or self.api_key
        key = self.private_key.get_secret_value() if self.private_key else self.private_key_file
        missing = [
            name
            for name, value in (
                (f"{self.variable('client_id')} (or {self.variable('api_key')})", client_id),
                (f"{self.variable('private_key_file')} (or {self.variable('private_key')})", key),
                (self.variable("kid"), self.kid),
            )
            if not value
        ]
        if missing or client_id is None or key is None or self.kid is None:
            raise ConfigurationError(f"{purpose} needs " + ", ".join(missing))
        return SignedJwtAuth(
            client_id=client_id, private_key=key, kid=self.kid, token_url=token_url
        )
