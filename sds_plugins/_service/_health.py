"""Readiness: is the router started, does the directory answer, is the shared Redis there?

``GET /readyz`` asks :class:`Readiness`. The directory check is one cheap lookup (Spine's own
devices for one interaction) sent past every cache, at most once per ``interval_s`` however
often the probe is called (a load balancer polling every second must not spend the API
gateway's quota), and skipped while the breaker is open (the breaker already knows).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._adapter import Lookup
from .._exceptions import DirectoryError

if TYPE_CHECKING:
    from .._engine import Router

__all__ = ["PROBE_INTERACTION", "Readiness", "redis_state"]

#: The probe: Spine core's own accredited systems for the PSIS query interaction, which every
#: SDS environment (and the sandbox) has, at Spine's ODS code in the router's environment
#: (``Settings.spine_core_ods``: YEA in production, YES elsewhere). Any answer, even an empty
#: one, means "reachable".
PROBE_INTERACTION = "urn:nhs:names:services:psis:REPC_IN150016UK05"


async def redis_state(router: Router, timeout_s: float = 2.0) -> dict[str, Any]:
    """``{"configured": False}``, or the Redis location (password masked) and a live ping."""
    link = getattr(router.cache.backend, "link", None)
    if link is None:
        return {"configured": False}
    state: dict[str, Any] = {"configured": True, "location": link.location}
    client = link.client()
    if client is None:
        return {**state, "ok": False, "detail": "unreachable moments ago; using memory"}
    try:
        async with asyncio.timeout(timeout_s):
            await client.ping()
    except Exception as exc:  # any failure of the ping is "not reachable"
        detail = link.scrub(f"{type(exc).__name__}: {exc}")[:300]
        return {**state, "ok": False, "detail": detail}
    return {**state, "ok": True}


class Readiness:
    """The checks behind ``/readyz``; the directory probe's answer is reused for ``interval_s``."""

    def __init__(
        self,
        router: Router,
        *,
        interval_s: float = 5.0,
        timeout_s: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.router = router
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._clock = clock
        self._last: tuple[float, dict[str, Any]] | None = None
        self._probe: asyncio.Task[dict[str, Any]] | None = None

    async def check(self) -> tuple[bool, dict[str, Any]]:
        """``(ready, document)``: ready when started and the directory answers."""
        router = self.router
        if not router.started:
            return False, {"ready": False, "router": {"started": False}}
        directory = await self.directory()
        redis = await redis_state(router)
        breakers = router.cache.breaker_states()
        ready = bool(directory["ok"])
        # Redis down is degraded, not unready: routes fall back to the in-process cache.
        return ready, {
            "ready": ready,
            "router": {"started": True, "adapters": sorted(router.adapters)},
            "directory": directory,
            "breakers": {
                namespace.split(":", 1)[0]: state for namespace, state in breakers.items()
            },
            "redis": redis,
        }

    async def directory(self) -> dict[str, Any]:
        breaker = self.router.cache.breaker_states()
        open_sds = [
            ns for ns, state in breaker.items() if ns.startswith("sds:") and state == "open"
        ]
        if open_sds:
            return {"ok": False, "detail": "breaker open: the directory failed moments ago"}
        now = self._clock()
        if self._last is not None and now - self._last[0] < self.interval_s:
            return self._last[1]
        if self._probe is None or self._probe.done():
            # One probe at a time: concurrent readiness calls share it.
            self._probe = asyncio.ensure_future(self._run_probe())
        result = await asyncio.shield(self._probe)
        self._last = (self._clock(), result)
        return result

    async def _run_probe(self) -> dict[str, Any]:
        if "sds" not in self.router.sources:
            return {"ok": True, "detail": "no SDS source registered"}
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout_s):
                outcome = await self.router.lookup(
                    Lookup.devices(
                        org=self.router.settings.spine_core_ods(), interaction=PROBE_INTERACTION
                    ),
                    scope=None,  # neither read nor stored: a real answer, now
                    bypass_cache=True,
                )
        except TimeoutError:
            return {"ok": False, "detail": f"no answer within {self.timeout_s:g}s"}
        except DirectoryError as exc:
            # Unavailable, or answering but refusing us (credentials, a rejected request):
            # routes would fail the same way, so this instance is not ready either.
            return {"ok": False, "detail": f"{type(exc).__name__}: {exc.message}"}
        return {
            "ok": True,
            "records": len(outcome.records),
            "ms": round((time.perf_counter() - started) * 1000, 1),
        }
