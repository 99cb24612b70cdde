"""GP Connect adapter for sds-plugins: SSP-ready envelopes from the Spine Directory Service."""

from ._adapter import EXAMPLE_CONSUMER, GpConnectAdapter, requested_scope, ssp_url
from ._interactions import INTERACTIONS, Interaction, interaction
from ._jwt import JWT_LIFETIME_S, access_token, claims, local_user_system, token_issuer
from ._migrate import NHS_NUMBER_SYSTEM, migrate_parameters
from ._options import GpConnectOptions
from ._settings import GpConnectSettings
from .plugin import GpConnectPlugin

__all__ = [
    "EXAMPLE_CONSUMER",
    "INTERACTIONS",
    "JWT_LIFETIME_S",
    "NHS_NUMBER_SYSTEM",
    "GpConnectAdapter",
    "GpConnectOptions",
    "GpConnectPlugin",
    "GpConnectSettings",
    "Interaction",
    "access_token",
    "claims",
    "interaction",
    "local_user_system",
    "migrate_parameters",
    "requested_scope",
    "ssp_url",
    "token_issuer",
]
