"""Where MESH is and who we are there: hosts, credentials, client TLS, from arguments or env."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import SettingsConfigDict
from sds_plugins import (
    ConfigurationError,
    InvalidInputError,
    PluginSettings,
    resolve_base_url,
    safe_url,
)

from ._validation import normalise_mailbox_id

__all__ = [
    "MESH_ENVIRONMENTS",
    "MeshCredentials",
    "MeshSettings",
    "MeshTls",
    "resolve_mesh_url",
]

#: Named MESH environments (the internet-facing hosts; HSCN ones are being retired by NHS England).
MESH_ENVIRONMENTS: dict[str, str] = {
    "int": "https://msg.intspineservices.nhs.uk",
    "dep": "https://msg.depspineservices.nhs.uk",
    "prod": "https://mesh-sync.spineservices.nhs.uk",
}


def resolve_mesh_url(env_or_url: str, *, field: str = "mesh_url") -> str:
    """``"int"`` → the INT host; an ``http(s)://`` URL is returned without a trailing slash."""
    value = env_or_url.strip()
    if value.lower() in MESH_ENVIRONMENTS:
        return MESH_ENVIRONMENTS[value.lower()]
    parts = urlsplit(value) if "://" in value else None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.netloc
        or parts.query
        or parts.fragment
    ):
        raise InvalidInputError(
            f"{field}: {safe_url(env_or_url)[:100]!r} is neither a MESH environment "
            f"({', '.join(MESH_ENVIRONMENTS)}) nor an http(s) URL",
            field=field,
        )
    try:  # the core's rules: ASCII, no spaces or controls, no credentials in the URL
        return resolve_base_url(value)
    except ConfigurationError as exc:
        raise InvalidInputError(f"{field}: {exc}", field=field) from None


def environment_name(url: str) -> str | None:
    """``"int"`` for the INT host, ``None`` for any other URL."""
    return next((name for name, known in MESH_ENVIRONMENTS.items() if known == url), None)


class MeshTls(BaseModel):
    """Client TLS for one MESH environment: real MESH refuses connections without a client cert.

    ``cert`` and ``key`` are PEM files (``key`` may be omitted when ``cert`` holds both);
    ``ca_bundle`` verifies MESH's server certificate (NHS England publishes one per environment,
    and ``mesh-client`` ships copies). Paths only: the key's content is never read here.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    cert: Path | None = None
    key: Path | None = None
    ca_bundle: Path | None = None

    def httpx_cert(self) -> tuple[str, str] | str | None:
        """The ``cert=`` argument for ``httpx.Client``."""
        if self.cert is None:
            return None
        return (str(self.cert), str(self.key)) if self.key is not None else str(self.cert)

    def httpx_verify(self) -> str | bool:
        """The ``verify=`` argument for ``httpx.Client`` (system CAs when no bundle is set)."""
        return str(self.ca_bundle) if self.ca_bundle is not None else True

    def merged(self, override: MeshTls) -> MeshTls:
        """This configuration with ``override``'s set fields replacing ours."""
        return self.model_copy(update=override.model_dump(exclude_none=True))


class MeshCredentials(BaseModel):
    """A MESH mailbox and the secrets that sign its ``Authorization: NHSMESH`` headers.

    ``password`` is the mailbox's own; ``shared_key`` is the environment's (the same for every
    mailbox in INT, another in PROD). Both are :class:`~pydantic.SecretStr`: masked in ``repr``,
    ``str`` and JSON; only :func:`sds_plugins_mesh.nhsmesh_authorization` reads them.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mailbox: str
    password: SecretStr
    shared_key: SecretStr

    @classmethod
    def build(
        cls, *, mailbox: str, password: str | SecretStr, shared_key: str | SecretStr
    ) -> MeshCredentials:
        """Validated credentials (mailbox upper-cased; secrets must be non-empty ASCII).

        Raises :class:`~sds_plugins.InvalidInputError` naming the offending field (never its
        value).
        """
        secrets = {"password": password, "shared_key": shared_key}
        for name, value in secrets.items():
            text = value.get_secret_value() if isinstance(value, SecretStr) else value
            # The HMAC input is ASCII on the server (mesh-sandbox encodes it so).
            if not isinstance(text, str) or not text or not text.isascii():
                raise InvalidInputError(f"MESH {name} must be a non-empty ASCII string", field=name)
        return cls(
            mailbox=normalise_mailbox_id(mailbox, field="mailbox"),
            password=SecretStr(_text(password)),
            shared_key=SecretStr(_text(shared_key)),
        )

    @classmethod
    def from_env(cls, settings: MeshSettings | None = None) -> MeshCredentials:
        """Credentials from ``MESH_MAILBOX``, ``MESH_PASSWORD`` and ``MESH_SHARED_KEY``."""
        settings = settings if settings is not None else MeshSettings()
        credentials = settings.credentials()
        if credentials is None:
            raise ConfigurationError(
                "MESH credentials need MESH_MAILBOX, MESH_PASSWORD and MESH_SHARED_KEY"
            )
        return credentials


def _text(value: str | SecretStr) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


class MeshSettings(PluginSettings):
    """MESH configuration; each field reads ``MESH_<FIELD>`` from the environment.

    ``url`` (``MESH_URL``) is ``int``, ``dep``, ``prod`` or any URL (the mesh-sandbox's).
    ``mailbox``/``password``/``shared_key`` are the sender's (``MESH_MAILBOX``,
    ``MESH_PASSWORD``, ``MESH_SHARED_KEY``); they also sign the mailbox lookups, as real MESH
    wants. Client TLS: ``cert``/``key``/``ca_bundle`` (``MESH_CERT``...) apply to ``url``;
    ``tls`` holds other environments' (``MESH_TLS__INT__CERT=/path``, keyed by environment name
    or URL). ``lookup_api_version`` picks the lookup response format asked for (both parse).
    """

    model_config = SettingsConfigDict(env_prefix="MESH_", env_nested_delimiter="__")
    configures: ClassVar[str] = "MESH"

    url: str | None = None
    mailbox: str | None = None
    password: SecretStr | None = None
    shared_key: SecretStr | None = None
    cert: Path | None = None
    key: Path | None = None
    ca_bundle: Path | None = None
    tls: dict[str, MeshTls] = Field(default_factory=dict)
    lookup_api_version: int = Field(default=2, ge=1, le=2)

    def resolved_url(self) -> str | None:
        try:
            return resolve_mesh_url(self.url) if self.url else None
        except InvalidInputError as exc:
            raise ConfigurationError(f"MESH_URL: {exc}") from None

    def credentials(self) -> MeshCredentials | None:
        """The configured credentials, or ``None`` unless all three are set."""
        if self.mailbox is None or self.password is None or self.shared_key is None:
            return None
        try:
            return MeshCredentials.build(
                mailbox=self.mailbox, password=self.password, shared_key=self.shared_key
            )
        except InvalidInputError as exc:
            raise ConfigurationError(f"MESH_{(exc.field or '').upper()}: {exc}") from None

    def tls_for(self, url: str) -> MeshTls:
        """Client TLS for the MESH host ``url``: its ``tls`` entry, then the top-level fields."""
        configured: MeshTls = MeshTls()
        if url == self.resolved_url():
            configured = MeshTls(cert=self.cert, key=self.key, ca_bundle=self.ca_bundle)
        for name, tls in self.tls.items():
            if name.lower() == environment_name(url) or name.rstrip("/") == url:
                configured = configured.merged(tls)
        return configured
