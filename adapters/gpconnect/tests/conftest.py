"""A sandbox with the GP Connect cases (gpconnect_cases.py) and a router bound to it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from gpconnect_cases import AS_RECORDS, MHS_RECORDS
from sds_plugins_gpconnect import GpConnectAdapter

from sds_plugins import PluginHost, Router, Settings
from sds_plugins.sandbox import Sandbox, SandboxConfig


@pytest.fixture(autouse=True)
def _no_gpconnect_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # SDS_GPCONNECT_* configures the adapter (TLS, caching): a developer's shell must not
    # change what a test sees.
    import os

    for name in list(os.environ):
        if name.startswith("SDS_GPCONNECT_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def gpc_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    data = tmp_path_factory.mktemp("gpconnect-data")
    (data / "mhs-records.json").write_text(json.dumps(MHS_RECORDS))
    (data / "accredited-system-records.json").write_text(json.dumps(AS_RECORDS))
    with Sandbox(SandboxConfig(data_dir=Path(data))) as sandbox:
        yield sandbox


@pytest_asyncio.fixture
async def router(gpc_sandbox: Sandbox) -> AsyncIterator[Router]:
    """A router with the GP Connect adapter found through its entry point."""
    gpc_sandbox.reset()
    host = PluginHost(environ={"SDS_PLUGINS_LOAD": "sds-plugins-gpconnect"})
    async with Router(Settings(base_url=gpc_sandbox.base_url), host=host) as started:
        assert isinstance(started.adapters["gpconnect"], GpConnectAdapter)
        yield started
