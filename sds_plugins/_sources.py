"""Directory sources: what the engine asks. SDS is one; plugins add others (MESH lookup)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel, ConfigDict, TypeAdapter

from ._client import SdsClient
from ._models import DirectoryRecord
from ._query import DeviceQuery, EndpointQuery

if TYPE_CHECKING:
    from ._pacing import RateLimiter
    from ._settings import Settings

__all__ = ["DirectorySource", "FetchResult", "SdsSource", "SourceContext"]


class SourceContext:
    """What ``sds_register_sources`` implementations get to build their sources with."""

    def __init__(
        self,
        settings: Settings,
        rate_limiter: RateLimiter | None,
        auth_for: Callable[[str], httpx.Auth | None],
    ) -> None:
        self.settings = settings
        self.rate_limiter = rate_limiter
        self._auth_for = auth_for

    def auth_for(self, source: str) -> httpx.Auth | None:
        """The ``httpx.Auth`` plugins provide for ``source`` (``sds_provide_auth``)."""
        return self._auth_for(source)


class FetchResult(BaseModel):
    """Records from one fetch, and how many HTTP attempts it took."""

    model_config = ConfigDict(frozen=True)

    records: tuple[Any, ...]
    attempts: int = 1


class DirectorySource:
    """Base class for a directory the engine can query.

    Subclasses set ``name`` (what :class:`Lookup` ``source`` names), ``namespace`` (part of every
    cache key: the base URL or environment, so int and prod answers never mix) and
    ``record_type`` (the type of their records, used to store them in shared caches), and
    implement :meth:`fetch`. Retries belong in ``fetch`` (idempotent reads only); the engine adds
    caching, single-flight, rate limiting and events around it.
    """

    name: str
    namespace: str
    record_type: Any
    #: How long its answers stay fresh (``None``: the router's ``cache_ttl_s``).
    cache_ttl_s: float | None = None
    #: Whether its answers may be served stale while it fails (SDS's may: routing data changes
    #: rarely; a patient's registration is not served past its short life).
    stale_if_error: bool = True

    def __init__(self) -> None:
        self._adapter: TypeAdapter[tuple[Any, ...]] | None = None

    async def fetch(
        self, query: Any, *, correlation_id: str, no_cache: bool = False
    ) -> FetchResult:
        """Records for ``query``. ``no_cache``: the caller bypasses caches, so ask any cache
        between us and the directory to skip too (SDS: ``Cache-Control: no-cache``, which the
        API gateway's 30-minute response cache honours)."""
        raise NotImplementedError

    async def start(self) -> None:
        """Prepare before the first fetch (start a rate limiter of the source's own, say).
        Called once when the router starts."""

    async def aclose(self) -> None:
        """Release connections. Called once when the router closes."""

    def _records_adapter(self) -> TypeAdapter[tuple[Any, ...]]:
        if self._adapter is None:
            self._adapter = TypeAdapter(tuple[self.record_type, ...])  # type: ignore[name-defined]
        return self._adapter

    def encode(self, records: tuple[Any, ...]) -> bytes:
        """Records as bytes for a cache backend."""
        return self._records_adapter().dump_json(records)

    def decode(self, data: bytes) -> tuple[Any, ...]:
        return self._records_adapter().validate_json(data)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.namespace!r}>"


class SdsSource(DirectorySource):
    """The Spine Directory Service FHIR API, through one shared :class:`SdsClient`."""

    name = "sds"
    record_type = DirectoryRecord

    def __init__(self, client: SdsClient) -> None:
        super().__init__()
        self.client = client
        self.namespace = client.base_url

    async def fetch(
        self, query: Any, *, correlation_id: str, no_cache: bool = False
    ) -> FetchResult:
        if not isinstance(query, DeviceQuery | EndpointQuery):
            raise TypeError(f"the sds source takes DeviceQuery or EndpointQuery, not {query!r}")
        result = await self.client.search(query, correlation_id=correlation_id, no_cache=no_cache)
        return FetchResult(records=result.records, attempts=result.attempts)

    async def aclose(self) -> None:
        await self.client.aclose()


def prepare_http_stack() -> None:
    """What the HTTP stack sets up on its first connection, done now, at start: httpcore
    imports anyio's asyncio backend and its socket and TLS streams lazily, ~15 ms that would
    otherwise fall on a new process's first route (``bench/fleet.py`` measures it)."""
    import anyio
    import anyio.streams.tls  # imported for its side effect: loaded once

    anyio.get_current_task()  # loads the running event loop's backend
