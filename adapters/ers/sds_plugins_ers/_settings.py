"""e-RS configuration, from arguments or ``ERS_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sds_plugins import ClientTls, ConfigurationError, SignedJwtAuth, resolve_base_url

__all__ = ["ERS_ENVIRONMENTS", "AccessMode", "ErsSettings"]

#: e-RS FHIR API base URLs (the FHIR version, ``STU3`` or ``R4``, follows in each path).
ERS_ENVIRONMENTS: dict[str, str] = {
    "sandbox": "https://sandbox.api.service.nhs.uk/referrals/FHIR",
    "int": "https://int.api.service.nhs.uk/referrals/FHIR",
    "prod": "https://api.service.nhs.uk/referrals/FHIR",
}

AccessMode = Literal["user-restricted", "application-restricted"]


class ErsSettings(BaseSettings):
    """Everything the e-RS adapters need. Each field reads ``ERS_<FIELD>`` from the environment.

    ``base_url`` (``ERS_BASE_URL``) wins over ``env`` (``ERS_ENV``: sandbox, int, prod).
    ``access_mode`` (``ERS_ACCESS_MODE``) is ``application-restricted`` by default: the bearer
    token comes from the signed-JWT auth described by ``client_id`` (the application's API key;
    ``api_key`` is accepted too), ``private_key_file`` (or ``private_key``, PEM text) and
    ``kid``; ``token_url`` defaults to ``/oauth2/token`` on the API's host. In
    ``user-restricted`` mode each route brings the user's NHS CIS2 token (``user_access_token``).
    """

    model_config = SettingsConfigDict(env_prefix="ERS_", frozen=True, extra="ignore")

    env: Literal["sandbox", "int", "prod"] = "sandbox"
    base_url: str | None = None
    access_mode: AccessMode = "application-restricted"
    client_id: SecretStr | None = None
    api_key: SecretStr | None = None
    private_key_file: Path | None = None
    private_key: SecretStr | None = None
    kid: str | None = None
    token_url: str | None = None
    token_timeout_s: float = Field(default=10.0, gt=0)
    #: Default ``NHSD-eRS-Business-Function`` when a route gives no ``business_function``
    #: (user-restricted mode only).
    business_function: str | None = None
    #: The sender's ebXML party key and ASID when a route gives no ``from_party_key`` /
    #: ``from_asid`` (a system sends from one MHS, so configuration is the usual place).
    from_party_key: str | None = None
    from_asid: str | None = None
    #: The sending MHS's Spine client certificate and key (PEM files) and the CA bundle that
    #: verifies Spine (``ERS_TLS_CERT``, ``ERS_TLS_KEY``, ``ERS_TLS_CA_BUNDLE``): ebXML
    #: envelopes carry these paths in ``envelope.tls``, never the files' contents.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca_bundle: Path | None = None

    def client_tls(self) -> ClientTls | None:
        """The Spine client TLS these settings describe, or ``None`` when none is configured."""
        if self.tls_key is not None and self.tls_cert is None:
            raise ConfigurationError("ERS_TLS_KEY is set without ERS_TLS_CERT")
        if self.tls_cert is None and self.tls_ca_bundle is None:
            return None
        return ClientTls(
            cert_path=self.tls_cert, key_path=self.tls_key, ca_bundle_path=self.tls_ca_bundle
        )

    @model_validator(mode="after")
    def _check_urls(self) -> ErsSettings:
        # Checked when the settings load, with the core's rules (ASCII, no credentials...):
        # a bad ERS_BASE_URL fails at start, naming the variable, not inside a route.
        for name, value in (("ERS_BASE_URL", self.base_url), ("ERS_TOKEN_URL", self.token_url)):
            if value is not None and "://" not in value:
                raise ConfigurationError(f"{name} must be an http(s) URL")
            if value is not None:
                try:
                    resolve_base_url(value)
                except ConfigurationError as exc:
                    raise ConfigurationError(f"{name}: {exc}") from None
        return self

    def resolved_base_url(self) -> str:
        return (self.base_url or ERS_ENVIRONMENTS[self.env]).rstrip("/")

    def resolved_token_url(self) -> str:
        if self.token_url:
            return self.token_url
        parts = urlsplit(self.resolved_base_url())
        return f"{parts.scheme}://{parts.netloc}/oauth2/token"

    def configured_auth(self) -> bool:
        """Whether any signed-JWT setting is given (then all of them must be)."""
        return any(
            (self.client_id, self.api_key, self.private_key_file, self.private_key, self.kid)
        )

    def build_auth(self) -> SignedJwtAuth | None:
        """The signed-JWT auth these settings describe, or ``None`` when none is configured."""
        if not self.configured_auth():
            return None
        client_id = self.client_id or self.api_key
        key = self.private_key.get_secret_value() if self.private_key else self.private_key_file
        missing = [
            name
            for name, value in (
                ("ERS_CLIENT_ID (or ERS_API_KEY)", client_id),
                ("ERS_PRIVATE_KEY_FILE (or ERS_PRIVATE_KEY)", key),
                ("ERS_KID", self.kid),
            )
            if not value
        ]
        if missing or client_id is None or key is None or self.kid is None:
            raise ConfigurationError("e-RS signed-JWT auth needs " + ", ".join(missing))
        return SignedJwtAuth(
            client_id=client_id, private_key=key, kid=self.kid, token_url=self.resolved_token_url()
        )
