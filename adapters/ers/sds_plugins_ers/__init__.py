"""sds-plugins adapters for the NHS e-Referral Service (e-RS).

- ``ers``: e-RS HL7 V3 interactions (``urn:nhs:names:services:ebs:...``) as Spine ebXML
  routing envelopes (SDS ``/Endpoint`` + ``/Device``, joined on party key).
- ``ers-fhir``: e-RS FHIR API requests from a documented catalogue, with a bearer token from
  the shared signed-JWT auth.
"""

from __future__ import annotations

from ._ebxml_adapter import EBS_INTERACTIONS, EBS_SERVICE, ErsEbxmlAdapter
from ._fhir import (
    BUSINESS_FUNCTIONS,
    FHIR_INTERACTION_PREFIX,
    FHIR_OPERATIONS,
    USER_CONTEXT_HEADERS,
    ErsFhirAdapter,
    FhirOperation,
)
from ._settings import ERS_ENVIRONMENTS, ErsSettings
from ._token import AccessToken, BearerTokenSource, TokenQuery, bearer_token
from .plugin import ErsPlugin

__all__ = [
    "BUSINESS_FUNCTIONS",
    "EBS_INTERACTIONS",
    "EBS_SERVICE",
    "ERS_ENVIRONMENTS",
    "FHIR_INTERACTION_PREFIX",
    "FHIR_OPERATIONS",
    "USER_CONTEXT_HEADERS",
    "AccessToken",
    "BearerTokenSource",
    "ErsEbxmlAdapter",
    "ErsFhirAdapter",
    "ErsPlugin",
    "ErsSettings",
    "FhirOperation",
    "TokenQuery",
    "bearer_token",
]
