"""Behind a gateway like NHS's: ``python bench/gateway.py`` (``make bench`` runs it too).

Runs the sandbox in its own process with the live proxy's policies (spike arrest smoothed to
one request per 25 ms, 2,400 per calendar minute, 1,800 s response cache) and prints, in one
run, each figure next to its baseline:

1. prewarm of N organisations: requests, 429s (goal 0), and elapsed ÷ (requests / rate)
   (goal ≤ 1.10) — in one process with the in-memory pacer, and with Redis (the pacer a fleet
   shares, as ``sds-plugins prewarm`` uses it);
2. a cold GP Connect route (provider Endpoint + Device) in round trips of injected latency,
   paced (goal ≤ 1.2), next to the same route unpaced (the gateway refuses the second lookup);
3. a fleet burst: P processes x R concurrent identical routes sharing Redis → directory
   requests per lookup (goal 1).

Pacing at the limit, as one process and as a fleet (refusals, elapsed ÷ bound), is
``bench/fleet.py``'s.

It asserts nothing. Redis: ``--redis URL`` or ``SDS_TEST_REDIS_URL`` (default
``redis://127.0.0.1:6379/15``; a fresh key prefix, deleted afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import time
import uuid
from typing import Any

import redis
from sds_plugins_gpconnect import EXAMPLE_CONSUMER

from sds_plugins import RateLimiter, Router, Settings, hookimpl
from sds_plugins._sandbox._records import AS_FILE, MHS_FILE, iter_synthetic, packaged_raw
from sds_plugins._tools._prewarm import prewarm
from sds_plugins.sandbox import SandboxProcess

GPC = "urn:nhs:names:services:gpconnect:fhir:operation:gpc.getstructuredrecord-1"
PSIS = "urn:nhs:names:services:psis:REPC_IN150016UK05"
RATE = 40.0
CONSUMER = dict(EXAMPLE_CONSUMER)


def _line(label: str, value: str) -> None:
    print(f"  {label:<62} {value}")


def practices(count: int) -> list[str]:
    existing = {str(r.get("nhsIDCode")) for name in (MHS_FILE, AS_FILE) for r in packaged_raw(name)}
    return [mhs["nhsIDCode"] for mhs, _ in iter_synthetic(count, 0, exclude=existing)]


class Unpaced:
    """Replaces the pacer with nothing, for the baseline."""

    @hookimpl
    def sds_provide_rate_limiter(self, settings: Settings) -> RateLimiter:
        return RateLimiter()


def _refusals(sandbox: SandboxProcess) -> int:
    gateway = sandbox.stats()["gateway"]
    return int(gateway["spike_arrest_refused"]) + int(gateway["quota_refused"])


async def bulk(sandbox: SandboxProcess, orgs: list[str], redis_url: str | None) -> None:
    for label, url in (("in-process pacer", None), ("Redis pacer", redis_url)):
        if label == "Redis pacer" and url is None:
            _line("prewarm with the Redis pacer", "skipped: no Redis")
            continue
        sandbox.reset()
        prefix = f"sds-bench-{uuid.uuid4().hex[:8]}:"
        settings = Settings(base_url=sandbox.base_url, redis_url=url, redis_prefix=prefix)
        started = time.perf_counter()
        summary = await prewarm(
            settings,
            adapter="gpconnect",
            interaction=GPC,
            orgs=orgs,
            options={**CONSUMER},
            progress=False,
            require_shared_cache=False,
        )
        elapsed = time.perf_counter() - started
        requests = sum(sandbox.stats()["requests"].values())
        ideal = requests / RATE
        _line(
            f"prewarm of {len(orgs):,} organisations, {label}",
            f"{summary['resolved']:,} resolved, {requests:,} requests, "
            f"{_refusals(sandbox)} 429s, {elapsed:.1f}s = {elapsed / ideal:.3f} x ideal",
        )
        if url is not None:
            _clear(url, prefix)


async def cold_route(sandbox: SandboxProcess, orgs: list[str], latency_ms: float) -> None:
    sandbox.reset()
    sandbox.set_faults(latency_ms=latency_ms)
    round_trip = latency_ms / 1000
    settings = Settings(base_url=sandbox.base_url, cache_ttl_s=0, negative_ttl_s=0)
    results = {}
    for label, plugins in (("paced", []), ("unpaced", [Unpaced()])):
        sandbox.reset()
        sandbox.set_faults(latency_ms=latency_ms)
        times = []
        async with Router(settings, plugins=plugins) as router:
            # One route to open the connection, then cold routes one after the other.
            await router.route("gpconnect", org=orgs[0], interaction=GPC, **CONSUMER)
            for org in orgs[1:]:
                await asyncio.sleep(0.1)  # a route at a time, as a caller would send them
                started = time.perf_counter()
                await router.route("gpconnect", org=org, interaction=GPC, **CONSUMER)
                times.append(time.perf_counter() - started)
        requests = sum(sandbox.stats()["requests"].values())
        results[label] = (statistics.median(times) / round_trip, requests, _refusals(sandbox))
    sandbox.set_faults(latency_ms=0)
    for label, (trips, requests, refused) in results.items():
        _line(
            f"cold GP Connect route, {label}, round trip {latency_ms:.0f} ms",
            f"{trips:.2f} round trips, {requests / len(orgs):.2f} requests/route, {refused} 429s",
        )


def _node(
    base_url: str, redis_url: str, prefix: str, routes: int, go: Any, out: Any
) -> None:  # runs in a child process
    async def run() -> int:
        settings = Settings(
            base_url=base_url, redis_url=redis_url, redis_prefix=prefix, fleet_size=4
        )
        async with Router(settings) as router:
            out.put("ready")
            await asyncio.to_thread(go.wait, 60)  # every node starts at once
            envelopes = await asyncio.gather(
                *(router.route("example-ebxml", org="YES", interaction=PSIS) for _ in range(routes))
            )
        return len(envelopes)

    out.put(asyncio.run(run()))


def fleet_burst(sandbox: SandboxProcess, redis_url: str | None, nodes: int, routes: int) -> None:
    if redis_url is None:
        _line("fleet burst", "skipped: no Redis")
        return
    sandbox.reset()
    sandbox.set_faults(latency_ms=200)
    prefix = f"sds-bench-{uuid.uuid4().hex[:8]}:"
    context = multiprocessing.get_context("spawn")
    go, out = context.Event(), context.Queue()
    processes = [
        context.Process(target=_node, args=(sandbox.base_url, redis_url, prefix, routes, go, out))
        for _ in range(nodes)
    ]
    for process in processes:
        process.start()
    for _ in processes:
        out.get(timeout=60)  # ready
    go.set()
    done = sum(int(out.get(timeout=120)) for _ in processes)
    for process in processes:
        process.join(30)
    sandbox.set_faults(latency_ms=0)
    requests = sum(sandbox.stats()["requests"].values())
    _line(
        f"fleet burst: {nodes} processes x {routes:,} identical routes",
        f"{done:,} envelopes, {requests} directory requests for 2 lookups "
        f"= {requests / 2:.1f} per lookup",
    )
    _clear(redis_url, prefix)


def _clear(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        names = list(client.scan_iter(match=prefix + "*", count=500))
        if names:
            client.delete(*names)
    finally:
        client.close()


def _redis(url: str) -> str | None:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        client.ping()
        client.close()
    except (redis.RedisError, OSError):
        return None
    return url


async def main(args: argparse.Namespace) -> None:
    redis_url = _redis(args.redis)
    orgs = practices(args.orgs)
    with SandboxProcess(gateway=True, synthetic=args.orgs) as sandbox:
        print(
            f"sds-plugins behind a gateway like NHS's live one ({sandbox.url}: spike arrest "
            "40/s smoothed, 2,400/min, response cache)"
        )
        await cold_route(sandbox, orgs[: args.routes + 1], args.latency_ms)
        fleet_burst(sandbox, redis_url, args.nodes, args.burst)
        await bulk(sandbox, orgs, redis_url)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--orgs", type=int, default=1000)
    parser.add_argument("--routes", type=int, default=20, help="cold routes measured")
    parser.add_argument("--latency-ms", type=float, default=150)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--burst", type=int, default=500)
    parser.add_argument(
        "--redis",
        default=os.environ.get("SDS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"),
    )
    asyncio.run(main(parser.parse_args()))
