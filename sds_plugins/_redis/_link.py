"""The connection to Redis every Redis-backed part shares the rules of: one bounded pool
that waits when busy (back-pressure, not an outage), short timeouts, the password never shown,
and an outage noticed once, with the in-process fallback used until Redis answers again."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from .._exceptions import ConfigurationError

__all__ = ["DEFAULT_MAX_CONNECTIONS", "REDIS_ERRORS", "PoolBusy", "RedisLink"]

logger = logging.getLogger("sds_plugins.redis")

_T = TypeVar("_T")

#: Short timeouts: a cache that answers in more than half a second is worse than no cache.
_SOCKET_TIMEOUT_S: Final = 0.5
#: What counts as "Redis is not working" (connection refused, timeouts, protocol errors).
REDIS_ERRORS: Final = (RedisError, OSError, TimeoutError)
#: Connections per process and how long a command may wait for a free one. Waiting is
#: back-pressure: with hundreds of lookups in flight the pool is briefly full, which says
#: nothing about Redis's health (redis-py's default pool raises instead, which used to switch
#: the whole process to its fallback).
DEFAULT_MAX_CONNECTIONS: Final = 64
_POOL_WAIT_S: Final = 5.0


def _describe_url(url: str) -> str:
    """``host:port/db`` (or the socket path): never the user name or password."""
    try:
        parts = urlsplit(url)
        if parts.scheme.endswith("unix"):
            return unquote(parts.path) or "unix socket"
        db = parts.path.strip("/") or "0"
        return f"{parts.hostname or 'localhost'}:{parts.port or 6379}/{db}"
    except ValueError:
        return "<invalid Redis URL>"


def _password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


class PoolBusy(Exception):
    """No pooled Redis connection became free within the wait: load here, not a Redis outage."""


class _Pool(BlockingConnectionPool):
    """Waits for a free connection (bounded) and says so distinctly when the wait runs out."""

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except RedisConnectionError as exc:
            # The pool's own wait timed out (its message, a TimeoutError cause); a refused or
            # broken connection has another cause and is a real failure.
            if isinstance(exc.__cause__, TimeoutError) and "No connection available" in str(exc):
                raise PoolBusy(f"no Redis connection free within {self.timeout}s") from None
            raise


class RedisLink:
    """One Redis client (a bounded, blocking connection pool) and whether Redis is up.

    Shared by :class:`RedisCache` and :class:`~sds_plugins._redis.RedisPacer`: short
    socket timeouts, no retries with backoff, and after a failure a pause of
    ``reconnect_after_s`` during which callers use their fallback, with one warning per outage
    and an info line when Redis is back. The password never appears in its repr or logs.
    """

    def __init__(
        self,
        url: str,
        *,
        role: str,
        reconnect_after_s: float = 5.0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if reconnect_after_s < 0 or max_connections < 1:
            raise ConfigurationError("Redis needs reconnect_after_s >= 0 and max_connections >= 1")
        self._url = url
        self.role = role
        self.location = _describe_url(url)
        self._secret = _password(url)
        self.reconnect_after_s = reconnect_after_s
        self.max_connections = max_connections
        self._client: aioredis.Redis | None = self._new_client()  # parses the URL; no I/O
        # What the pause after a failure goes by (tests advance their own instead of sleeping).
        self._clock = clock
        self._down_until = 0.0  # clock() before which Redis is not tried
        self.down = False

    def __repr__(self) -> str:
        return f"RedisLink({self.location!r})"

    def _new_client(self) -> aioredis.Redis:
        try:
            pool = _Pool.from_url(
                self._url,
                max_connections=self.max_connections,
                timeout=_POOL_WAIT_S,
                socket_connect_timeout=_SOCKET_TIMEOUT_S,
                socket_timeout=_SOCKET_TIMEOUT_S,
                # One immediate retry survives a pooled connection the server closed; redis-py's
                # default (10 retries with backoff) would hold every route for seconds when
                # Redis is down, which is what the fallback is for.
                retry=Retry(NoBackoff(), 1),
                # Lets the pub/sub listener notice a half-open connection.
                health_check_interval=30,
            )
        except ValueError:  # redis-py's message can contain the URL: do not chain it
            raise ConfigurationError(
                f"invalid Redis URL for {self.location}: expected redis://, rediss:// or unix://"
            ) from None
        return aioredis.Redis(connection_pool=pool)

    def client(self) -> aioredis.Redis | None:
        """The client, or ``None`` while Redis is considered down."""
        if self.down and self._clock() < self._down_until:
            return None
        if self._client is None:
            self._client = self._new_client()
        return self._client

    def scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def failed(self, exc: BaseException, fallback: str) -> None:
        """Redis failed: stop trying for ``reconnect_after_s``; warn once per outage."""
        self._down_until = self._clock() + self.reconnect_after_s
        if not self.down:
            self.down = True
            logger.warning(
                "Redis %s at %s is unavailable (%s: %s); %s and trying Redis again every %gs",
                self.role,
                self.location,
                type(exc).__name__,
                self.scrub(str(exc)),
                fallback,
                self.reconnect_after_s,
            )
        else:
            logger.debug("Redis %s at %s still unavailable", self.role, self.location)

    def succeeded(self) -> None:
        if self.down:
            self.down = False
            logger.info("Redis %s at %s is reachable again", self.role, self.location)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.aclose()
            except REDIS_ERRORS as exc:
                logger.debug("closing Redis connections failed: %s", self.scrub(str(exc)))
