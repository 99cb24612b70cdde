"""GP Connect adapter for sds-plugins: SSP-ready envelopes from the Spine Directory Service."""

from ._adapter import GpConnectAdapter, ssp_url
from ._interactions import INTERACTIONS, Interaction, interaction
from ._jwt import JWT_LIFETIME_S, access_token, claims
from ._options import GpConnectOptions, parse_options

__all__ = [
    "INTERACTIONS",
    "JWT_LIFETIME_S",
    "GpConnectAdapter",
    "GpConnectOptions",
    "Interaction",
    "access_token",
    "claims",
    "interaction",
    "parse_options",
    "ssp_url",
]
