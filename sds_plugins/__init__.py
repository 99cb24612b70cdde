"""sds-plugins: find where to send NHS England messages, and how.

Spine Directory Service lookups (``/Device``, ``/Endpoint``) with retries, typed errors and
correlation ids; the public names are re-exported here and the work lives in private modules.

Names load on first use (PEP 562), so importing the package (as pytest does for the
``sds_plugins.testing`` plugin, and the CLI on every call) costs almost nothing. Type checkers
read the block of imports below as explicit re-exports (``X as X``); at run time
``__getattr__`` finds each name's module in ``_EXPORTS``, the same list as data (a test keeps
the two equal), so the package loads from a zip or a frozen application as well as from files.
Adapter authors find their subset in :mod:`sds_plugins.adapters`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._adapter import (
        Adapter as Adapter,
    )
    from ._adapter import (
        Candidate as Candidate,
    )
    from ._adapter import (
        Lookup as Lookup,
    )
    from ._adapter import (
        LookupOutcome as LookupOutcome,
    )
    from ._adapter import (
        Recipient as Recipient,
    )
    from ._adapter import (
        Resolution as Resolution,
    )
    from ._adapter import (
        RouteRequest as RouteRequest,
    )
    from ._adapter import (
        join_on_party_key as join_on_party_key,
    )
    from ._adapter_options import (
        load_adapter_options as load_adapter_options,
    )
    from ._auth import (
        ApiKeyAuth as ApiKeyAuth,
    )
    from ._auth import (
        SignedJwtAuth as SignedJwtAuth,
    )
    from ._cache import (
        CacheBackend as CacheBackend,
    )
    from ._cache import (
        CacheEntry as CacheEntry,
    )
    from ._cache import (
        MemoryCache as MemoryCache,
    )
    from ._client import (
        LookupResult as LookupResult,
    )
    from ._client import (
        SdsClient as SdsClient,
    )
    from ._configured import (
        ConfiguredPlugin as ConfiguredPlugin,
    )
    from ._defaults import (
        LowestPartyKeyPolicy as LowestPartyKeyPolicy,
    )
    from ._demographics import (
        PatientDemographics as PatientDemographics,
    )
    from ._engine import (
        Router as Router,
    )
    from ._envelope import (
        ENVELOPE_TTL as ENVELOPE_TTL,
    )
    from ._envelope import (
        ClientTls as ClientTls,
    )
    from ._envelope import (
        EnvelopeReliability as EnvelopeReliability,
    )
    from ._envelope import (
        ForeignRecord as ForeignRecord,
    )
    from ._envelope import (
        HttpRequestSpec as HttpRequestSpec,
    )
    from ._envelope import (
        Party as Party,
    )
    from ._envelope import (
        Provenance as Provenance,
    )
    from ._envelope import (
        RoutingEnvelope as RoutingEnvelope,
    )
    from ._environments import (
        ENVIRONMENTS as ENVIRONMENTS,
    )
    from ._environments import (
        resolve_base_url as resolve_base_url,
    )
    from ._events import (
        LookupEvent as LookupEvent,
    )
    from ._events import (
        RouteEvent as RouteEvent,
    )
    from ._exceptions import (
        AmbiguousError as AmbiguousError,
    )
    from ._exceptions import (
        AuthenticationError as AuthenticationError,
    )
    from ._exceptions import (
        BreakerOpenError as BreakerOpenError,
    )
    from ._exceptions import (
        ConfigurationError as ConfigurationError,
    )
    from ._exceptions import (
        DirectoryError as DirectoryError,
    )
    from ._exceptions import (
        DirectoryTimeoutError as DirectoryTimeoutError,
    )
    from ._exceptions import (
        DirectoryUnavailableError as DirectoryUnavailableError,
    )
    from ._exceptions import (
        EnvelopeVetoedError as EnvelopeVetoedError,
    )
    from ._exceptions import (
        InvalidInputError as InvalidInputError,
    )
    from ._exceptions import (
        InvalidNhsNumberError as InvalidNhsNumberError,
    )
    from ._exceptions import (
        MalformedResponseError as MalformedResponseError,
    )
    from ._exceptions import (
        NotFoundError as NotFoundError,
    )
    from ._exceptions import (
        PatientInvalidatedError as PatientInvalidatedError,
    )
    from ._exceptions import (
        PatientNotFoundError as PatientNotFoundError,
    )
    from ._exceptions import (
        PatientRestrictedError as PatientRestrictedError,
    )
    from ._exceptions import (
        PluginError as PluginError,
    )
    from ._exceptions import (
        RateLimitedError as RateLimitedError,
    )
    from ._exceptions import (
        RequestRejectedError as RequestRejectedError,
    )
    from ._exceptions import (
        SdsPluginsError as SdsPluginsError,
    )
    from ._models import (
        AccreditedSystem as AccreditedSystem,
    )
    from ._models import (
        MessageHandlingEndpoint as MessageHandlingEndpoint,
    )
    from ._models import (
        Reliability as Reliability,
    )
    from ._models import (
        parse_devices as parse_devices,
    )
    from ._models import (
        parse_endpoints as parse_endpoints,
    )
    from ._observability._metrics import (
        PrometheusMetrics as PrometheusMetrics,
    )
    from ._observability._tracing import (
        OpenTelemetryTracing as OpenTelemetryTracing,
    )
    from ._option_types import (
        AdapterOptions as AdapterOptions,
    )
    from ._option_types import (
        Asid as Asid,
    )
    from ._option_types import (
        HeaderText as HeaderText,
    )
    from ._option_types import (
        OdsCode as OdsCode,
    )
    from ._option_types import (
        PartyKey as PartyKey,
    )
    from ._pacing import (
        Pacer as Pacer,
    )
    from ._pacing import (
        RateLimiter as RateLimiter,
    )
    from ._patients import (
        PatientRefs as PatientRefs,
    )
    from ._patients import (
        PatientRegistration as PatientRegistration,
    )
    from ._patients import (
        PdsSource as PdsSource,
    )
    from ._patients import (
        check_nhs_number as check_nhs_number,
    )
    from ._plugins import (
        PluginHost as PluginHost,
    )
    from ._query import (
        DeviceQuery as DeviceQuery,
    )
    from ._query import (
        EndpointQuery as EndpointQuery,
    )
    from ._requests import (
        WorkerRequest as WorkerRequest,
    )
    from ._retrying import (
        RetryPolicy as RetryPolicy,
    )
    from ._retrying import (
        get_with_retries as get_with_retries,
    )
    from ._retrying import (
        parse_retry_after as parse_retry_after,
    )
    from ._sending import (
        EnvelopeClients as EnvelopeClients,
    )
    from ._sending import (
        client_ssl_context as client_ssl_context,
    )
    from ._service._app import (
        create_service_app as create_service_app,
    )
    from ._settings import (
        ClientTlsSettings as ClientTlsSettings,
    )
    from ._settings import (
        PluginSettings as PluginSettings,
    )
    from ._settings import (
        Settings as Settings,
    )
    from ._settings import (
        SignedJwtSettings as SignedJwtSettings,
    )
    from ._sources import (
        DirectorySource as DirectorySource,
    )
    from ._sources import (
        FetchResult as FetchResult,
    )
    from ._sources import (
        SdsSource as SdsSource,
    )
    from ._sources import (
        SourceContext as SourceContext,
    )
    from ._sync import (
        SyncRouter as SyncRouter,
    )
    from ._sync import (
        SyncSdsClient as SyncSdsClient,
    )
    from ._upstream import (
        load_json as load_json,
    )
    from ._upstream import (
        safe_url as safe_url,
    )
    from ._validation import (
        check_header_value as check_header_value,
    )
    from ._validation import (
        check_path_segment as check_path_segment,
    )
    from ._validation import (
        check_relative_path as check_relative_path,
    )
    from ._validation import (
        invalid_input as invalid_input,
    )
    from ._validation import (
        normalise_asid as normalise_asid,
    )
    from ._validation import (
        normalise_correlation_id as normalise_correlation_id,
    )
    from ._validation import (
        normalise_interaction as normalise_interaction,
    )
    from ._validation import (
        normalise_ods_code as normalise_ods_code,
    )
    from ._validation import (
        normalise_party_key as normalise_party_key,
    )
    from ._worker._core import (
        RouteWorker as RouteWorker,
    )
    from ._worker._core import (
        WorkerOutcome as WorkerOutcome,
    )
    from ._worker._core import (
        WorkerPolicy as WorkerPolicy,
    )
    from ._worker._runtime import (
        BrokerError as BrokerError,
    )
    from ._worker._runtime import (
        run_worker as run_worker,
    )
    from ._worker._settings import (
        WorkerSettings as WorkerSettings,
    )
    from .hookspecs import (
        hookimpl as hookimpl,
    )


#: Where each public name lives: the same names as the imports above (which type checkers
#: read), as data (a test checks they agree). Read at run time by ``__getattr__``, so the
#: package imports from anywhere a module can (a zip, a frozen application) and loads a
#: private module only when one of its names is first used.
_EXPORTS: dict[str, str] = {
    "AccreditedSystem": "._models",
    "Adapter": "._adapter",
    "AdapterOptions": "._option_types",
    "AmbiguousError": "._exceptions",
    "ApiKeyAuth": "._auth",
    "Asid": "._option_types",
    "AuthenticationError": "._exceptions",
    "BreakerOpenError": "._exceptions",
    "BrokerError": "._worker._runtime",
    "CacheBackend": "._cache",
    "CacheEntry": "._cache",
    "Candidate": "._adapter",
    "ClientTls": "._envelope",
    "ClientTlsSettings": "._settings",
    "ConfigurationError": "._exceptions",
    "ConfiguredPlugin": "._configured",
    "DeviceQuery": "._query",
    "DirectoryError": "._exceptions",
    "DirectorySource": "._sources",
    "DirectoryTimeoutError": "._exceptions",
    "DirectoryUnavailableError": "._exceptions",
    "ENVELOPE_TTL": "._envelope",
    "ENVIRONMENTS": "._environments",
    "EndpointQuery": "._query",
    "EnvelopeClients": "._sending",
    "EnvelopeReliability": "._envelope",
    "EnvelopeVetoedError": "._exceptions",
    "FetchResult": "._sources",
    "ForeignRecord": "._envelope",
    "HeaderText": "._option_types",
    "HttpRequestSpec": "._envelope",
    "InvalidInputError": "._exceptions",
    "InvalidNhsNumberError": "._exceptions",
    "Lookup": "._adapter",
    "LookupEvent": "._events",
    "LookupOutcome": "._adapter",
    "LookupResult": "._client",
    "LowestPartyKeyPolicy": "._defaults",
    "MalformedResponseError": "._exceptions",
    "MemoryCache": "._cache",
    "MessageHandlingEndpoint": "._models",
    "NotFoundError": "._exceptions",
    "OdsCode": "._option_types",
    "OpenTelemetryTracing": "._observability._tracing",
    "Pacer": "._pacing",
    "Party": "._envelope",
    "PartyKey": "._option_types",
    "PatientDemographics": "._demographics",
    "PatientInvalidatedError": "._exceptions",
    "PatientNotFoundError": "._exceptions",
    "PatientRefs": "._patients",
    "PatientRegistration": "._patients",
    "PatientRestrictedError": "._exceptions",
    "PdsSource": "._patients",
    "PluginError": "._exceptions",
    "PluginHost": "._plugins",
    "PluginSettings": "._settings",
    "PrometheusMetrics": "._observability._metrics",
    "Provenance": "._envelope",
    "RateLimitedError": "._exceptions",
    "RateLimiter": "._pacing",
    "Recipient": "._adapter",
    "Reliability": "._models",
    "RequestRejectedError": "._exceptions",
    "Resolution": "._adapter",
    "RetryPolicy": "._retrying",
    "RouteEvent": "._events",
    "RouteRequest": "._adapter",
    "RouteWorker": "._worker._core",
    "Router": "._engine",
    "RoutingEnvelope": "._envelope",
    "SdsClient": "._client",
    "SdsPluginsError": "._exceptions",
    "SdsSource": "._sources",
    "Settings": "._settings",
    "SignedJwtAuth": "._auth",
    "SignedJwtSettings": "._settings",
    "SourceContext": "._sources",
    "SyncRouter": "._sync",
    "SyncSdsClient": "._sync",
    "WorkerOutcome": "._worker._core",
    "WorkerPolicy": "._worker._core",
    "WorkerRequest": "._requests",
    "WorkerSettings": "._worker._settings",
    "check_header_value": "._validation",
    "check_nhs_number": "._patients",
    "check_path_segment": "._validation",
    "check_relative_path": "._validation",
    "client_ssl_context": "._sending",
    "create_service_app": "._service._app",
    "get_with_retries": "._retrying",
    "hookimpl": ".hookspecs",
    "invalid_input": "._validation",
    "join_on_party_key": "._adapter",
    "load_adapter_options": "._adapter_options",
    "load_json": "._upstream",
    "normalise_asid": "._validation",
    "normalise_correlation_id": "._validation",
    "normalise_interaction": "._validation",
    "normalise_ods_code": "._validation",
    "normalise_party_key": "._validation",
    "parse_devices": "._models",
    "parse_endpoints": "._models",
    "parse_retry_after": "._retrying",
    "resolve_base_url": "._environments",
    "run_worker": "._worker._runtime",
    "safe_url": "._upstream",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
