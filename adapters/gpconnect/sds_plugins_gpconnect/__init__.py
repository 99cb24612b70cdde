"""GP Connect adapter for sds-plugins: SSP-ready envelopes from the Spine Directory Service.

GP Connect 1.x (FHIR STU3) interactions, and Access Record HTML 0.7.x (FHIR DSTU2,
``CARE_RECORD``) with its own token and media types.
"""

from ._adapter import EXAMPLE_CONSUMER, GpConnectAdapter, requested_scope, ssp_url
from ._carerecord import RECORD_SECTIONS, care_record_parameters
from ._interactions import CARE_RECORD, INTERACTIONS, Interaction, interaction
from ._jwt import (
    DSTU2_AUDIENCE,
    JWT_LIFETIME_S,
    access_token,
    care_record_claims,
    claims,
    local_user_system,
    token_issuer,
)
from ._migrate import NHS_NUMBER_SYSTEM, migrate_parameters
from ._options import GpConnectOptions
from ._settings import GpConnectSettings
from .plugin import GpConnectPlugin

__all__ = [
    "CARE_RECORD",
    "DSTU2_AUDIENCE",
    "EXAMPLE_CONSUMER",
    "INTERACTIONS",
    "JWT_LIFETIME_S",
    "NHS_NUMBER_SYSTEM",
    "RECORD_SECTIONS",
    "GpConnectAdapter",
    "GpConnectOptions",
    "GpConnectPlugin",
    "GpConnectSettings",
    "Interaction",
    "access_token",
    "care_record_claims",
    "care_record_parameters",
    "claims",
    "interaction",
    "local_user_system",
    "migrate_parameters",
    "requested_scope",
    "ssp_url",
    "token_issuer",
]
