"""The ``gp2gp`` adapter, one message at a time, over real sockets against the SDS sandbox."""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from _gp2gp_support import Gp2gpRouterFactory
from sds_plugins import (
    AmbiguousError,
    ClientTls,
    ConfigurationError,
    InvalidInputError,
    LookupEvent,
    NotFoundError,
    RouteEvent,
    hookimpl,
)
from sds_plugins.ebxml import (
    ACK_ACTOR_NEXT_MSH,
    FORWARD_RELIABLE_ACTIONS,
    EbxmlRouting,
    MessagingPattern,
    pattern_for,
)
from sds_plugins.sandbox import SANDBOX_PATIENTS, Sandbox
from sds_plugins.testing import SandboxFactory, accredited_system_record, mhs_record

from sds_plugins_gp2gp import (
    ACKNOWLEDGEMENT,
    EHR_EXTRACT,
    EHR_REQUEST,
    FRAGMENT,
    GP2GP_INTERACTIONS,
    NEW_PRACTICE,
    PREVIOUS_PRACTICE,
    Gp2gpSettings,
)

NEW, PREVIOUS = NEW_PRACTICE, PREVIOUS_PRACTICE
CONVERSATION = "0b6e7f5c-8a8e-4a43-9d5e-3f1f2a3b4c5d"
SENDER: dict[str, Any] = {"from_party_key": NEW.party_key, "from_asid": NEW.asid}
INTERMEDIARY = "/reliablemessaging/intermediary"


@pytest.mark.parametrize("interaction", list(GP2GP_INTERACTIONS))
async def test_each_interaction_goes_to_spines_intermediary_with_the_practices_keys(
    gp2gp_router: Gp2gpRouterFactory, interaction: str
) -> None:
    router = await gp2gp_router()
    envelope = await router.route(
        "gp2gp", org=PREVIOUS.ods, interaction=interaction, conversation_id=CONVERSATION, **SENDER
    )
    index = list(GP2GP_INTERACTIONS).index(interaction) + 1
    # SDS rewrote the address to Spine's reliable intermediary; party key, CPA id and ASID
    # stay the recipient practice's, the ASID from the accredited system with its party key.
    assert envelope.request.url.endswith(INTERMEDIARY)
    assert envelope.target.ods_code == PREVIOUS.ods
    assert envelope.target.party_key == PREVIOUS.party_key
    assert envelope.target.cpa_id == f"S{PREVIOUS.asid}{index:02d}"
    assert envelope.target.asid == PREVIOUS.asid
    assert (envelope.source.party_key, envelope.source.asid) == (NEW.party_key, NEW.asid)
    service, _, action = interaction.rpartition(":")
    assert envelope.request.headers["SOAPAction"] == f"{service}/{action}"
    reliability = envelope.reliability
    assert reliability is not None
    # Retries and timings from SDS; the flags of forward-reliable (ack from the next MSH).
    assert (reliability.retries, reliability.retry_interval_s, reliability.persist_duration_s) == (
        2,
        7200.0,
        25200.0,
    )
    assert (reliability.duplicate_elimination, reliability.ack_requested) == (True, True)
    assert (reliability.ack_actor, reliability.sync_reply) == (ACK_ACTOR_NEXT_MSH, False)
    routing = EbxmlRouting.model_validate(envelope.extensions["ebxml"])
    assert routing.pattern is MessagingPattern.FORWARD_RELIABLE
    assert routing.conversation_id == CONVERSATION.upper()
    assert envelope.extensions["gp2gp"]["conversation_id"] == CONVERSATION.upper()
    assert routing.to_asid == PREVIOUS.asid


def test_the_four_interactions_are_on_spines_forward_reliable_list() -> None:
    # SDS rewrites their addresses to the intermediary, and NHS's MHS adaptor lists them
    # "forward-reliable" (mhs/common/data/interactions/interactions.json).
    for interaction in GP2GP_INTERACTIONS:
        assert interaction.rpartition(":")[2] in FORWARD_RELIABLE_ACTIONS
        assert pattern_for(interaction) is MessagingPattern.FORWARD_RELIABLE


async def test_the_bare_hl7_id_names_its_gp2gp_interaction(
    gp2gp_router: Gp2gpRouterFactory,
) -> None:
    router = await gp2gp_router()
    envelope = await router.route("gp2gp", org=NEW.ods, interaction="RCMR_IN030000UK06", **SENDER)
    assert envelope.interaction == EHR_EXTRACT
    assert envelope.target.party_key == NEW.party_key


async def test_without_a_conversation_id_the_correlation_id_starts_one(
    gp2gp_router: Gp2gpRouterFactory,
) -> None:
    router = await gp2gp_router()
    made = await router.route("gp2gp", org=PREVIOUS.ods, interaction=EHR_REQUEST, **SENDER)
    routing = EbxmlRouting.model_validate(made.extensions["ebxml"])
    assert routing.conversation_id == made.provenance.correlation_id.upper()
    given = await router.route(
        "gp2gp",
        org=PREVIOUS.ods,
        interaction=EHR_REQUEST,
        correlation_id=CONVERSATION,
        **SENDER,
    )
    assert given.extensions["gp2gp"]["conversation_id"] == CONVERSATION.upper()


async def test_the_message_id_option_sets_the_ebxml_message_id(
    gp2gp_router: Gp2gpRouterFactory,
) -> None:
    router = await gp2gp_router()
    message_id = "9f1c2f4e-0e0b-4c55-9a57-44a1f7c1d3a1"
    envelope = await router.route(
        "gp2gp",
        org=NEW.ods,
        interaction=FRAGMENT,
        conversation_id=CONVERSATION,
        message_id=message_id,
        **SENDER,
    )
    assert envelope.extensions["ebxml"]["message_id"] == message_id.upper()


@pytest.mark.parametrize(
    ("options", "field", "words"),
    [
        ({"conversation_id": "transfer-42"}, "conversation_id", "not a UUID"),
        ({"conversation_id": "{0b6e7f5c-8a8e-4a43-9d5e-3f1f2a3b4c5d}"}, "conversation_id", "UUID"),
        ({"conversation_id": "0b6e7f5c8a8e4a439d5e3f1f2a3b4c5d"}, "conversation_id", "UUID"),
        ({"conversation_id": CONVERSATION + "\n"}, "conversation_id", "UUID"),
        ({"message_id": "m-1"}, "message_id", "not a UUID"),
        ({"from_asid": NEW.asid}, "from_party_key", "SDS_GP2GP_FROM_PARTY_KEY"),
        ({"from_party_key": NEW.party_key}, "from_asid", "SDS_GP2GP_FROM_ASID"),
        ({"interaction": "urn:nhs:names:services:psis:REPC_IN150016UK05"}, "interaction", "gp2gp"),
        ({"interaction": "urn:nhs:names:services:gp2gp:RCMR_IN030000UK07"}, "interaction", "gp2gp"),
        ({"pattern": "async-express"}, "pattern", "not a gp2gp option"),
    ],
)
async def test_bad_input_is_refused_before_any_lookup(
    gp2gp_router: Gp2gpRouterFactory,
    gp2gp_sandbox: Sandbox,
    options: dict[str, Any],
    field: str,
    words: str,
) -> None:
    router = await gp2gp_router()
    arguments: dict[str, Any] = {"interaction": EHR_REQUEST}
    if "from_asid" not in options and "from_party_key" not in options:
        arguments.update(SENDER)
    arguments.update(options)
    with pytest.raises(InvalidInputError) as info:
        await router.route("gp2gp", org=PREVIOUS.ods, **arguments)
    assert info.value.field == field
    assert words in str(info.value)
    assert gp2gp_sandbox.stats()["requests"] == {}


async def test_a_correlation_id_that_is_not_a_uuid_cannot_be_the_conversation_id(
    gp2gp_router: Gp2gpRouterFactory,
) -> None:
    # Without a conversation_id option the correlation id is the ConversationId, so it must be
    # a UUID: refused, never turned into one the caller did not choose. (The engine plans with
    # its own id, so this is found when the envelope is built, after the lookups.)
    router = await gp2gp_router()
    with pytest.raises(InvalidInputError) as info:
        await router.route(
            "gp2gp",
            org=PREVIOUS.ods,
            interaction=EHR_REQUEST,
            correlation_id="referral 42",
            **SENDER,
        )
    assert info.value.field == "conversation_id"
    assert "pass conversation_id" in str(info.value)
    envelope = await router.route(
        "gp2gp",
        org=PREVIOUS.ods,
        interaction=EHR_REQUEST,
        correlation_id="referral 42",
        conversation_id=CONVERSATION,
        **SENDER,
    )
    assert envelope.provenance.correlation_id == "referral 42"  # kept for tracing
    assert envelope.extensions["gp2gp"]["conversation_id"] == CONVERSATION.upper()


async def test_the_sender_comes_from_settings(gp2gp_router: Gp2gpRouterFactory) -> None:
    settings = Gp2gpSettings(from_party_key="p83010-9199202", from_asid=PREVIOUS.asid)
    router = await gp2gp_router(settings)
    envelope = await router.route("gp2gp", org=NEW.ods, interaction=EHR_EXTRACT)
    assert (envelope.source.party_key, envelope.source.asid) == (PREVIOUS.party_key, PREVIOUS.asid)


def test_settings_read_the_sds_gp2gp_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDS_GP2GP_FROM_PARTY_KEY", "B82617-9199201")
    monkeypatch.setenv("SDS_GP2GP_LARGE_ATTACHMENT_THRESHOLD", "31216")
    settings = Gp2gpSettings.load()
    assert settings.from_party_key == "B82617-9199201"
    assert settings.large_attachment_threshold == 31216
    monkeypatch.setenv("SDS_GP2GP_LARGE_EXTRACT_THRESHOLD", "31217")  # not a multiple of 4
    with pytest.raises(ConfigurationError) as info:
        Gp2gpSettings.load()
    assert "SDS_GP2GP_LARGE_EXTRACT_THRESHOLD" in str(info.value)
    assert "31217" not in str(info.value)  # variables are named, values never


async def test_a_misconfigured_plugin_refuses_its_routes_naming_the_variable(
    gp2gp_router: Gp2gpRouterFactory, monkeypatch: pytest.MonkeyPatch, gp2gp_sandbox: Sandbox
) -> None:
    from sds_plugins import PluginHost

    from sds_plugins_gp2gp import Gp2gpPlugin

    monkeypatch.setenv("SDS_GP2GP_LARGE_EXTRACT_THRESHOLD", "-4")
    host = PluginHost(load_entrypoints=False, environ={})
    host.register(Gp2gpPlugin(), name="gp2gp")  # settings from the environment
    from sds_plugins import Router, Settings

    async with Router(Settings(base_url=gp2gp_sandbox.base_url), host=host) as router:
        with pytest.raises(ConfigurationError, match="SDS_GP2GP_LARGE_EXTRACT_THRESHOLD"):
            await router.route("gp2gp", org=NEW.ods, interaction=EHR_EXTRACT, **SENDER)
    assert gp2gp_sandbox.stats()["requests"] == {}


async def test_a_practice_changing_supplier_is_refused_until_a_party_key_chooses(
    sds_sandbox_factory: SandboxFactory, gp2gp_router: Gp2gpRouterFactory
) -> None:
    ods = "A12345"
    sandbox = sds_sandbox_factory(
        [
            mhs_record(ods, EHR_REQUEST, party_key=f"{ods}-1", cpa_id="S1"),
            mhs_record(ods, EHR_REQUEST, party_key=f"{ods}-2", cpa_id="S2"),
        ],
        [
            accredited_system_record(ods, EHR_REQUEST, party_key=f"{ods}-1", asid="1" * 12),
            accredited_system_record(ods, EHR_REQUEST, party_key=f"{ods}-2", asid="2" * 12),
        ],
        mode="add",
    )
    router = await gp2gp_router(sandbox=sandbox)
    with pytest.raises(AmbiguousError):
        await router.route("gp2gp", org=ods, interaction=EHR_REQUEST, **SENDER)
    envelope = await router.route(
        "gp2gp", org=ods, interaction=EHR_REQUEST, party_key=f"{ods}-2", **SENDER
    )
    # The ASID that goes with the MHS is the one whose party key matches, never the first.
    assert (envelope.target.cpa_id, envelope.target.asid) == ("S2", "2" * 12)


async def test_an_mhs_without_an_accredited_system_on_its_party_key_is_not_routed(
    gp2gp_router: Gp2gpRouterFactory, sds_router_factory: Any
) -> None:
    # The reference data's X26 has GP2GP MHS records but no accredited system that joins them:
    # the HL7 wrapper needs the recipient's ASID, so GP2GP does not route there.
    router = await gp2gp_router()
    with pytest.raises(NotFoundError, match="ASID"):
        await router.route(
            "gp2gp", org="X26", interaction=FRAGMENT, party_key="X26-9199246", **SENDER
        )


async def test_envelopes_carry_the_senders_spine_client_tls(
    gp2gp_router: Gp2gpRouterFactory, tmp_path: Path
) -> None:
    settings = Gp2gpSettings(tls_cert=tmp_path / "mhs.pem", tls_key=tmp_path / "mhs.key")
    router = await gp2gp_router(settings)
    envelope = await router.route("gp2gp", org=NEW.ods, interaction=ACKNOWLEDGEMENT, **SENDER)
    assert envelope.tls == ClientTls(
        cert_path=str(tmp_path / "mhs.pem"), key_path=str(tmp_path / "mhs.key")
    )


def test_the_entry_point_is_declared() -> None:
    [entry_point] = [ep for ep in entry_points(group="sds_plugins") if ep.name == "gp2gp"]
    assert entry_point.value == "sds_plugins_gp2gp.plugin:plugin"


# --------------------------------------------------------------------------- by patient


class _Events:
    def __init__(self) -> None:
        self.seen: list[LookupEvent | RouteEvent] = []

    @hookimpl
    def sds_lookup_completed(self, event: LookupEvent) -> None:
        self.seen.append(event)

    @hookimpl
    def sds_route_completed(self, event: RouteEvent) -> None:
        self.seen.append(event)


async def test_by_patient_the_extract_goes_to_the_practice_pds_names(
    sds_router_factory: Any, gp2gp_sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    from sds_plugins import PluginHost

    from sds_plugins_gp2gp import Gp2gpPlugin

    events = _Events()
    host = PluginHost(load_entrypoints=False, environ={})
    host.register(Gp2gpPlugin(Gp2gpSettings()), name="gp2gp")
    host.register(events, name="events")
    router = await sds_router_factory(gp2gp_sandbox, host=host)
    number = SANDBOX_PATIENTS["gpconnect"]  # registered at B82617, the new practice
    caplog.set_level(logging.DEBUG)
    sender = {"from_party_key": PREVIOUS.party_key, "from_asid": PREVIOUS.asid}
    envelope = await router.route(
        "gp2gp", patient=number, interaction=EHR_EXTRACT, conversation_id=CONVERSATION, **sender
    )
    assert envelope.target.ods_code == NEW.ods
    assert envelope.target.party_key == NEW.party_key
    assert envelope.provenance.lookups[0].startswith("pds:Patient/pt-")
    # The privacy rules of routes to a patient: the number goes to PDS and nowhere else.
    assert number not in envelope.model_dump_json()
    assert events.seen
    assert all(number not in repr(event) for event in events.seen)
    assert number not in caplog.text


async def test_by_patient_the_request_is_refused_pds_gives_no_previous_practice(
    gp2gp_router: Gp2gpRouterFactory,
) -> None:
    router = await gp2gp_router()
    number = SANDBOX_PATIENTS["gpconnect"]
    with pytest.raises(InvalidInputError) as info:
        await router.route("gp2gp", patient=number, interaction=EHR_REQUEST, **SENDER)
    assert info.value.field == "patient"
    assert "previous practice" in str(info.value)
    assert number not in str(info.value)
    # By ODS code, the request goes to the previous practice.
    envelope = await router.route("gp2gp", org=PREVIOUS.ods, interaction=EHR_REQUEST, **SENDER)
    assert envelope.target.ods_code == PREVIOUS.ods
