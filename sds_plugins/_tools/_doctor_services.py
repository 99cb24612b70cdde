"""``sds-plugins doctor``'s check lines, and its checks of the services a process talks to
beside the directory (the worker's broker, the plugins' keepalives), each with a short
timeout."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from .._exceptions import SdsPluginsError
from .._keepalive import Keepalive

__all__ = ["BROKER_TIMEOUT_S", "Check", "broker_check", "keepalive_checks"]

#: How long the broker check waits for a TCP connection (and then for the greeting).
BROKER_TIMEOUT_S = 3.0
#: How long a keepalive may take in doctor (the MESH handshake is one request).
KEEPALIVE_TIMEOUT_S = 15.0
_DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671, "nats": 4222, "tls": 4222}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


async def keepalive_checks(keepalives: list[Keepalive]) -> list[Check]:
    """Each keepalive the plugins register (the MESH handshake...), made once: ``ok`` with
    how long it took, or ``FAIL`` with the error's class and message (URLs, never a secret)."""
    checks = []
    for keepalive in keepalives:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(KEEPALIVE_TIMEOUT_S):
                await keepalive.call()
        except TimeoutError:
            detail = f"no answer within {KEEPALIVE_TIMEOUT_S:g}s"
            checks.append(Check(keepalive.name, False, detail))
        except Exception as exc:
            checks.append(Check(keepalive.name, False, f"{type(exc).__name__}: {exc}"))
        else:
            elapsed = (time.perf_counter() - started) * 1000
            every = keepalive.interval_s / 3600
            checks.append(
                Check(keepalive.name, True, f"done in {elapsed:.0f} ms (due every {every:g} h)")
            )
    return checks


async def broker_check(environ: Mapping[str, str]) -> Check:
    """The worker's broker, when ``SDS_WORKER_BROKER_URL`` is set: a TCP connection within
    :data:`BROKER_TIMEOUT_S`, then the protocol's greeting where it is plain text (NATS sends
    ``INFO``; RabbitMQ answers the AMQP header with ``connection.start``)."""
    if not environ.get("SDS_WORKER_BROKER_URL"):
        return Check("broker", True, "not configured (SDS_WORKER_BROKER_URL is not set)")
    from pydantic import ValidationError

    from .._adapter_options import load_adapter_options
    from .._worker._settings import WorkerSettings, mask_url

    try:
        worker = WorkerSettings()
    except ValidationError as exc:
        fields = ", ".join(
            "SDS_WORKER_" + "_".join(str(part) for part in error["loc"]).upper()
            for error in exc.errors()
        )
        return Check("broker", False, f"invalid worker settings: {fields}")
    url = worker.broker_url.get_secret_value()
    if worker.config is not None:
        try:
            load_adapter_options(worker.config)
        except SdsPluginsError as exc:
            return Check("broker", False, f"SDS_WORKER_CONFIG: {exc}")
    results = [await _reach(server.strip(), mask_url) for server in url.split(",") if server]
    reached = [what for ok, what in results if ok]
    if reached:
        return Check("broker", True, "; ".join(reached))
    return Check("broker", False, "; ".join(what for _, what in results))


async def _reach(url: str, mask: Callable[[str], str]) -> tuple[bool, str]:
    shown = mask(url)
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname or "localhost"
        port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
    except ValueError:
        return False, f"{shown}: not a URL"
    started = time.perf_counter()
    try:
        async with asyncio.timeout(BROKER_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return False, f"cannot reach {shown}: no connection within {BROKER_TIMEOUT_S:g}s"
    except OSError as exc:
        # errno's own words ("Connection refused"); a failed name lookup has a negative one.
        reason = (
            os.strerror(exc.errno)
            if exc.errno and exc.errno > 0
            else (exc.strerror or str(exc) or type(exc).__name__)
        )
        return False, f"cannot reach {shown}: {reason}"
    try:
        greeting = await _greeting(scheme, reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    elapsed = (time.perf_counter() - started) * 1000
    if greeting is not None and not greeting[0]:
        return False, f"{shown} accepted a connection but {greeting[1]}"
    said = f", {greeting[1]}" if greeting is not None else ""
    return True, f"{shown} accepts connections ({elapsed:.0f} ms{said})"


async def _greeting(
    scheme: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> tuple[bool, str] | None:
    """Whether the server speaks the broker's protocol (``None``: TLS, not looked at)."""
    try:
        async with asyncio.timeout(BROKER_TIMEOUT_S):
            if scheme == "nats":
                line = await reader.readline()
                if line.startswith(b"INFO "):
                    return True, "NATS sent INFO"
                return False, "it did not greet as a NATS server does (INFO)"
            if scheme == "amqp":
                writer.write(b"AMQP\x00\x00\x09\x01")
                await writer.drain()
                frame = await reader.read(7)
                # A method frame (type 1) on channel 0: connection.start.
                if frame[:3] == b"\x01\x00\x00":
                    return True, "AMQP 0-9-1 connection.start received"
                return False, "it did not answer as an AMQP 0-9-1 broker does"
    except TimeoutError:
        return False, f"it sent no greeting within {BROKER_TIMEOUT_S:g}s"
    except OSError as exc:
        return False, f"the connection failed: {exc.strerror or type(exc).__name__}"
    return None
