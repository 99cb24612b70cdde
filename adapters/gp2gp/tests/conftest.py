"""Fixtures of the GP2GP tests: the two practices in an SDS sandbox, routers with the plugin."""

from __future__ import annotations

import os
from typing import Any

import pytest
from _gp2gp_support import Gp2gpRouterFactory, built_records
from sds_plugins import PluginHost, Router, SyncSdsClient
from sds_plugins.sandbox import Sandbox
from sds_plugins.testing import RouterFactory, SandboxFactory

from sds_plugins_gp2gp import EHR_REQUEST, PREVIOUS_PRACTICE, Gp2gpPlugin, Gp2gpSettings


@pytest.fixture(autouse=True)
def _no_gp2gp_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Gp2gpSettings reads SDS_GP2GP_* variables: a developer's shell must not change a test.
    for name in list(os.environ):
        if name.startswith("SDS_GP2GP_"):
            monkeypatch.delenv(name)


@pytest.fixture
def gp2gp_sandbox(sds_sandbox: Sandbox, sds_sandbox_factory: SandboxFactory) -> Sandbox:
    """An SDS sandbox with the two practices: the reference data, once it holds them (the
    records are in sds_plugins' additions), else the reference data plus the records
    (``mode="add"`` keeps Spine's intermediaries, which forward-reliable answers need)."""
    with SyncSdsClient(sds_sandbox.base_url) as client:
        present = client.endpoints(org=PREVIOUS_PRACTICE.ods, interaction=EHR_REQUEST).records
    sds_sandbox.reset()
    if present:
        return sds_sandbox
    records = built_records()
    return sds_sandbox_factory(
        records["mhs-records.json"], records["accredited-system-records.json"], mode="add"
    )


@pytest.fixture
def gp2gp_router(sds_router_factory: RouterFactory, gp2gp_sandbox: Sandbox) -> Gp2gpRouterFactory:
    """``await make(settings=None, sandbox=None, **router_settings) -> Router`` with a
    :class:`Gp2gpPlugin` of its own (so routers with different settings live in one test)."""

    async def make(
        settings: Gp2gpSettings | None = None,
        sandbox: Sandbox | None = None,
        **router_settings: Any,
    ) -> Router:
        host = PluginHost(load_entrypoints=False, environ={})
        host.register(Gp2gpPlugin(settings or Gp2gpSettings()), name="gp2gp")
        return await sds_router_factory(sandbox or gp2gp_sandbox, host=host, **router_settings)

    return make
