"""Client-side rate limiting, so bulk work stays under the API gateway's limits.

NHS England's gateway allows 40 requests per second (spike arrest) and 2,400 per minute (quota)
per application; above that it answers 429. Waiting here is cheaper than a 429 and a retry.
The counting is the ``limits`` library's moving window, in memory or in Redis (shared by every
node of a fleet, which shares one application quota).
"""

from __future__ import annotations

import asyncio
import logging
import time

from limits import RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

__all__ = ["RateLimiter", "WindowRateLimiter"]

logger = logging.getLogger("sds_plugins.ratelimit")


class RateLimiter:
    """Something every outgoing directory request waits on. Subclass to plug in another one."""

    async def acquire(self) -> None:
        """Return when one more request may be sent."""

    async def aclose(self) -> None:
        """Release connections."""


class WindowRateLimiter(RateLimiter):
    """At most ``per_second`` and ``per_minute`` requests in any moving window.

    ``storage`` defaults to memory; pass ``limits.aio.storage.RedisStorage`` to share the budget
    across processes. If the storage fails, requests go ahead unlimited (with a warning): a
    broken limiter must never stop routing.
    """

    def __init__(
        self,
        *,
        per_second: int = 40,
        per_minute: int = 2400,
        storage: Storage | None = None,
        key: str = "sds-plugins",
    ) -> None:
        self.per_second = per_second
        self.per_minute = per_minute
        self._items = [RateLimitItemPerSecond(per_second), RateLimitItemPerMinute(per_minute)]
        self._storage = storage or MemoryStorage()
        self._strategy = MovingWindowRateLimiter(self._storage)
        self._key = key
        self._warned = False
        self._skip_until = 0.0
        #: Seconds spent waiting so far (for benchmarks and metrics).
        self.waited_s = 0.0

    async def acquire(self) -> None:
        started = time.monotonic()
        if started < self._skip_until:
            return  # the storage failed recently: do not pay its timeout on every request
        try:
            while True:
                # hit() records only when the window has room, so one call per window decides;
                # the per-second window goes first so its refusals never spend minute quota.
                for item in self._items:
                    if not await self._strategy.hit(item, self._key):
                        stats = await self._strategy.get_window_stats(item, self._key)
                        await asyncio.sleep(min(max(stats.reset_time - time.time(), 0.001), 1.0))
                        break
                else:
                    return
        except Exception as exc:
            self._skip_until = time.monotonic() + 5.0
            if not self._warned:
                logger.warning("rate limiter storage failed (%s); not limiting for now", exc)
                self._warned = True
        finally:
            self.waited_s += time.monotonic() - started

    async def aclose(self) -> None:
        close = getattr(self._storage, "aclose", None)
        if close is not None:
            await close()

    def __repr__(self) -> str:
        return f"WindowRateLimiter({self.per_second}/s, {self.per_minute}/min)"
