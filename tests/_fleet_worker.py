"""One node of a test fleet: a process with its own Router, sharing Redis with the others.

Run as ``python -m tests._fleet_worker CONFIG`` from the repository root, ``CONFIG`` being a
JSON object::

    {"base_url": ..., "prefix": ..., "barrier": ..., "orgs": [...], "copies": 1,
     "interaction": ..., "fleet_size": 1, "redis": "test" | "unreachable"}

The Redis URL comes from ``SDS_TEST_REDIS_URL`` in the environment (kept out of argv, where a
password would show in ``ps``); ``"redis": "unreachable"`` points the node at a port where
nothing listens instead. The node starts its router, reports ready (``INCR BARRIER:ready``),
waits for the go signal (``BLPOP BARRIER:go``) so that every node starts at the same moment,
routes ``copies`` concurrent routes for each organisation, and prints one JSON line: outcomes,
party keys, what each lookup cost, and the warnings it logged.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import sys
from typing import Any

import redis.asyncio as aioredis

from sds_plugins import LookupEvent, Router, SdsPluginsError, Settings, hookimpl
from tests._adapters import JoinPlugin

PSIS = "urn:nhs:names:services:psis:REPC_IN150016UK05"
UNREACHABLE = "redis://127.0.0.1:1/0"


class Lookups:
    """Every lookup event (query, cache status, HTTP attempts)."""

    def __init__(self) -> None:
        self.events: list[LookupEvent] = []

    @hookimpl
    def sds_lookup_completed(self, event: LookupEvent) -> None:
        self.events.append(event)


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.name}: {record.getMessage()}")


async def main(config: dict[str, Any]) -> dict[str, Any]:
    test_url = os.environ["SDS_TEST_REDIS_URL"]
    redis_url = UNREACHABLE if config.get("redis") == "unreachable" else test_url
    warnings = _Warnings()
    logging.getLogger("sds_plugins").addHandler(warnings)
    lookups = Lookups()
    settings = Settings(
        base_url=config["base_url"],
        redis_url=redis_url,
        redis_prefix=config["prefix"],
        fleet_size=config.get("fleet_size", 1),
    )
    interaction = config.get("interaction", PSIS)
    outcomes: collections.Counter[str] = collections.Counter()
    party_keys: set[str] = set()
    errors: dict[str, str] = {}
    control = aioredis.from_url(test_url)
    barrier = config["barrier"]
    try:
        async with Router(settings, plugins=[JoinPlugin(), lookups]) as router:
            await control.incr(f"{barrier}:ready")
            if await control.blpop([f"{barrier}:go"], timeout=60) is None:
                raise TimeoutError("no go signal")

            async def one(org: str) -> None:
                try:
                    envelope = await router.route("join", org=org, interaction=interaction)
                except SdsPluginsError as exc:
                    outcomes[type(exc).__name__] += 1
                    errors.setdefault(type(exc).__name__, str(exc))
                else:
                    outcomes["ok"] += 1
                    party_keys.add(str(envelope.target.party_key))

            await asyncio.gather(
                *(one(org) for org in config["orgs"] for _ in range(config.get("copies", 1)))
            )
    finally:
        await control.aclose()
    return {
        "outcomes": dict(outcomes),
        "party_keys": sorted(party_keys),
        "lookups": [
            {"query": event.query, "cache": event.cache, "attempts": event.attempts}
            for event in lookups.events
            if event.attempts or event.cache != "hit"
        ],
        "warnings": warnings.messages,
        "errors": errors,
    }


if __name__ == "__main__":
    result = asyncio.run(asyncio.wait_for(main(json.loads(sys.argv[1])), timeout=120))
    print(json.dumps(result), flush=True)
