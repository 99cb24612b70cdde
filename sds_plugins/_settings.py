"""Configuration from arguments or environment variables: one base for the core's ``SDS_*``
settings (:class:`Settings`) and every plugin's.

Each plugin names its variables with its own prefix (``ERS_``, ``MESH_``, ``SDS_GPCONNECT_``)
and gets the same behaviour: :meth:`PluginSettings.load` turns a validation error into a
:class:`ConfigurationError` that names the variables and never their values (they hold keys
and client ids); URL fields are checked when the settings load, with the core's rules; the
client TLS and the NHS API platform's signed-JWT auth are described the same way everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import httpx
from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ._auth import ApiKeyAuth, SignedJwtAuth
from ._envelope import ClientTls
from ._environments import environment_of, is_live_platform, resolve_base_url, spine_core_ods
from ._exceptions import ConfigurationError
from ._validation import normalise_ods_code

__all__ = ["ClientTlsSettings", "PluginSettings", "Settings", "SignedJwtSettings"]

#: Where SDS and PDS live under an NHS API platform host.
SDS_PATH = "/spine-directory/FHIR/R4"
PDS_PATH = "/personal-demographics/FHIR/R4"


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


class Settings(SignedJwtSettings):
    """Everything needed to reach SDS. Each field reads ``SDS_<FIELD>`` from the environment.

    ``base_url`` (``SDS_BASE_URL``) wins over ``env`` (``SDS_ENV``: sandbox, int, dep, prod).

    SDS itself takes an API key and nothing else: NHS's live proxy verifies the ``apikey``
    header on every request (``EnhancedVerifyApiKey`` in the target PreFlow of
    ``proxies/live/apiproxy/targets/target.xml``, ``NHSDigital/spine-directory-service-api``)
    and no flow checks an access token. So every SDS request carries ``apikey`` when
    ``api_key`` is set, and a router bound to the live platform without one is refused when it
    starts. The signed-JWT settings (``client_id`` or ``api_key``, ``private_key_file`` or
    ``private_key``, ``kid``, ``token_url``) are for the APIs that take a bearer token: PDS, and
    the e-RS adapter. ``auth="none"`` sends no credentials at all (an egress proxy that adds the
    key, say). The plugins' settings share this base (:class:`~sds_plugins.PluginSettings`).
    """

    model_config = SettingsConfigDict(env_prefix="SDS_")
    configures: ClassVar[str] = "SDS"

    env: str = "sandbox"
    base_url: str | None = None
    api_key: SecretStr | None = None
    #: ``apikey`` (the default when an API key is set) or ``none``; ``jwt`` is refused with
    #: the reason (SDS takes no access token).
    auth: Literal["apikey", "jwt", "none"] | None = None

    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=10.0, gt=0)
    #: One attempt's whole answer (headers and body) must arrive within this; the retry budget
    #: is the deadline for a lookup's attempts and waits together.
    attempt_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    retry_attempts: int = Field(default=4, ge=1, le=20)
    retry_budget_s: float = Field(default=20.0, gt=0, le=3600)
    max_pages: int = Field(default=10, ge=1, le=1000)
    #: NHS's SDS server answers an LDAP query that outlasts its timeout (3 s) with an empty
    #: 200: an empty answer at least this slow is asked again past the gateway's cache, then
    #: a DirectoryTimeoutError rather than "not found"; 0 reads every empty answer as
    #: "not found".
    ldap_timeout_s: float = Field(default=3.0, ge=0, le=600)
    #: The largest answer read (after decompression); larger is a MalformedResponseError.
    max_response_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=1024**3)

    # Routing engine (see docs/architecture.md).
    redis_url: SecretStr | None = None
    #: Key prefix in Redis: fleets (or environments) sharing one Redis use different ones.
    redis_prefix: str = Field(default="sds-plugins:", min_length=1, max_length=100)
    cache_ttl_s: float = Field(default=300.0, ge=0)
    negative_ttl_s: float = Field(default=60.0, ge=0)
    stale_if_error_s: float = Field(default=3600.0, ge=0)
    #: After the directory failed, cold lookups fail at once (BreakerOpenError) for this long;
    #: then one probe goes through, and its outcome closes or reopens the breaker.
    breaker_cooldown_s: float = Field(default=5.0, ge=0, le=3600)
    # The API gateway's limits for this application (see _pacing.py): requests are spaced
    # 1/rate_limit_per_s apart and no calendar minute exceeds rate_limit_per_min, fleet-wide
    # when redis_url is set. Without Redis (or while it is unreachable) each process paces
    # itself at rate / fleet_size.
    rate_limit_per_s: float = Field(default=40, gt=0, le=10_000)
    rate_limit_per_min: int = Field(default=2400, ge=1)
    fleet_size: int = Field(default=1, ge=1, le=10_000)
    audit_log: Path | None = None
    # PDS (routing to a patient's registered practice). The base URL defaults to PDS on the
    # SDS host (NHS serves both from one API platform host per environment); PDS's application
    # limit is its own (5/s by default), paced apart from SDS; answers are cached briefly and
    # within the route's cache scope (GP Connect: the encounter).
    pds_base_url: str | None = None
    #: PDS's token endpoint for the signed-JWT credentials (default: the platform's,
    #: ``/oauth2/token`` on PDS's host; ``SDS_TOKEN_URL`` when set).
    pds_token_url: str | None = None
    pds_rate_limit_per_s: float = Field(default=5, gt=0, le=10_000)
    pds_cache_ttl_s: float = Field(default=60.0, ge=0, le=86_400)
    #: ``NHSD-End-User-Organisation-ODS``: the default organisation a patient route is made
    #: for, when the route names none (its requesting organisation comes first).
    pds_end_user_org: str | None = None
    #: This application serves several organisations: PDS then requires
    #: ``NHSD-End-User-Organisation-ODS`` ("mandatory for client applications which service
    #: multiple end user organisations"), so a patient route with no requesting organisation
    #: and no ``pds_end_user_org`` is refused before anything is sent.
    pds_several_orgs: bool = False
    #: The key of the hash that names patients in logs, events, errors and cache keys (hex or
    #: text). Unset: a random key per process (share one across a fleet to share PDS answers).
    patient_hash_key: SecretStr | None = None
    #: Write NHS numbers in clear to the audit log (only where the operator's governance
    #: requires it; everywhere else they stay hashed).
    audit_nhs_numbers: bool = False

    @model_validator(mode="after")
    def _check(self) -> Settings:
        resolve_base_url(self.base_url or self.env)  # fail early on a typo or a bad URL
        if self.auth == "jwt":
            raise ConfigurationError(
                "SDS_AUTH=jwt: SDS takes an API key, not an access token (NHS's live proxy "
                "verifies only the apikey header), so set SDS_API_KEY and leave SDS_AUTH out; "
                "SDS_CLIENT_ID, SDS_PRIVATE_KEY_FILE and SDS_KID are used for PDS"
            )
        if self.pds_base_url is not None:
            resolve_base_url(self.pds_base_url)
        if self.pds_token_url is not None:
            resolve_base_url(self.pds_token_url)
        if self.pds_end_user_org is not None:
            normalise_ods_code(self.pds_end_user_org, "SDS_PDS_END_USER_ORG")
        return self

    def resolved_pds_base_url(self) -> str:
        """PDS's FHIR base: ``pds_base_url``, else PDS on the SDS host of the environment.

        PDS is deployed to the sandbox, INT and production, not DEP (``manifest_template.yml``
        of ``NHSDigital/personal-demographics-service-api``): there, it must be given.
        """
        if self.pds_base_url is not None:
            return resolve_base_url(self.pds_base_url)
        if environment_of(self.resolved_base_url()) == "dep":
            raise ConfigurationError(
                "SDS_PDS_BASE_URL is needed: PDS is not deployed to DEP (only the sandbox, INT "
                "and production), so routes to a patient have no PDS to ask"
            )
        sds = self.resolved_base_url()
        head, found, _ = sds.rpartition(SDS_PATH)
        if not found:
            raise ConfigurationError(
                "SDS_PDS_BASE_URL is needed: the SDS base URL does not end in "
                f"{SDS_PATH}, so PDS's cannot be derived from it"
            )
        return head + PDS_PATH

    def resolved_base_url(self) -> str:
        return resolve_base_url(self.base_url or self.env)

    def resolved_auth(self) -> Literal["apikey", "none"]:
        if self.auth == "none" or (self.auth is None and self.api_key is None):
            return "none"
        return "apikey"

    def build_auth(self) -> httpx.Auth | None:
        """SDS's ``httpx.Auth``: the API key, or ``None`` for no credentials.

        The live platform refuses every request without a key, so a router bound to it
        without one stops here, at start, naming the setting, rather than at its first lookup.
        """
        if self.resolved_auth() == "none":
            base_url = self.resolved_base_url()
            if self.auth is None and is_live_platform(base_url):
                raise ConfigurationError(
                    f"SDS at {base_url} needs an API key: set SDS_API_KEY (the platform "
                    "verifies the apikey header on every request; signed-JWT settings are for "
                    "PDS). SDS_AUTH=none sends no credentials, for a proxy that adds them."
                )
            return None
        if self.api_key is None:
            raise ConfigurationError("SDS_AUTH=apikey needs SDS_API_KEY")
        return ApiKeyAuth(self.api_key)

    def spine_core_ods(self) -> str:
        """Spine's own ODS code in this environment: ``YEA`` in production, else ``YES``."""
        return spine_core_ods(self.resolved_base_url())
