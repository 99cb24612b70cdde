"""The bearer token as a directory source, so adapters get it without doing I/O themselves.

Adapters are pure planners: the only asynchronous place a plugin owns is a
:class:`~sds_plugins.DirectorySource`. The FHIR adapter plans one lookup on this source; the
source asks the shared auth (``sds_provide_auth(source="ers")``, by default a
:class:`~sds_plugins.SignedJwtAuth`) for the value it would put in ``Authorization``, without
sending any API request. The auth keeps the token and refreshes it under its lock, so many
envelopes (and concurrent routes) share one token request.

The token is a secret: the adapter's ``cache_scope`` is ``None``, so the engine never stores it
(in memory or Redis); it lives only in the auth object and in the envelope's masked header.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, SecretStr

from sds_plugins import (
    ConfigurationError,
    DirectorySource,
    DirectoryTimeoutError,
    DirectoryUnavailableError,
    FetchResult,
    MalformedResponseError,
)

__all__ = ["TOKEN_SOURCE", "AccessToken", "BearerTokenSource", "TokenQuery", "bearer_token"]

logger = logging.getLogger("sds_plugins_ers.token")

#: The directory-source name (and the ``sds_provide_auth`` source name) of the e-RS token.
TOKEN_SOURCE = "ers"  # noqa: S105 - a source name, not a secret
_PROBE_URL = "https://token.invalid/"


class TokenQuery(BaseModel):
    """ "The current bearer token for ``token_url``" as a lookup the engine can run."""

    model_config = ConfigDict(frozen=True)

    token_url: str

    def key(self) -> str:
        return f"bearer-token:{self.token_url}"


class AccessToken(BaseModel):
    """A bearer token and when it expires (as far as we know)."""

    model_config = ConfigDict(frozen=True)

    value: SecretStr
    expires_at: datetime | None = None


async def bearer_token(
    auth: httpx.Auth, client: httpx.AsyncClient, *, correlation_id: str | None = None
) -> tuple[str, httpx.Response | None]:
    """The ``Authorization`` value ``auth`` would send, and the token response if one was needed.

    Drives the auth's own flow with a probe request that is never sent: the flow's token request
    (if its cache is empty or close to expiry) goes out through ``client``, then the flow sets
    ``Authorization`` on the probe, which is read and dropped. The auth's lock, cache, errors and
    ``tokens_fetched`` counter all work as for a real API call. (A ``token()`` method on
    :class:`~sds_plugins.SignedJwtAuth` would make this unnecessary; see the README.)
    """
    probe = httpx.Request("GET", _PROBE_URL)
    if correlation_id:
        probe.headers["X-Correlation-ID"] = correlation_id
    flow = auth.async_auth_flow(probe)
    token_response: httpx.Response | None = None
    try:
        request = await flow.__anext__()
        while request is not probe:
            # Streamed: the auth reads the token answer itself, within its size limit.
            if token_response is not None:
                await token_response.aclose()
            token_response = await client.send(request, stream=True)
            request = await flow.asend(token_response)
    finally:
        await flow.aclose()
        if token_response is not None:
            await token_response.aclose()
    value = probe.headers.get("Authorization")
    if not value:
        raise ConfigurationError(f"the e-RS auth {auth!r} did not set an Authorization header")
    return value, token_response


def _expiry(auth: httpx.Auth | None) -> datetime | None:
    """When the token the auth holds expires, if it says (``SignedJwtAuth`` does)."""
    expires_at = getattr(auth, "token_expires_at", None)
    if not isinstance(expires_at, float):
        return None
    return datetime.fromtimestamp(expires_at, UTC)


class BearerTokenSource(DirectorySource):
    """Answers :class:`TokenQuery` lookups with the current :class:`AccessToken`."""

    name = TOKEN_SOURCE
    record_type = AccessToken

    def __init__(
        self,
        auth: httpx.Auth | Callable[[], httpx.Auth | None] | None,
        *,
        token_url: str,
        timeout_s: float,
    ) -> None:
        super().__init__()
        # A callable is resolved on first use: a broken e-RS configuration then fails e-RS
        # routes, not the start of every router that happens to have this plugin installed.
        self._auth_factory = auth if callable(auth) and not isinstance(auth, httpx.Auth) else None
        self._auth: httpx.Auth | None = None if self._auth_factory else auth  # type: ignore[assignment]
        self.namespace = token_url
        self._timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None
        # When the token we hold expires: learnt from the token response that brought it.
        self._expires_at: dict[str, datetime] = {}

    @property
    def auth(self) -> httpx.Auth | None:
        """The auth whose token this source hands out (resolved on first use)."""
        if self._auth_factory is not None:
            self._auth = self._auth_factory()
            self._auth_factory = None
        return self._auth

    def _http(self) -> httpx.AsyncClient:
        # One client (one connection pool) for the source's life, created on first use.
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout_s)
        return self._client

    async def fetch(
        self, query: Any, *, correlation_id: str, no_cache: bool = False
    ) -> FetchResult:
        if not isinstance(query, TokenQuery):
            raise TypeError(f"the {self.name} source takes TokenQuery, not {query!r}")
        auth = self.auth
        if auth is None:
            raise ConfigurationError(
                "application-restricted e-RS FHIR requests (ERS_ACCESS_MODE=application-"
                "restricted, the default) need the application's signed-JWT credentials: set "
                "ERS_CLIENT_ID, ERS_KID and ERS_PRIVATE_KEY_FILE, or provide an auth for "
                "source 'ers' with the sds_provide_auth hook. For user-restricted access set "
                "ERS_ACCESS_MODE=user-restricted and pass the user's NHS CIS2 access token as "
                "the user_access_token option"
            )
        started = time.perf_counter()
        try:
            # The whole exchange within the timeout (httpx's is per read).
            async with asyncio.timeout(self._timeout_s):
                value, response = await bearer_token(
                    auth, self._http(), correlation_id=correlation_id
                )
        except httpx.TimeoutException as exc:
            raise DirectoryTimeoutError(
                "the token endpoint did not answer in time",
                method="POST",
                url=self.namespace,
                correlation_id=correlation_id,
            ) from exc
        except TimeoutError:
            raise DirectoryTimeoutError(
                f"the token endpoint gave no whole answer within {self._timeout_s:g}s",
                method="POST",
                url=self.namespace,
                correlation_id=correlation_id,
            ) from None
        except httpx.TransportError as exc:
            raise DirectoryUnavailableError(
                f"cannot reach the token endpoint ({type(exc).__name__})",
                method="POST",
                url=self.namespace,
                correlation_id=correlation_id,
            ) from exc
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise MalformedResponseError(
                "the e-RS auth did not produce a bearer token", field="Authorization"
            )
        expires_at = _expiry(auth) if response is not None else None
        if expires_at is not None:
            self._expires_at = {token: expires_at}  # only the newest token matters
        logger.debug(
            "bearer token ready in %.3fs (%s)",
            time.perf_counter() - started,
            "fetched" if response is not None else "cached",
        )
        record = AccessToken(value=SecretStr(token), expires_at=self._expires_at.get(token))
        return FetchResult(records=(record,), attempts=1 if response is not None else 0)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
