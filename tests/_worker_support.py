"""Broker test harness for the worker: one client per broker, worker processes, waiting.

:class:`AmqpBroker` and :class:`NatsBroker` publish requests the way an adopter would and
collect every outcome (envelopes, failures, replies) with its message id, correlation id and
attempts. Every test uses its own queue/subject names and removes them (and the streams or
retry queues the worker created) at the end. :class:`WorkerProcess` runs ``sds-plugins
worker`` as a real subprocess, its log in a file. The ``broker`` fixture (each test once per
broker) and the ``workers`` fixture are here for every worker test module to import;
:class:`StallingProxy` stands between a worker and its broker and can stop forwarding.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
AMQP_URL = os.environ.get("SDS_TEST_AMQP_URL", "")
NATS_URL = os.environ.get("SDS_TEST_NATS_URL", "")
REDIS_URL = os.environ.get("SDS_TEST_REDIS_URL", "")


@dataclass(frozen=True)
class Received:
    """One outcome message as a consumer sees it."""

    destination: str
    message_id: str | None
    correlation_id: str | None
    kind: str | None  # "envelope" or "failure"
    attempts: int | None
    body: bytes
    #: The documented other properties: content_type; on RabbitMQ also persistent, app_id and
    #: timestamp (epoch seconds).
    properties: dict[str, Any] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        document = json.loads(self.body)
        assert isinstance(document, dict)
        return document


class Broker(Protocol):
    transport: str
    url: str
    requests: str
    envelopes: str
    failures: str

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def publish(
        self, body: bytes, request_id: str | None, *, reply_to: str | None = None
    ) -> None: ...
    async def add_reply_destination(self, name: str) -> None: ...
    async def delete_destination(self, name: str) -> None: ...
    async def delete_requests(self) -> None: ...
    async def take(self, destination: str) -> list[Received]: ...
    async def requests_left(self) -> int: ...


def _names(prefix: str) -> tuple[str, str, str]:
    return f"{prefix}.requests", f"{prefix}.envelopes", f"{prefix}.failures"


class AmqpBroker:
    transport = "amqp"

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.requests, self.envelopes, self.failures = _names(prefix)
        self._extra: list[str] = []

    async def open(self) -> None:
        import aio_pika

        self._connection = await aio_pika.connect(self.url)
        self._channel = await self._connection.channel()

    async def close(self) -> None:
        from sds_plugins._worker._amqp import retry_queue_name

        retry_queues = {retry_queue_name(self.requests, 2.0**k) for k in range(0, 16)}
        channel = await self._connection.channel()
        for name in [self.requests, self.envelopes, self.failures, *self._extra, *retry_queues]:
            await channel.queue_delete(name)  # deleting a missing queue is a no-op
        await self._connection.close()

    async def publish(
        self,
        body: bytes,
        request_id: str | None,
        *,
        reply_to: str | None = None,
        headers: dict[str, Any] | None = None,
        correlation_id: str | None = None,
    ) -> None:
        import aio_pika

        message = aio_pika.Message(
            body,
            message_id=request_id,
            reply_to=reply_to,
            headers=headers,
            correlation_id=correlation_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await self._channel.default_exchange.publish(message, self.requests)

    async def publish_raw(self, body: bytes, **properties: Any) -> None:
        """Publish on aiormq's channel with these ``Basic.Properties`` as they are (inside
        :func:`raw_amqp_strings`, short strings may be ``bytes`` that are not UTF-8)."""
        import aiormq

        channel = await self._channel.get_underlay_channel()
        await channel.basic_publish(
            body,
            routing_key=self.requests,
            properties=aiormq.spec.Basic.Properties(delivery_mode=2, **properties),
        )

    async def declare(self, name: str, arguments: dict[str, Any] | None = None) -> None:
        """Declare a durable queue (removed at the end) before the worker does."""
        if name not in (self.requests, self.envelopes, self.failures):
            self._extra.append(name)
        await self._channel.declare_queue(name, durable=True, arguments=arguments)

    async def delete_destination(self, name: str) -> None:
        await self._channel.queue_delete(name)

    async def get(self, queue: str) -> Any:
        """The message at the head of ``queue`` (taken off it), or ``None``."""
        found = await self._channel.get_queue(queue, ensure=False)
        return await found.get(no_ack=True, fail=False)

    async def delete_requests(self) -> None:
        await self._channel.queue_delete(self.requests)

    async def add_reply_destination(self, name: str) -> None:
        self._extra.append(name)
        await self._channel.declare_queue(name, durable=True)

    async def take(self, destination: str) -> list[Received]:
        queue = await self._channel.get_queue(destination, ensure=False)
        taken = []
        while (message := await queue.get(fail=False, no_ack=True)) is not None:
            attempts = (message.headers or {}).get("x-sds-attempts")
            taken.append(
                Received(
                    destination=destination,
                    message_id=message.message_id,
                    correlation_id=message.correlation_id,
                    kind=message.type,
                    attempts=int(attempts) if attempts is not None else None,  # type: ignore[call-overload]
                    body=message.body,
                    properties={
                        "content_type": message.content_type,
                        "persistent": message.delivery_mode == 2,  # DeliveryMode.PERSISTENT
                        "app_id": message.app_id,
                        "timestamp": message.timestamp.timestamp() if message.timestamp else None,
                    },
                )
            )
        return taken

    async def requests_left(self) -> int:
        queue = await self._channel.declare_queue(self.requests, passive=True)
        count = queue.declaration_result.message_count
        return int(count or 0)


class NatsBroker:
    transport = "nats"

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.requests, self.envelopes, self.failures = _names(prefix.replace("-", "_"))
        self._extra: list[str] = []
        self._subscriptions: dict[str, Any] = {}

    async def open(self) -> None:
        import nats

        self._nc = await nats.connect(self.url)
        self._js = self._nc.jetstream(timeout=10)

    @property
    def nc(self) -> Any:
        """The test's own NATS connection."""
        return self._nc

    @property
    def js(self) -> Any:
        """Its JetStream context."""
        return self._js

    async def close(self) -> None:
        import nats.js.errors

        from sds_plugins._worker._nats_streams import stream_name

        for subscription in self._subscriptions.values():
            await subscription.unsubscribe()
        for subject in [self.requests, self.envelopes, self.failures, *self._extra]:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await self._js.delete_stream(stream_name(subject))
        await self._nc.close()

    async def publish(
        self, body: bytes, request_id: str | None, *, reply_to: str | None = None
    ) -> None:
        headers = {}
        if request_id is not None:
            headers["Nats-Msg-Id"] = request_id
        if reply_to is not None:
            headers["Reply-To"] = reply_to
        await self._js.publish(self.requests, body, headers=headers or None)

    async def delete_requests(self) -> None:
        from sds_plugins._worker._nats_streams import stream_name

        await self._js.delete_stream(stream_name(self.requests))  # and its consumer with it

    async def delete_destination(self, name: str) -> None:
        from sds_plugins._worker._nats_streams import stream_name

        self._subscriptions.pop(name, None)  # its consumer goes with the stream
        await self._js.delete_stream(stream_name(name))

    async def add_reply_destination(self, name: str) -> None:
        from sds_plugins._worker._nats_streams import stream_name

        self._extra.append(name)
        await self._js.add_stream(name=stream_name(name), subjects=[name])

    async def take(self, destination: str) -> list[Received]:

        subscription = self._subscriptions.get(destination)
        if subscription is None:
            subscription = await self._js.pull_subscribe(destination, durable="test-collector")
            self._subscriptions[destination] = subscription
        try:
            messages = await subscription.fetch(batch=500, timeout=0.3)
        except TimeoutError:  # nats-py raises its own subclass or asyncio's
            return []
        taken = []
        for message in messages:
            headers = message.headers or {}
            attempts = headers.get("Sds-Attempts")
            taken.append(
                Received(
                    destination=destination,
                    message_id=headers.get("Nats-Msg-Id"),
                    correlation_id=headers.get("Correlation-Id"),
                    kind=headers.get("Sds-Outcome"),
                    attempts=int(attempts) if attempts is not None else None,
                    body=message.data,
                    properties={"content_type": headers.get("Content-Type")},
                )
            )
            await message.ack()
        return taken

    async def requests_left(self) -> int:
        from sds_plugins._worker._nats_streams import stream_name

        info = await self._js.stream_info(stream_name(self.requests))
        return int(info.state.messages)


class Outcomes:
    """Every outcome collected so far, from the broker's outcome destinations."""

    def __init__(self, broker: Broker, extra: Iterable[str] = ()) -> None:
        self.broker = broker
        self.destinations = [broker.envelopes, broker.failures, *extra]
        self.received: list[Received] = []

    async def collect(self) -> None:
        for destination in self.destinations:
            self.received.extend(await self.broker.take(destination))

    def by_id(self) -> dict[str | None, list[Received]]:
        grouped: dict[str | None, list[Received]] = {}
        for received in self.received:
            grouped.setdefault(received.message_id, []).append(received)
        return grouped

    def answered(self, ids: Iterable[str]) -> set[str]:
        grouped = self.by_id()
        return {request_id for request_id in ids if request_id in grouped}

    async def until(
        self, condition: Callable[[], bool], what: str, *, timeout_s: float = 90.0
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            await self.collect()
            if condition():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.2)


class WorkerProcess:
    """``python -m sds_plugins worker`` in a subprocess, logging to a file."""

    def __init__(
        self,
        broker: Broker,
        log: Path,
        *,
        base_url: str,
        args: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.log = log
        environ = {k: v for k, v in os.environ.items() if not k.startswith("SDS_")}
        environ.update(
            {
                "SDS_BASE_URL": base_url,
                "SDS_WORKER_BROKER_URL": broker.url,  # not argv: a password would show in ps
                "SDS_WORKER_REQUESTS": broker.requests,
                "SDS_WORKER_ENVELOPES": broker.envelopes,
                "SDS_WORKER_FAILURES": broker.failures,
                **(env or {}),
            }
        )
        self._file = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sds_plugins", "worker", *args],
            cwd=ROOT,
            env=environ,
            stdout=self._file,
            stderr=subprocess.STDOUT,
        )

    def text(self) -> str:
        return self.log.read_text()

    async def ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while "worker ready" not in self.text():
            if self.process.poll() is not None:
                raise AssertionError(
                    f"the worker exited ({self.process.returncode}):\n{self.text()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"the worker did not get ready:\n{self.text()}")
            await asyncio.sleep(0.1)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def exited(self, timeout_s: float = 60.0) -> int:
        deadline = time.monotonic() + timeout_s
        while (code := self.process.poll()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"the worker did not exit:\n{self.text()}")
            await asyncio.sleep(0.1)
        return code

    def outcome_lines(self) -> list[str]:
        return [line for line in self.text().splitlines() if " outcome=" in line]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)
        self._file.close()


def unique_prefix() -> str:
    return f"sds-test-{uuid.uuid4().hex[:10]}"


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (Linux ``VmHWM``), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(
    name="broker",
    params=[
        pytest.param(
            "amqp",
            marks=[
                pytest.mark.amqp,
                pytest.mark.skipif(
                    not AMQP_URL,
                    reason="needs RabbitMQ: set SDS_TEST_AMQP_URL "
                    "(e.g. amqp://guest:guest@127.0.0.1:5672/)",
                ),
            ],
        ),
        pytest.param(
            "nats",
            marks=[
                pytest.mark.nats,
                pytest.mark.skipif(
                    not NATS_URL,
                    reason="needs NATS with JetStream: set SDS_TEST_NATS_URL "
                    "(e.g. nats://127.0.0.1:4222)",
                ),
            ],
        ),
    ],
)
async def broker_fixture(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    """A client of RabbitMQ, then of NATS: each test that takes it runs once per broker."""
    prefix = unique_prefix()
    client: Broker = (
        AmqpBroker(AMQP_URL, prefix) if request.param == "amqp" else NatsBroker(NATS_URL, prefix)
    )
    await client.open()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture(name="workers")
def workers_fixture(broker: Broker, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """``start(base_url, *args, env=None)``: worker processes, all killed at the end."""
    started: list[WorkerProcess] = []

    def start(base_url: str, *args: str, env: dict[str, str] | None = None) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started) + 1}.log"
        process = WorkerProcess(broker, log, base_url=base_url, args=args, env=env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


# --------------------------------------------------------------------------- hostile helpers


@contextlib.contextmanager
def raw_amqp_strings() -> Iterator[None]:
    """pamqp (in this process) writes ``bytes`` short strings and table names as they are:
    what a Java or Go client may send, UTF-8 or not (pamqp itself only writes ``str``)."""
    import pamqp.encode

    strict_short = pamqp.encode.METHODS["shortstr"]
    strict_table = pamqp.encode.field_table

    def short_string(value: Any) -> bytes:
        if isinstance(value, bytes):
            return struct.pack("B", len(value)) + value
        return strict_short(value)

    def field_table(value: Any) -> bytes:
        if not value:
            return struct.pack(">I", 0)
        parts = []
        for key, item in value.items():
            name = key if isinstance(key, bytes) else key.encode()
            parts.append(struct.pack("B", len(name)) + name + pamqp.encode.encode_table_value(item))
        data = b"".join(parts)
        return struct.pack(">I", len(data)) + data

    pamqp.encode.METHODS["shortstr"] = short_string
    pamqp.encode.METHODS["table"] = field_table
    pamqp.encode.field_table = field_table  # nested tables
    try:
        yield
    finally:
        pamqp.encode.METHODS["shortstr"] = strict_short
        pamqp.encode.METHODS["table"] = strict_table
        pamqp.encode.field_table = strict_table


class StallingProxy:
    """A TCP proxy between a worker and its broker that can stop forwarding, both ways, while
    keeping every connection open: a broker that accepts but never answers. New connections
    after :meth:`stall` are accepted and left silent too. Runs in threads on an ephemeral
    port; :meth:`close` ends it."""

    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        assert parts.hostname is not None and parts.port is not None, target_url
        self._target = (parts.hostname, parts.port)
        self._target_url = parts
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self.stalled = threading.Event()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        """The broker URL, through the proxy (credentials and path kept)."""
        parts = self._target_url
        userinfo, _, _ = parts.netloc.rpartition("@")
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    def stall(self) -> None:
        self.stalled.set()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in [self._listener, *sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def _keep(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._keep(client)
            self.connections += 1
            if self.stalled.is_set():
                continue  # accepted, and never answered
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            self._keep(upstream)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        source.settimeout(0.2)
        while not self.stalled.is_set() and not self._closed.is_set():
            try:
                data = source.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)
                return
            if self.stalled.is_set():
                break  # read just as it stalled: dropped, as a silent broker would
            try:
                sink.sendall(data)
            except OSError:
                break
        # Stalled: nothing more is read or written, and the sockets stay open until close().
        self._closed.wait()
