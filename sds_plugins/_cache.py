"""Caching that survives outages.

Layers, from the engine down:

- :class:`LookupCache` (engine side, one per router): fresh hits; **negative caching** (an empty
  answer is kept for the shorter ``negative_ttl_s``); **stale-if-error** (when the directory fails,
  the last good answer is served up to ``stale_if_error_s`` past its freshness and marked
  ``stale``); **single-flight** (concurrent identical lookups in this process share one fetch);
  and a **breaker** so that, during an outage, cold lookups fail at once instead of each burning
  the retry budget. Errors are never stored.
- :class:`CacheBackend` (pluggable via ``sds_provide_cache``): stores entries and, for shared
  backends, coalesces fetches fleet-wide. :class:`MemoryCache` is the default.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from cachetools import LRUCache, TLRUCache
from pydantic import BaseModel, ConfigDict

from ._exceptions import (
    BreakerOpenError,
    DirectoryError,
    DirectoryUnavailableError,
    MalformedResponseError,
    RateLimitedError,
)

__all__ = ["CacheBackend", "CacheEntry", "LookupCache", "MemoryCache"]

logger = logging.getLogger("sds_plugins.cache")


class CacheEntry(BaseModel):
    """A stored answer. Times are wall-clock epoch seconds so several processes can share them."""

    model_config = ConfigDict(frozen=True)

    data: bytes
    stored_at: float
    fresh_until: float
    stale_until: float
    negative: bool = False

    def is_fresh(self, now: float) -> bool:
        return now < self.fresh_until

    def is_usable_stale(self, now: float) -> bool:
        return not self.negative and now < self.stale_until


class CacheBackend:
    """Where entries live. Subclass for other stores; all methods are coroutines.

    ``coalesce`` runs ``fetch`` so that concurrent callers *across processes* share one fetch;
    the default simply calls it (in-process coalescing is done by :class:`LookupCache`).
    """

    #: Shown by ``sds-plugins plugins`` and in events.
    name = "cache"
    #: Whether entries outlive this process and are seen by other processes (Redis: yes;
    #: memory: no). Prewarming refuses a cache that is not shared; reads of a shared backend
    #: are coalesced per key, so a burst of identical lookups costs it one read.
    shared = False

    async def get(self, key: str) -> CacheEntry | None:
        raise NotImplementedError

    async def set(self, key: str, entry: CacheEntry) -> None:
        """Store ``entry`` until ``entry.stale_until``."""
        raise NotImplementedError

    async def delete(self, key: str) -> None:
        raise NotImplementedError

    async def clear(self) -> None:
        raise NotImplementedError

    async def coalesce(
        self, key: str, fetch: Callable[[], Awaitable[CacheEntry]]
    ) -> tuple[CacheEntry, bool]:
        """Return ``(entry, fetched_here)``."""
        return await fetch(), True

    async def aclose(self) -> None:
        """Release connections."""


@runtime_checkable
class _InProcess(Protocol):
    """The warm path's private protocol (not part of :class:`CacheBackend`): a backend that can
    answer from this process without I/O, and say when anything it holds changed.

    ``_generation`` changes whenever an entry is stored, deleted, evicted or invalidated: while
    it stays the same, a record read before is still the current one, so a warm route need not
    read it again. ``_entry_now`` is the entry held in process (``None``: ask :meth:`get`).
    """

    _generation: int

    def _entry_now(self, key: str) -> CacheEntry | None: ...


class MemoryCache(CacheBackend):
    """In-process cache (cachetools), bounded in size; each entry expires at its ``stale_until``."""

    name = "memory"

    def __init__(self, maxsize: int = 100_000) -> None:
        self._entries: TLRUCache[str, CacheEntry] = TLRUCache(
            maxsize=maxsize, ttu=lambda _key, entry, _now: entry.stale_until, timer=time.time
        )
        # Entries leave only by set (size eviction, expiry sweeps), delete and clear: each
        # counts a generation (the _InProcess protocol). An entry expiring unseen was past its
        # freshness before, which readers check themselves.
        self._generation = 0

    async def get(self, key: str) -> CacheEntry | None:
        return self._entries.get(key)

    def _entry_now(self, key: str) -> CacheEntry | None:
        return self._entries.get(key)

    async def set(self, key: str, entry: CacheEntry) -> None:
        self._entries[key] = entry
        self._generation += 1

    async def delete(self, key: str) -> None:
        self._entries.pop(key, None)
        self._generation += 1

    async def clear(self) -> None:
        self._entries.clear()
        self._generation += 1

    def __len__(self) -> int:
        return len(self._entries)


def _trips_breaker(error: DirectoryUnavailableError) -> bool:
    """Whether ``error`` says the directory is down (so other keys would fail too).

    A 429 is the pace, which the rate limiter already holds to (a spent quota closes it until
    the next minute, for every key); a malformed answer belongs to the key that got it.
    """
    return not isinstance(error, RateLimitedError | MalformedResponseError | BreakerOpenError)


class _Breaker:
    """Closed → open (for ``cooldown_s``, after the directory failed) → half-open → closed.

    While open, cold lookups fail at once with :class:`BreakerOpenError` (warm ones are served
    stale), so an outage costs each caller microseconds, not the whole retry budget. When the
    cooldown is over, exactly one lookup goes through as a probe; everyone else keeps failing
    fast until it returns. Its success closes the breaker, its failure opens it again.
    """

    def __init__(self, cooldown_s: float, clock: Callable[[], float] = time.time) -> None:
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._open_until = 0.0
        self._last_error: DirectoryUnavailableError | None = None
        self._probing = False

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open`` (for metrics and readiness checks)."""
        if self._last_error is None:
            return "closed"
        return "half-open" if self._clock() >= self._open_until else "open"

    def admit(self, now: float) -> tuple[bool, bool]:
        """``(allowed, as_probe)`` for a lookup that would go to the directory now."""
        if self._last_error is None or self.cooldown_s <= 0:  # a cooldown of 0: no breaker
            return True, False
        if now < self._open_until or self._probing:
            return False, False
        self._probing = True
        return True, True

    def refusal(self, now: float) -> BreakerOpenError:
        error = self._last_error
        cause = f"{type(error).__name__}: {error.message}" if error is not None else "unknown"
        if now < self._open_until:
            wait = self._open_until - now
            why = f"not asking again for {wait:.3g}s"
        else:
            wait = self.cooldown_s  # a probe is out: its verdict comes within its budget
            why = "one probe is finding out whether it is back"
        return BreakerOpenError(
            f"directory is failing; {why} (last error: {cause})",
            cause=cause,
            retry_after_s=wait,
        )

    def remaining(self, now: float) -> float:
        return max(self._open_until - now, 0.0)

    def trip(self, error: DirectoryUnavailableError, now: float) -> None:
        self._last_error = error
        self._open_until = now + self.cooldown_s
        self._probing = False

    def reset(self) -> None:
        self._open_until = 0.0
        self._last_error = None
        self._probing = False

    def abandon_probe(self) -> None:
        """The probe ended without a verdict (cancelled): the next lookup may probe."""
        self._probing = False


# (entry, the records it holds, HTTP attempts): what one fetch produced.
_Fetched = tuple[CacheEntry, tuple[Any, ...], int]
# The same as seen by a caller; records are None when another node fetched them.
_Shared = tuple[CacheEntry, tuple[Any, ...] | None, int]


@dataclass(frozen=True, slots=True)
class Cached:
    """What :meth:`LookupCache.get_or_fetch` returns (the very records tuple the cache keeps:
    the warm path recognises records by identity)."""

    records: tuple[Any, ...]
    cache: Literal["hit", "miss", "stale", "bypass", "coalesced"]
    attempts: int = 0


class LookupCache:
    """Freshness rules, single-flight and the breaker, over a :class:`CacheBackend`."""

    def __init__(
        self,
        backend: CacheBackend,
        *,
        ttl_s: float = 300.0,
        negative_ttl_s: float = 60.0,
        stale_if_error_s: float = 3600.0,
        breaker_cooldown_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        # The warm path's fast reads, for a backend that offers them (a private protocol).
        self._in_process = backend if isinstance(backend, _InProcess) else None
        self.ttl_s = ttl_s
        self.negative_ttl_s = negative_ttl_s
        self.stale_if_error_s = stale_if_error_s
        self.breaker_cooldown_s = breaker_cooldown_s
        self._clock = clock
        self._inflight: dict[
            str, asyncio.Future[tuple[CacheEntry, tuple[Any, ...] | None, int, bool]]
        ] = {}
        self._breakers: dict[str, _Breaker] = {}
        self._reads: dict[str, asyncio.Future[CacheEntry | None]] = {}
        # Decoding is the dearest part of a hit; keep the last decoding of each entry (matched
        # by its stored_at, so a newer entry from another node is decoded afresh).
        self._decoded: LRUCache[str, tuple[float, tuple[Any, ...]]] = LRUCache(maxsize=10_000)

    def _records(
        self, key: str, entry: CacheEntry, decode: Callable[[bytes], tuple[Any, ...]]
    ) -> tuple[Any, ...]:
        memo = self._decoded.get(key)
        if memo is not None and memo[0] == entry.stored_at:
            return memo[1]
        records = decode(entry.data)
        self._decoded[key] = (entry.stored_at, records)
        return records

    def breaker(self, namespace: str) -> _Breaker:
        breaker = self._breakers.get(namespace)
        if breaker is None:
            breaker = self._breakers[namespace] = _Breaker(self.breaker_cooldown_s, self._clock)
        return breaker

    def breaker_states(self) -> dict[str, str]:
        """``{source namespace: closed | open | half-open}`` for every source asked so far."""
        # list() copies in one step: a metrics scrape may call this from another thread.
        return {namespace: breaker.state for namespace, breaker in list(self._breakers.items())}

    def _entry(
        self, data: bytes, empty: bool, ttl_s: float | None = None, stale: bool = True
    ) -> CacheEntry:
        now = self._clock()
        ttl = self.negative_ttl_s if empty else (self.ttl_s if ttl_s is None else ttl_s)
        if empty and ttl_s is not None:
            ttl = min(ttl, ttl_s)  # a source's shorter life applies to "nothing found" too
        return CacheEntry(
            data=data,
            stored_at=now,
            fresh_until=now + ttl,
            stale_until=now + ttl + (0.0 if empty or not stale else self.stale_if_error_s),
            negative=empty,
        )

    def generation(self) -> int | None:
        """The backend's generation (see :class:`_InProcess`), ``None`` if it keeps none."""
        return None if self._in_process is None else self._in_process._generation

    def fresh_entry_nowait(
        self, key: str, decode: Callable[[bytes], tuple[Any, ...]]
    ) -> tuple[tuple[Any, ...], float] | None:
        """``(records, fresh until)`` of a fresh entry the backend holds in process, else
        ``None``."""
        if self._in_process is None:
            return None
        entry = self._in_process._entry_now(key)
        if entry is None or not entry.is_fresh(self._clock()):
            return None
        return self._records(key, entry, decode), entry.fresh_until

    async def get_or_fetch(
        self,
        key: str,
        *,
        namespace: str,
        fetch: Callable[[], Awaitable[tuple[tuple[Any, ...], int]]],
        encode: Callable[[tuple[Any, ...]], bytes],
        decode: Callable[[bytes], tuple[Any, ...]],
        bypass: bool = False,
        store: bool = True,
        ttl_s: float | None = None,
        stale: bool = True,
    ) -> Cached:
        """Serve ``key`` from the cache or ``fetch`` it (once, however many callers ask).

        ``bypass`` skips reading (and serving stale) but still stores the fresh answer;
        ``store=False`` neither reads nor writes (results must not be reused). ``ttl_s``
        overrides the cache's lifetime for this entry (a source's own); ``stale=False`` keeps
        it from being served after that, even during an outage.
        """
        now = self._clock()
        entry = None
        if store and not bypass:
            entry = await self._get(key)
            if entry is not None and entry.is_fresh(now):
                return Cached(records=self._records(key, entry, decode), cache="hit")

        breaker = self.breaker(namespace)
        probe = False
        # Joining a fetch already in flight (the probe's, say) sends nothing: no admission.
        if key not in self._inflight:
            allowed, probe = breaker.admit(now)
            if not allowed:
                if entry is not None and entry.is_usable_stale(now):
                    return Cached(records=self._records(key, entry, decode), cache="stale")
                raise breaker.refusal(now)

        async def fetch_entry() -> _Fetched:
            records, attempts = await fetch()
            # An unstored answer is never read back, so it is not serialised either.
            fresh = self._entry(
                encode(records) if store else b"", empty=not records, ttl_s=ttl_s, stale=stale
            )
            if store:
                await self._set(key, fresh)
                self._decoded[key] = (fresh.stored_at, records)  # the next hit skips decoding
            return fresh, records, attempts

        # Unstored lookups coalesce too: whoever joins an in-flight request still gets an answer
        # fetched after it asked, which is all "do not reuse" (GP Connect's rule) requires.
        try:
            (fresh, records, attempts), fetched_here = await self._single_flight(
                key, fetch_entry, store, recheck=not bypass
            )
        except DirectoryUnavailableError as exc:
            if _trips_breaker(exc):
                breaker.trip(exc, self._clock())
            elif probe:
                breaker.reset()  # the directory answered (a 429, a bad body): it is there
            if entry is not None and entry.is_usable_stale(self._clock()):
                logger.warning("serving stale answer for %s: %s", key, exc.message)
                return Cached(
                    records=self._records(key, entry, decode), cache="stale", attempts=exc.attempts
                )
            raise
        except DirectoryError:
            if probe:
                breaker.reset()  # refused or not found: an answer all the same
            raise
        except BaseException:
            if probe:
                breaker.abandon_probe()
            raise
        breaker.reset()
        status: Literal["coalesced", "bypass", "miss"]
        if not fetched_here:
            status = "coalesced"  # another task, here or on another node, fetched it
        elif bypass or not store:
            status = "bypass"
        else:
            status = "miss"
        if records is None:  # fetched by another node: only its serialised entry came back
            records = self._records(key, fresh, decode)
        return Cached(records=records, cache=status, attempts=attempts if fetched_here else 0)

    async def _single_flight(
        self,
        key: str,
        fetch_entry: Callable[[], Awaitable[_Fetched]],
        shared: bool,
        *,
        recheck: bool = True,
    ) -> tuple[_Shared, bool]:
        """The shared result, and whether this process fetched it (rather than waiting for
        another task here, or another node).

        The result carries the fetched records themselves, so in-process callers never decode;
        it has ``None`` records when another node fetched and only the stored entry is known.
        """
        waiting = self._inflight.get(key)
        if waiting is not None:
            entry, records, attempts, _fetched_here = await asyncio.shield(waiting)
            return (entry, records, attempts), False

        async def lead() -> tuple[CacheEntry, tuple[Any, ...] | None, int, bool]:
            if not shared:
                entry, records, attempts = await fetch_entry()
                return entry, records, attempts, True
            # Fleet-wide coalescing: the backend may find another node already fetched it.
            fetched: list[_Fetched] = []
            found: list[CacheEntry] = []

            async def fetch_for_backend() -> CacheEntry:
                if recheck:
                    # This node holds the fleet's lock for a key it missed. Another node may
                    # have stored the answer between that read and the lock (it stores, then
                    # releases): read once more before asking the directory again.
                    stored = await self.backend.get(key)
                    if stored is not None and stored.is_fresh(self._clock()):
                        found.append(stored)
                        return stored
                fetched.append(await fetch_entry())
                return fetched[0][0]

            entry, fetched_here = await self.backend.coalesce(key, fetch_for_backend)
            if fetched_here and fetched:
                return entry, fetched[0][1], fetched[0][2], True
            return entry, None, 0, fetched_here and not found

        task: asyncio.Future[tuple[CacheEntry, tuple[Any, ...] | None, int, bool]] = (
            asyncio.ensure_future(lead())
        )
        self._inflight[key] = task
        try:
            entry, records, attempts, fetched_here = await asyncio.shield(task)
            return (entry, records, attempts), fetched_here
        finally:
            if task.done():
                self._inflight.pop(key, None)
            else:
                # The leader was cancelled; let the fetch finish for the others, then clean up.
                task.add_done_callback(lambda _t: self._inflight.pop(key, None))

    async def _get(self, key: str) -> CacheEntry | None:
        if not self.backend.shared:
            return await self._read(key)
        # A burst of identical lookups reads a shared store once (one connection, one round
        # trip), not once per caller: 1,000 waiting routes must not empty a connection pool.
        reading = self._reads.get(key)
        if reading is None:
            reading = self._reads[key] = asyncio.ensure_future(self._read(key))
            reading.add_done_callback(lambda _t: self._reads.pop(key, None))
        return await asyncio.shield(reading)

    async def _read(self, key: str) -> CacheEntry | None:
        try:
            return await self.backend.get(key)
        except Exception as exc:  # a broken cache must never fail a route
            logger.warning("cache read failed (%s): %s", type(exc).__name__, exc)
            return None

    async def _set(self, key: str, entry: CacheEntry) -> None:
        try:
            await self.backend.set(key, entry)
        except Exception as exc:
            logger.warning("cache write failed (%s): %s", type(exc).__name__, exc)
