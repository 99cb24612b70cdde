"""The operator's GP Connect settings, from ``SDS_GPCONNECT_*`` environment variables.

Route options describe a request (who asks, for what); these describe the deployment: whether
SDS answers may be shared across encounters, and the client TLS every Spine Secure Proxy call
needs (a Spine-issued client certificate and NHS England's CA chain).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from sds_plugins import ClientTls, ConfigurationError

__all__ = ["GpConnectSettings", "load_settings"]


class GpConnectSettings(BaseSettings):
    """``SDS_GPCONNECT_<FIELD>`` for each field.

    - ``shared_cache``: reuse SDS answers across encounters (see the README's trade-off);
    - ``tls_cert``, ``tls_key``, ``tls_ca_bundle``: the consumer system's Spine client
      certificate and key (PEM files) and the CA bundle that verifies the SSP; every envelope
      carries these paths in ``envelope.tls`` (never the files' contents);
    - ``allow_insecure_ssp``: accept a plain ``http://`` ``ssp_url`` (local mocks and tests only;
      the real SSP is TLS with a client certificate).
    """

    model_config = SettingsConfigDict(env_prefix="SDS_GPCONNECT_", frozen=True, extra="ignore")

    shared_cache: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca_bundle: Path | None = None
    allow_insecure_ssp: bool = False

    def client_tls(self) -> ClientTls | None:
        """The client TLS these settings describe, or ``None`` when none is configured."""
        if self.tls_key is not None and self.tls_cert is None:
            raise ConfigurationError("SDS_GPCONNECT_TLS_KEY is set without SDS_GPCONNECT_TLS_CERT")
        if self.tls_cert is None and self.tls_ca_bundle is None:
            return None
        return ClientTls(
            cert_path=self.tls_cert, key_path=self.tls_key, ca_bundle_path=self.tls_ca_bundle
        )


def load_settings() -> GpConnectSettings:
    """The settings from the environment; errors name the variable, never its value."""
    try:
        return GpConnectSettings()
    except ValidationError as exc:
        where = ", ".join(
            "SDS_GPCONNECT_" + "__".join(str(part) for part in error["loc"]).upper()
            for error in exc.errors()
        )
        raise ConfigurationError(f"invalid GP Connect settings: {where}") from None
