"""The example third-party adapter (examples/sds-plugins-example-ebxml), installed as users would.

Discovery goes through the real ``sds_plugins`` entry point of the installed distribution
(``make install`` installs every ``examples/*/`` in editable mode).
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sds_plugins import (
    ENVELOPE_TTL,
    AmbiguousError,
    InvalidInputError,
    NotFoundError,
    PluginHost,
    RoutingEnvelope,
)
from sds_plugins.sandbox import Sandbox
from sds_plugins.testing import (
    RegisterPlugin,
    RouterFactory,
    SandboxFactory,
    accredited_system_record,
    mhs_record,
)

try:
    import sds_plugins_example_ebxml as example
except ImportError:  # pragma: no cover - a setup problem, reported as such
    pytest.fail(
        "the example adapter is not installed: pip install -e examples/sds-plugins-example-ebxml "
        "(make install does it)",
        pytrace=False,
    )

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_DIR = ROOT / "examples" / "sds-plugins-example-ebxml"
DIST = "sds-plugins-example-ebxml"
ENTRY_POINT = "example_ebxml"
ADAPTER = "example-ebxml"
PSIS = "urn:nhs:names:services:psis:REPC_IN150016UK05"
ORG = "A12345"
INTERACTION = "urn:nhs:names:services:example:EXAMPLE_IN000001UK01"


def _plugins(host: PluginHost) -> dict[str, dict[str, object]]:
    return {info["name"]: info for info in host.plugins()}


# --------------------------------------------------------------------------- discovery


def test_installed_example_is_loaded_from_its_entry_point() -> None:
    host = PluginHost(environ={})
    assert host.pm.get_plugin(ENTRY_POINT) is example
    assert _plugins(host)[ENTRY_POINT] == {
        "name": ENTRY_POINT,
        "distribution": DIST,
        "version": importlib.metadata.version(DIST),
        "hooks": ["sds_register_adapters"],
    }


@pytest.mark.parametrize("wanted", [DIST, "SDS_Plugins_Example_Ebxml", ENTRY_POINT])
def test_sds_plugins_load_selects_it_by_distribution_or_entry_point_name(wanted: str) -> None:
    host = PluginHost(environ={"SDS_PLUGINS_LOAD": wanted})
    loaded = {name for name in _plugins(host) if not name.startswith("sds_plugins.")}
    assert loaded == {ENTRY_POINT}


def test_sds_plugins_load_naming_something_else_leaves_it_out() -> None:
    host = PluginHost(environ={"SDS_PLUGINS_LOAD": "some-other-adapter"})
    assert ENTRY_POINT not in _plugins(host)
    assert not host.pm.has_plugin(ENTRY_POINT)


async def test_sds_plugins_disable_blocks_it(sds_router_factory: RouterFactory) -> None:
    host = PluginHost(environ={"SDS_PLUGINS_LOAD": DIST, "SDS_PLUGINS_DISABLE": ENTRY_POINT})
    assert host.pm.is_blocked(ENTRY_POINT)
    assert ENTRY_POINT not in _plugins(host)
    router = await sds_router_factory(host=host)
    with pytest.raises(InvalidInputError, match="no adapter named 'example-ebxml'"):
        await router.route(ADAPTER, org="YES", interaction=PSIS)


# --------------------------------------------------------------------------- routing


async def test_routes_against_the_sandbox_when_loaded_from_its_entry_point(
    sds_router_factory: RouterFactory, sds_sandbox: Sandbox
) -> None:
    router = await sds_router_factory(host=PluginHost(environ={"SDS_PLUGINS_LOAD": DIST}))
    envelope = await router.route(ADAPTER, org="yes", interaction=PSIS, from_asid="200000000123")

    address = "https://msg.opentest.hscic.gov.uk/reliablemessaging/reliablerequest"
    assert envelope.adapter == ADAPTER
    assert envelope.target.model_dump(exclude_none=True) == {
        "ods_code": "YES",
        "asid": "928942012545",
        "party_key": "YES-0000806",
        "address": address,
        "cpa_id": "S20001A000182",
    }
    assert envelope.source.asid == "200000000123"
    assert envelope.request.method == "POST"
    assert envelope.request.url == address
    assert envelope.request.headers == {
        "SOAPAction": "urn:nhs:names:services:psis/REPC_IN150016UK05",
        "X-Correlation-ID": envelope.provenance.correlation_id,
    }
    assert envelope.reliability is not None
    assert envelope.reliability.model_dump() == {
        "retries": 2,
        "retry_interval_s": 60.0,
        "persist_duration_s": 300.0,
        "duplicate_elimination": True,
        "ack_requested": True,
        "ack_actor": "urn:oasis:names:tc:ebxml-msg:actor:toPartyMSH",
        "sync_reply": True,
    }
    assert envelope.expires_at - envelope.provenance.resolved_at == ENVELOPE_TTL
    assert [record.kind for record in envelope.provenance.records] == ["endpoint", "device"]
    assert len(envelope.provenance.lookups) == 2
    assert envelope.extensions == {
        "service": "urn:nhs:names:services:psis",
        "action": "REPC_IN150016UK05",
        "pattern": "async-reliable",
    }
    # An envelope is queued as JSON and rebuilt by the sender.
    assert RoutingEnvelope.model_validate(envelope.to_message()) == envelope
    assert sum(sds_sandbox.stats()["requests"].values()) == 2


@pytest.fixture
def _example(sds_register_plugin: RegisterPlugin) -> None:
    # The same module the entry point loads, registered directly: how an author tests an
    # adapter before (or without) installing it.
    sds_register_plugin(example, name=ENTRY_POINT)


@pytest.fixture
def two_suppliers(sds_sandbox_factory: SandboxFactory) -> Sandbox:
    """An organisation moving between suppliers: two MHSs and two systems, joined on party key."""
    return sds_sandbox_factory(
        [
            mhs_record(ORG, INTERACTION, party_key=f"{ORG}-1", address="https://old.example.com/"),
            mhs_record(ORG, INTERACTION, party_key=f"{ORG}-2", address="https://new.example.com/"),
        ],
        [
            accredited_system_record(ORG, INTERACTION, party_key=f"{ORG}-1", asid="100000000001"),
            accredited_system_record(ORG, INTERACTION, party_key=f"{ORG}-2", asid="100000000002"),
        ],
    )


@pytest.mark.usefixtures("_example")
async def test_two_candidates_are_refused_until_a_party_key_chooses(
    two_suppliers: Sandbox, sds_router_factory: RouterFactory
) -> None:
    router = await sds_router_factory(two_suppliers)
    with pytest.raises(AmbiguousError) as info:
        await router.route(ADAPTER, org=ORG, interaction=INTERACTION)
    assert {c["party_key"] for c in info.value.candidates} == {f"{ORG}-1", f"{ORG}-2"}

    # The records carry no ebXML reliability settings, so the caller names the pattern.
    envelope = await router.route(
        ADAPTER, org=ORG, interaction=INTERACTION, party_key=f"{ORG}-2", pattern="async-express"
    )
    assert (envelope.target.address, envelope.target.asid) == (
        "https://new.example.com/",
        "100000000002",
    )
    assert envelope.reliability is not None
    assert (envelope.reliability.ack_requested, envelope.reliability.sync_reply) == (False, True)


GP2GP = "urn:nhs:names:services:gp2gp:COPC_IN000001UK01"


@pytest.fixture
def gp2gp_practice(sds_sandbox_factory: SandboxFactory) -> Sandbox:
    """A practice that receives GP2GP, added to the reference data (Spine's intermediaries)."""
    return sds_sandbox_factory(
        [mhs_record(ORG, GP2GP, ack_requested="always", retries=3, retry_interval="PT30S")],
        [accredited_system_record(ORG, GP2GP, asid="100000000003")],
        mode="add",
    )


@pytest.mark.usefixtures("_example")
async def test_a_forward_reliable_interaction_goes_through_spines_intermediary(
    gp2gp_practice: Sandbox, sds_router_factory: RouterFactory
) -> None:
    router = await sds_router_factory(gp2gp_practice)
    envelope = await router.route(ADAPTER, org=ORG, interaction=GP2GP)
    # SDS answers with the intermediary's address; the party key stays the practice's.
    assert envelope.request.url.endswith("/reliablemessaging/intermediary")
    assert (envelope.target.party_key, envelope.target.asid) == (f"{ORG}-0000001", "100000000003")
    assert envelope.extensions["pattern"] == "forward-reliable"


@pytest.mark.usefixtures("_example")
async def test_custom_data_that_replaces_the_reference_data_cannot_route_gp2gp(
    sds_sandbox_factory: SandboxFactory, sds_router_factory: RouterFactory
) -> None:
    from sds_plugins import DirectoryUnavailableError

    alone = sds_sandbox_factory([mhs_record(ORG, GP2GP)], [accredited_system_record(ORG, GP2GP)])
    router = await sds_router_factory(alone, retry_attempts=1)
    # No intermediary records: the sandbox, like SDS, answers 500 "Expected 1 result for
    # forward reliable/express routing".
    with pytest.raises(DirectoryUnavailableError) as info:
        await router.route(ADAPTER, org=ORG, interaction=GP2GP)
    assert info.value.status_code == 500


@pytest.mark.usefixtures("_example")
async def test_the_example_and_the_ers_adapter_agree_on_patterns(
    sds_sandbox: Sandbox, sds_router_factory: RouterFactory
) -> None:
    # The same reference records through the example and the core builder the ers adapter
    # uses: the same pattern and the same flags. A forward-reliable interaction gets the
    # intermediary's nextMSH acknowledgement, not the recipient record's own settings.
    from sds_plugins import Lookup
    from sds_plugins.ebxml import ebxml_routing

    router = await sds_router_factory()
    gp2gp = "urn:nhs:names:services:gp2gp:COPC_IN000001UK01"
    for org, interaction, party_key in (("YES", PSIS, None), ("X26", gp2gp, "X26-9199246")):
        options = {"party_key": party_key} if party_key else {}
        outcome = await router.lookup(Lookup.endpoints(org=org, interaction=interaction, **options))
        [endpoint] = outcome.records
        routing = ebxml_routing(
            endpoint,
            interaction=interaction,
            from_party_key="R69-0000001",
            from_asid=None,
            to_asid=None,
            correlation_id="0b6e7f5c-8a8e-4a43-9d5e-3f1f2a3b4c5d",
        )
        if party_key is None:
            envelope = await router.route(ADAPTER, org=org, interaction=interaction)
            assert envelope.reliability == routing.reliability()
            assert envelope.extensions["pattern"] == routing.pattern.value
        else:
            assert routing.pattern.value == "forward-reliable"
            assert routing.reliability().ack_actor.endswith("nextMSH")  # type: ignore[union-attr]


@pytest.mark.usefixtures("_example")
async def test_an_undetermined_pattern_is_refused_saying_what_sds_said(
    sds_sandbox_factory: SandboxFactory, sds_router_factory: RouterFactory
) -> None:
    sandbox = sds_sandbox_factory(
        [mhs_record(ORG, INTERACTION, ack_requested="always", sync_reply_mode="None")],
        [accredited_system_record(ORG, INTERACTION)],
    )
    router = await sds_router_factory(sandbox)
    with pytest.raises(InvalidInputError, match="ackRequested=always"):
        await router.route(ADAPTER, org=ORG, interaction=INTERACTION)


@pytest.mark.usefixtures("_example")
@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"from_asid": "12345"}, "from_asid"),
        ({"colour": "blue"}, "colour"),
        ({"pattern": "express-ish"}, "pattern"),
    ],
)
async def test_bad_options_are_refused_before_any_lookup(
    options: dict[str, Any], field: str, sds_router_factory: RouterFactory, sds_sandbox: Sandbox
) -> None:
    router = await sds_router_factory()
    with pytest.raises(InvalidInputError) as info:
        await router.route(ADAPTER, org="YES", interaction=PSIS, **options)
    assert info.value.field == field
    assert sds_sandbox.stats()["requests"] == {}


@pytest.mark.usefixtures("_example")
async def test_an_endpoint_without_an_accredited_system_is_not_routable(
    sds_sandbox_factory: SandboxFactory, sds_router_factory: RouterFactory
) -> None:
    sandbox = sds_sandbox_factory([mhs_record(ORG, INTERACTION)], [])
    router = await sds_router_factory(sandbox)
    with pytest.raises(NotFoundError, match="no accredited system"):
        await router.route(ADAPTER, org=ORG, interaction=INTERACTION)


# --------------------------------------------------------------------------- types


@pytest.mark.slow
def test_the_example_is_mypy_strict_clean() -> None:
    # A subprocess, so mypy's global state stays out of the test process; the project's cache
    # makes this quick after `make typecheck` (a cold run takes ~15 s).
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            str(EXAMPLE_DIR),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
