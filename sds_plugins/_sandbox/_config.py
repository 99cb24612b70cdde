"""How a sandbox behaves (:class:`SandboxConfig`), and the faults it injects."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ._gateway import GatewayConfig

#: Bounds on injected latency and control bodies, and on how many distinct paths the stats
#: count one by one: a sandbox left running (as a demo or a shared mock) must not be hung for
#: ever by one request, nor fill its memory with whatever callers send.
MAX_LATENCY_MS = 60_000
MAX_CONTROL_BODY = 64 * 1024
MAX_STATS_PATHS = 1000
OTHER_PATHS = "(other paths)"

#: The live proxy's policy literals (``proxies/live/apiproxy/policies`` of
#: ``NHSDigital/spine-directory-service-api``): ``SpikeArrest.xml`` ``40ps``, ``Quota.xml``
#: 2,400 per minute, ``ResponseCache.xml`` 1,800 s. The first two are Apigee's fallbacks for
#: ``apiproduct.ratelimit`` and ``apiproduct.developer.quota.limit``, which the product NHS
#: deploys (``manifest_template.yml``) sets to ``300pm`` and 300 per minute: see
#: :data:`PRODUCT_SPIKE_ARREST_PER_S` and :data:`PRODUCT_QUOTA_PER_MIN`.
LIVE_SPIKE_ARREST_PER_S = 40.0
LIVE_QUOTA_PER_MIN = 2400
LIVE_RESPONSE_CACHE_S = 1800.0
#: The standard ``spine-directory-service-{env}`` product's limits (``manifest_template.yml``:
#: ``ratelimit: 300pm``, ``quota: '300'`` per 1 minute); a product made for one application
#: may differ.
PRODUCT_SPIKE_ARREST_PER_S = 5.0
PRODUCT_QUOTA_PER_MIN = 300
#: How long NHS's server waits for LDAP before it gives up with no records: ``SDSClient``'s
#: ``timeout`` default of 3 s, which ``sds_client_factory.py`` never overrides.
LDAP_TIMEOUT_MS = 3000.0


@dataclass(frozen=True)
class SandboxConfig:
    """How a sandbox behaves. Every field has a default matching NHS's public sandbox."""

    data_dir: Path | None = None
    spine_core_ods: str = "YES"
    latency_ms: float = 0
    error_rate: float = 0
    error_status: int = 503
    #: The API gateway's policies (see ``_gateway.py``); ``None`` turns one off.
    #: ``SandboxConfig.gateway()`` gives NHS's live values (40/s, 2,400/min, 1,800 s).
    spike_arrest_per_s: float | None = None
    quota_per_min: int | None = None
    response_cache_s: float | None = None
    page_size: int | None = None
    api_key: str | None = None
    jwks: dict[str, Any] | None = None
    synthetic: int = 0
    token_ttl_s: int = 599
    seed: int = 0
    #: PDS's application rate limit (smoothed, like a spike arrest); ``None``: no limit.
    pds_rate_per_s: float | None = None
    #: Every /Device and /Endpoint search waits ``ldap_timeout_ms`` and finds nothing, as NHS's
    #: server answers when its LDAP query times out (a 200 with ``total: 0``).
    ldap_timeout: bool = False
    ldap_timeout_ms: float = LDAP_TIMEOUT_MS

    def __post_init__(self) -> None:
        if not 0 <= self.ldap_timeout_ms <= MAX_LATENCY_MS:
            raise ValueError(f"ldap_timeout_ms must be between 0 and {MAX_LATENCY_MS}")
        if self.pds_rate_per_s is not None and not 0 < self.pds_rate_per_s <= 10_000:
            raise ValueError("pds_rate_per_s must be above 0 and at most 10,000")
        if not 0 <= self.latency_ms <= MAX_LATENCY_MS:
            raise ValueError(f"latency_ms must be between 0 and {MAX_LATENCY_MS}")
        if not 0 <= self.error_rate <= 1:
            raise ValueError("error_rate must be between 0 and 1")
        if not 400 <= self.error_status <= 599:
            raise ValueError("error_status must be an HTTP error status (400-599)")
        self.gateway_config()  # validates the gateway's values
        if self.page_size is not None and self.page_size < 1:
            raise ValueError("page_size must be at least 1")
        if self.synthetic < 0:
            raise ValueError("synthetic must not be negative")
        if self.token_ttl_s < 1:
            raise ValueError("token_ttl_s must be at least 1")

    def gateway_config(self) -> GatewayConfig:
        return GatewayConfig(self.spike_arrest_per_s, self.quota_per_min, self.response_cache_s)

    @classmethod
    def gateway(cls, **fields: Any) -> SandboxConfig:
        """A sandbox behind a gateway with the live proxy's policy literals: spike arrest at
        40/s (one request per 25 ms), 2,400 requests per calendar minute, a 1,800 s response
        cache. Those rates are the policies' fallbacks; the standard product's are 300 per
        minute for both (``spike_arrest_per_s=5, quota_per_min=300``)."""
        defaults: dict[str, Any] = {
            "spike_arrest_per_s": LIVE_SPIKE_ARREST_PER_S,
            "quota_per_min": LIVE_QUOTA_PER_MIN,
            "response_cache_s": LIVE_RESPONSE_CACHE_S,
        }
        return cls(**{**defaults, **fields})


@dataclass
class _Faults:
    latency_ms: float
    error_rate: float
    error_status: int
    outage: bool = False
    retry_after: int | None = None
    ldap_timeout: bool = False
    ldap_timeout_ms: float = LDAP_TIMEOUT_MS

    @classmethod
    def from_config(cls, config: SandboxConfig) -> _Faults:
        return cls(
            config.latency_ms,
            config.error_rate,
            config.error_status,
            ldap_timeout=config.ldap_timeout,
            ldap_timeout_ms=config.ldap_timeout_ms,
        )


def _updated_faults(current: _Faults, body: object) -> _Faults:
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    values = asdict(current)
    for key, value in body.items():
        if key not in values:
            raise ValueError(f"unknown fault setting '{key}'")
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key == "latency_ms" and not (number and 0 <= value <= MAX_LATENCY_MS):
            raise ValueError(f"latency_ms must be a number from 0 to {MAX_LATENCY_MS}")
        if key == "error_rate" and not (number and 0 <= value <= 1):
            raise ValueError("error_rate must be a number between 0 and 1")
        if key == "error_status" and not (
            isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599
        ):
            raise ValueError("error_status must be an integer between 400 and 599")
        if key == "outage" and not isinstance(value, bool):
            raise ValueError("outage must be true or false")
        if key == "ldap_timeout" and not isinstance(value, bool):
            raise ValueError("ldap_timeout must be true or false")
        if key == "ldap_timeout_ms" and not (number and 0 <= value <= MAX_LATENCY_MS):
            raise ValueError(f"ldap_timeout_ms must be a number from 0 to {MAX_LATENCY_MS}")
        if (
            key == "retry_after"
            and value is not None
            and not (
                isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 86_400
            )
        ):
            raise ValueError("retry_after must be an integer from 0 to 86400, or null")
        values[key] = value
    return _Faults(**values)
