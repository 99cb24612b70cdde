"""The routing service's warm path over HTTP, against a bare starlette endpoint in the same run.

``python bench/serve.py`` (``make bench`` runs it). It asserts nothing; it prints, for the
GP Connect and the example ebXML adapters, warm ``POST /route/ADAPTER`` requests per second
from ``sds-plugins serve`` (metrics and
tracing plugins on, as the command registers them when their extras are installed), the same
for a bare starlette endpoint that returns a fixed JSON body (the service's own envelope,
captured first, so both answers are the same size), and the ratio. Goal (issue 14): at least
50 % of the bare endpoint.

Both servers run in processes of their own under uvicorn with the same settings; the sandbox
runs in a third. The client is the same for both: a small keep-alive HTTP/1.1 client on
asyncio streams (an HTTP library's own cost would flatten the difference), with
``--connections`` requests in flight, for ``--seconds`` per side (in alternating one-second
slices) after a short warm-up. After
one cold route every route is a cache hit, which is what a busy integration engine sees.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sds_plugins_gpconnect import EXAMPLE_CONSUMER

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
PSIS = "urn:nhs:names:services:psis:REPC_IN150016UK05"
GPC = "urn:nhs:names:services:gpconnect:fhir:operation:gpc.getstructuredrecord-1"
#: What each measured request sends, by adapter (the sandbox's reference data answers both).
CASES: dict[str, dict[str, object]] = {
    "gpconnect": {
        "org": "B82617",
        "interaction": GPC,
        "options": dict(EXAMPLE_CONSUMER),
    },
    "example-ebxml": {"org": "YES", "interaction": PSIS},
}
_START_TIMEOUT_S = 60.0
_IO_TIMEOUT_S = 30.0

# --------------------------------------------------------------------------- the bare server


def bare_server(body_file: str) -> None:
    """``--bare BODY_FILE``: a starlette app answering every POST with the file's JSON."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from sds_plugins._sandbox._server import _bind

    body = Path(body_file).read_bytes()

    async def fixed(request: Request) -> Response:
        await request.body()  # the service reads its request too
        return Response(body, media_type="application/json")

    app = Starlette(routes=[Route("/route/{adapter}", fixed, methods=["POST"])])
    sock = _bind("127.0.0.1", 0)
    server = uvicorn.Server(
        uvicorn.Config(app, lifespan="off", log_config=None, access_log=False, proxy_headers=False)
    )

    async def main() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            done, _ = await asyncio.wait({task}, timeout=0.05)
            if done:
                return
        print(f"serving on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
        await task

    asyncio.run(main())


# --------------------------------------------------------------------------- processes


async def start(
    *args: str, env: dict[str, str] | None = None
) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )
    assert process.stdout is not None
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), _START_TIMEOUT_S)).decode()
    except TimeoutError:
        process.kill()
        raise SystemExit(f"{' '.join(args)} did not start in {_START_TIMEOUT_S:g}s") from None
    if not line.startswith("serving on "):
        process.kill()
        raise SystemExit(f"{' '.join(args)} did not start: {line.strip()!r}")
    return process, line.removeprefix("serving on ").strip()


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.kill()
            await process.wait()


# --------------------------------------------------------------------------- the client


def request_bytes(url: str, adapter: str, body: bytes) -> tuple[str, int, bytes]:
    host_port = url.removeprefix("http://")
    host, port = host_port.rsplit(":", 1)
    head = (
        f"POST /route/{adapter} HTTP/1.1\r\nHost: {host_port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return host, int(port), head.encode() + body


async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _IO_TIMEOUT_S)
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await asyncio.wait_for(reader.readexactly(length), _IO_TIMEOUT_S)
    return status


class Side:
    """``connections`` keep-alive connections to one server, and what they have counted."""

    def __init__(self, url: str, adapter: str, body: bytes) -> None:
        self.url = url
        self.host, self.port, self.request = request_bytes(url, adapter, body)
        self.streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.done = 0
        self.elapsed = 0.0
        self.slices: list[float] = []

    async def open(self, connections: int) -> None:
        for _ in range(connections):
            self.streams.append(
                await asyncio.wait_for(asyncio.open_connection(self.host, self.port), _IO_TIMEOUT_S)
            )

    async def run(self, seconds: float, *, count: bool = True) -> None:
        """Keep every connection busy for ``seconds``; count the answers if ``count``."""
        finish = time.perf_counter() + seconds
        done = 0

        async def loop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal done
            while time.perf_counter() < finish:
                status = await one(reader, writer, self.request)
                if status != 200:
                    raise SystemExit(f"{self.url} answered {status}")
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(loop(r, w) for r, w in self.streams))
        elapsed = time.perf_counter() - started
        if count:
            self.done += done
            self.elapsed += elapsed
            self.slices.append(done / elapsed)

    def close(self) -> None:
        for _, writer in self.streams:
            writer.close()

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed else 0.0


async def measure(
    service_url: str, bare_url: str, adapter: str, body: bytes, connections: int, seconds: float
) -> tuple[float, float, float]:
    """Requests per second of each side, in alternating one-second slices (a machine whose
    load drifts during the run then weighs on both sides alike), after a warm-up each; and
    the median of the slices' ratios (one slice disturbed by another process weighs little)."""
    sides = [Side(service_url, adapter, body), Side(bare_url, adapter, body)]
    try:
        for side in sides:
            await side.open(connections)
            await side.run(0.5, count=False)  # connections, caches, first-call work
        slices = max(1, round(seconds))
        for _ in range(slices):
            for side in sides:
                await side.run(seconds / slices)
        ratios = [a / b for a, b in zip(sides[0].slices, sides[1].slices, strict=True) if b]
        return sides[0].rate, sides[1].rate, statistics.median(ratios)
    finally:
        for side in sides:
            side.close()


# --------------------------------------------------------------------------- main


async def first_route(url: str, adapter: str, body: bytes) -> bytes:
    """The envelope of one (cold) route: what the bare endpoint will answer."""
    host, port, request = request_bytes(url, adapter, body)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), _IO_TIMEOUT_S)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _IO_TIMEOUT_S)
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        envelope = await asyncio.wait_for(reader.readexactly(length), _IO_TIMEOUT_S)
    finally:
        writer.close()
    if int(head.split(b" ", 2)[1]) != 200:
        raise SystemExit(f"the first {adapter} route failed: {envelope[:300]!r}")
    return envelope


async def main(connections: int, seconds: float) -> None:
    processes: list[asyncio.subprocess.Process] = []
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            sandbox, sandbox_url = await start_sandbox()
            processes.append(sandbox)
            service, service_url = await start(
                "-m",
                "sds_plugins",
                "serve",
                "--port",
                "0",
                env={
                    "SDS_BASE_URL": sandbox_url + "/spine-directory/FHIR/R4",
                    "SDS_PLUGINS_LOAD": "sds-plugins-example-ebxml,sds-plugins-gpconnect",
                    # The operator's choice that lets GP Connect routes share cached lookups.
                    "SDS_GPCONNECT_SHARED_CACHE": "1",
                },
            )
            processes.append(service)
            for adapter, request in CASES.items():
                body = json.dumps(request).encode()
                envelope = await first_route(service_url, adapter, body)
                body_file = Path(tmp) / f"{adapter}.json"
                body_file.write_bytes(envelope)
                bare, bare_url = await start(str(HERE), "--bare", str(body_file))
                try:
                    routed, fixed, median = await measure(
                        service_url, bare_url, adapter, body, connections, seconds
                    )
                finally:
                    await stop(bare)
                results.append((adapter, len(envelope), routed, fixed, median))
        finally:
            for process in reversed(processes):
                await stop(process)
    print("warm POST /route/ADAPTER through sds-plugins serve against a bare starlette endpoint")
    print(f"answering the same envelope ({connections} connections, {seconds:g}s per side)")
    for adapter, size, routed, fixed, median in results:
        print(
            f"  {adapter:14} {routed:8,.0f} requests/s  bare {fixed:8,.0f} requests/s  "
            f"({size} bytes)  ratio {routed / fixed:.0%}, median of slices {median:.0%}"
        )
    print("  goal (issue 14): at least 50% of the bare endpoint")


async def start_sandbox() -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sds_plugins",
        "sandbox",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=ROOT,
    )
    assert process.stdout is not None
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), _START_TIMEOUT_S)).decode()
    except TimeoutError:
        process.kill()
        raise SystemExit("the sandbox did not start") from None
    if not line.startswith("sandbox listening on "):
        process.kill()
        raise SystemExit(f"the sandbox did not start: {line.strip()!r}")
    return process, line.removeprefix("sandbox listening on ").strip()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--bare", metavar="BODY_FILE", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.bare:
        bare_server(arguments.bare)
    else:
        asyncio.run(main(arguments.connections, arguments.seconds))
