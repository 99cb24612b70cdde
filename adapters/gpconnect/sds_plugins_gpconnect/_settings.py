"""The operator's GP Connect settings, from ``SDS_GPCONNECT_*`` environment variables.

Route options describe a request (who asks, for what); these describe the deployment: whether
SDS answers may be shared across encounters, and the client TLS every Spine Secure Proxy call
needs (a Spine-issued client certificate and NHS England's CA chain).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from sds_plugins import ClientTlsSettings

__all__ = ["GpConnectSettings"]


class GpConnectSettings(ClientTlsSettings):
    """``SDS_GPCONNECT_<FIELD>`` for each field.

    - ``shared_cache``: reuse SDS answers across encounters (see the README's trade-off);
    - ``tls_cert``, ``tls_key``, ``tls_ca_bundle``: the consumer system's Spine client
      certificate and key (PEM files) and the CA bundle that verifies the SSP; every envelope
      carries these paths in ``envelope.tls`` (never the files' contents);
    - ``allow_insecure_ssp``: accept a plain ``http://`` ``ssp_url`` (local mocks and tests only;
      the real SSP is TLS with a client certificate).
    """

    model_config = SettingsConfigDict(env_prefix="SDS_GPCONNECT_")
    configures: ClassVar[str] = "GP Connect"

    shared_cache: bool = False
    allow_insecure_ssp: bool = False
