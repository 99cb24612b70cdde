"""The warm path: routes answered from the cache, against the same request built by hand.

``python bench/warm_path.py`` (``make bench`` runs it). It asserts nothing; it prints, for the
GP Connect adapter and for the example ebXML adapter, warm routes per second on one core and
the cost ratio against building the same request by hand in the same run:

- GP Connect by hand: the SSP URL, the ``Ssp-*`` headers and the unsigned JWT with the
  specification's claims (what a consumer system that already knew the provider's address and
  ASID would write);
- ebXML by hand: the address and the ``SOAPAction``/correlation headers.

The sandbox runs in its own process (so it does not share this one's GIL); after one cold
route, every route is a cache hit, which is what an engine sees for a busy practice. Goals
(issue 13): at least 30,000 GP Connect routes/s, at most 3 x the hand-built cost.

``python bench/warm_path.py --ablate`` (issue 25) prints instead what each fast-path technique
buys: microseconds per warm route with everything on, with each technique switched off in
turn, then all of them, the difference and its share of the route, all measured in the same
run (``bench/_ablation.py`` says how each is switched off). With ``SDS_TEST_REDIS_URL`` set it
also compares Redis's near cache on and off. Every row runs once per round, ``--rounds``
(default 5) interleaved rounds of ``--count`` (default 2,000 here) routes, the best of each
kept; ``--count 300 --rounds 1`` is a quick check that it runs (~10 s).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sds_plugins_gpconnect import EXAMPLE_CONSUMER

from sds_plugins import PluginHost, Router, Settings
from sds_plugins.sandbox import SandboxProcess

ROOT = Path(__file__).resolve().parents[1]
GPC = "urn:nhs:names:services:gpconnect:fhir:operation:gpc.getstructuredrecord-1"
PSIS = "urn:nhs:names:services:psis:REPC_IN150016UK05"
GPC_OPTIONS: dict[str, Any] = dict(EXAMPLE_CONSUMER)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_JWT_HEADER = _b64(b'{"alg":"none","typ":"JWT"}')


def gpconnect_by_hand(address: str, provider_asid: str, options: dict[str, Any]) -> Any:
    """A GP Connect request as a consumer writes it once it knows the provider: no checks."""
    iat = int(time.time())
    system = options["system_url"].rstrip("/")
    claims = {
        "iss": options["system_url"],
        "sub": options["practitioner_id"],
        "aud": address,
        "exp": iat + 300,
        "iat": iat,
        "jti": str(uuid.uuid4()),  # a new token for each request, as the adapter makes
        "reason_for_request": "directcare",
        "requested_scope": "patient/*.read",
        "requesting_device": {
            "resourceType": "Device",
            "identifier": [
                {"system": f"{system}/Id/device-identifier", "value": options["system_name"]}
            ],
            "model": options["system_name"],
            "version": options["system_version"],
        },
        "requesting_organization": {
            "resourceType": "Organization",
            "identifier": [
                {
                    "system": "https://fhir.nhs.uk/Id/ods-organization-code",
                    "value": options["organization_ods"],
                }
            ],
            "name": options["organization_name"],
        },
        "requesting_practitioner": {
            "resourceType": "Practitioner",
            "id": options["practitioner_id"],
            "identifier": [
                {
                    "system": "https://fhir.nhs.uk/Id/sds-user-id",
                    "value": options["practitioner_sds_user_id"],
                },
                {
                    "system": "https://fhir.nhs.uk/Id/sds-role-profile-id",
                    "value": options["practitioner_sds_role_profile_id"],
                },
                {"system": f"{system}/Id/local-user-id", "value": options["practitioner_id"]},
            ],
            "name": [
                {
                    "family": options["practitioner_family_name"],
                    "given": [options["practitioner_given_name"]],
                }
            ],
        },
    }
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    return {
        "method": "POST",
        "url": f"{options['ssp_url']}/{address}Patient/$gpc.getstructuredrecord",
        "headers": {
            "Ssp-TraceID": str(uuid.uuid4()),
            "Ssp-From": options["consumer_asid"],
            "Ssp-To": provider_asid,
            "Ssp-InteractionID": GPC,
            "Authorization": f"Bearer {_JWT_HEADER}.{payload}.",
            "Accept": "application/fhir+json;charset=utf-8",
            "Content-Type": "application/fhir+json;charset=utf-8",
        },
    }


def ebxml_by_hand(address: str, interaction: str) -> Any:
    service, _, action = interaction.rpartition(":")
    return {
        "url": address,
        "headers": {"SOAPAction": f"{service}/{action}", "X-Correlation-ID": str(uuid.uuid4())},
    }


async def _rate(count: int, one: Callable[[], Awaitable[Any]]) -> float:
    """Calls per second of ``one`` (best of three runs of ``count``, GC between runs)."""
    best = 0.0
    for _ in range(3):
        gc.collect()
        started = time.perf_counter()
        for _ in range(count):
            await one()
        best = max(best, count / (time.perf_counter() - started))
    return best


def _sync_rate(count: int, one: Callable[[], Any]) -> float:
    best = 0.0
    for _ in range(3):
        gc.collect()
        started = time.perf_counter()
        for _ in range(count):
            one()
        best = max(best, count / (time.perf_counter() - started))
    return best


def _report(name: str, routed: float, by_hand: float, goal: float | None) -> None:
    ratio = by_hand / routed
    print(f"  {name}")
    print(f"    warm routes           {routed:>10,.0f} /s  ({1e6 / routed:6.1f} us each)")
    print(f"    built by hand         {by_hand:>10,.0f} /s  ({1e6 / by_hand:6.1f} us each)")
    print(f"    cost ratio            {ratio:>10.2f} x" + ("  (goal <= 3.0 x)" if goal else ""))
    if goal:
        verdict = "meets" if routed >= goal and ratio <= 3.0 else "misses"
        print(f"    {verdict} the goal of {goal:,.0f} /s and <= 3 x")


async def main(args: argparse.Namespace) -> None:
    os.environ["SDS_GPCONNECT_SHARED_CACHE"] = "1"  # the operator's choice that makes it warm
    with SandboxProcess() as sandbox:
        if args.ablate:
            await _ablate(sandbox.base_url, args)
            return
        print(f"warm path, {args.count:,} routes per run, best of 3 (sandbox {sandbox.url})")
        async with Router(Settings(base_url=sandbox.base_url), host=PluginHost()) as router:
            if "gpconnect" in router.adapters:
                first = await router.route(
                    "gpconnect", org="B82617", interaction=GPC, **GPC_OPTIONS
                )
                assert first.target.address
                assert first.target.asid

                async def gpconnect() -> Any:
                    return await router.route(
                        "gpconnect", org="B82617", interaction=GPC, **GPC_OPTIONS
                    )

                routed = await _rate(args.count, gpconnect)
                address, asid = first.target.address, first.target.asid
                by_hand = _sync_rate(
                    args.count, lambda: gpconnect_by_hand(address, asid, GPC_OPTIONS)
                )
                _report("gpconnect (getstructuredrecord, B82617)", routed, by_hand, 30_000)
            else:
                print("  gpconnect: not installed (make install)")
            if "example-ebxml" in router.adapters:
                first = await router.route("example-ebxml", org="YES", interaction=PSIS)
                address = first.request.url

                async def example() -> Any:
                    return await router.route("example-ebxml", org="YES", interaction=PSIS)

                routed = await _rate(args.count, example)
                by_hand = _sync_rate(args.count, lambda: ebxml_by_hand(address, PSIS))
                _report("example-ebxml (PSIS, YES)", routed, by_hand, None)
            else:
                print("  example-ebxml: not installed (make install)")


async def _ablate(base_url: str, args: argparse.Namespace) -> None:
    """``--ablate``: what each fast-path technique buys (``bench/_ablation.py``)."""
    from _ablation import Route, ablate, ablate_redis  # beside this script (sys.path[0])

    routes = (
        Route(
            "gpconnect (getstructuredrecord, B82617)",
            "gpconnect",
            {"org": "B82617", "interaction": GPC, **GPC_OPTIONS},
        ),
        Route("example-ebxml (PSIS, YES)", "example-ebxml", {"org": "YES", "interaction": PSIS}),
    )
    await ablate(base_url, routes, args.count, args.rounds, args.clock)
    redis_url = os.environ.get("SDS_TEST_REDIS_URL")
    if redis_url:
        await ablate_redis(base_url, routes, args.count, args.rounds, redis_url)
    else:
        print("  Redis near cache: SDS_TEST_REDIS_URL is not set (skipped)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--count", type=int, default=None, help="routes per run (20,000; --ablate: 2,000)"
    )
    parser.add_argument(
        "--ablate",
        action="store_true",
        help="what each fast-path technique buys: us per route with each one off",
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="--ablate: interleaved rounds (best kept)"
    )
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="--ablate: time this process's CPU (default; steady on a busy machine) or the wall",
    )
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    arguments = parser.parse_args()
    if arguments.count is None:  # --ablate runs every route many times over: shorter runs
        arguments.count = 2_000 if arguments.ablate else 20_000
    asyncio.run(main(arguments))
