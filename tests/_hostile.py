"""A hostile HTTP server for the fault matrix: it answers each path with exactly the bytes a
case prescribes (bad bodies, bombs, trickles, lies in headers), over a real socket.

Written on plain sockets and threads rather than an HTTP framework, because the point is to
send what no well-behaved framework would: a gzip bomb, a body trickled a byte at a time, a
Content-Length that lies, a body that never ends.
"""

from __future__ import annotations

import gzip
import io
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

#: What a case writes: an iterator of (bytes to send, seconds to wait before sending them).
Script = Callable[[], Iterator[tuple[bytes, float]]]


@dataclass
class Case:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    #: Instead of ``body`` (and its Content-Length): chunks sent one by one, with pauses.
    script: Script | None = None
    content_type: str = "application/fhir+json"


def response_head(case: Case, length: int | None) -> bytes:
    lines = [f"HTTP/1.1 {case.status} X", f"Content-Type: {case.content_type}"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    else:
        lines.append("Transfer-Encoding: chunked")
    lines += [f"{name}: {value}" for name, value in case.headers.items()]
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Handler(socketserver.BaseRequestHandler):
    server: HostileServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(30)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return
            data += chunk
        request_line = data.split(b"\r\n", 1)[0].decode("latin-1")
        _method, target, _ = request_line.split(" ", 2)
        path = target.split("?", 1)[0]
        self.server.seen.append(target)
        case = self.server.cases.get(path, Case(status=404))
        try:
            if case.script is None:
                sock.sendall(response_head(case, len(case.body)) + case.body)
                return
            sock.sendall(response_head(case, None))
            for payload, pause in case.script():
                if pause:
                    time.sleep(pause)
                sock.sendall(payload)
        except OSError:
            return  # the client gave up on us: that is the point of most cases


class HostileServer(socketserver.ThreadingTCPServer):
    """``with HostileServer({"/path": Case(...)}) as server: server.url``."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, cases: dict[str, Case]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.cases = cases
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


def gzip_bomb(inflated: int) -> bytes:
    """``inflated`` zero bytes, gzipped (about 1,000 to 1)."""
    out = io.BytesIO()
    block = b"\0" * (1024 * 1024)
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as compressed:
        for _ in range(inflated // len(block)):
            compressed.write(block)
    return out.getvalue()


def trickle(body: bytes, every_s: float) -> Script:
    """Send ``body`` one byte at a time, ``every_s`` apart (chunked, so it never ends early)."""

    def script() -> Iterator[tuple[bytes, float]]:
        for byte in body:
            yield b"1\r\n" + bytes([byte]) + b"\r\n", every_s
        yield b"0\r\n\r\n", 0.0

    return script


def endless(chunk: bytes, total: int) -> Script:
    """``total`` bytes of ``chunk`` repeated, chunked (a body far bigger than anyone reads)."""

    def script() -> Iterator[tuple[bytes, float]]:
        sent = 0
        while sent < total:
            yield f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n", 0.0
            sent += len(chunk)
        yield b"0\r\n\r\n", 0.0

    return script


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth
