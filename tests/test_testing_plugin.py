"""The pytest plugin for adapter authors (``sds_plugins.testing``), used the way an author would."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sds_plugins import (
    AccreditedSystem,
    Adapter,
    HttpRequestSpec,
    Lookup,
    MessageHandlingEndpoint,
    Party,
    PluginError,
    PluginHost,
    Resolution,
    Router,
    RouteRequest,
    RoutingEnvelope,
    hookimpl,
    join_on_party_key,
)
from sds_plugins.sandbox import Sandbox
from sds_plugins.testing import (
    RegisterPlugin,
    RouterFactory,
    SandboxFactory,
    accredited_system_record,
    default_party_key,
    mhs_record,
)

pytest_plugins = ["pytester"]

ORG = "A12345"
INTERACTION = "urn:nhs:names:services:example:EXAMPLE_IN000001UK01"
PSIS = "urn:nhs:names:services:psis:REPC_IN150016UK05"


class TinyAdapter(Adapter):
    """Endpoint joined with device on party key: the smallest adapter worth routing through."""

    name = "tiny"

    def plan(self, request: RouteRequest) -> Mapping[str, Lookup]:
        return {
            "endpoints": Lookup.endpoints(org=request.org, interaction=request.interaction),
            "devices": Lookup.devices(org=request.org, interaction=request.interaction),
        }

    def build(self, request: RouteRequest, resolved: Resolution) -> RoutingEnvelope:
        candidates = join_on_party_key(resolved.records("endpoints"), resolved.records("devices"))
        chosen = resolved.select(candidates)
        assert chosen.address is not None
        return RoutingEnvelope(
            adapter=self.name,
            interaction=request.interaction,
            target=Party(ods_code=request.org, asid=chosen.asid, address=chosen.address),
            request=HttpRequestSpec(method="POST", url=chosen.address),
            expires_at=resolved.now + timedelta(minutes=1),
            provenance=resolved.provenance(chosen.records),
        )


class TinyPlugin:
    @hookimpl
    def sds_register_adapters(self, register: Callable[[Adapter], None]) -> None:
        register(TinyAdapter())


@pytest.fixture(autouse=True)
def _tiny(sds_register_plugin: RegisterPlugin) -> None:
    # Registered in an autouse fixture, so it is in place before sds_router starts.
    sds_register_plugin(TinyPlugin(), name="tiny")


# --------------------------------------------------------------------------- routing


async def test_a_custom_directory_answers_a_route_through_a_registered_adapter(
    sds_sandbox_factory: SandboxFactory, sds_router_factory: RouterFactory
) -> None:
    sandbox = sds_sandbox_factory(
        [mhs_record(ORG, INTERACTION)], [accredited_system_record(ORG, INTERACTION, asid="1" * 12)]
    )
    router = await sds_router_factory(sandbox)
    envelope = await router.route("tiny", org=ORG.lower(), interaction=INTERACTION)
    assert envelope.target.asid == "111111111111"
    assert envelope.request.url == "https://mhs.a12345.example.com/"
    assert sandbox.stats()["requests"] == {
        "/spine-directory/FHIR/R4/Endpoint": 1,
        "/spine-directory/FHIR/R4/Device": 1,
    }


async def test_sds_router_uses_the_reference_sandbox_and_the_registered_plugins(
    sds_router: Router, sds_sandbox: Sandbox
) -> None:
    envelope = await sds_router.route("tiny", org="YES", interaction=PSIS)
    assert envelope.target.asid == "928942012545"
    assert sds_router.settings.base_url == sds_sandbox.base_url
    assert sum(sds_sandbox.stats()["requests"].values()) == 2


# --------------------------------------------------------------------------- isolation


def test_registrations_and_faults_end_with_their_test(pytester: pytest.Pytester) -> None:
    # Pairs of tests whose order matters, run in a session of their own: the suite itself runs
    # in parallel workers, which would separate a pair.
    pytester.makepyfile(
        test_isolation="""
        import pytest
        from sds_plugins import hookimpl

        PSIS = "urn:nhs:names:services:psis:REPC_IN150016UK05"
        HOSTS = []
        SANDBOXES = []

        class Tiny:
            @hookimpl
            def sds_register_adapters(self, register):
                from tests_adapter import TinyAdapter
                register(TinyAdapter())

        @pytest.fixture(autouse=True)
        def _tiny(sds_register_plugin):
            sds_register_plugin(Tiny(), name="tiny")

        def test_a_registration_lasts_for_one_test(sds_register_plugin, sds_plugin_host):
            name = sds_register_plugin(Tiny(), name="visible-here-only")
            assert name == "visible-here-only"
            assert sds_plugin_host.pm.has_plugin(name)
            HOSTS.append(sds_plugin_host)

        def test_the_previous_tests_registration_did_not_leak(sds_plugin_host):
            previous = HOSTS[-1]
            assert previous is not sds_plugin_host
            assert not previous.pm.has_plugin("visible-here-only")
            assert not previous.pm.has_plugin("tiny")
            assert not sds_plugin_host.pm.has_plugin("visible-here-only")

        def test_faults_set_in_one_test(sds_sandbox):
            assert sds_sandbox.set_faults(outage=True)["outage"] is True
            SANDBOXES.append(sds_sandbox)

        @pytest.mark.asyncio
        async def test_are_gone_in_the_next(sds_sandbox, sds_router):
            # The same shared sandbox the test above broke.
            assert SANDBOXES == [sds_sandbox]
            envelope = await sds_router.route("tiny", org="YES", interaction=PSIS)
            assert envelope.target.party_key is None  # TinyAdapter does not copy it
            assert sds_sandbox.stats()["statuses"] == {"200": 2}
        """,
        tests_adapter=_source_of_tiny_adapter(),
    )
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=4)


async def test_router_settings_ignore_sds_environment_variables(
    monkeypatch: pytest.MonkeyPatch, sds_router_factory: RouterFactory
) -> None:
    monkeypatch.setenv("SDS_CACHE_TTL_S", "0")
    monkeypatch.setenv("SDS_API_KEY", "from-the-shell")
    router = await sds_router_factory(retry_attempts=1)
    assert router.settings.cache_ttl_s == 300
    assert router.settings.api_key is None
    assert router.settings.retry_attempts == 1


async def test_registering_a_start_time_plugin_after_the_router_started_is_refused(
    sds_router: Router, sds_register_plugin: RegisterPlugin, sds_plugin_host: PluginHost
) -> None:
    class Late:
        @hookimpl
        def sds_register_adapters(self, register: Callable[[Adapter], None]) -> None:
            raise AssertionError("never called")

    with pytest.raises(PluginError, match="a router on this host is running"):
        sds_register_plugin(Late(), name="late")
    assert not sds_plugin_host.pm.has_plugin("late")

    class Observer:  # hooks called on every route are fine to add at any time
        @hookimpl
        def sds_route_completed(self, event: Any) -> None:
            pass

    name = sds_register_plugin(Observer())
    assert sds_plugin_host.pm.has_plugin(name)


# --------------------------------------------------------------------------- builders


async def test_builders_produce_records_the_sandbox_serves_as_they_describe(
    sds_sandbox_factory: SandboxFactory, sds_router_factory: RouterFactory
) -> None:
    other = "urn:nhs:names:services:example:EXAMPLE_IN000002UK01"
    sandbox = sds_sandbox_factory(
        mhs_records=[
            mhs_record(
                ORG,
                [INTERACTION, other],
                address=["https://one.example.com/in", "https://two.example.com/in"],
                retries=3,
                retry_interval="PT30S",
                persist_duration="PT5M",
                duplicate_elimination="always",
                ack_requested="never",
                sync_reply_mode="MSHSignalsOnly",
                actor="urn:oasis:names:tc:ebxml-msg:actor:toPartyMSH",
            ),
            mhs_record("B0001", INTERACTION, address=[], party_key="B0001-42"),
        ],
        accredited_systems=[
            accredited_system_record(ORG, INTERACTION, manufacturer="YGM24"),
            accredited_system_record(ORG, other, party_key=f"{ORG}-2", manufacturer=None),
        ],
    )
    router = await sds_router_factory(sandbox)

    endpoints = (await router.lookup(Lookup.endpoints(org=ORG, interaction=INTERACTION))).records
    assert [e.address for e in endpoints] == [
        "https://one.example.com/in",
        "https://two.example.com/in",
    ]
    endpoint = endpoints[0]
    assert isinstance(endpoint, MessageHandlingEndpoint)
    assert endpoint.party_key == default_party_key(ORG) == "A12345-0000001"
    assert endpoint.fqdn == "mhs.a12345.example.com"
    assert endpoint.cpa_id == endpoint.mhs_id
    assert endpoint.reliability is not None
    assert endpoint.reliability.retries == 3
    assert endpoint.reliability.retry_interval_s == 30
    assert endpoint.reliability.persist_duration_s == 300
    assert endpoint.reliability.duplicate_elimination == "always"
    assert endpoint.reliability.ack_requested == "never"
    assert endpoint.reliability.sync_reply_mode == "MSHSignalsOnly"
    assert endpoint.reliability.actor == "urn:oasis:names:tc:ebxml-msg:actor:toPartyMSH"

    bare = (await router.lookup(Lookup.endpoints(org="B0001", interaction=INTERACTION))).records
    assert [(e.address, e.party_key, e.reliability) for e in bare] == [(None, "B0001-42", None)]

    devices = (
        await router.lookup(Lookup.devices(org=ORG, interaction=INTERACTION, manufacturer="YGM24"))
    ).records
    assert len(devices) == 1
    device = devices[0]
    assert isinstance(device, AccreditedSystem)
    assert device.party_key == endpoint.party_key  # the defaults join
    assert device.asid is not None
    assert re.fullmatch("[1-9][0-9]{11}", device.asid)
    assert device.ods_code == ORG
    assert device.interactions == (INTERACTION,)
    other_devices = (await router.lookup(Lookup.devices(org=ORG, interaction=other))).records
    assert [(d.party_key, d.manufacturer_ods) for d in other_devices] == [(f"{ORG}-2", None)]


def test_builders_are_deterministic_and_accept_extra_attributes() -> None:
    assert mhs_record("a12345", INTERACTION) == mhs_record(ORG, [INTERACTION])
    first = accredited_system_record(ORG, INTERACTION)
    assert first == accredited_system_record(ORG, INTERACTION)
    assert (
        first["uniqueIdentifier"]
        != accredited_system_record("B0001", INTERACTION)["uniqueIdentifier"]
    )
    extra = mhs_record(ORG, INTERACTION, nhsEPInteractionType="FHIR", nhsMhsFQDN="x.example.com")
    assert extra["nhsEPInteractionType"] == "FHIR"
    assert extra["nhsMhsFQDN"] == "x.example.com"


def test_records_and_data_dir_together_are_refused(
    sds_sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    with pytest.raises(TypeError, match="data_dir"):
        sds_sandbox_factory([mhs_record(ORG, INTERACTION)], data_dir=tmp_path)


# --------------------------------------------------------------------------- in a foreign project


def test_the_fixtures_work_in_a_project_with_default_pytest_settings(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A third-party project: no conftest, pytest-asyncio in its default (strict) mode, and
    # two tests whose order shows that a registration ends with its test. The shell's
    # SDS_PLUGINS_DISABLE must not reach the test host (it would change results per developer).
    monkeypatch.setenv("SDS_PLUGINS_DISABLE", "sds_plugins.cache")
    pytester.makepyfile(
        test_author=f"""
        import pytest
        from sds_plugins import hookimpl
        from sds_plugins.testing import accredited_system_record, mhs_record

        HOSTS = []

        class Adapter:
            @hookimpl
            def sds_register_adapters(self, register):
                from tests_adapter import TinyAdapter
                register(TinyAdapter())

        @pytest.mark.asyncio
        async def test_route(sds_register_plugin, sds_plugin_host, sds_sandbox_factory,
                             sds_router_factory):
            sds_register_plugin(Adapter(), name="author")
            HOSTS.append(sds_plugin_host)
            sandbox = sds_sandbox_factory(
                [mhs_record("{ORG}", "{INTERACTION}")],
                [accredited_system_record("{ORG}", "{INTERACTION}")],
            )
            router = await sds_router_factory(sandbox)
            envelope = await router.route("tiny", org="{ORG}", interaction="{INTERACTION}")
            assert envelope.target.address == "https://mhs.a12345.example.com/"

        def test_no_leak_no_entry_points_no_shell_settings(sds_plugin_host):
            assert not HOSTS[0].pm.has_plugin("author")
            names = {{info["name"] for info in sds_plugin_host.plugins()}}
            assert names == {{
                "sds_plugins.sds", "sds_plugins.pds", "sds_plugins.cache",
                "sds_plugins.ratelimit", "sds_plugins.selection", "sds_plugins.finalize",
            }}
        """,
        tests_adapter=_source_of_tiny_adapter(),
    )
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=2)


def _source_of_tiny_adapter() -> str:
    import inspect

    return "\n".join(
        [
            "from collections.abc import Mapping",
            "from datetime import timedelta",
            "from sds_plugins import (Adapter, HttpRequestSpec, Lookup, Party, Resolution,",
            "    RouteRequest, RoutingEnvelope, join_on_party_key)",
            inspect.getsource(TinyAdapter),
        ]
    )
