"""The plugin's pieces beside the adapter: the sandbox records and the demo."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _gp2gp_support import built_records
from rich.console import Console
from sds_plugins import PluginHost, SyncSdsClient
from sds_plugins.sandbox import Sandbox

from sds_plugins_gp2gp import (
    GP2GP_INTERACTIONS,
    NEW_PRACTICE,
    PREVIOUS_PRACTICE,
    Gp2gpPlugin,
    Gp2gpSettings,
    sandbox_records,
)
from sds_plugins_gp2gp.plugin import plugin


def test_the_sandbox_records_are_the_ones_the_tests_build(sds_sandbox: Sandbox) -> None:
    # The SDS sandbox's default data holds the two practices (sds_plugins' additions); the
    # tests build the same records with the project's builders, and the demo ships them: all
    # three must agree, and the sandbox must answer with them.
    records = sandbox_records()
    assert records == built_records()
    mhs = records["mhs-records.json"]
    systems = records["accredited-system-records.json"]
    assert len(mhs) == 8 and len(systems) == 2  # 2 practices x 4 interactions; one system each
    assert {record["nhsMHSPartyKey"] for record in mhs} == {
        system["nhsMHSPartyKey"] for system in systems
    }
    assert len({record["nhsMhsCPAId"] for record in mhs}) == 8
    with SyncSdsClient(sds_sandbox.base_url) as client:
        for practice in (NEW_PRACTICE, PREVIOUS_PRACTICE):
            for interaction in GP2GP_INTERACTIONS:
                [device] = client.devices(org=practice.ods, interaction=interaction).records
                assert (device.asid, device.party_key) == (practice.asid, practice.party_key)


def test_the_demo_is_registered_and_shows_one_whole_transfer() -> None:
    demos: list[tuple[str, Callable[[Console], None]]] = []
    host = PluginHost(load_entrypoints=False, environ={})
    host.register(Gp2gpPlugin(Gp2gpSettings()), name="gp2gp")
    host.register_demos(lambda name, show: demos.append((name, show)))
    [(name, show)] = demos
    assert name == "gp2gp"
    out = io.StringIO()
    show(Console(file=out, width=140))
    shown = out.getvalue()
    assert "one conversation" in shown
    assert "identical" in shown and "DIFFERENT" not in shown
    assert "/reliablemessaging/intermediary" in shown
    assert "4,500,000" in shown
    assert "9990001006" not in shown  # the sample extract's patient stays in the payloads


def test_the_entry_point_object_reads_its_settings_when_a_router_starts() -> None:
    assert repr(plugin) == "Gp2gpPlugin(env)"


async def test_the_readmes_walkthrough_runs(gp2gp_sandbox: Sandbox) -> None:
    # The README's transfer, as written, against the sandbox with the two practices (the
    # router loads the installed plugin through its entry point, as a user's would).
    readme = Path(__file__).parents[1].joinpath("README.md").read_text(encoding="utf-8")
    [code] = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    await namespace["transfer"](gp2gp_sandbox.base_url)
