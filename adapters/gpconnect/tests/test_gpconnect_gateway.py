"""GP Connect behind a gateway like NHS's live one: cold routes are paced one interval apart,
and prewarming is refused when GP Connect's encounter rule means nothing would be kept."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpconnect_cases import AS_RECORDS, CONSUMER, CONSUMER_OPTIONS, GPC, MHS_RECORDS, SINGLE

from sds_plugins import (
    CacheBackend,
    ConfigurationError,
    MemoryCache,
    Pacer,
    PluginHost,
    Router,
    Settings,
    hookimpl,
)
from sds_plugins._tools._prewarm import prewarm
from sds_plugins.sandbox import SandboxProcess


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    """The GP Connect cases behind NHS's live gateway policies, in a process of their own."""
    data = tmp_path_factory.mktemp("gpconnect-gateway")
    (data / "mhs-records.json").write_text(json.dumps(MHS_RECORDS))
    (data / "accredited-system-records.json").write_text(json.dumps(AS_RECORDS))
    with SandboxProcess(gateway=True, data_dir=Path(data)) as sandbox:
        yield sandbox


def _host() -> PluginHost:
    return PluginHost(environ={"SDS_PLUGINS_LOAD": "sds-plugins-gpconnect"})


class KeepPacer:
    """Keeps the router's pacer, to look at what it did after the run."""

    pacer: Pacer | None = None

    @hookimpl
    def sds_provide_rate_limiter(self, settings: Settings) -> Pacer:
        self.pacer = Pacer(per_second=settings.rate_limit_per_s)
        return self.pacer


async def test_cold_routes_are_paced_one_interval_apart(gateway: SandboxProcess) -> None:
    gateway.reset()
    options = {k: v for k, v in CONSUMER_OPTIONS.items() if k != "consumer_asid"}
    consumer = {"consumer_ods": CONSUMER, "consumer_supplier_ods": "YGA"}
    keep = KeepPacer()
    settings = Settings(base_url=gateway.base_url)
    async with Router(settings, host=_host(), plugins=[keep]) as router:
        # Without an encounter every route is cold: provider Endpoint and Device, and the
        # consumer's Device, all at once.
        for _ in range(5):
            await router.route("gpconnect", org=SINGLE, interaction=GPC, **consumer, **options)
        await asyncio.gather(
            *(
                router.route("gpconnect", org=SINGLE, interaction=GPC, **consumer, **options)
                for _ in range(5)
            )
        )
    # The three lookups a cold route fires at once went to the wire one interval apart (what
    # the gateway then saw also depends on the machine's load: bench/gateway.py measures it).
    assert keep.pacer is not None
    assert keep.pacer.spacer.closest_s >= 1 / keep.pacer.per_second
    # Three lookups per sequential route; the concurrent five share one set in flight (a
    # request the gateway refused, if any, went again and is counted apart).
    assert gateway.stats()["statuses"]["200"] == 5 * 3 + 3


class SharedMemory:
    """A cache that says it is shared, so that prewarm reaches its adapter check."""

    @hookimpl
    def sds_provide_cache(self, settings: Settings) -> CacheBackend:
        cache = MemoryCache()
        cache.shared = True
        return cache


async def test_prewarm_is_refused_unless_the_operator_shares_the_cache(
    gateway: SandboxProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway.reset()
    monkeypatch.delenv("SDS_GPCONNECT_SHARED_CACHE", raising=False)
    with pytest.raises(ConfigurationError, match="SDS_GPCONNECT_SHARED_CACHE=1"):
        await prewarm(
            Settings(base_url=gateway.base_url),
            adapter="gpconnect",
            interaction=GPC,
            orgs=[SINGLE],
            options=dict(CONSUMER_OPTIONS),
            progress=False,
            plugins=[SharedMemory()],
        )
    assert gateway.stats()["requests"] == {}

    monkeypatch.setenv("SDS_GPCONNECT_SHARED_CACHE", "1")
    summary = await prewarm(
        Settings(base_url=gateway.base_url),
        adapter="gpconnect",
        interaction=GPC,
        orgs=[SINGLE],
        options=dict(CONSUMER_OPTIONS),
        progress=False,
        plugins=[SharedMemory()],
    )
    assert summary["resolved"] == 1
    assert summary["exit_code"] == 0
