"""Serving an ASGI app under uvicorn, bounded against hostile clients.

The sandbox and ``sds-plugins serve`` both run this way: a socket bound here (port 0 works
and the port is known early), uvicorn's h11 protocol with

- a deadline for each request's headers (:data:`HEADER_TIMEOUT_S` from its first byte, or from
  the connection): a client trickling a header byte now and then is cut off rather than
  holding a connection, and a file descriptor, for as long as it likes;
- limits on the request head: at most :data:`MAX_HEADERS` header fields and
  :data:`MAX_HEAD_BYTES` for the request line and headers together, else ``431`` (h11 alone
  limits only a head still incomplete, and not the number of fields);
- a graceful shutdown that tells kept-alive clients: the answer to a request in flight carries
  ``Connection: close`` and the connection is closed after it (uvicorn alone closes it without
  saying so, and a client reusing it meets a reset).

Protocol-level rejections (``400`` for a malformed request, ``431``) are RFC 9457 problem
documents; :meth:`BoundedH11Protocol.rejection` can be overridden to shape them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = [
    "HEADER_TIMEOUT_S",
    "MAX_HEADERS",
    "MAX_HEAD_BYTES",
    "BoundedH11Protocol",
    "bind",
    "bounded_protocol",
    "run_in_foreground",
    "server_config",
    "url",
]

#: A request's headers must be complete within this of its first byte (or of the connection).
HEADER_TIMEOUT_S = 10.0
#: At most this many header fields in a request (Apache's ``LimitRequestFields`` default).
MAX_HEADERS = 100
#: At most this many bytes of request line and header fields together (h11's own default for
#: an incomplete head).
MAX_HEAD_BYTES = 16 * 1024

_CLOSE = (b"connection", b"close")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; binding it ourselves makes port 0 race-free and the port known early."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # An explicit IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose
    # proto says TCP, and without it every response stalls ~40 ms on Nagle + delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def url(host: str, port: int) -> str:
    """``http://host:port``, with an IPv6 address in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _HeadTooLarge(h11.RemoteProtocolError):
    pass


class _BoundedConnection(h11.Connection):
    """h11's server side, refusing a request head beyond the limits (h11 itself only limits a
    head that is still incomplete), and keeping the error it raised for the response."""

    def __init__(self, max_headers: int, max_head_bytes: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_head_bytes)
        self.max_headers = max_headers
        self.max_head_bytes = max_head_bytes
        self.rejected: h11.RemoteProtocolError | None = None

    def next_event(self) -> Any:
        try:
            event = super().next_event()
            if isinstance(event, h11.Request):
                headers = event.headers
                if len(headers) > self.max_headers:
                    raise _HeadTooLarge(
                        f"more than {self.max_headers} header fields", error_status_hint=431
                    )
                size = len(event.method) + len(event.target) + 12  # "M T HTTP/1.1\r\n"
                size += sum(len(name) + len(value) + 4 for name, value in headers.raw_items())
                if size > self.max_head_bytes:
                    raise _HeadTooLarge(
                        f"request line and headers over {self.max_head_bytes} bytes",
                        error_status_hint=431,
                    )
        except h11.RemoteProtocolError as exc:
            if str(exc) == "Receive buffer too long":  # h11's own limit, on an incomplete head
                exc = _HeadTooLarge(
                    f"request line and headers over {self.max_head_bytes} bytes",
                    error_status_hint=431,
                )
            self.rejected = exc
            raise exc from None
        return event


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline, head limits and a telling shutdown.

    The limits are class attributes: :func:`bounded_protocol` makes a subclass with others
    (uvicorn takes the class, or its import path, in ``Config(http=...)``).
    """

    header_timeout_s: float = HEADER_TIMEOUT_S
    max_headers: int = MAX_HEADERS
    max_head_bytes: int = MAX_HEAD_BYTES

    _header_timer: asyncio.TimerHandle | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = _BoundedConnection(self.max_headers, self.max_head_bytes)

    # -- the header deadline -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        between_requests = self.cycle is None or self.cycle.response_complete
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete:
            self._disarm()  # a request's headers are complete: the app has it now
        elif between_requests and self._header_timer is None:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expire(self) -> None:
        self._header_timer = None
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()

    # -- rejections as problem documents ------------------------------------------------------

    def rejection(self, status: int, detail: str) -> tuple[bytes, bytes]:
        """``(content type, body)`` of a request refused before the app saw it."""
        document = {
            "type": "about:blank",
            "title": HTTPStatus(status).phrase,
            "status": status,
            "detail": detail,
        }
        return b"application/problem+json", json.dumps(document).encode()

    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this for any h11.RemoteProtocolError, with a fixed message.
        rejected = getattr(self.conn, "rejected", None)
        status = 400
        detail = "malformed HTTP request"
        if isinstance(rejected, _HeadTooLarge):
            status, detail = 431, str(rejected)
        content_type, body = self.rejection(status, detail)
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            _CLOSE,
        ]
        try:
            self.transport.write(
                self.conn.send(
                    h11.Response(
                        status_code=status, headers=headers, reason=HTTPStatus(status).phrase
                    )
                )
                or b""
            )
            self.transport.write(self.conn.send(h11.Data(data=body)) or b"")
            self.transport.write(self.conn.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError:
            pass  # no answer possible in this state: just close
        self.transport.close()

    # -- shutdown -------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Called by the server to start a graceful shutdown: a connection between requests is
        closed now; one with a request in flight is told ``Connection: close`` in the answer
        (when it has not started yet), and closed after it."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and not cycle.response_started:
            cycle.default_headers = [*cycle.default_headers, _CLOSE]
        self._disarm()
        super().shutdown()


def bounded_protocol(
    *,
    header_timeout_s: float = HEADER_TIMEOUT_S,
    max_headers: int = MAX_HEADERS,
    max_head_bytes: int = MAX_HEAD_BYTES,
    base: type[BoundedH11Protocol] = BoundedH11Protocol,
) -> type[BoundedH11Protocol]:
    """A subclass of ``base`` with these limits (for a server in this process: a class made
    here cannot be imported by name in another)."""
    return type(
        base.__name__,
        (base,),
        {
            "header_timeout_s": header_timeout_s,
            "max_headers": max_headers,
            "max_head_bytes": max_head_bytes,
        },
    )


def server_config(
    app: Any,
    *,
    http: type[BoundedH11Protocol] | str = BoundedH11Protocol,
    lifespan: bool,
    timeout_graceful_shutdown: int,
    access_log: bool = False,
    **options: Any,
) -> uvicorn.Config:
    """uvicorn's configuration with the bounded protocol (``http``: the class, or its import
    path ``module:Class`` for worker processes)."""
    return uvicorn.Config(
        app,
        http=http,
        lifespan="on" if lifespan else "off",
        # None leaves the host application's logging configuration alone.
        log_config=None,
        access_log=access_log,
        # Our callers see the URL as the client sent it, not a proxy's rewrite.
        proxy_headers=False,
        timeout_graceful_shutdown=timeout_graceful_shutdown,
        **options,
    )


def run_in_foreground(
    server: uvicorn.Server, sock: socket.socket, started: Callable[[], None]
) -> bool:
    """Serve on ``sock`` until SIGINT/SIGTERM, calling ``started()`` once connections are
    accepted; closes the socket. Returns whether the server ever started (the sandbox and
    ``sds-plugins serve`` both run this way)."""

    async def main() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            done, _ = await asyncio.wait({task}, timeout=0.01)
            if done:
                break
        if server.started:
            started()
        await task

    # uvicorn shuts down gracefully on SIGINT/SIGTERM and then re-raises the signal; routing
    # SIGTERM to KeyboardInterrupt as well lets both end here with a normal return.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(main())
    finally:
        sock.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return bool(server.started)
