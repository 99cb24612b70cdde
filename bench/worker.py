"""The routing worker on RabbitMQ against a bare relay: ``python bench/worker.py``.

``make bench`` runs it. It prints figures and ratios and asserts nothing. Needs RabbitMQ
(``--amqp-url``, default ``SDS_TEST_AMQP_URL`` or ``amqp://guest:guest@127.0.0.1:5672/``).
For 1 and 2 processes each:

- ``relay``, the baseline: a bare relay written the usual way with aio-pika. It consumes,
  publishes the body with publisher confirms, then acknowledges; no parsing, no routing;
- ``lean relay``: the same relay moving messages the way the worker does, on aio-pika's
  underlying aiormq channel (no ``IncomingMessage``, no ``Message``, no second task per
  delivery). Against it, the ratio is the cost of routing alone;
- ``sds-plugins worker`` with a warm cache: every process has resolved the route before the
  measurement, and the sandbox's request count shows that nothing measured reached it.

Each case publishes ``--count`` requests at once (throughput: first publish to last outcome;
latency: publish to outcome, so it includes the time a request waits in the queue), then
``--serial`` requests one at a time (latency with an empty queue). The cases are interleaved
for ``--rounds`` rounds and each row shows the round with the median throughput: on a machine
shared with other work, single runs vary by tens of percent. The CPU time the workers (or
relays) spent per message of the burst is steadier: its ratio is the throughput ratio the two
would reach where they, not the broker or a neighbour, are what limits. The sandbox and each
worker or relay run in processes of their own, like a deployment on one machine; the
measuring side publishes and consumes on aiormq's channel, so that it costs little and the
same for every case. Every wait has a timeout, the whole run is bounded by ``--deadline-s``,
and every queue is new and deleted at the end. Goal (issue 11): the worker reaches at least
70 % of the relay's throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage
from aiormq.abc import DeliveredMessage

from sds_plugins.sandbox import SandboxProcess

PSIS = "urn:nhs:names:services:psis:REPC_IN150016UK05"
ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
OUTCOME_TIMEOUT_S = 60.0


# -- the baseline: a relay that does nothing but move messages with the worker's guarantees --


async def relay(url: str, requests: str, envelopes: str, concurrency: int, lean: bool) -> None:
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
        await channel.default_exchange.publish(outgoing, envelopes, mandatory=True, timeout=30)
        await message.ack()

    raw = cast(aiormq.Channel, await channel.get_underlay_channel())

    async def forward_lean(message: DeliveredMessage) -> None:
        # The worker's own way of moving a message: aiormq's channel under aio-pika's.
        properties = aiormq.spec.Basic.Properties(
            message_id=message.header.properties.message_id,
            content_type="application/json",
            delivery_mode=2,
        )
        await raw.basic_publish(
            message.body,
            routing_key=envelopes,
            properties=properties,
            mandatory=True,
            timeout=30,
            wait=False,
        )
        assert message.delivery_tag is not None
        await raw.basic_ack(message.delivery_tag, wait=False)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if lean:
        await raw.basic_consume(requests, forward_lean)
    else:
        await queue.consume(forward)
    print("relay ready", file=sys.stderr, flush=True)
    await stop.wait()
    await connection.close()


# -- the measuring side ----------------------------------------------------------------------


class Process:
    """A worker or relay process; its output goes to a log file, read as it comes."""

    def __init__(self, process: asyncio.subprocess.Process, log: IO[bytes]) -> None:
        self.process = process
        self._log = log
        self._ready = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, argv: list[str], env: dict[str, str], log: Path) -> Process:
        file = await asyncio.to_thread(log.open, "wb")
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process, file)

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self._log.write(line)
            if b" ready" in line:
                self._ready.set()

    async def ready(self) -> None:
        """Return once it consumes; fail if it exits or takes longer than a minute."""
        exited = asyncio.ensure_future(self.process.wait())
        ready = asyncio.ensure_future(self._ready.wait())
        try:
            await asyncio.wait(
                (exited, ready), timeout=READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            exited.cancel()
            ready.cancel()
        if not self._ready.is_set():
            raise SystemExit(f"{self.process.pid} did not start; see {self._log.name}")

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        with contextlib.suppress(TimeoutError):  # a grandchild holding the pipe open
            await asyncio.wait_for(self._reader, 5)
        self._log.close()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes have used so far (Linux ``/proc``; else NaN)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return math.nan
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@dataclass
class Figures:
    throughput: float
    cpu_us: float  # the workers' (or relays') CPU time per message of the burst
    p50_ms: float
    p99_ms: float
    serial_p50_ms: float
    serial_p99_ms: float
    failures: int
    directory_requests: int


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


class Bench:
    """Publishes requests to fresh queues and times each until its outcome arrives."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.requests = f"{prefix}.requests"
        self.envelopes = f"{prefix}.envelopes"
        self.failures = f"{prefix}.failures"
        self.failed = 0
        self._sent: dict[str, float] = {}
        self._latencies: dict[str, float] = {}
        self._expected = 0
        self._all_in = asyncio.Event()

    async def open(self) -> None:
        self.connection = await aio_pika.connect(self.url)
        # Publishing without confirms: the publisher must not be what limits the figures.
        self.channel = await self.connection.channel(publisher_confirms=False)
        self._raw = await self.channel.get_underlay_channel()
        for name in (self.requests, self.envelopes, self.failures):
            await self.channel.declare_queue(name, durable=True)
        self._listen = listen = await self.connection.channel()
        await listen.set_qos(prefetch_count=1000)
        # Consuming on aiormq's channel too, for the same reason as publishing: aio-pika's
        # IncomingMessage converts every property, and an envelope carries more of them than a
        # relayed request; what the measuring side spends must not weigh on one side only.
        raw_listen = await listen.get_underlay_channel()
        for name in (self.envelopes, self.failures):
            await raw_listen.basic_consume(name, self._on_outcome, no_ack=True)

    async def _on_outcome(self, message: DeliveredMessage) -> None:
        now = time.perf_counter()
        if message.routing_key == self.failures:
            self.failed += 1
        request_id = message.header.properties.message_id or ""
        sent = self._sent.pop(request_id, None)
        if sent is None:
            return  # a duplicate (or a stray): counted once
        self._latencies[request_id] = now - sent
        if len(self._latencies) >= self._expected:
            self._all_in.set()

    async def _publish(self, body: bytes, request_id: str) -> None:
        # aiormq directly, without aio-pika's Message: on a small machine the publisher shares
        # the CPU with what it measures, and must not be what limits a fast relay.
        self._sent[request_id] = time.perf_counter()
        await self._raw.basic_publish(
            body,
            routing_key=self.requests,
            properties=aiormq.spec.Basic.Properties(message_id=request_id, delivery_mode=2),
        )

    async def _send(self, bodies: list[bytes]) -> list[float]:
        """Publish ``bodies`` at once; return each one's latency when every outcome is in."""
        self._latencies = {}
        self._expected = len(bodies)
        self._all_in.clear()
        ids = [uuid.uuid4().hex for _ in bodies]
        for request_id, body in zip(ids, bodies, strict=True):
            await self._publish(body, request_id)
        try:
            await asyncio.wait_for(self._all_in.wait(), OUTCOME_TIMEOUT_S)
        except TimeoutError:
            raise SystemExit(
                f"{len(self._latencies)} of {len(ids)} outcomes within {OUTCOME_TIMEOUT_S:.0f} s"
            ) from None
        return [self._latencies[request_id] for request_id in ids]

    async def burst(self, bodies: list[bytes]) -> tuple[float, list[float]]:
        started = time.perf_counter()
        latencies = await self._send(bodies)
        return len(bodies) / (time.perf_counter() - started), latencies

    async def serial(self, bodies: list[bytes]) -> list[float]:
        return [(await self._send([body]))[0] for body in bodies]

    async def close(self) -> None:
        from sds_plugins._worker._amqp import retry_queue_name

        retry_queues = {retry_queue_name(self.requests, 2.0**k) for k in range(16)}
        await self._listen.close()  # its consumers first: deleting their queues cancels them
        channel = await self.connection.channel()
        for name in (self.requests, self.envelopes, self.failures, *sorted(retry_queues)):
            await channel.queue_delete(name)  # a missing queue is a no-op
        await self.connection.close()


def _request(org: str) -> bytes:
    return (
        f'{{"adapter": "example-ebxml", "org": "{org}", "interaction": "{PSIS}", '
        '"options": {"from_asid": "200000000359"}}'
    ).encode()


async def measure(
    kind: str, processes: int, args: argparse.Namespace, sandbox: SandboxProcess
) -> Figures:
    bench = Bench(args.amqp_url, f"sds-bench-{uuid.uuid4().hex[:10]}")
    await bench.open()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDS_")}
    env.update({"SDS_BASE_URL": sandbox.base_url, "SDS_WORKER_BROKER_URL": args.amqp_url})
    logs = Path(args.logs)
    await asyncio.to_thread(logs.mkdir, parents=True, exist_ok=True)
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
                argv += ["--lean"] if kind == "lean relay" else []
            log = logs / f"{kind.replace(' ', '-')}-{processes}-{index}.log"
            started.append(await Process.start(argv, env, log))
        for process in started:
            await process.ready()
        # Warm-up: enough requests that every process (competing consumers, prefetch
        # --concurrency each) resolves the route and opens its connections.
        await bench.burst([_request(args.org)] * (4 * args.concurrency * processes))
        before = await asyncio.to_thread(sandbox.stats)
        pids = [process.process.pid for process in started]
        cpu_before = await asyncio.to_thread(cpu_seconds, pids)
        throughput, latencies = await bench.burst([_request(args.org)] * args.count)
        cpu = await asyncio.to_thread(cpu_seconds, pids) - cpu_before
        serial = await bench.serial([_request(args.org)] * args.serial)
        after = await asyncio.to_thread(sandbox.stats)
        return Figures(
            throughput=throughput,
            cpu_us=cpu / args.count * 1e6,
            p50_ms=statistics.median(latencies) * 1000,
            p99_ms=_percentile(latencies, 0.99) * 1000,
            serial_p50_ms=statistics.median(serial) * 1000,
            serial_p99_ms=_percentile(serial, 0.99) * 1000,
            failures=bench.failed,
            directory_requests=sum(after["requests"].values()) - sum(before["requests"].values()),
        )
    finally:
        for process in started:
            await process.stop()
        await bench.close()


async def main(args: argparse.Namespace, sandbox: SandboxProcess) -> None:
    print(
        f"routing worker vs bare relay on RabbitMQ: {args.count:,} requests at once, then "
        f"{args.serial} one by one; concurrency {args.concurrency} per process; warm cache; "
        f"median of {args.rounds} interleaved rounds"
    )
    kinds = ("relay", "lean relay", "worker")
    cases = [(kind, processes) for processes in (1, 2) for kind in kinds]
    rounds: dict[tuple[str, int], list[Figures]] = {case: [] for case in cases}
    async with asyncio.timeout(args.deadline_s):
        # Interleaved (relay, worker, relay, worker...) so that load from elsewhere on a shared
        # machine falls on both sides of a ratio alike.
        for _ in range(args.rounds):
            for kind, processes in cases:
                rounds[kind, processes].append(await measure(kind, processes, args, sandbox))
    print(
        f"  {'':<16}{'msgs/s':>9}{'CPU µs/msg':>11}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'1-by-1 p50':>12}{'p99':>8}{'failures':>10}{'SDS reqs':>10}   msgs/s per round"
    )
    median: dict[tuple[str, int], Figures] = {}
    for (kind, processes), measured in rounds.items():
        # The round with the median throughput, with its own latencies.
        figures = sorted(measured, key=lambda f: f.throughput)[len(measured) // 2]
        median[kind, processes] = figures
        print(
            f"  {f'{kind} x{processes}':<16}{figures.throughput:>9,.0f}{figures.cpu_us:>11,.0f}"
            f"{figures.p50_ms:>9.1f}{figures.p99_ms:>9.1f}"
            f"{figures.serial_p50_ms:>12.2f}{figures.serial_p99_ms:>8.2f}"
            f"{sum(f.failures for f in measured):>10}"
            f"{sum(f.directory_requests for f in measured):>10}   "
            + ", ".join(f"{f.throughput:,.0f}" for f in measured)
        )
    for processes in (1, 2):
        worker = median["worker", processes]
        for baseline, says in (("relay", "goal: >= 70 %"), ("lean relay", "routing's own cost")):
            relay = median[baseline, processes]
            print(
                f"  worker / {baseline}, {processes} process(es): throughput "
                f"{worker.throughput / relay.throughput:.0%} ({says}); "
                f"messages per CPU second {relay.cpu_us / worker.cpu_us:.0%}"
            )
    print(f"  (logs: {args.logs}; {os.cpu_count()} CPUs shared with RabbitMQ and the sandbox)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--amqp-url",
        default=os.environ.get("SDS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
    )
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--serial", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--org", default="YES", help="the practice every request routes to")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--deadline-s", type=float, default=240.0, help="bound on the whole run")
    parser.add_argument("--logs", default="/tmp/sds-plugins-bench-worker")
    parser.add_argument("--relay", nargs=2, metavar=("REQUESTS", "ENVELOPES"))
    parser.add_argument("--lean", action="store_true", help="with --relay: on aiormq's channel")
    arguments = parser.parse_args()
    if arguments.relay:
        requests, envelopes = arguments.relay
        asyncio.run(
            relay(arguments.amqp_url, requests, envelopes, arguments.concurrency, arguments.lean)
        )
    else:
        with SandboxProcess() as directory:
            asyncio.run(main(arguments, directory))
