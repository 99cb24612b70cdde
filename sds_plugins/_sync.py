"""A blocking facade over :class:`SdsClient` for code that is not async.

The async client runs on an event loop in a private thread (an anyio blocking portal), so the
connection pool is shared by every call, and the facade works whether or not the calling thread
already runs an event loop of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from types import TracebackType
from typing import Any

from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._adapter import Lookup, LookupOutcome
from ._client import LookupResult, SdsClient
from ._envelope import RoutingEnvelope
from ._models import AccreditedSystem, MessageHandlingEndpoint

__all__ = ["SyncRouter", "SyncSdsClient"]


class SyncSdsClient:
    """Same arguments and methods as :class:`SdsClient`, without ``await``."""

    def __init__(self, base_url: str = "sandbox", **options: Any) -> None:
        self._start(lambda: SdsClient(base_url, **options))

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> SyncSdsClient:
        self = cls.__new__(cls)
        self._start(lambda: SdsClient.from_settings(settings, **overrides))
        return self

    def _start(self, factory: Callable[[], SdsClient]) -> None:
        self._stack = ExitStack()
        self._portal: BlockingPortal = self._stack.enter_context(start_blocking_portal())
        try:
            # Built on the portal's loop: the client and its pool belong to that loop.
            self._client: SdsClient = self._portal.call(factory)
        except BaseException:
            self._stack.close()
            raise

    @property
    def base_url(self) -> str:
        return self._client.base_url

    @property
    def requests_sent(self) -> int:
        return self._client.requests_sent

    def __repr__(self) -> str:
        return f"SyncSdsClient(base_url={self.base_url!r})"

    def devices(self, **kwargs: Any) -> LookupResult[AccreditedSystem]:
        """See :meth:`SdsClient.devices`."""
        return self._portal.call(lambda: self._client.devices(**kwargs))

    def endpoints(self, **kwargs: Any) -> LookupResult[MessageHandlingEndpoint]:
        """See :meth:`SdsClient.endpoints`."""
        return self._portal.call(lambda: self._client.endpoints(**kwargs))

    def close(self) -> None:
        try:
            self._portal.call(self._client.aclose)
        finally:
            self._stack.close()

    def __enter__(self) -> SyncSdsClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SyncRouter:
    """A blocking :class:`Router`: ``with SyncRouter(settings) as router: router.route(...)``."""

    def __init__(self, settings: Any = None, **kwargs: Any) -> None:
        from ._engine import Router

        self._stack = ExitStack()
        self._portal: BlockingPortal = self._stack.enter_context(start_blocking_portal())
        try:
            self.router: Router = self._portal.call(lambda: Router(settings, **kwargs))
            self._portal.call(self.router.start)
        except BaseException:
            self._stack.close()
            raise

    def route(self, adapter: str, **kwargs: Any) -> RoutingEnvelope:
        """See :meth:`Router.route`."""
        return self._portal.call(lambda: self.router.route(adapter, **kwargs))

    def lookup(self, lookup: Lookup, **kwargs: Any) -> LookupOutcome:
        """See :meth:`Router.lookup`."""
        return self._portal.call(lambda: self.router.lookup(lookup, **kwargs))

    def close(self) -> None:
        try:
            self._portal.call(self.router.aclose)
        finally:
            self._stack.close()

    def __enter__(self) -> SyncRouter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
