"""An ``httpx.Auth`` around another one (or none) that sees every request and answer.

Metrics and tracing plugins wrap the directory auth (``sds_provide_auth`` with
``wrapper=True``) in it: an auth flow runs for every request a source sends (token requests
included) in the task that sends it, so it can add a ``traceparent`` header and count answer
statuses without touching the client.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Generator

import httpx

__all__ = ["ObservedAuth"]


class ObservedAuth(httpx.Auth):
    """``inner``'s flow, with ``before_send(request)`` and ``after_response(response)`` around
    each request it yields. Neither callback may raise."""

    def __init__(
        self,
        inner: httpx.Auth | None,
        *,
        before_send: Callable[[httpx.Request], None] | None = None,
        after_response: Callable[[httpx.Response], None] | None = None,
    ) -> None:
        self.inner = inner
        self._before = before_send
        self._after = after_response
        # Mirrors the inner auth's needs (a token flow reads the token answer's body).
        self.requires_request_body = getattr(inner, "requires_request_body", False)
        self.requires_response_body = getattr(inner, "requires_response_body", False)

    def __repr__(self) -> str:
        # The inner auth's repr masks its secrets; this adds nothing of its own.
        return f"ObservedAuth({self.inner!r})"

    def _send(self, request: httpx.Request) -> httpx.Request:
        if self._before is not None:
            self._before(request)
        return request

    def _answered(self, response: httpx.Response) -> httpx.Response:
        if self._after is not None:
            self._after(response)
        return response

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        if self.inner is None:
            self._answered((yield self._send(request)))
            return
        flow = self.inner.sync_auth_flow(request)
        try:
            outgoing = next(flow)
            while True:
                response = self._answered((yield self._send(outgoing)))
                try:
                    outgoing = flow.send(response)
                except StopIteration:
                    return
        finally:
            flow.close()

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if self.inner is None:
            self._answered((yield self._send(request)))
            return
        flow = self.inner.async_auth_flow(request)
        try:
            outgoing = await flow.__anext__()
            while True:
                response = self._answered((yield self._send(outgoing)))
                try:
                    outgoing = await flow.asend(response)
                except StopAsyncIteration:
                    return
        finally:
            await flow.aclose()
