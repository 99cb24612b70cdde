"""Readiness: is the router started (ready), and how are the directory and Redis (reported)?

``GET /readyz`` asks :class:`Readiness`. Ready means the process can serve what it has: the
router started. The directory and Redis are reported in the body, ``"status": "degraded"``
when either fails or a breaker is open, never as unready: the directory is shared by every
replica, so a readiness that followed it would take all of them out of a load balancer at once,
although each can still answer from its cache, and for the rest say why it cannot (a ``503``
problem document with ``Retry-After``), which a caller can act on, unlike a refused connection.

The directory check is one cheap lookup (Spine's own devices for one interaction) sent past
every cache, at most once per ``interval_s`` however often the probe is called (a load
balancer polling every second must not spend the API gateway's quota), and skipped while the
breaker is open (the breaker already knows).
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

_SEVERITY = {"closed": 0, "half-open": 1, "open": 2}


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
        #: Set by the service when it shuts down (the router closes next).
        self.stopping = False

    async def check(self) -> tuple[bool, dict[str, Any]]:
        """``(ready, document)``: ready once the router has started (and until it closes);
        ``status`` is ``ok``, or ``degraded`` with the ``reasons`` (directory failing, a
        breaker open, Redis unreachable); not ready, ``starting`` or ``stopping``."""
        router = self.router
        if self.stopping or not router.started:
            # Nothing can be served: not started yet, or shutting down.
            status = "stopping" if self.stopping else "starting"
            return False, {"ready": False, "status": status, "router": {"started": False}}
        directory = await self.directory()
        redis = await redis_state(router)
        breakers: dict[str, str] = {}
        for namespace, state in router.cache.breaker_states().items():
            source = namespace.split(":", 1)[0]
            # The worst state of a source's breakers (one per directory host).
            if _SEVERITY.get(state, 0) >= _SEVERITY.get(breakers.get(source, "closed"), 0):
                breakers[source] = state
        reasons: list[str] = []
        if not directory["ok"]:
            reasons.append(f"directory: {directory.get('detail', 'failing')}")
        reasons += [
            f"breaker {source} {state}" for source, state in breakers.items() if state != "closed"
        ]
        if redis.get("configured") and not redis.get("ok"):
            reasons.append("redis unreachable: using the in-process cache")
        document: dict[str, Any] = {
            "ready": True,
            "status": "degraded" if reasons else "ok",
            "router": {"started": True, "adapters": sorted(router.adapters)},
            "directory": directory,
            "breakers": breakers,
            "redis": redis,
        }
        if reasons:
            document["reasons"] = reasons
        return True, document

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
