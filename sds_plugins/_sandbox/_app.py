"""The sandbox as a Starlette application, assembled from its parts.

- ``_gateway.py``: the API platform in front of SDS (key check, quota, spike arrest, response
  cache);
- ``_fhir.py``: the SDS FHIR API's searches and health checks, and the proxy's own ``/_ping``,
  ``/_status`` and CORS preflight answers; ``_fhir_query.py`` reads the search request;
- ``_oauth.py``: the platform's token endpoint;
- ``_control.py``: the sandbox's own controls (stats, faults, reset);
- ``_config.py``, ``_state.py``, ``_common.py``: what they share.
"""

from __future__ import annotations

import random

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from ._common import (
    CONTROL_PREFIX,
    EXPRESS_INTERMEDIARY,
    FHIR_BASE,
    RELIABLE_INTERMEDIARY,
    TOKEN_PATH,
    _AnyMethodRoute,
    _error_response,
    spine_uuid,
)
from ._config import (
    LIVE_QUOTA_PER_MIN,
    LIVE_RESPONSE_CACHE_S,
    LIVE_SPIKE_ARREST_PER_S,
    SandboxConfig,
    _Faults,
)
from ._control import Controls, _StatsMiddleware
from ._fhir import FhirSearch, _intermediary
from ._gateway import Gateway, GatewayGuard
from ._oauth import TokenEndpoint, _load_keys
from ._pds import PDS_BASE, PdsEndpoint
from ._records import load_directory
from ._state import _State

__all__ = [
    "FHIR_BASE",
    "LIVE_QUOTA_PER_MIN",
    "LIVE_RESPONSE_CACHE_S",
    "LIVE_SPIKE_ARREST_PER_S",
    "TOKEN_PATH",
    "SandboxConfig",
    "create_app",
]


class _Sandbox:
    """One sandbox: its state and the parts that answer requests."""

    def __init__(self, config: SandboxConfig) -> None:
        directory = load_directory(config.data_dir, config.synthetic, config.seed)
        self.state = _State(
            config=config,
            directory=directory,
            keys=_load_keys(config.jwks),
            intermediaries={
                urn: _intermediary(directory, config.spine_core_ods, urn)
                for urn in (RELIABLE_INTERMEDIARY, EXPRESS_INTERMEDIARY)
            },
            faults=_Faults.from_config(config),
            rng=random.Random(config.seed),  # noqa: S311 - repeatable faults, not crypto
            gateway=Gateway(config.gateway_config()),
        )
        self.fhir = FhirSearch(self.state, GatewayGuard(self.state))
        self.pds = PdsEndpoint(self.state, GatewayGuard(self.state))
        self.oauth = TokenEndpoint(self.state)
        self.controls = Controls(self.state)


async def _unexpected(request: Request, error: Exception) -> Response:
    """A bug still answers like NHS's server does: a 500 OperationOutcome, not plain text."""
    return _error_response(request, 500, str(error) or type(error).__name__, spine_uuid())


def create_app(config: SandboxConfig | None = None) -> Starlette:
    """A Starlette app serving the SDS FHIR API, the token endpoint and the sandbox controls.

    The directory is loaded and indexed here, once; requests never scan it.
    """
    sandbox = _Sandbox(config or SandboxConfig())
    routes = [
        _AnyMethodRoute(f"{FHIR_BASE}/Device", sandbox.fhir.device),
        _AnyMethodRoute(f"{FHIR_BASE}/Endpoint", sandbox.fhir.endpoint),
        _AnyMethodRoute(f"{FHIR_BASE}/healthcheck", sandbox.fhir.healthcheck),
        _AnyMethodRoute(f"{FHIR_BASE}/healthcheck/deep", sandbox.fhir.healthcheck),
        _AnyMethodRoute(f"{FHIR_BASE}/_ping", sandbox.fhir.ping),
        _AnyMethodRoute(f"{FHIR_BASE}/_status", sandbox.fhir.status),
        _AnyMethodRoute(f"{PDS_BASE}/Patient/{{id}}", sandbox.pds.patient),
        _AnyMethodRoute(TOKEN_PATH, sandbox.oauth.token),
        _AnyMethodRoute(f"{CONTROL_PREFIX}stats", sandbox.controls.stats),
        _AnyMethodRoute(f"{CONTROL_PREFIX}faults", sandbox.controls.faults),
        _AnyMethodRoute(f"{CONTROL_PREFIX}reset", sandbox.controls.reset),
        _AnyMethodRoute("/{path:path}", sandbox.fhir.not_found),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(_StatsMiddleware, state=sandbox.state)],
        exception_handlers={Exception: _unexpected},
    )
    app.state.sandbox = sandbox
    return app
