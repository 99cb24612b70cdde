"""Benchmarks against the embedded sandbox: ``make bench`` (or ``python bench/lookups.py``).

Prints figures and ratios; it asserts nothing (speed is measured here, not in tests):

1. raw SDS lookups per second through one client (no cache), for scale;
2. cold route latency in units of the injected directory round trip (ideal: 1.0, not 2.0);
3. coalescing: directory requests made by 1,000 concurrent cold routes of one key;
4. warm envelopes per second, against building the same headers by hand in the same run.

Routes use the example third-party adapter (``examples/sds-plugins-example-ebxml``), which
``make`` installs; it joins /Endpoint and /Device on party key like GP Connect and e-RS do.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx

from sds_plugins import RetryPolicy, Router, SdsClient, Settings

PSIS = "urn:nhs:names:services:psis:REPC_IN150016UK05"
GPC = "urn:nhs:names:services:gpconnect:fhir:operation:gpc.getstructuredrecord-1"
ADAPTER = "example-ebxml"


class Sandbox:
    """``sds-plugins sandbox`` in a process of its own, so it does not share our GIL."""

    def __init__(self, synthetic: int) -> None:
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sds_plugins",
                "sandbox",
                "--port",
                "0",
                "--synthetic",
                str(synthetic),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline().strip()
        if not line.startswith("sandbox listening on "):
            self._process.kill()
            raise SystemExit(f"sandbox did not start: {line!r}")
        self.url = line.removeprefix("sandbox listening on ")
        self.base_url = f"{self.url}/spine-directory/FHIR/R4"

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/_sandbox/stats").json())

    def set_faults(self, **faults: Any) -> None:
        httpx.post(f"{self.url}/_sandbox/faults", json=faults).raise_for_status()

    def reset(self) -> None:
        httpx.post(f"{self.url}/_sandbox/reset").raise_for_status()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self._process.send_signal(signal.SIGINT)
        self._process.wait(timeout=10)


def _line(label: str, value: str) -> None:
    print(f"  {label:<58} {value}")


async def raw_lookups(sandbox: Sandbox, count: int, concurrency: int) -> None:
    gate = asyncio.Semaphore(concurrency)
    async with SdsClient(sandbox.base_url, retry=RetryPolicy(attempts=1)) as client:
        cases = {
            "/Endpoint, one GP practice (1 KB answer)": lambda: client.endpoints(
                org="B82617", interaction=GPC
            ),
            "/Device, Spine's own system (478 interactions, 120 KB)": lambda: client.devices(
                org="YES", interaction=PSIS
            ),
        }
        for label, lookup in cases.items():

            async def one(lookup: Any = lookup) -> None:
                async with gate:
                    await lookup()

            await one()  # connection set-up outside the measurement
            started = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(count)))
            elapsed = time.perf_counter() - started
            _line(label, f"{count / elapsed:,.0f} lookups/s ({concurrency} in flight)")
    print("  (the sandbox runs in its own process; one Python process serves it)")


async def cold_latency(sandbox: Sandbox, latency_ms: float, runs: int) -> None:
    sandbox.reset()
    sandbox.set_faults(latency_ms=latency_ms)
    round_trip = latency_ms / 1000
    routed, sequential = [], []
    settings = Settings(base_url=sandbox.base_url, cache_ttl_s=0, negative_ttl_s=0)
    async with Router(settings) as router, SdsClient(sandbox.base_url) as client:
        await client.devices(org="YES", interaction=PSIS)  # warm the connection pool
        for _ in range(runs):
            started = time.perf_counter()
            await router.route(ADAPTER, org="YES", interaction=PSIS, bypass_cache=True)
            routed.append(time.perf_counter() - started)
            started = time.perf_counter()
            # What a typical integration does: one lookup after the other.
            await client.endpoints(org="YES", interaction=PSIS)
            await client.devices(org="YES", interaction=PSIS)
            sequential.append(time.perf_counter() - started)
    sandbox.reset()
    _line(
        f"cold route (Endpoint + Device), round trip {latency_ms:.0f} ms",
        f"{statistics.median(routed) / round_trip:.2f} round trips (median of {runs})",
    )
    _line(
        "same two lookups one after the other, for comparison",
        f"{statistics.median(sequential) / round_trip:.2f} round trips",
    )


async def coalescing(sandbox: Sandbox, routes: int) -> None:
    sandbox.reset()
    sandbox.set_faults(latency_ms=50)
    async with Router(Settings(base_url=sandbox.base_url)) as router:
        await asyncio.gather(
            *(router.route(ADAPTER, org="YES", interaction=PSIS) for _ in range(routes))
        )
    requests = sum(sandbox.stats()["requests"].values())
    sandbox.reset()
    _line(f"{routes:,} concurrent cold routes of one key", f"{requests} directory requests")


def _by_hand(address: str, service: str, action: str) -> dict[str, Any]:
    # The baseline: the headers and routing values a hand-written integration would assemble
    # once it already knows the address (i.e. with its own perfect cache).
    return {
        "url": address,
        "headers": {"SOAPAction": f"{service}/{action}", "X-Correlation-ID": str(uuid.uuid4())},
    }


async def warm_throughput(sandbox: Sandbox, count: int) -> None:
    async with Router(Settings(base_url=sandbox.base_url)) as router:
        first = await router.route(ADAPTER, org="YES", interaction=PSIS)
        started = time.perf_counter()
        for _ in range(count):
            await router.route(ADAPTER, org="YES", interaction=PSIS)
        routed = count / (time.perf_counter() - started)
    service, _, action = PSIS.rpartition(":")
    started = time.perf_counter()
    for _ in range(count):
        _by_hand(first.request.url, service, action)
    by_hand = count / (time.perf_counter() - started)
    _line(f"warm routes (cache hits), {count:,} in a row", f"{routed:,.0f} envelopes/s")
    _line("same headers built by hand (no lookup, no validation)", f"{by_hand:,.0f} /s")
    _line("ratio (hand-built / routed)", f"{by_hand / routed:.1f}x")


async def main(args: argparse.Namespace) -> None:
    with Sandbox(args.synthetic) as sandbox:
        print(f"sds-plugins benchmarks against the embedded sandbox ({sandbox.url})")
        await raw_lookups(sandbox, args.lookups, args.concurrency)
        async with Router(Settings(base_url=sandbox.base_url)) as router:
            if ADAPTER not in router.adapters:
                print(f"  adapter {ADAPTER!r} not installed: run `make bench` (it installs it)")
                return
        await cold_latency(sandbox, args.latency_ms, args.runs)
        await coalescing(sandbox, args.routes)
        await warm_throughput(sandbox, args.warm)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--lookups", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=5)
    parser.add_argument("--latency-ms", type=float, default=200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--routes", type=int, default=1000)
    parser.add_argument("--warm", type=int, default=20000)
    parser.add_argument("--synthetic", type=int, default=1000)
    asyncio.run(main(parser.parse_args()))
