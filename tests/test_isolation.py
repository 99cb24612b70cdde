"""The suite ignores plugins installed beside the project (see the repository's conftest.py).

A stray distribution is "installed" the way any is: a ``.dist-info`` folder with an
``entry_points.txt`` on the import path, so ``importlib.metadata`` finds it exactly as it finds
a developer's own adapter. Nothing is installed into the environment.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sds_plugins import PluginHost, Router, Settings
from sds_plugins.sandbox import Sandbox

STRAY_MODULE = """
from sds_plugins import hookimpl

@hookimpl
def sds_register_adapters(register):
    raise RuntimeError("the stray plugin was loaded")
"""


@pytest.fixture
def stray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A distribution ``sds-plugins-stray`` with an ``sds_plugins`` entry point, on the path."""
    site = tmp_path / "site"
    info = site / "sds_plugins_stray-1.0.dist-info"
    info.mkdir(parents=True)
    (site / "sds_plugins_stray.py").write_text(STRAY_MODULE)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sds-plugins-stray\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[sds_plugins]\nstray = sds_plugins_stray\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    return site


def _names(entry_points: object) -> set[str]:
    return {ep.name for ep in entry_points(group="sds_plugins")}  # type: ignore[operator]


def test_the_stray_plugin_is_installed_but_not_seen(stray: Path) -> None:
    unfiltered = importlib.metadata.entry_points.__wrapped__  # type: ignore[attr-defined]
    assert "stray" in _names(unfiltered)  # really installed: discovery would find it
    seen = _names(importlib.metadata.entry_points)
    assert "stray" not in seen
    assert {"gpconnect", "mesh", "ers", "example_ebxml"} <= seen


async def test_a_router_built_as_users_build_it_ignores_the_stray_plugin(
    stray: Path, sandbox: Sandbox
) -> None:
    # PluginHost() with no arguments: the process environment and every entry point, as
    # Router.from_settings builds it. The stray plugin would raise on registering adapters.
    async with Router(Settings(base_url=sandbox.base_url), host=PluginHost()) as router:
        assert "stray" not in router.adapters
        assert {"gpconnect", "mesh", "ers", "example-ebxml"} <= set(router.adapters)


def _plugins_listed(env: dict[str, str]) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-m", "sds_plugins", "plugins"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return {plugin["name"] for plugin in json.loads(result.stdout)}


def test_processes_the_tests_start_ignore_the_stray_plugin(stray: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(stray)}
    assert "stray" not in _plugins_listed(env)
    # The control: without the suite's SDS_PLUGINS_LOAD, the same process loads it.
    env.pop("SDS_PLUGINS_LOAD")
    assert "stray" in _plugins_listed(env)
