"""``bench/warm_path.py --ablate``: each warm-path technique switched off in turn, and its worth.

For each warm route it prints microseconds per route with everything on, with one technique off
(then a few together, then all of them), the difference, and that difference as a share of the
all-on route, each measured in the same run. Nothing is asserted about timings.

**Measurement, not product code.** The product has no switches for these techniques, and
should not grow any for a bench: each switch below reaches into the router's internals (a
private attribute, a field of a :class:`~sds_plugins._warm.WarmState`, a module global the
engine looks up when it routes) with :func:`unittest.mock.patch.object`, inside a context
manager that puts every one of them back. A switch whose target has moved fails loudly
(``patch.object`` refuses a missing attribute; :func:`_same` checks the engine still calls what
it patches) rather than measuring nothing. A memo is switched off by handing its user a
mapping that remembers nothing (:class:`_Forgetful`), so the product's own code path runs,
recomputing every time.

Rounds are interleaved (every row once per round, best of the rounds kept) so that drift on a
shared machine touches every row alike; ``spread`` is (slowest - fastest) / fastest over the
rounds, the noise to read the differences against. The in-process tables time this process's
CPU (``time.process_time``, ``--clock cpu``, the default): a warm route never waits, and on a
busy machine wall time is mostly other processes' turns (``--clock wall`` for it anyway). The
Redis table is wall time: a near-cache miss waits on a round trip.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from unittest import mock

from sds_plugins import (
    PluginHost,
    Router,
    Settings,
    _engine,
    _envelope,
    _route_events,
    _warm,
    hookimpl,
)
from sds_plugins._warm import PreparedRoute, PreparedRoutes, WarmState

#: Routes run after each switch before timing (memos refill, caches settle).
_WARMUP = 200


@dataclass(frozen=True)
class Route:
    """One warm route to measure: ``router.route(adapter, **kwargs)``."""

    label: str
    adapter: str
    kwargs: Mapping[str, Any]


class _Forgetful(dict[Any, Any]):
    """A memo that remembers nothing: every ``get`` misses and every store is dropped."""

    def get(self, key: Any, default: Any = None) -> Any:
        return default

    def __setitem__(self, key: Any, value: Any) -> None:
        return None


class _NoPreparedRoutes(PreparedRoutes):
    """Prepared routes that remember none (``PreparedRoutes(0)`` cannot hold one either)."""

    def get(self, key: tuple[Any, ...] | None) -> PreparedRoute | None:
        return None

    def put(self, key: tuple[Any, ...] | None, prepared: PreparedRoute) -> None:
        return None


Switch = Callable[[Router, contextlib.ExitStack], None]


def _same(used: object, meant: object, what: str) -> None:
    """The engine still goes through ``meant``: patching ``used`` switches it off."""
    if used is not meant:
        raise RuntimeError(f"ablation: {what} is no longer what the engine calls; update the bench")


def _none(*args: Any, **kwargs: Any) -> None:
    """A plain function, not a ``MagicMock``: a mock's call would cost more than what it
    replaces and skew the table."""
    return


def _warm_states(router: Router) -> list[WarmState]:
    return [prepared.warm for prepared in router._prepared._routes.values()]


def _forget(field: str) -> Switch:
    """Every prepared route's ``WarmState.<field>`` remembers nothing (a memo, recomputed)."""

    def switch(router: Router, stack: contextlib.ExitStack) -> None:
        for warm in _warm_states(router):
            stack.enter_context(mock.patch.object(warm, field, _Forgetful()))

    return switch


def _no_prepared_routes(router: Router, stack: contextlib.ExitStack) -> None:
    # Every route validated and planned afresh, with a new WarmState: everything the warm
    # state holds (hot outcomes, hits, templates, derivations) goes with it.
    stack.enter_context(mock.patch.object(router, "_prepared", _NoPreparedRoutes(0)))


def _no_task_free_path(router: Router, stack: contextlib.ExitStack) -> None:
    # fresh_from_cache answers None: every route takes run_plan (a task per lookup, the
    # cache's get_or_fetch). hot, hits and the lookup event templates are then never reached.
    # (vars(): the engine imports it for its own use, it does not export it.)
    _same(vars(_engine)["fresh_from_cache"], _warm.fresh_from_cache, "_engine.fresh_from_cache")
    stack.enter_context(mock.patch.object(_engine, "fresh_from_cache", _none))


def _no_hot_outcomes(router: Router, stack: contextlib.ExitStack) -> None:
    # A backend generation of None, as for a backend that keeps none: WarmState.hot is never
    # used nor set, so every warm route reads every entry (fresh_entry_nowait).
    stack.enter_context(mock.patch.object(router.cache, "generation", _none))


def _no_decoded_memo(router: Router, stack: contextlib.ExitStack) -> None:
    # LookupCache keeps the last decoding of each entry; without it a read decodes the
    # stored bytes again (and the records are new objects: what follows from their identity
    # is lost too). Reached only by routes that read entries (hot outcomes off).
    stack.enter_context(mock.patch.object(router.cache, "_decoded", _Forgetful()))


def _no_lookup_templates(router: Router, stack: contextlib.ExitStack) -> None:
    # Every prepared route's hit_events remembers nothing: each lookup event built and
    # validated afresh. fresh_from_cache would still copy that new event with replaced()
    # (~1 us a lookup) for its time and correlation id, which it already has: that copy is
    # skipped, so the row shows what a warm route without templates would build, no more.
    _forget("hit_events")(router, stack)
    names = vars(_warm)  # what fresh_from_cache calls (imported, not exported)
    _same(names["lookup_event"], _route_events.lookup_event, "_warm.lookup_event")
    real_event, real_replaced = names["lookup_event"], names["replaced"]
    built: list[object] = [None]

    def lookup_event(*args: Any, **kwargs: Any) -> Any:
        built[0] = event = real_event(*args, **kwargs)
        return event

    def replaced(model: Any, changes: Any) -> Any:
        return model if model is built[0] else real_replaced(model, changes)

    stack.enter_context(mock.patch.object(_warm, "lookup_event", lookup_event))
    stack.enter_context(mock.patch.object(_warm, "replaced", replaced))


def _no_route_template(router: Router, stack: contextlib.ExitStack) -> None:
    # emit_route without the prepared route's WarmState: a RouteEvent built and validated
    # for each route, none copied.
    real = vars(_engine)["emit_route"]
    _same(real, _route_events.emit_route, "_engine.emit_route")
    parameters = list(inspect.signature(real).parameters)
    position = parameters.index("warm")
    if position != len(parameters) - 1:
        raise RuntimeError("ablation: emit_route's warm is no longer its last parameter")

    def untemplated(*args: Any, **kwargs: Any) -> None:
        kwargs.pop("warm", None)
        real(*args[:position], **kwargs)

    stack.enter_context(mock.patch.object(_engine, "emit_route", untemplated))


def _skip_request_recheck(router: Router, stack: contextlib.ExitStack) -> None:
    # Not a technique but a cost kept on purpose (HttpRequestSpec's docstring): the request's
    # control-character scan runs again when the request is put in an envelope. Skipping a
    # request just checked shows what that second scan costs.
    real = _envelope._check_request
    last: list[object] = [None]

    def once(request: Any) -> Any:
        if request is last[0]:
            return request
        last[0] = request
        return real(request)

    stack.enter_context(mock.patch.object(_envelope, "_check_request", once))


SWITCHES: dict[str, Switch] = {
    # WarmState fields first: the prepared routes they belong to are swapped out last.
    # hits: read only when the hot outcomes cannot answer (the generation moved, an entry
    # went stale), so alone it changes nothing here; with hot off, new outcome objects also
    # defeat what is remembered by their identity (provenance, lookup event templates).
    "hits": _forget("hits"),
    "lookup_templates": _no_lookup_templates,
    "route_template": _no_route_template,
    "derive_core": _forget("core"),
    "derive_adapter": _forget("adapter"),
    "decoded": _no_decoded_memo,
    "hot": _no_hot_outcomes,
    "task_free": _no_task_free_path,
    "prepared": _no_prepared_routes,
    "request_recheck": _skip_request_recheck,
}
ALL = frozenset(SWITCHES) - {"request_recheck"}

#: (label, techniques off). The first row of each table is its baseline.
Row = tuple[str, frozenset[str]]
PLAIN: tuple[Row, ...] = (
    ("(none: all on)", frozenset()),
    ("prepared routes", frozenset({"prepared"})),
    ("task-free warm path", frozenset({"task_free"})),
    ("hot outcomes", frozenset({"hot"})),
    ("hit outcome reuse (alone: unreached)", frozenset({"hits"})),
    ("hot outcomes + hit outcome reuse", frozenset({"hot", "hits"})),
    ("hot outcomes + decoded-records memo", frozenset({"hot", "decoded"})),
    ("Resolution.derive memo (core + adapter)", frozenset({"derive_core", "derive_adapter"})),
    ("  core only (recipient, provenance)", frozenset({"derive_core"})),
    ("  adapter only (Resolution.derive)", frozenset({"derive_adapter"})),
    ("all off", ALL),
    ("[cost] request re-check, skipped", frozenset({"request_recheck"})),
)
OBSERVED: tuple[Row, ...] = (
    ("(none: all on)", frozenset()),
    ("event templates (lookup + route)", frozenset({"lookup_templates", "route_template"})),
    ("  lookup event templates only", frozenset({"lookup_templates"})),
    ("  route event template only", frozenset({"route_template"})),
    ("hot outcomes + hit outcome reuse", frozenset({"hot", "hits"})),
    ("all off", ALL),
)


@contextlib.contextmanager
def switched_off(router: Router, techniques: frozenset[str]) -> Iterator[None]:
    """``techniques`` off for the duration; everything put back after."""
    with contextlib.ExitStack() as stack:
        for name, switch in SWITCHES.items():  # in SWITCHES' order
            if name in techniques:
                switch(router, stack)
        yield


class _Observer:
    """A trivial observer of both events, so the router builds them (nothing is written)."""

    def __init__(self) -> None:
        self.lookups = 0
        self.routes = 0

    @hookimpl
    def sds_lookup_completed(self, event: Any) -> None:
        self.lookups += 1

    @hookimpl
    def sds_route_completed(self, event: Any) -> None:
        self.routes += 1


@contextlib.contextmanager
def _observed(router: Router) -> Iterator[_Observer]:
    observer = _Observer()
    name = f"bench-observer-{uuid.uuid4().hex[:8]}"
    router.host.register(observer, name=name)
    try:
        yield observer
    finally:
        router.host.unregister(name)
    if not observer.routes or not observer.lookups:
        raise RuntimeError("ablation: the observer saw no events; the table would mean nothing")


#: ``--clock``: what a run is timed by.
CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}


async def _us_per_route(
    count: int, one: Callable[[], Awaitable[Any]], clock: Callable[[], float]
) -> float:
    gc.collect()
    started = clock()
    for _ in range(count):
        await one()
    return (clock() - started) / count * 1e6


async def measure(
    router: Router,
    route: Route,
    rows: tuple[Row, ...],
    count: int,
    rounds: int,
    clock: Callable[[], float],
) -> dict[str, list[float]]:
    """µs per route for every row, one run of ``count`` routes per row per round."""

    async def one() -> Any:
        return await router.route(route.adapter, **route.kwargs)

    await one()  # cold (or at least prepared)
    samples: dict[str, list[float]] = {label: [] for label, _ in rows}
    for _ in range(rounds):
        for label, off in rows:
            with switched_off(router, off):
                for _ in range(min(_WARMUP, count)):
                    await one()
                samples[label].append(await _us_per_route(count, one, clock))
    return samples


def print_table(title: str, samples: Mapping[str, list[float]]) -> None:
    """Best µs per route of each row, and its difference from the first row (all on)."""
    print(f"  {title}")
    print(
        f"    {'technique off':<42}{'us/route':>9}{'+us vs all on':>15}"
        f"{'% of route':>12}{'spread':>8}"
    )
    base = 0.0
    for i, (label, values) in enumerate(samples.items()):
        best = min(values)
        spread = (max(values) - best) / best
        if i == 0:
            base = best
            print(f"    {label:<42}{best:>9.1f}{'-':>15}{'-':>12}{spread:>8.0%}")
            continue
        delta = best - base
        print(f"    {label:<42}{best:>9.1f}{delta:>+15.1f}{delta / base:>+12.0%}{spread:>8.0%}")


async def ablate(
    base_url: str, routes: tuple[Route, ...], count: int, rounds: int, clock: str = "cpu"
) -> None:
    """Both tables (plain; with an observer) for every installed route's adapter."""
    print(
        f"warm path ablation: us per warm route ({clock} time), best of {rounds} interleaved "
        f"rounds of {count:,} routes; '+us' = what switching the technique off adds, "
        "'% of route' = that as a share of the all-on route"
    )
    timer = CLOCKS[clock]
    async with Router(Settings(base_url=base_url), host=PluginHost()) as router:
        for route in routes:
            if route.adapter not in router.adapters:
                print(f"  {route.adapter}: not installed (make install)")
                continue
            samples = await measure(router, route, PLAIN, count, rounds, timer)
            print_table(route.label, samples)
            with _observed(router):
                samples = await measure(router, route, OBSERVED, count, rounds, timer)
            print_table(f"{route.label}, with an observer of both events", samples)


class _CacheProvider:
    """Provides one given cache backend (the public ``sds_provide_cache`` hook)."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    @hookimpl(tryfirst=True)
    def sds_provide_cache(self, settings: Settings) -> Any:
        return self.backend


async def ablate_redis(
    base_url: str, routes: tuple[Route, ...], count: int, rounds: int, url: str
) -> None:
    """Redis's near cache on (``near_ttl_s`` 5 s, the default) and off (0), under a key
    prefix of its own, deleted after."""
    import redis.asyncio as aioredis

    from sds_plugins._redis import RedisCache

    prefix = f"sds-bench-ablate-{uuid.uuid4().hex[:12]}:"
    # A near-cache miss is a Redis round trip per lookup: fewer routes for that row.
    far_count = max(1, count // 20)
    print(
        f"  with Redis ({url.rsplit('@', 1)[-1]}, prefix {prefix}), wall time: near cache "
        f"on {count:,} routes, off {far_count:,} routes, per round"
    )
    try:
        async with contextlib.AsyncExitStack() as stack:
            routers: dict[str, tuple[Router, int]] = {}
            for label, near_ttl_s, n in (
                ("near cache on (near_ttl_s=5, all on)", 5.0, count),
                ("near cache off (near_ttl_s=0)", 0.0, far_count),
            ):
                backend = RedisCache(url, prefix=prefix, near_ttl_s=near_ttl_s)
                router = Router(
                    Settings(base_url=base_url),
                    host=PluginHost(),
                    plugins=[_CacheProvider(backend)],
                )
                routers[label] = (await stack.enter_async_context(router), n)
            for route in routes:
                if any(route.adapter not in r.adapters for r, _ in routers.values()):
                    continue
                samples: dict[str, list[float]] = {label: [] for label in routers}
                for _ in range(rounds):
                    for label, (router, n) in routers.items():
                        one_row = (("", frozenset[str]()),)
                        found = await measure(router, route, one_row, n, 1, time.perf_counter)
                        samples[label].append(found[""][0])
                print_table(f"{route.label}, Redis cache", samples)
    finally:
        client = aioredis.from_url(url)
        try:
            keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()
