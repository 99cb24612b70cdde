"""Keepalives: calls a service asks its clients to make now and then, outside any route.

MESH asks every client to validate its mailbox once every 24 hours (the handshake). A plugin
registers such a call with ``sds_register_keepalives``; ``sds-plugins doctor`` makes each once
and reports it, and the long-running processes (the worker, ``serve``) make each at start and
then every interval, in the background, for as long as they run. A failing keepalive is
logged and tried again sooner (:data:`RETRY_S`); it never stops the process: routing does not
depend on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from ._exceptions import PluginError

if TYPE_CHECKING:
    from ._plugins import PluginHost

__all__ = [
    "CALL_TIMEOUT_S",
    "RETRY_S",
    "Keepalive",
    "KeepaliveRunner",
    "collect_keepalives",
    "start_keepalives",
]

logger = logging.getLogger("sds_plugins.keepalive")

#: After a failure, the next try comes after this many seconds (or the interval, if shorter).
RETRY_S = 300.0
#: The longest one call may take: a server that answers a byte at a time must not hold it
#: (and every later call) for ever. Past it, the call failed.
CALL_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Keepalive:
    """``call()`` every ``interval_s`` seconds; ``name`` says what it is in logs and doctor."""

    name: str
    interval_s: float
    call: Callable[[], Awaitable[object]]


def collect_keepalives(host: PluginHost) -> list[Keepalive]:
    """Every keepalive the plugins register (checked: a name, a positive interval)."""
    found: list[Keepalive] = []

    def register(name: str, interval_s: float, call: Callable[[], Awaitable[object]]) -> None:
        if not isinstance(name, str) or not name.strip():
            raise PluginError("a keepalive needs a name")
        if not isinstance(interval_s, int | float) or not interval_s > 0:
            raise PluginError(f"keepalive {name!r}: the interval must be a positive number")
        if not callable(call):
            raise PluginError(f"keepalive {name!r}: call must be an async callable")
        if any(k.name == name for k in found):
            raise PluginError(f"two plugins register a keepalive named {name!r}")
        found.append(Keepalive(name, float(interval_s), call))

    host.register_keepalives(register)
    return found


async def run_once(keepalive: Keepalive) -> None:
    """One call, logged: the error's class and message (never raised further)."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(CALL_TIMEOUT_S):
            await keepalive.call()
    except Exception as exc:
        logger.warning(
            "keepalive %s failed: %s: %s (next try in %.0f s)",
            keepalive.name,
            type(exc).__name__,
            exc,
            min(RETRY_S, keepalive.interval_s),
        )
        raise
    logger.info(
        "keepalive %s done in %.0f ms",
        keepalive.name,
        (time.perf_counter() - started) * 1000,
    )


def start_keepalives(host: PluginHost) -> KeepaliveRunner:
    """A started :class:`KeepaliveRunner` for the plugins' keepalives. A plugin that fails to
    register them is logged and the process goes on without: nothing routing needs waits on a
    keepalive."""
    try:
        keepalives = collect_keepalives(host)
    except Exception as exc:
        logger.error(
            "no keepalives: a plugin failed to register them: %s: %s", type(exc).__name__, exc
        )
        keepalives = []
    runner = KeepaliveRunner(keepalives)
    runner.start()
    return runner


class KeepaliveRunner:
    """Runs keepalives in the background: each at once, then every interval (sooner again
    after a failure). ``async with KeepaliveRunner(keepalives):`` around a process's life."""

    def __init__(self, keepalives: list[Keepalive]) -> None:
        self.keepalives = keepalives
        self._tasks: list[asyncio.Task[None]] = []
        #: How many calls went well and how many failed, by keepalive (for tests and status).
        self.done: dict[str, int] = {k.name: 0 for k in keepalives}
        self.failed: dict[str, int] = {k.name: 0 for k in keepalives}

    async def __aenter__(self) -> KeepaliveRunner:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def start(self) -> None:
        for keepalive in self.keepalives:
            self._tasks.append(
                asyncio.create_task(self._loop(keepalive), name=f"keepalive {keepalive.name}")
            )

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _loop(self, keepalive: Keepalive) -> None:
        while True:
            try:
                await run_once(keepalive)
            except Exception:
                self.failed[keepalive.name] += 1
                await asyncio.sleep(min(RETRY_S, keepalive.interval_s))
            else:
                self.done[keepalive.name] += 1
                await asyncio.sleep(keepalive.interval_s)
