"""The ``ers`` adapter against sandboxes holding the directory records each case needs."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Awaitable, Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from sds_plugins_ers import EBS_INTERACTIONS, ErsEbxmlAdapter, ErsSettings

from sds_plugins import AmbiguousError, InvalidInputError, Lookup, Router
from sds_plugins.ebxml import (
    ACK_ACTOR_NEXT_MSH,
    ACK_ACTOR_TO_PARTY_MSH,
    EB_NS,
    EbxmlRouting,
    MessagingPattern,
    ebxml_routing,
    render_multipart,
)
from sds_plugins.sandbox import Sandbox
from sds_plugins.testing import SandboxFactory, accredited_system_record, mhs_record

ORG = "RXR01"
EBS = "urn:nhs:names:services:ebs"
FORWARD_RELIABLE = f"{EBS}:PRSC_IN040000UK08"
FORWARD_EXPRESS = f"{EBS}:PRSC_IN080000UK03"
UNLISTED = f"{EBS}:PRSC_IN990000UK01"
RELIABLE_HOP = "https://spine.example.nhs.uk/reliablemessaging/intermediary"
EXPRESS_HOP = "https://spine.example.nhs.uk/expressmessaging/intermediary"
RECIPIENT = "https://pas.rxr01.example.nhs.uk/ebxml"
# The ers_router fixture (conftest.py): ``await ers_router(settings=None, sandbox=None)``.
ErsRouterFactory = Callable[..., Awaitable[Router]]
SENDER: dict[str, Any] = {"from_party_key": "R69-0000001", "from_asid": "200000000001"}


def _spine_core() -> list[dict[str, object]]:
    """Spine's own MHS records: the intermediaries SDS rewrites forwarded addresses to."""
    return [
        mhs_record(
            "YES",
            "urn:nhs:names:services:tms:ReliableIntermediary",
            party_key="YES-0000806",
            address=RELIABLE_HOP,
        ),
        mhs_record(
            "YES",
            "urn:nhs:names:services:tms:ExpressIntermediary",
            party_key="YES-0000806",
            address=EXPRESS_HOP,
        ),
    ]


@pytest.fixture
def ebs_directory(sds_sandbox_factory: SandboxFactory) -> Sandbox:
    interactions = [FORWARD_RELIABLE, FORWARD_EXPRESS, UNLISTED]
    return sds_sandbox_factory(
        [
            *_spine_core(),
            mhs_record(
                ORG,
                [FORWARD_RELIABLE],
                address=RECIPIENT,
                cpa_id="S918999410559",
                retries=3,
                retry_interval="PT30S",
                persist_duration="PT1H",
                duplicate_elimination="always",
                ack_requested="always",
                sync_reply_mode="None",
            ),
            mhs_record(ORG, [FORWARD_EXPRESS], address=RECIPIENT, cpa_id="S918999410560"),
            mhs_record(
                ORG,
                [UNLISTED],
                address=RECIPIENT,
                cpa_id="S918999410561",
                retries=2,
                retry_interval="PT1M",
                persist_duration="PT5M",
                duplicate_elimination="always",
                ack_requested="always",
                sync_reply_mode="MSHSignalsOnly",
                actor=ACK_ACTOR_TO_PARTY_MSH,
            ),
        ],
        [accredited_system_record(ORG, interactions, asid="918999199246")],
    )


async def test_forward_reliable_goes_to_the_intermediary_with_the_recipients_keys(
    ebs_directory: Sandbox, ers_router: ErsRouterFactory
) -> None:
    router = await ers_router(sandbox=ebs_directory)
    envelope = await router.route("ers", org=ORG, interaction=FORWARD_RELIABLE, **SENDER)

    assert envelope.request.url == RELIABLE_HOP  # rewritten by SDS, used as given
    assert envelope.target.party_key == f"{ORG}-0000001"  # the recipient's, not Spine's
    assert envelope.target.cpa_id == "S918999410559"
    assert envelope.target.asid == "918999199246"  # the Device whose party key matches
    assert envelope.source.party_key == "R69-0000001"
    assert envelope.request.headers["SOAPAction"] == f"{EBS}/PRSC_IN040000UK08"
    reliability = envelope.reliability
    assert reliability is not None
    assert (reliability.retries, reliability.retry_interval_s, reliability.persist_duration_s) == (
        3,
        30.0,
        3600.0,
    )
    assert reliability.duplicate_elimination is True
    assert reliability.ack_requested is True
    assert reliability.ack_actor == ACK_ACTOR_NEXT_MSH
    assert reliability.sync_reply is False
    routing = EbxmlRouting.model_validate(envelope.extensions["ebxml"])
    assert routing.pattern is MessagingPattern.FORWARD_RELIABLE
    assert routing.conversation_id == envelope.provenance.correlation_id.upper()
    assert envelope.request.headers["Content-Type"] == routing.content_type


async def test_a_callers_id_that_is_not_a_uuid_gives_a_uuid_conversation_id(
    ebs_directory: Sandbox, ers_router: ErsRouterFactory
) -> None:
    # ebXML's ConversationId is a UUID; a caller's correlation id need not be (PDS and e-RS
    # take any): the conversation gets the UUID SDS was sent for it.
    from sds_plugins._validation import sds_correlation_id

    router = await ers_router(sandbox=ebs_directory)
    envelope = await router.route(
        "ers", org=ORG, interaction=FORWARD_RELIABLE, correlation_id="referral 42", **SENDER
    )
    routing = EbxmlRouting.model_validate(envelope.extensions["ebxml"])
    assert envelope.provenance.correlation_id == "referral 42"
    assert routing.conversation_id == sds_correlation_id("referral 42").upper()
    assert routing.conversation_id.lower() == envelope.provenance.sds_correlation_id


async def test_forward_express_is_refused_unless_the_caller_names_the_pattern(
    ebs_directory: Sandbox, ers_router: ErsRouterFactory
) -> None:
    router = await ers_router(sandbox=ebs_directory)
    with pytest.raises(InvalidInputError) as info:
        await router.route("ers", org=ORG, interaction=FORWARD_EXPRESS, **SENDER)
    assert info.value.field == "interaction"
    assert "Forward Express" in str(info.value)
    assert "SDS gives no reliability settings" in str(info.value)
    assert "pattern=" in str(info.value)


async def test_forward_express_goes_to_the_express_intermediary_without_acks(
    ebs_directory: Sandbox, ers_router: ErsRouterFactory
) -> None:
    router = await ers_router(sandbox=ebs_directory)
    envelope = await router.route(
        "ers", org=ORG, interaction=FORWARD_EXPRESS, pattern="forward-express", **SENDER
    )

    assert envelope.request.url == EXPRESS_HOP
    assert envelope.target.cpa_id == "S918999410560"
    assert envelope.extensions["ebxml"]["pattern"] == "forward-express"
    reliability = envelope.reliability
    assert reliability is not None
    assert (
        reliability.duplicate_elimination,
        reliability.ack_requested,
        reliability.ack_actor,
        reliability.sync_reply,
    ) == (False, False, None, False)


async def test_an_unlisted_ebs_action_takes_its_pattern_from_sds(
    ebs_directory: Sandbox, ers_router: ErsRouterFactory
) -> None:
    router = await ers_router(sandbox=ebs_directory)
    envelope = await router.route("ers", org=ORG, interaction=UNLISTED, **SENDER)

    assert envelope.request.url == RECIPIENT  # not forwarded: the recipient's own address
    assert envelope.extensions["ebxml"]["pattern"] == "async-reliable"
    assert envelope.reliability is not None
    assert envelope.reliability.ack_actor == ACK_ACTOR_TO_PARTY_MSH
    assert envelope.reliability.sync_reply is True


async def test_an_unlisted_action_that_sds_leaves_undetermined_needs_a_named_pattern(
    sds_sandbox_factory: SandboxFactory, ers_router: ErsRouterFactory
) -> None:
    # ack "always" with sync reply mode "None", outside the forwarding lists: the hybrid no
    # reference implements. Refused with what SDS said, unless the caller names the pattern.
    sandbox = sds_sandbox_factory(
        [
            mhs_record(
                ORG,
                [UNLISTED],
                address=RECIPIENT,
                retries=2,
                retry_interval="PT1M",
                duplicate_elimination="always",
                ack_requested="always",
                sync_reply_mode="None",
            )
        ],
        [accredited_system_record(ORG, [UNLISTED])],
    )
    router = await ers_router(sandbox=sandbox)
    with pytest.raises(InvalidInputError) as info:
        await router.route("ers", org=ORG, interaction=UNLISTED, **SENDER)
    assert "ackRequested=always" in str(info.value)
    assert "syncReplyMode=None" in str(info.value)
    named = await router.route(
        "ers", org=ORG, interaction=UNLISTED, pattern="async-reliable", **SENDER
    )
    assert named.extensions["ebxml"]["pattern"] == "async-reliable"
    assert named.request.url == RECIPIENT


async def test_a_named_pattern_may_not_contradict_the_forwarding_lists(
    ebs_directory: Sandbox, ers_router: ErsRouterFactory
) -> None:
    router = await ers_router(sandbox=ebs_directory)
    with pytest.raises(InvalidInputError) as info:
        await router.route(
            "ers", org=ORG, interaction=FORWARD_RELIABLE, pattern="async-express", **SENDER
        )
    assert info.value.field == "pattern"


async def test_an_async_reliable_non_ebs_interaction_keeps_its_own_address(
    sds_router: Router,
) -> None:
    # The shared builder, on the reference data: psis is not forwarded, so SDS answers with the
    # recipient's own address and the pattern comes from its reliability settings.
    psis = "urn:nhs:names:services:psis:REPC_IN150016UK05"
    outcome = await sds_router.lookup(Lookup.endpoints(org="YES", interaction=psis))
    [endpoint] = outcome.records
    routing = ebxml_routing(
        endpoint,
        interaction=psis,
        from_party_key="R69-0000001",
        from_asid="200000000001",
        to_asid="928942012545",
        correlation_id="0b6e7f5c-8a8e-4a43-9d5e-3f1f2a3b4c5d",
    )
    assert routing.url == endpoint.address
    assert "intermediary" not in routing.url
    assert routing.pattern is MessagingPattern.ASYNC_RELIABLE
    assert (routing.retries, routing.retry_interval_s, routing.persist_duration_s) == (2, 60, 300)
    assert (routing.duplicate_elimination, routing.ack_requested, routing.sync_reply) == (
        True,
        True,
        True,
    )
    assert routing.ack_actor == ACK_ACTOR_TO_PARTY_MSH


async def test_the_envelope_renders_to_a_message_that_parses_back(
    ebs_directory: Sandbox, ers_router: ErsRouterFactory
) -> None:
    router = await ers_router(sandbox=ebs_directory)
    envelope = await router.route("ers", org=ORG, interaction=FORWARD_RELIABLE, **SENDER)
    routing = EbxmlRouting.model_validate(envelope.extensions["ebxml"])
    headers, body = render_multipart(routing, '<PRSC_IN040000UK08 xmlns="urn:hl7-org:v3"/>')

    assert headers == envelope.request.headers
    message = email.message_from_bytes(
        f"Content-Type: {headers['Content-Type']}\r\n\r\n".encode() + body,
        policy=email.policy.HTTP,
    )
    soap, payload = message.iter_parts()
    header = ElementTree.fromstring(soap.get_content())
    eb = {"eb": EB_NS}
    assert header.findtext(".//eb:To/eb:PartyId", namespaces=eb) == envelope.target.party_key
    assert header.findtext(".//eb:CPAId", namespaces=eb) == envelope.target.cpa_id
    assert header.findtext(".//eb:ConversationId", namespaces=eb) == (
        envelope.provenance.correlation_id.upper()
    )
    assert header.find(".//eb:SyncReply", eb) is None
    assert payload["Content-Id"] == f"<{routing.message_id}@spine.nhs.uk>"


async def test_several_mhs_records_are_refused_until_a_party_key_chooses(
    sds_sandbox_factory: SandboxFactory, ers_router: ErsRouterFactory
) -> None:
    sandbox = sds_sandbox_factory(
        [
            *_spine_core(),
            mhs_record(ORG, FORWARD_EXPRESS, party_key=f"{ORG}-1", cpa_id="S1"),
            mhs_record(ORG, FORWARD_EXPRESS, party_key=f"{ORG}-2", cpa_id="S2"),
        ],
        [
            accredited_system_record(ORG, FORWARD_EXPRESS, party_key=f"{ORG}-1", asid="1" * 12),
            accredited_system_record(ORG, FORWARD_EXPRESS, party_key=f"{ORG}-2", asid="2" * 12),
        ],
    )
    router = await ers_router(sandbox=sandbox)
    named = {"pattern": "forward-express", **SENDER}
    with pytest.raises(AmbiguousError):
        await router.route("ers", org=ORG, interaction=FORWARD_EXPRESS, **named)
    envelope = await router.route(
        "ers", org=ORG, interaction=FORWARD_EXPRESS, party_key=f"{ORG}-2", **named
    )
    assert (envelope.target.cpa_id, envelope.target.asid) == ("S2", "2" * 12)


@pytest.mark.parametrize(
    ("interaction", "options", "field", "words"),
    [
        (
            "urn:nhs:names:services:psis:REPC_IN150016UK05",
            SENDER,
            "interaction",
            "PRSC_IN040000UK08",
        ),
        (f"{EBS}:not-an-action", SENDER, "interaction", "HL7 V3"),
        (FORWARD_EXPRESS, {"from_asid": "200000000001"}, "from_party_key", "ERS_FROM_PARTY_KEY"),
        (FORWARD_EXPRESS, {**SENDER, "from_asid": "12"}, "from_asid", "12 digits"),
        (FORWARD_EXPRESS, {**SENDER, "from_party_key": "nope"}, "from_party_key", "party key"),
        (FORWARD_EXPRESS, {**SENDER, "pattern": "express-ish"}, "pattern", "forward-express"),
        (FORWARD_EXPRESS, {**SENDER, "pattern": "synchronous"}, "pattern", "async-reliable"),
    ],
)
async def test_bad_input_is_refused_before_any_lookup(
    sds_sandbox: Sandbox,
    ers_router: ErsRouterFactory,
    interaction: str,
    options: dict[str, Any],
    field: str,
    words: str,
) -> None:
    router = await ers_router()
    with pytest.raises(InvalidInputError) as info:
        await router.route("ers", org=ORG, interaction=interaction, **options)
    assert info.value.field == field
    assert words in str(info.value)
    assert sds_sandbox.stats()["requests"] == {}


async def test_sender_defaults_come_from_configuration(
    ebs_directory: Sandbox, ers_router: ErsRouterFactory
) -> None:
    settings = ErsSettings(from_party_key="r69-0000002", from_asid="200000000002")
    router = await ers_router(settings, sandbox=ebs_directory)
    envelope = await router.route("ers", org=ORG, interaction=FORWARD_RELIABLE)
    assert (envelope.source.party_key, envelope.source.asid) == ("R69-0000002", "200000000002")


async def test_the_demo_example_routes_on_the_default_data(
    sds_sandbox: Sandbox, ers_router: ErsRouterFactory
) -> None:
    router = await ers_router()
    example = dict(ErsEbxmlAdapter.example or {})
    envelope = await router.route("ers", **example)
    assert envelope.request.url.endswith("/reliablemessaging/intermediary")
    assert envelope.target.party_key == "X26-200150"
    assert envelope.extensions["ebxml"]["pattern"] == "forward-express"


def test_documented_patterns_are_the_mhs_adaptors() -> None:
    # NHSDigital/integration-adaptor-mhs, mhs/common/data/interactions/interactions.json: the
    # three forward-reliable ebs interactions are "forward-reliable"; the two forward-express
    # ones are "Forward Express", a workflow the adaptor does not implement.
    from sds_plugins.ebxml import pattern_for

    for interaction, pattern in EBS_INTERACTIONS.items():
        if pattern is MessagingPattern.FORWARD_RELIABLE:
            assert pattern_for(interaction) is pattern
        else:
            assert pattern is MessagingPattern.FORWARD_EXPRESS
            with pytest.raises(InvalidInputError):
                pattern_for(interaction)
            assert pattern_for(interaction, named=pattern) is pattern


def test_documented_interactions_match_spines_forwarding_lists() -> None:
    from sds_plugins.ebxml import FORWARD_EXPRESS_ACTIONS, FORWARD_RELIABLE_ACTIONS

    for interaction, pattern in EBS_INTERACTIONS.items():
        action = interaction.rpartition(":")[2]
        expected = (
            FORWARD_RELIABLE_ACTIONS
            if pattern is MessagingPattern.FORWARD_RELIABLE
            else FORWARD_EXPRESS_ACTIONS
        )
        assert action in expected


def test_the_entry_point_is_declared() -> None:
    [entry_point] = [ep for ep in entry_points(group="sds_plugins") if ep.name == "ers"]
    assert entry_point.value == "sds_plugins_ers.plugin:plugin"


async def test_ebxml_envelopes_carry_the_senders_spine_client_tls(
    ebs_directory: Sandbox, ers_router: ErsRouterFactory, tmp_path: Path
) -> None:
    from sds_plugins import ClientTls

    settings = ErsSettings(
        tls_cert=tmp_path / "mhs.pem",
        tls_key=tmp_path / "mhs.key",
        tls_ca_bundle=tmp_path / "nhs-ca.pem",
    )
    router = await ers_router(settings, sandbox=ebs_directory)
    envelope = await router.route("ers", org=ORG, interaction=FORWARD_RELIABLE, **SENDER)
    assert envelope.tls == ClientTls(
        cert_path=str(tmp_path / "mhs.pem"),
        key_path=str(tmp_path / "mhs.key"),
        ca_bundle_path=str(tmp_path / "nhs-ca.pem"),
    )
    untouched = await (await ers_router(sandbox=ebs_directory)).route(
        "ers", org=ORG, interaction=FORWARD_RELIABLE, **SENDER
    )
    assert untouched.tls is None


def test_a_tls_key_without_its_certificate_is_a_configuration_error(tmp_path: Path) -> None:
    from sds_plugins import ConfigurationError

    with pytest.raises(ConfigurationError, match="ERS_TLS_CERT"):
        ErsSettings(tls_key=tmp_path / "mhs.key").client_tls()
