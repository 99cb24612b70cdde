"""The SDS FHIR API client: one shared ``httpx.AsyncClient``, paging, and the rules an SDS
answer needs (an LDAP timeout is not "no match"; ``Bundle.total`` is reconciled). Retries,
pacing and the error mapping are the retrying GET's (``_retrying.py``).

Every lookup sends an ``X-Correlation-ID`` (the caller's, or a fresh UUID) and carries it into
its :class:`LookupResult` or its exception, so one id follows a message from the broker's log to
NHS England's service desk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict

from ._environments import resolve_base_url
from ._exceptions import (
    DirectoryTimeoutError,
    MalformedResponseError,
)
from ._models import (
    AccreditedSystem,
    MessageHandlingEndpoint,
    ParsedBundle,
    parse_devices,
    parse_endpoints,
)
from ._pacing import RateLimiter
from ._query import DeviceQuery, EndpointQuery, SdsQuery
from ._upstream import (
    ACCEPT_ENCODING,
    DEFAULT_MAX_RESPONSE_BYTES,
    safe_url,
)
from ._validation import check_correlation_id, sds_correlation_id

if TYPE_CHECKING:
    pass
from ._retrying import RetryPolicy, error_from_response, get_with_retries

__all__ = ["LDAP_TIMEOUT_S", "LookupResult", "SdsClient"]

logger = logging.getLogger("sds_plugins.client")

#: NHS's SDS server gives its LDAP query 3 s, then answers an empty searchset (a 200): the
#: default for ``SDS_LDAP_TIMEOUT_S`` (``sds/lookup/sds_client.py``,
#: ``NHSDigital/spine-directory-service-api``).
LDAP_TIMEOUT_S = 3.0

_USER_AGENT = "sds-plugins/0.1 (+https://github.com/sds-plugins/sds-plugins)"

_R = TypeVar("_R", AccreditedSystem, MessageHandlingEndpoint)


class LookupResult(BaseModel, Generic[_R]):
    """Records from one lookup, with what it took to get them."""

    model_config = ConfigDict(frozen=True)

    records: tuple[_R, ...]
    query: str
    correlation_id: str
    base_url: str
    attempts: int = 1
    pages: int = 1
    elapsed_s: float = 0.0


class SdsClient:
    """Async client for the SDS FHIR API (``/Device`` and ``/Endpoint``).

    One instance owns one ``httpx.AsyncClient`` (one connection pool, one TLS context) for its
    whole life; use it as an async context manager or call :meth:`aclose`.
    """

    def __init__(
        self,
        base_url: str = "sandbox",
        *,
        auth: httpx.Auth | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        max_pages: int = 10,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 100,
        rate_limiter: RateLimiter | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        ldap_timeout_s: float | None = LDAP_TIMEOUT_S,
    ) -> None:
        self.base_url = resolve_base_url(base_url)
        #: An empty answer that took this long is SDS's LDAP timeout, not "no records" (see
        #: :meth:`_search`); ``None`` takes every empty answer as "no records" at once.
        self.ldap_timeout_s = ldap_timeout_s
        self.rate_limiter = rate_limiter
        self.retry = retry or RetryPolicy()
        self.max_pages = max_pages
        self.max_response_bytes = max_response_bytes
        self._http = httpx.AsyncClient(
            auth=auth,
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
            headers={
                "Accept": "application/fhir+json",
                "Accept-Encoding": ACCEPT_ENCODING,
                "User-Agent": _USER_AGENT,
            },
            transport=transport,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            follow_redirects=False,
        )
        self._origin = _origin(self.base_url)
        #: Requests sent to the directory, retries and extra pages included.
        self.requests_sent = 0

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> SdsClient:
        """Build a client from :class:`sds_plugins.Settings` (environment variables)."""
        options: dict[str, Any] = {
            "auth": settings.build_auth(),
            "connect_timeout_s": settings.connect_timeout_s,
            "read_timeout_s": settings.read_timeout_s,
            "retry": RetryPolicy.from_settings(settings),
            "max_pages": settings.max_pages,
            "max_response_bytes": settings.max_response_bytes,
            "ldap_timeout_s": settings.ldap_timeout_s or None,
        }
        options.update(overrides)
        return cls(settings.resolved_base_url(), **options)

    def __repr__(self) -> str:
        return f"SdsClient(base_url={self.base_url!r})"

    async def __aenter__(self) -> SdsClient:
        if self.rate_limiter is not None:
            await self.rate_limiter.start()  # used alone (a router starts the one it shares)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- public lookups --------------------------------------------------------------------

    async def devices(
        self,
        *,
        org: str,
        interaction: str,
        party_key: str | None = None,
        manufacturer: str | None = None,
        correlation_id: str | None = None,
        no_cache: bool = False,
    ) -> LookupResult[AccreditedSystem]:
        """Accredited systems (``/Device``) of ``org`` for ``interaction``."""
        query = DeviceQuery.build(
            org=org, interaction=interaction, party_key=party_key, manufacturer=manufacturer
        )
        return await self.search_devices(query, correlation_id=correlation_id, no_cache=no_cache)

    async def endpoints(
        self,
        *,
        org: str | None = None,
        interaction: str | None = None,
        party_key: str | None = None,
        correlation_id: str | None = None,
        no_cache: bool = False,
    ) -> LookupResult[MessageHandlingEndpoint]:
        """Message handling endpoints (``/Endpoint``); one record per address."""
        query = EndpointQuery.build(org=org, interaction=interaction, party_key=party_key)
        return await self.search_endpoints(query, correlation_id=correlation_id, no_cache=no_cache)

    async def search_devices(
        self, query: DeviceQuery, *, correlation_id: str | None = None, no_cache: bool = False
    ) -> LookupResult[AccreditedSystem]:
        return await self._search(query, parse_devices, correlation_id, no_cache)

    async def search_endpoints(
        self, query: EndpointQuery, *, correlation_id: str | None = None, no_cache: bool = False
    ) -> LookupResult[MessageHandlingEndpoint]:
        return await self._search(query, parse_endpoints, correlation_id, no_cache)

    async def search(
        self, query: SdsQuery, *, correlation_id: str | None = None, no_cache: bool = False
    ) -> LookupResult[AccreditedSystem] | LookupResult[MessageHandlingEndpoint]:
        """Run either kind of query."""
        if isinstance(query, DeviceQuery):
            return await self.search_devices(
                query, correlation_id=correlation_id, no_cache=no_cache
            )
        return await self.search_endpoints(query, correlation_id=correlation_id, no_cache=no_cache)

    # -- machinery ---------------------------------------------------------------------------

    async def _search(
        self,
        query: SdsQuery,
        parse: Callable[[object], ParsedBundle[_R]],
        correlation_id: str | None,
        no_cache: bool,
    ) -> LookupResult[_R]:
        """One search, every page of it, with the two rules an empty answer needs.

        NHS's SDS server answers its LDAP timeout (3 s) with an empty searchset, a 200
        (``sds/lookup/sds_client.py``, ``_get_query_result``, in
        ``NHSDigital/spine-directory-service-api``), and the gateway's response cache then
        gives that empty answer to every caller for 30 minutes, fast. So an empty answer is
        believed only when it came past the gateway's cache (``Cache-Control: no-cache``)
        and faster than :attr:`ldap_timeout_s`: one from the cache is asked again past it,
        and a slow one is asked again once; slow and empty twice is a
        :class:`DirectoryTimeoutError`, never "not found". The lookup's budget is one
        deadline for all of it.
        """
        correlation_id = check_correlation_id(correlation_id)
        # SDS takes only a UUID: another caller's id reaches it as a UUID derived from it
        # (results, errors and events keep the caller's own).
        headers = {"X-Correlation-ID": sds_correlation_id(correlation_id)}
        if no_cache:
            # Skips the API gateway's own 30-minute response cache (lookup and store alike).
            headers["Cache-Control"] = "no-cache"
        key = query.key()
        started = time.perf_counter()
        deadline = time.monotonic() + self.retry.budget_s
        url = f"{self.base_url}/{query.resource}"
        params = httpx.QueryParams(tuple(query.params()))
        attempts = pages = 0
        for asked in (1, 2):
            records, attempts, used, total, answer_s = await self._pages(
                url, params, headers, parse, correlation_id, attempts, deadline
            )
            pages += used
            if records or self.ldap_timeout_s is None:
                break
            slow = answer_s >= self.ldap_timeout_s
            if not slow and "Cache-Control" in headers:
                break  # past the gateway's cache, and quick: SDS has no match
            if asked == 2:
                raise DirectoryTimeoutError(
                    f"SDS answered no records after {answer_s:.1f}s, twice: that is how its "
                    "directory (LDAP) timing out looks, not a genuine 'no match'",
                    correlation_id=correlation_id,
                    method="GET",
                    url=url,
                    attempts=attempts,
                )
            logger.info(
                "SDS answered %s with no records%s: asking again past the gateway's cache "
                "(correlation_id=%r)",
                key,
                f" after {answer_s:.1f}s (its LDAP timeout looks so)" if slow else "",
                correlation_id,
            )
            headers = {**headers, "Cache-Control": "no-cache"}
        if total is not None and total != len(records):
            raise MalformedResponseError(
                f"SDS's Bundle.total says {total} but it holds {len(records)} entries, with no "
                "'next' link to the rest",
                field="total",
                correlation_id=correlation_id,
                method="GET",
                url=url,
                status_code=200,
                attempts=attempts,
            )
        return LookupResult[_R](
            records=tuple(records),
            query=key,
            correlation_id=correlation_id,
            base_url=self.base_url,
            attempts=attempts,
            pages=pages,
            elapsed_s=time.perf_counter() - started,
        )

    async def _pages(
        self,
        url: str,
        params: httpx.QueryParams | None,
        headers: dict[str, str],
        parse: Callable[[object], ParsedBundle[_R]],
        correlation_id: str,
        attempts: int,
        deadline: float,
    ) -> tuple[list[_R], int, int, int | None, float]:
        """Every page of one search: ``(records, attempts so far, pages, the last page's
        total, how long the first page's answer took)``."""
        records: list[_R] = []
        total: int | None = None
        first_answer_s = 0.0
        pages = 0
        while True:
            pages += 1
            if pages > self.max_pages:
                raise MalformedResponseError(
                    f"SDS kept sending 'next' links beyond {self.max_pages} pages",
                    field="link",
                    correlation_id=correlation_id,
                    method="GET",
                    url=url,
                    attempts=attempts,
                )
            answer_s: list[float] = []
            body, used = await self._get(url, params, headers, correlation_id, deadline, answer_s)
            attempts += used
            if pages == 1 and answer_s:
                first_answer_s = answer_s[-1]
            try:
                parsed = parse(body)
            except MalformedResponseError as exc:
                exc.correlation_id, exc.url, exc.method = correlation_id, url, "GET"
                exc.status_code, exc.attempts = 200, attempts
                raise
            records.extend(parsed.records)
            total = parsed.total
            if not parsed.next_url:
                break
            url, params = self._checked_next(parsed.next_url, correlation_id), None
        return records, attempts, pages, total, first_answer_s

    def _within(self, deadline: float, correlation_id: str, url: str) -> RetryPolicy:
        """The retry policy with what is left of the lookup's budget (a second page, or the
        second ask of an empty answer, spend the same budget as the first)."""
        left = deadline - time.monotonic()
        if left >= self.retry.budget_s:
            return self.retry
        if left <= 0:
            raise DirectoryTimeoutError(
                f"SDS gave no usable answer within the {self.retry.budget_s:g}s budget",
                correlation_id=correlation_id,
                method="GET",
                url=safe_url(url),
            )
        return self.retry.model_copy(update={"budget_s": left})

    def _checked_next(self, next_url: str, correlation_id: str) -> str:
        try:
            origin = _origin(next_url)
            httpx.URL(next_url)
        except (ValueError, httpx.InvalidURL):
            raise MalformedResponseError(
                "SDS 'next' link is not a valid URL",
                field="link.next",
                correlation_id=correlation_id,
                status_code=200,
            ) from None
        # Credentials ride on every request: never follow a link to another origin with them.
        if origin != self._origin or "@" in urlsplit(next_url).netloc:
            raise MalformedResponseError(
                "SDS 'next' link points to another origin; refusing to follow it",
                field="link.next",
                correlation_id=correlation_id,
                url=safe_url(next_url),
            )
        return next_url

    async def _get(
        self,
        url: str,
        params: httpx.QueryParams | None,
        headers: dict[str, str],
        correlation_id: str,
        deadline: float,
        answer_s: list[float] | None = None,
    ) -> tuple[bytes, int]:
        """GET with retries within what is left of the lookup's budget at ``deadline``;
        returns the body and the number of attempts (and appends to ``answer_s`` how long the
        answer took, from its request written to its headers)."""

        async def count() -> None:
            self.requests_sent += 1

        return await get_with_retries(
            self._http,
            url,
            params=params,
            headers=headers,
            policy=self._within(deadline, correlation_id, url),
            correlation_id=correlation_id,
            error_for=error_from_response,
            before_attempt=count,
            rate_limiter=self.rate_limiter,
            max_bytes=self.max_response_bytes,
            on_answer=None if answer_s is None else answer_s.append,
        )


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()
