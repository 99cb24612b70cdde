"""sds-plugins: find where to send NHS England messages, and how.

Spine Directory Service lookups (``/Device``, ``/Endpoint``) with retries, typed errors and
correlation ids; the public names are re-exported here and the work lives in private modules.

Names load on first use (PEP 562), so importing the package (as pytest does for the
``sds_plugins.testing`` plugin, and the CLI on every call) costs almost nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._adapter import (
        Adapter,
        Candidate,
        Lookup,
        LookupOutcome,
        Resolution,
        RouteRequest,
        join_on_party_key,
    )
    from ._adapter_options import load_adapter_options
    from ._auth import (
        ApiKeyAuth,
        SignedJwtAuth,
    )
    from ._cache import (
        CacheBackend,
        CacheEntry,
        MemoryCache,
    )
    from ._client import (
        ENVIRONMENTS,
        LookupResult,
        RetryPolicy,
        SdsClient,
        get_with_retries,
        parse_retry_after,
        resolve_base_url,
    )
    from ._defaults import LowestPartyKeyPolicy
    from ._engine import Router
    from ._envelope import (
        ClientTls,
        EnvelopeReliability,
        ForeignRecord,
        HttpRequestSpec,
        Party,
        Provenance,
        RoutingEnvelope,
    )
    from ._events import (
        LookupEvent,
        RouteEvent,
    )
    from ._exceptions import (
        AmbiguousError,
        AuthenticationError,
        BreakerOpenError,
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
    from ._query import (
        DeviceQuery,
        EndpointQuery,
    )
    from ._ratelimit import (
        Pacer,
        RateLimiter,
    )
    from ._settings import Settings
    from ._sources import (
        DirectorySource,
        FetchResult,
        SdsSource,
        SourceContext,
    )
    from ._sync import (
        SyncRouter,
        SyncSdsClient,
    )
    from ._transport import (
        EnvelopeClients,
        client_ssl_context,
    )
    from ._upstream import load_json, safe_url
    from ._validation import (
        check_header_value,
        check_path_segment,
        check_relative_path,
        invalid_input,
        normalise_correlation_id,
        normalise_interaction,
        normalise_ods_code,
        normalise_party_key,
    )
    from ._worker._core import (
        RouteWorker,
        WorkerOutcome,
        WorkerPolicy,
        WorkerRequest,
    )
    from ._worker._runtime import (
        BrokerError,
        run_worker,
    )
    from ._worker._settings import WorkerSettings
    from .hookspecs import hookimpl

# Where each public name lives (the static imports above say the same to type checkers).
_EXPORTS: dict[str, str] = {
    "Adapter": "._adapter",
    "Candidate": "._adapter",
    "Lookup": "._adapter",
    "LookupOutcome": "._adapter",
    "Resolution": "._adapter",
    "RouteRequest": "._adapter",
    "join_on_party_key": "._adapter",
    "load_adapter_options": "._adapter_options",
    "ApiKeyAuth": "._auth",
    "SignedJwtAuth": "._auth",
    "CacheBackend": "._cache",
    "CacheEntry": "._cache",
    "MemoryCache": "._cache",
    "ENVIRONMENTS": "._client",
    "LookupResult": "._client",
    "RetryPolicy": "._client",
    "SdsClient": "._client",
    "get_with_retries": "._client",
    "parse_retry_after": "._client",
    "resolve_base_url": "._client",
    "LowestPartyKeyPolicy": "._defaults",
    "Router": "._engine",
    "ClientTls": "._envelope",
    "EnvelopeReliability": "._envelope",
    "ForeignRecord": "._envelope",
    "HttpRequestSpec": "._envelope",
    "Party": "._envelope",
    "Provenance": "._envelope",
    "RoutingEnvelope": "._envelope",
    "LookupEvent": "._events",
    "RouteEvent": "._events",
    "AmbiguousError": "._exceptions",
    "AuthenticationError": "._exceptions",
    "BreakerOpenError": "._exceptions",
    "ConfigurationError": "._exceptions",
    "DirectoryError": "._exceptions",
    "DirectoryTimeoutError": "._exceptions",
    "DirectoryUnavailableError": "._exceptions",
    "EnvelopeVetoedError": "._exceptions",
    "InvalidInputError": "._exceptions",
    "MalformedResponseError": "._exceptions",
    "NotFoundError": "._exceptions",
    "PluginError": "._exceptions",
    "RateLimitedError": "._exceptions",
    "RequestRejectedError": "._exceptions",
    "SdsPluginsError": "._exceptions",
    "AccreditedSystem": "._models",
    "MessageHandlingEndpoint": "._models",
    "Reliability": "._models",
    "parse_devices": "._models",
    "parse_endpoints": "._models",
    "PluginHost": "._plugins",
    "DeviceQuery": "._query",
    "EndpointQuery": "._query",
    "Pacer": "._ratelimit",
    "EnvelopeClients": "._transport",
    "client_ssl_context": "._transport",
    "RateLimiter": "._ratelimit",
    "Settings": "._settings",
    "DirectorySource": "._sources",
    "FetchResult": "._sources",
    "SdsSource": "._sources",
    "SourceContext": "._sources",
    "SyncRouter": "._sync",
    "SyncSdsClient": "._sync",
    "load_json": "._upstream",
    "safe_url": "._upstream",
    "check_header_value": "._validation",
    "check_path_segment": "._validation",
    "check_relative_path": "._validation",
    "invalid_input": "._validation",
    "normalise_correlation_id": "._validation",
    "normalise_interaction": "._validation",
    "normalise_ods_code": "._validation",
    "normalise_party_key": "._validation",
    "RouteWorker": "._worker._core",
    "WorkerOutcome": "._worker._core",
    "WorkerPolicy": "._worker._core",
    "WorkerRequest": "._worker._core",
    "BrokerError": "._worker._runtime",
    "run_worker": "._worker._runtime",
    "WorkerSettings": "._worker._settings",
    "hookimpl": ".hookspecs",
}

__all__ = [
    "ENVIRONMENTS",
    "AccreditedSystem",
    "Adapter",
    "AmbiguousError",
    "ApiKeyAuth",
    "AuthenticationError",
    "BreakerOpenError",
    "BrokerError",
    "CacheBackend",
    "CacheEntry",
    "Candidate",
    "ClientTls",
    "ConfigurationError",
    "DeviceQuery",
    "DirectoryError",
    "DirectorySource",
    "DirectoryTimeoutError",
    "DirectoryUnavailableError",
    "EndpointQuery",
    "EnvelopeClients",
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
    "Pacer",
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
    "RouteWorker",
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
    "WorkerOutcome",
    "WorkerPolicy",
    "WorkerRequest",
    "WorkerSettings",
    "check_header_value",
    "check_path_segment",
    "check_relative_path",
    "client_ssl_context",
    "get_with_retries",
    "hookimpl",
    "invalid_input",
    "join_on_party_key",
    "load_adapter_options",
    "load_json",
    "normalise_correlation_id",
    "normalise_interaction",
    "normalise_ods_code",
    "normalise_party_key",
    "parse_devices",
    "parse_endpoints",
    "parse_retry_after",
    "resolve_base_url",
    "run_worker",
    "safe_url",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
