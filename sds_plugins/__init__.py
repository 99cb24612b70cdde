"""sds-plugins: find where to send NHS England messages, and how.

Spine Directory Service lookups (``/Device``, ``/Endpoint``) with retries, typed errors and
correlation ids; the public names are re-exported here and the work lives in private modules.
"""

from ._auth import ApiKeyAuth, SignedJwtAuth
from ._client import ENVIRONMENTS, LookupResult, RetryPolicy, SdsClient, resolve_base_url
from ._exceptions import (
    AmbiguousError,
    AuthenticationError,
    ConfigurationError,
    DirectoryError,
    DirectoryTimeoutError,
    DirectoryUnavailableError,
    InvalidInputError,
    MalformedResponseError,
    NotFoundError,
    RateLimitedError,
    RequestRejectedError,
    SdsPluginsError,
)
from ._models import (
    AccreditedSystem,
    MessageHandlingEndpoint,
    Reliability,
    parse_devices,
    parse_endpoints,
)
from ._query import DeviceQuery, EndpointQuery
from ._settings import Settings
from ._sync import SyncSdsClient

__all__ = [
    "ENVIRONMENTS",
    "AccreditedSystem",
    "AmbiguousError",
    "ApiKeyAuth",
    "AuthenticationError",
    "ConfigurationError",
    "DeviceQuery",
    "DirectoryError",
    "DirectoryTimeoutError",
    "DirectoryUnavailableError",
    "EndpointQuery",
    "InvalidInputError",
    "LookupResult",
    "MalformedResponseError",
    "MessageHandlingEndpoint",
    "NotFoundError",
    "RateLimitedError",
    "Reliability",
    "RequestRejectedError",
    "RetryPolicy",
    "SdsClient",
    "SdsPluginsError",
    "Settings",
    "SignedJwtAuth",
    "SyncSdsClient",
    "parse_devices",
    "parse_endpoints",
    "resolve_base_url",
]
