"""Blocking facades over :class:`SdsClient` and :class:`Router` for code that is not async.

The async object lives on an event loop in a private thread (an anyio blocking portal), so its
connection pool and cache are shared by every call, and the facade works whether or not the
calling thread already runs an event loop of its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from types import TracebackType
from typing import Any, Generic, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._adapter import Lookup, LookupOutcome
from ._client import LookupResult, SdsClient
from ._engine import Router
from ._envelope import RoutingEnvelope
from ._models import AccreditedSystem, MessageHandlingEndpoint

__all__ = ["SyncRouter", "SyncSdsClient"]

_T = TypeVar("_T")
_Inner = TypeVar("_Inner", SdsClient, Router)


class _OnPortal(Generic[_Inner]):
    """Owns a portal thread and one async object built on its loop."""

    _inner: _Inner

    def _start(self, factory: Callable[[], _Inner], start: bool = False) -> None:
        self._stack = ExitStack()
        self._portal: BlockingPortal = self._stack.enter_context(start_blocking_portal())
        try:
            # Built on the portal's loop: the object and its pool belong to that loop.
            self._inner = self._portal.call(factory)
            if start:
                self._portal.call(self._inner.__aenter__)
        except BaseException:
            self._stack.close()
            raise

    def _call(self, coroutine: Callable[[], Awaitable[_T]]) -> _T:
        return self._portal.call(coroutine)

    def close(self) -> None:
        try:
            self._portal.call(self._inner.aclose)
        finally:
            self._stack.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SyncSdsClient(_OnPortal[SdsClient]):
    """Same arguments and methods as :class:`SdsClient`, without ``await``."""

    def __init__(self, base_url: str = "sandbox", **options: Any) -> None:
        self._start(lambda: SdsClient(base_url, **options))

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> SyncSdsClient:
        self = cls.__new__(cls)
        self._start(lambda: SdsClient.from_settings(settings, **overrides))
        return self

    @property
    def base_url(self) -> str:
        return self._inner.base_url

    @property
    def requests_sent(self) -> int:
        return self._inner.requests_sent

    def __repr__(self) -> str:
        return f"SyncSdsClient(base_url={self.base_url!r})"

    def devices(self, **kwargs: Any) -> LookupResult[AccreditedSystem]:
        """See :meth:`SdsClient.devices`."""
        return self._call(lambda: self._inner.devices(**kwargs))

    def endpoints(self, **kwargs: Any) -> LookupResult[MessageHandlingEndpoint]:
        """See :meth:`SdsClient.endpoints`."""
        return self._call(lambda: self._inner.endpoints(**kwargs))


class SyncRouter(_OnPortal[Router]):
    """A blocking :class:`Router`: ``with SyncRouter(settings) as router: router.route(...)``."""

    def __init__(self, settings: Any = None, **kwargs: Any) -> None:
        self._start(lambda: Router(settings, **kwargs), start=True)

    @property
    def router(self) -> Router:
        return self._inner

    def route(self, adapter: str, **kwargs: Any) -> RoutingEnvelope:
        """See :meth:`Router.route`."""
        return self._call(lambda: self._inner.route(adapter, **kwargs))

    def lookup(self, lookup: Lookup, **kwargs: Any) -> LookupOutcome:
        """See :meth:`Router.lookup`."""
        return self._call(lambda: self._inner.lookup(lookup, **kwargs))
