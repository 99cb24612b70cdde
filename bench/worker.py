"""The routing worker on RabbitMQ against a bare relay: ``python bench/worker.py``.

Prints figures and ratios; it asserts nothing. Needs RabbitMQ (``--amqp-url``, default
``SDS_TEST_AMQP_URL`` or ``amqp://guest:guest@127.0.0.1:5672/``). For 1 and 2 processes each:

- ``sds-plugins worker`` (warm cache: every route was resolved once before measuring);
- a bare relay on the same broker: consume, publish the body with publisher confirms, then
  acknowledge; no parsing, no routing. It is the ceiling a worker could reach.

Each case publishes ``--count`` requests at once (throughput: first publish to last outcome;
latency: publish to outcome, so it includes the time a request waits in the queue), then
``--serial`` requests one at a time (latency with an empty queue). The sandbox and each worker
or relay run in their own processes, like a deployment on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

PSIS = "urn:nhs:names:services:psis:REPC_IN150016UK05"
ROOT = Path(__file__).resolve().parents[1]


# -- the baseline: a relay that does nothing but move messages with the worker's guarantees --


async def relay(url: str, requests: str, envelopes: str, concurrency: int) -> None:
    connection = await aio_pika.connect(url)
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    await channel.set_qos(prefetch_count=concurrency)
    queue = await channel.declare_queue(requests, durable=True)
    await channel.declare_queue(envelopes, durable=True)

    async def forward(message: AbstractIncomingMessage) -> None:
        outgoing = aio_pika.Message(
            message.body,
            message_id=message.message_id,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await channel.default_exchange.publish(outgoing, envelopes, mandatory=True)
        await message.ack()

    await queue.consume(forward)
    print("relay ready", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await connection.close()


# -- the measuring side ----------------------------------------------------------------------


class Process:
    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._file = log.open("w")
        self.process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=self._file
        )

    async def ready(self) -> None:
        deadline = time.monotonic() + 60
        while "ready" not in self.log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"did not start:\n{self.log.read_text()}")
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._file.close()


class Sandbox:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sds_plugins", "sandbox", "--port", "0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if not line.startswith("sandbox listening on "):
            raise SystemExit(f"sandbox did not start: {line!r}")
        self.url = line.removeprefix("sandbox listening on ")
        self.base_url = f"{self.url}/spine-directory/FHIR/R4"

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=10)


@dataclass
class Figures:
    throughput: float
    p50_ms: float
    p99_ms: float
    serial_p50_ms: float
    serial_p99_ms: float


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


class Bench:
    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.requests = f"{prefix}.requests"
        self.envelopes = f"{prefix}.envelopes"
        self.failures = f"{prefix}.failures"
        self.sent: dict[str, float] = {}
        self.latencies: dict[str, float] = {}
        self.failed = 0
        self._waiting: dict[str, asyncio.Future[None]] = {}

    async def open(self) -> None:
        self.connection = await aio_pika.connect(self.url)
        # Publishing without confirms: the publisher must not be what limits the figures.
        self.channel = await self.connection.channel(publisher_confirms=False)
        for name in (self.requests, self.envelopes, self.failures):
            await self.channel.declare_queue(name, durable=True)
        listen = await self.connection.channel()
        await listen.set_qos(prefetch_count=1000)
        for name in (self.envelopes, self.failures):
            queue = await listen.declare_queue(name, durable=True)
            await queue.consume(self._on_outcome, no_ack=True)

    async def _on_outcome(self, message: AbstractIncomingMessage) -> None:
        now = time.perf_counter()
        request_id = message.message_id or ""
        if message.routing_key == self.failures:
            self.failed += 1
        sent = self.sent.pop(request_id, None)
        if sent is not None:
            self.latencies[request_id] = now - sent
        waiter = self._waiting.pop(request_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def publish(self, body: bytes, request_id: str) -> None:
        self.sent[request_id] = time.perf_counter()
        await self.channel.default_exchange.publish(
            aio_pika.Message(body, message_id=request_id), self.requests
        )

    async def burst(self, bodies: list[bytes]) -> tuple[float, list[float]]:
        self.latencies.clear()
        ids = [uuid.uuid4().hex for _ in bodies]
        started = time.perf_counter()
        for request_id, body in zip(ids, bodies, strict=True):
            await self.publish(body, request_id)
        while len(self.latencies) < len(ids):
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - started
        return len(ids) / elapsed, [self.latencies[request_id] for request_id in ids]

    async def serial(self, bodies: list[bytes]) -> list[float]:
        latencies = []
        for body in bodies:
            request_id = uuid.uuid4().hex
            done = asyncio.get_running_loop().create_future()
            self._waiting[request_id] = done
            await self.publish(body, request_id)
            await asyncio.wait_for(done, 30)
            latencies.append(self.latencies[request_id])
        return latencies

    async def close(self) -> None:
        channel = await self.connection.channel()
        for name in (self.requests, self.envelopes, self.failures):
            await channel.queue_delete(name)
        for bucket in (1, 2, 4, 8, 16, 32, 64):
            await channel.queue_delete(f"{self.requests}.retry.{bucket}s")
        await self.connection.close()


def _request(org: str) -> bytes:
    return (
        f'{{"adapter": "example-ebxml", "org": "{org}", "interaction": "{PSIS}", '
        '"options": {"from_asid": "200000000359"}}'
    ).encode()


async def measure(
    kind: str, processes: int, args: argparse.Namespace, sandbox: Sandbox, orgs: list[str]
) -> Figures:
    bench = Bench(args.amqp_url, f"sds-bench-{uuid.uuid4().hex[:8]}")
    await bench.open()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDS_")}
    env.update({"SDS_BASE_URL": sandbox.base_url, "SDS_WORKER_BROKER_URL": args.amqp_url})
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    started: list[Process] = []
    try:
        for index in range(processes):
            if kind == "worker":
                argv = [sys.executable, "-m", "sds_plugins", "worker", "--requests"]
                argv += [bench.requests, "--envelopes", bench.envelopes]
                argv += ["--failures", bench.failures, "--concurrency", str(args.concurrency)]
            else:
                argv = [sys.executable, __file__, "--relay", bench.requests, bench.envelopes]
                argv += ["--concurrency", str(args.concurrency), "--amqp-url", args.amqp_url]
            started.append(Process(argv, env, logs / f"{kind}-{processes}-{index}.log"))
        for process in started:
            await process.ready()
        # Warm-up: every worker resolves every route once (competing consumers share the work,
        # so each route goes round several times), and the connections are made.
        await bench.burst([_request(org) for org in orgs * (8 * processes)])
        throughput, latencies = await bench.burst(
            [_request(orgs[i % len(orgs)]) for i in range(args.count)]
        )
        serial = await bench.serial([_request(orgs[i % len(orgs)]) for i in range(args.serial)])
        if bench.failed:
            print(f"  ({bench.failed} failures: see {logs})")
        return Figures(
            throughput=throughput,
            p50_ms=statistics.median(latencies) * 1000,
            p99_ms=_percentile(latencies, 0.99) * 1000,
            serial_p50_ms=statistics.median(serial) * 1000,
            serial_p99_ms=_percentile(serial, 0.99) * 1000,
        )
    finally:
        for process in started:
            process.stop()
        await bench.close()


async def main(args: argparse.Namespace) -> None:
    sandbox = Sandbox()
    try:
        # Warm cache: which routes does not matter (each is a cache hit), only that they are.
        orgs = ["YES"]
        print(
            f"routing worker vs bare relay on RabbitMQ: {args.count:,} requests at once, then "
            f"{args.serial} one by one; concurrency {args.concurrency} per process; warm cache"
        )
        header = f"  {'':<22}{'msgs/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'1-by-1 p50':>12}{'p99':>8}"
        print(header)
        results: dict[tuple[str, int], Figures] = {}
        for processes in (1, 2):
            for kind in ("relay", "worker"):
                figures = await measure(kind, processes, args, sandbox, orgs)
                results[kind, processes] = figures
                label = f"{kind} x{processes}"
                print(
                    f"  {label:<22}{figures.throughput:>9,.0f}{figures.p50_ms:>9.1f}"
                    f"{figures.p99_ms:>9.1f}{figures.serial_p50_ms:>12.2f}"
                    f"{figures.serial_p99_ms:>8.2f}"
                )
        for processes in (1, 2):
            ratio = results["worker", processes].throughput / results["relay", processes].throughput
            print(f"  worker / relay throughput, {processes} process(es): {ratio:.0%} (goal: 70 %)")
    finally:
        sandbox.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--amqp-url",
        default=os.environ.get("SDS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
    )
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--serial", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--logs", default="/tmp/sds-plugins-bench-worker")
    parser.add_argument("--relay", nargs=2, metavar=("REQUESTS", "ENVELOPES"))
    arguments = parser.parse_args()
    if arguments.relay:
        asyncio.run(relay(arguments.amqp_url, *arguments.relay, concurrency=arguments.concurrency))
    else:
        asyncio.run(main(arguments))
