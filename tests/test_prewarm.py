"""Bulk prewarming: counts by outcome, request totals, and that it stays under the rate limit."""

from __future__ import annotations

from collections.abc import Callable

from sds_plugins import Settings
from sds_plugins._prewarm import prewarm
from sds_plugins.sandbox import Sandbox

from ._adapters import JoinPlugin
from ._reference import GP2GP, PSIS


async def test_prewarm_summary(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox(rate_limit=40)
    orgs = ["YES", "yes", "A99999", "A99998", "B8!"]
    summary = await prewarm(
        Settings(base_url=sb.base_url, rate_limit_per_s=20),
        adapter="join",
        interaction=PSIS,
        orgs=orgs,
        progress=False,
        plugins=[JoinPlugin()],
    )
    assert summary["organisations"] == 5
    assert summary["resolved"] == 2  # YES twice (the second is a cache hit or coalesced)
    assert summary["not_found"] == 2
    assert summary["invalid"] == 1
    assert summary["failures"] == {
        "A99999": "NotFoundError",
        "A99998": "NotFoundError",
        "B8!": "InvalidInputError",
    }
    assert summary["directory_requests"] == sum(sb.stats()["requests"].values()) == 6
    assert "429" not in sb.stats()["statuses"]


async def test_prewarm_counts_ambiguity_and_failures(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    summary = await prewarm(
        Settings(base_url=sb.base_url),
        adapter="join",
        interaction=GP2GP,
        orgs=["X26"],
        progress=False,
        plugins=[JoinPlugin()],
    )
    assert summary["ambiguous"] == 1
    sb.set_faults(outage=True, error_status=500)
    summary = await prewarm(
        Settings(base_url=sb.base_url, retry_attempts=1),
        adapter="join",
        interaction=PSIS,
        orgs=["YES", "B82617"],
        progress=False,
        plugins=[JoinPlugin()],
    )
    assert summary["failed"] == 2
    assert summary["failures"]["YES"] == "DirectoryUnavailableError"
