"""e-RS configuration, from arguments or ``ERS_*`` environment variables."""

from __future__ import annotations

from typing import ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from sds_plugins import ClientTlsSettings, SignedJwtAuth, SignedJwtSettings

__all__ = ["ERS_ENVIRONMENTS", "AccessMode", "ErsSettings"]

#: e-RS FHIR API base URLs (the FHIR version, ``STU3`` or ``R4``, follows in each path).
ERS_ENVIRONMENTS: dict[str, str] = {
    "sandbox": "https://sandbox.api.service.nhs.uk/referrals/FHIR",
    "int": "https://int.api.service.nhs.uk/referrals/FHIR",
    "prod": "https://api.service.nhs.uk/referrals/FHIR",
}

AccessMode = Literal["user-restricted", "application-restricted"]


class ErsSettings(ClientTlsSettings, SignedJwtSettings):
    """Everything the e-RS adapters need. Each field reads ``ERS_<FIELD>`` from the environment.

    ``base_url`` (``ERS_BASE_URL``) wins over ``env`` (``ERS_ENV``: sandbox, int, prod).
    ``access_mode`` (``ERS_ACCESS_MODE``) is ``application-restricted`` by default: the bearer
    token comes from the signed-JWT auth described by ``client_id`` (the application's API key;
    ``api_key`` is accepted too), ``private_key_file`` (or ``private_key``, PEM text) and
    ``kid``; ``token_url`` defaults to ``/oauth2/token`` on the API's host. In
    ``user-restricted`` mode each route brings the user's NHS CIS2 token (``user_access_token``).
    The sending MHS's Spine client certificate and key (PEM files) and the CA bundle that
    verifies Spine are ``ERS_TLS_CERT``, ``ERS_TLS_KEY``, ``ERS_TLS_CA_BUNDLE``: ebXML envelopes
    carry these paths in ``envelope.tls``, never the files' contents.
    """

    model_config = SettingsConfigDict(env_prefix="ERS_")
    configures: ClassVar[str] = "e-RS"
    url_fields: ClassVar[tuple[str, ...]] = ("base_url", "token_url")

    env: Literal["sandbox", "int", "prod"] = "sandbox"
    base_url: str | None = None
    access_mode: AccessMode = "application-restricted"
    token_timeout_s: float = Field(default=10.0, gt=0)
    #: Default ``NHSD-eRS-Business-Function`` when a route gives no ``business_function``
    #: (user-restricted mode only).
    business_function: str | None = None
    #: The sender's ebXML party key and ASID when a route gives no ``from_party_key`` /
    #: ``from_asid`` (a system sends from one MHS, so configuration is the usual place).
    from_party_key: str | None = None
    from_asid: str | None = None

    def resolved_base_url(self) -> str:
        return (self.base_url or ERS_ENVIRONMENTS[self.env]).rstrip("/")

    def resolved_token_url(self) -> str:
        if self.token_url:
            return self.token_url
        parts = urlsplit(self.resolved_base_url())
        return f"{parts.scheme}://{parts.netloc}/oauth2/token"

    def build_auth(self) -> SignedJwtAuth | None:
        """The signed-JWT auth these settings describe, or ``None`` when none is configured."""
        if not (self.configured_auth() or self.api_key):
            return None
        return self.signed_jwt_auth(self.resolved_token_url(), purpose="e-RS signed-JWT auth")
