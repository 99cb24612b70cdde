"""Cold routes to a patient: PDS, then SDS, in round trips.

A route to a patient must ask PDS for the registered practice before SDS can be asked about
that practice: two round trips, and no more (GP Connect's three SDS lookups go together). With
the same latency injected on every PDS and SDS answer, this prints the cold patient route's
duration in round trips, next to the same route given the ODS code (one round trip) measured
in the same run, and the ratio. Goal: at most 2.2 round trips.

    python bench/patients.py [--latency-ms 150] [--routes 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

from sds_plugins_gpconnect import EXAMPLE_CONSUMER

from sds_plugins import PluginHost, Router, Settings
from sds_plugins.sandbox import SANDBOX_PATIENTS, SandboxProcess

GPC = "urn:nhs:names:services:gpconnect:fhir:operation:gpc.getstructuredrecord-1"
CONSUMER: dict[str, Any] = dict(EXAMPLE_CONSUMER)


async def _cold(base_url: str, routes: int, **target: str) -> list[float]:
    """Seconds per cold route: a new encounter each time, so nothing is reused."""
    settings = Settings(base_url=base_url, pds_rate_limit_per_s=1000)
    times = []
    async with Router(settings, host=PluginHost()) as router:
        for _ in range(routes):
            started = time.perf_counter()
            await asyncio.wait_for(
                router.route(
                    "gpconnect",
                    interaction=GPC,
                    encounter=str(uuid.uuid4()),
                    **target,
                    **CONSUMER,
                ),
                timeout=30,
            )
            times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=150)
    parser.add_argument("--routes", type=int, default=20)
    args = parser.parse_args()
    round_trip = args.latency_ms / 1000
    with SandboxProcess(latency_ms=args.latency_ms) as sandbox:
        by_org = asyncio.run(_cold(sandbox.base_url, args.routes, org="B82617"))
        by_patient = asyncio.run(
            _cold(sandbox.base_url, args.routes, patient=SANDBOX_PATIENTS["gpconnect"])
        )
    org_rt = statistics.median(by_org) / round_trip
    patient_rt = statistics.median(by_patient) / round_trip
    print(f"cold routes, {args.routes} each, {args.latency_ms:.0f} ms on every PDS and SDS answer")
    print(f"  by ODS code (baseline)        {org_rt:5.2f} round trips (median)")
    print(f"  by NHS number (PDS, then SDS) {patient_rt:5.2f} round trips (median)")
    print(f"  ratio                         {patient_rt / org_rt:5.2f} x")
    # What PDS adds to a route: the one round trip it must (the SDS route's own figure above
    # 1.0 is the pacing slot between GP Connect's SDS lookups, 25 ms at 40/s).
    print(f"  PDS's own cost                {patient_rt - org_rt:5.2f} round trips")
    verdict = "meets" if patient_rt <= 2.2 else "misses"
    print(f"  {verdict} the goal of <= 2.2 round trips")


if __name__ == "__main__":
    main()
