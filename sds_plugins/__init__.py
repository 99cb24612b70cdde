"""sds-plugins: find where to send NHS England messages, and how.

Spine Directory Service lookups (``/Device``, ``/Endpoint``) with retries, typed errors and
correlation ids; the public names are re-exported here and the work lives in private modules.
"""

from ._adapter import (
    Adapter,
    Candidate,
    Lookup,
    LookupOutcome,
    Resolution,
    RouteRequest,
    join_on_party_key,
)
from ._auth import ApiKeyAuth, SignedJwtAuth
from ._cache import CacheBackend, CacheEntry, MemoryCache
from ._client import (
    ENVIRONMENTS,
    LookupResult,
    RetryPolicy,
    SdsClient,
    get_with_retries,
    resolve_base_url,
)
from ._defaults import LowestPartyKeyPolicy
from ._engine import Router
from ._envelope import (
    EnvelopeReliability,
    ForeignRecord,
    HttpRequestSpec,
    Party,
    Provenance,
    RoutingEnvelope,
)
from ._events import LookupEvent, RouteEvent
from ._exceptions import (
    AmbiguousError,
    AuthenticationError,
    ConfigurationError,
    DirectoryError,
    DirectoryTimeoutError,
    DirectoryUnavailableError,
    EnvelopeVetoedError,
    InvalidInputError,
    MalformedResponseError,
    NotFoundError,
    PluginError,
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
from ._plugins import PluginHost
from ._query import DeviceQuery, EndpointQuery
from ._ratelimit import RateLimiter, WindowRateLimiter
from ._settings import Settings
from ._sources import DirectorySource, FetchResult, SdsSource, SourceContext
from ._sync import SyncRouter, SyncSdsClient
from .hookspecs import hookimpl

__all__ = [
    "ENVIRONMENTS",
    "AccreditedSystem",
    "Adapter",
    "AmbiguousError",
    "ApiKeyAuth",
    "AuthenticationError",
    "CacheBackend",
    "CacheEntry",
    "Candidate",
    "ConfigurationError",
    "DeviceQuery",
    "DirectoryError",
    "DirectorySource",
    "DirectoryTimeoutError",
    "DirectoryUnavailableError",
    "EndpointQuery",
    "EnvelopeReliability",
    "EnvelopeVetoedError",
    "FetchResult",
    "ForeignRecord",
    "HttpRequestSpec",
    "InvalidInputError",
    "Lookup",
    "LookupEvent",
    "LookupOutcome",
    "LookupResult",
    "LowestPartyKeyPolicy",
    "MalformedResponseError",
    "MemoryCache",
    "MessageHandlingEndpoint",
    "NotFoundError",
    "Party",
    "PluginError",
    "PluginHost",
    "Provenance",
    "RateLimitedError",
    "RateLimiter",
    "Reliability",
    "RequestRejectedError",
    "Resolution",
    "RetryPolicy",
    "RouteEvent",
    "RouteRequest",
    "Router",
    "RoutingEnvelope",
    "SdsClient",
    "SdsPluginsError",
    "SdsSource",
    "Settings",
    "SignedJwtAuth",
    "SourceContext",
    "SyncRouter",
    "SyncSdsClient",
    "WindowRateLimiter",
    "get_with_retries",
    "hookimpl",
    "join_on_party_key",
    "parse_devices",
    "parse_endpoints",
    "resolve_base_url",
]
