"""Bulk prewarming: what it refuses, de-duplication, the summary, and its exit status.

Pacing behind a gateway like NHS's (no spike-arrest 429s) is in ``test_pacing.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sds_plugins import ConfigurationError, InvalidInputError, Settings
from sds_plugins._tools._prewarm import prewarm
from sds_plugins.sandbox import Sandbox

from ._adapters import JoinPlugin
from ._reference import GP2GP, PSIS


async def test_prewarm_summary(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    orgs = ["YES", "yes", " YES ", "A99999", "A99998", "B8!"]
    summary = await prewarm(
        Settings(base_url=sb.base_url),
        adapter="join",
        interaction=PSIS,
        orgs=orgs,
        progress=False,
        plugins=[JoinPlugin()],
        require_shared_cache=False,
    )
    assert summary["organisations"] == 4  # YES once, two unknown codes, one invalid
    assert summary["duplicates"] == 2
    assert (summary["resolved"], summary["not_found"], summary["invalid"]) == (1, 2, 1)
    assert summary["exit_code"] == 2  # an invalid code in the list
    assert set(summary["failures"]) == {"A99999", "A99998", "B8!"}
    assert summary["failures"]["B8!"]["error"] == "InvalidInputError"
    not_found = summary["failures"]["A99999"]
    assert not_found["error"] == "NotFoundError"
    assert "A99999" in not_found["message"]
    assert not_found["correlation_id"]
    # Each unique organisation is looked up once: Endpoint + Device; the unknown ones' empty
    # answers are asked twice (the second time past the API gateway's cache).
    assert summary["directory_requests"] == sum(sb.stats()["requests"].values()) == 2 + 2 * 4


async def test_prewarm_counts_ambiguity_and_failures(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    summary = await prewarm(
        Settings(base_url=sb.base_url),
        adapter="join",
        interaction=GP2GP,
        orgs=["X26"],
        progress=False,
        plugins=[JoinPlugin()],
        require_shared_cache=False,
    )
    assert summary["ambiguous"] == 1
    assert summary["exit_code"] == 0  # ambiguous is a definite answer
    sb.set_faults(outage=True, error_status=500)
    summary = await prewarm(
        Settings(base_url=sb.base_url, retry_attempts=1),
        adapter="join",
        interaction=PSIS,
        orgs=["YES", "B82617"],
        progress=False,
        plugins=[JoinPlugin()],
        require_shared_cache=False,
    )
    assert summary["failed"] == 2
    assert summary["exit_code"] == 5
    assert summary["failures"]["YES"]["error"] in {"DirectoryUnavailableError", "BreakerOpenError"}


async def test_prewarm_refuses_an_in_process_cache(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    with pytest.raises(ConfigurationError, match="SDS_REDIS_URL"):
        await prewarm(
            Settings(base_url=sb.base_url),
            adapter="join",
            interaction=PSIS,
            orgs=["YES"],
            progress=False,
            plugins=[JoinPlugin()],
        )
    assert sb.stats()["requests"] == {}


async def test_prewarm_refuses_an_adapter_that_stores_nothing(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    sb = make_sandbox()

    class Unstored(JoinPlugin):
        def __init__(self) -> None:
            super().__init__(scope=None)
            self.adapter.unstored_reason = "join keeps nothing for tests"

    class SharedMemory:
        """A memory cache that claims to be shared, to reach the adapter check."""

        @staticmethod
        def _cache() -> object:
            from sds_plugins import MemoryCache

            cache = MemoryCache()
            cache.shared = True
            return cache

    from sds_plugins import hookimpl

    class Provide(SharedMemory):
        @hookimpl
        def sds_provide_cache(self, settings: Settings) -> object:
            return self._cache()

    with pytest.raises(ConfigurationError, match="join keeps nothing for tests"):
        await prewarm(
            Settings(base_url=sb.base_url),
            adapter="join",
            interaction=PSIS,
            orgs=["YES"],
            progress=False,
            plugins=[Unstored(), Provide()],
        )
    assert sb.stats()["requests"] == {}


async def test_a_wrong_adapter_or_interaction_stops_the_run(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    sb = make_sandbox()
    for adapter, interaction in (("nope", PSIS), ("join", "not-an-interaction")):
        with pytest.raises(InvalidInputError):
            await prewarm(
                Settings(base_url=sb.base_url),
                adapter=adapter,
                interaction=interaction,
                orgs=["YES", "X26"],
                progress=False,
                plugins=[JoinPlugin()],
                require_shared_cache=False,
            )
