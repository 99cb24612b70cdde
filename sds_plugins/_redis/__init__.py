"""Redis, the ``redis`` extra: a cache shared by every process of a fleet (with fleet-wide
single-flight and a near cache in each process), and the pacer's shared timeline.

``_link`` holds the connection rules both share; ``_cache`` the cache (``_wire`` what it keeps
and runs in Redis); ``_pacer`` the pacer.
Imported only when ``SDS_REDIS_URL`` is set (or a plugin asks for them).
"""

from __future__ import annotations

from ._cache import RedisCache
from ._link import DEFAULT_MAX_CONNECTIONS, REDIS_ERRORS, PoolBusy, RedisLink
from ._pacer import RedisPacer

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "REDIS_ERRORS",
    "PoolBusy",
    "RedisCache",
    "RedisLink",
    "RedisPacer",
]
