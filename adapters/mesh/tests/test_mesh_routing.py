"""Resolving the recipient mailbox through the engine, against mesh-sandbox over real sockets."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from _mesh_support import SENDER, LookupRecorder
from sds_plugins import (
    AmbiguousError,
    AuthenticationError,
    ConfigurationError,
    InvalidInputError,
    LowestPartyKeyPolicy,
    MalformedResponseError,
    NotFoundError,
    RetryPolicy,
    Router,
)
from sds_plugins.testing import RegisterPlugin, RouterFactory

from sds_plugins_mesh import (
    ENVELOPE_TTL,
    MESH_ENVIRONMENTS,
    MailboxQuery,
    MeshCredentials,
    MeshLookupSource,
    MeshMailbox,
    MeshSettings,
    parse_lookup_response,
)
from sds_plugins_mesh.sandbox import MeshSandbox


def _source(router: Router) -> MeshLookupSource:
    source = router.sources["mesh"]
    assert isinstance(source, MeshLookupSource)
    return source


async def test_routes_to_the_recipient_mailbox_through_the_cached_directory_source(
    router: Router, lookups: LookupRecorder, mesh: MeshSandbox
) -> None:
    first = await router.route("mesh", org="x26", interaction="TEST_WORKFLOW")
    second = await router.route("mesh", org="X26", interaction="TEST_WORKFLOW")

    assert first.target.mailbox_id == second.target.mailbox_id == "X26ABC2"
    assert first.target.ods_code == "X26"
    assert first.source.mailbox_id == SENDER
    assert first.request.method == "POST"
    assert first.request.url == f"{mesh.url}/messageexchange/{SENDER}/outbox"
    # One lookup over the wire; the second route is a cache hit, and both emit events.
    assert _source(router).requests_sent == 1
    assert [(e.source, e.cache, e.outcome, e.records) for e in lookups.events] == [
        ("mesh", "miss", "found", 1),
        ("mesh", "hit", "found", 1),
    ]
    assert lookups.events[0].query == f"X26/TEST_WORKFLOW@{mesh.url}"
    assert lookups.events[0].namespace == f"mesh:{mesh.url}"
    assert (first.provenance.cache, second.provenance.cache) == ("miss", "hit")
    [mailbox] = first.provenance.records
    assert (mailbox.kind, mailbox.mailbox_id) == ("mesh_mailbox", "X26ABC2")
    assert first.provenance.lookups == (f"mesh:X26/TEST_WORKFLOW@{mesh.url}",)
    assert first.extensions["mesh"]["mailbox"] == {
        "kind": "mesh_mailbox",
        "mailbox_id": "X26ABC2",
        "mailbox_name": "TESTMB2",
        "ods_code": "X26",
        "workflow_id": "TEST_WORKFLOW",
    }


async def test_envelope_headers_are_the_mesh_send_headers(router: Router) -> None:
    envelope = await router.route(
        "mesh",
        org="X27",
        interaction="TEST_WORKFLOW_ACK",
        subject="Lab result",
        filename="result.json",
        checksum="md5:0cc175b9c0f1b6a831c399e269772661",
        content_type="application/json",
        compressed=False,
        encrypted="Y",
    )
    headers = envelope.request.headers
    assert headers["mex-to"] == "X26ABC3"
    assert headers["mex-workflowid"] == "TEST_WORKFLOW_ACK"
    assert headers["mex-subject"] == "Lab result"
    assert headers["mex-localid"] == envelope.provenance.correlation_id  # the default
    assert headers["mex-filename"] == "result.json"
    assert headers["mex-content-checksum"] == "md5:0cc175b9c0f1b6a831c399e269772661"
    assert headers["mex-content-compressed"] == "N"
    assert headers["mex-content-encrypted"] == "Y"
    assert headers["Content-Type"] == "application/json"
    assert headers["Authorization"].startswith(f"NHSMESH {SENDER}:")
    assert envelope.reliability is not None and envelope.reliability.retries == 0
    assert envelope.extensions["mesh"]["retry_first_post"] is False
    # Valid for minutes, far inside MESH's two-hour token window.
    assert envelope.expires_at - envelope.provenance.resolved_at == ENVELOPE_TTL
    assert timedelta(hours=2) > ENVELOPE_TTL


async def test_every_envelope_has_a_fresh_token(router: Router) -> None:
    envelopes = [
        await router.route("mesh", org="X26", interaction="TEST_WORKFLOW", local_id="same")
        for _ in range(3)
    ]
    tokens = {envelope.request.headers["Authorization"] for envelope in envelopes}
    assert len(tokens) == 3


async def test_unknown_workflow_or_organisation_is_not_found(router: Router) -> None:
    with pytest.raises(NotFoundError, match="no MESH mailbox receives X26 and workflow NOPE"):
        await router.route("mesh", org="X26", interaction="NOPE")
    with pytest.raises(NotFoundError, match="no MESH mailbox receives Y99"):
        await router.route("mesh", org="Y99", interaction="TEST_WORKFLOW")


async def test_several_mailboxes_are_ambiguous_unless_mailbox_id_chooses(router: Router) -> None:
    with pytest.raises(AmbiguousError) as caught:
        await router.route("mesh", org="X26", interaction="TEST_WORKFLOW2")
    assert caught.value.candidates == [
        {"mailbox_id": "X26ABC1", "mailbox_name": "TESTMB1"},
        {"mailbox_id": "X26ABC2", "mailbox_name": "TESTMB2"},
    ]
    assert "mailbox_id" in str(caught.value)

    chosen = await router.route(
        "mesh", org="X26", interaction="TEST_WORKFLOW2", mailbox_id="x26abc2"
    )
    assert chosen.target.mailbox_id == "X26ABC2"
    assert chosen.request.headers["mex-to"] == "X26ABC2"

    with pytest.raises(NotFoundError, match="X26ABC3 does not receive"):
        await router.route("mesh", org="X26", interaction="TEST_WORKFLOW2", mailbox_id="X26ABC3")


async def test_a_deployment_selection_policy_may_choose_among_mailboxes(
    mesh_plugins: None, sds_register_plugin: RegisterPlugin, sds_router_factory: RouterFactory
) -> None:
    sds_register_plugin(LowestPartyKeyPolicy(), name="lowest")
    router = await sds_router_factory()
    envelope = await router.route("mesh", org="X26", interaction="TEST_WORKFLOW2")
    assert envelope.target.mailbox_id == "X26ABC1"


async def test_v1_lookup_answers_parse_against_the_sandbox(mesh: MeshSandbox) -> None:
    settings = mesh.settings(lookup_api_version=1)
    source = MeshLookupSource(settings)
    assert source.accept == "application/json"
    query = MailboxQuery(mesh_url=mesh.url, ods_code="X26", workflow_id="TEST_WORKFLOW2")
    try:
        result = await source.fetch(query, correlation_id="c")
    finally:
        await source.aclose()
    assert [(m.mailbox_id, m.mailbox_name) for m in result.records] == [
        ("X26ABC1", "TESTMB1"),
        ("X26ABC2", "TESTMB2"),
    ]


def test_both_lookup_versions_parse_from_recorded_bodies() -> None:
    v1 = {
        "query_id": "20220228174323222_ABCDEF",
        "results": [
            {"address": "x26abc1", "description": "TESTMB1", "endpoint_type": "MESH"},
            {"address": "X26ABC1", "description": "TESTMB1", "endpoint_type": "MESH"},
            {"address": "OTHER", "description": "not MESH", "endpoint_type": "SMTP"},
        ],
    }
    v2 = {"results": [{"mailbox_id": "X26ABC1", "mailbox_name": "TESTMB1"}]}
    expected = (
        MeshMailbox(mailbox_id="X26ABC1", mailbox_name="TESTMB1", ods_code="X26", workflow_id="WF"),
    )
    assert parse_lookup_response(v1, ods_code="X26", workflow_id="WF") == expected
    assert parse_lookup_response(v2, ods_code="X26", workflow_id="WF") == expected
    assert parse_lookup_response({"results": []}, ods_code="X26", workflow_id="WF") == ()
    bad_bodies: list[object] = [
        {},
        {"results": {}},
        {"results": [1]},
        {"results": [{"mailbox_id": ""}]},
    ]
    for bad in bad_bodies:
        with pytest.raises(MalformedResponseError):
            parse_lookup_response(bad, ods_code="X26", workflow_id="WF")


async def test_lookups_are_signed_and_retried_on_transient_failures(
    credentials: MeshCredentials,
) -> None:
    from mesh_sandbox.common import generate_cipher_text  # type: ignore[import-untyped]

    seen: list[httpx.Request] = []
    answers = iter([503, 502, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status = next(answers)
        body = {"results": [{"mailbox_id": "X26ABC2", "mailbox_name": "TESTMB2"}]}
        return httpx.Response(status, json=body if status == 200 else {})

    from sds_plugins_mesh import MeshAuth

    source = MeshLookupSource(
        MeshSettings(url="int"),
        auth=MeshAuth(credentials),
        retry=RetryPolicy(attempts=4, backoff_s=0.001, max_backoff_s=0.002),
        transport=httpx.MockTransport(handler),
    )
    query = MailboxQuery(
        mesh_url=MESH_ENVIRONMENTS["int"], ods_code="X26", workflow_id="TEST_WORKFLOW"
    )
    result = await source.fetch(query, correlation_id="c")
    await source.aclose()
    assert result.attempts == 3
    assert [m.mailbox_id for m in result.records] == ["X26ABC2"]
    assert source.namespace == "mesh:https://msg.intspineservices.nhs.uk"
    assert str(seen[0].url) == (
        "https://msg.intspineservices.nhs.uk/messageexchange/endpointlookup/X26/TEST_WORKFLOW"
    )
    assert seen[0].headers["Accept"] == "application/vnd.mesh.v2+json"
    tokens = [request.headers["Authorization"] for request in seen]
    assert len(set(tokens)) == 3  # each attempt signed afresh
    for token in tokens:
        mailbox, nonce, count, timestamp, digest = token.removeprefix("NHSMESH ").split(":")
        assert digest == generate_cipher_text(
            credentials.shared_key.get_secret_value(), mailbox, "password", timestamp, nonce, count
        )


@pytest.mark.parametrize(
    ("status", "error"),
    [(403, AuthenticationError), (200, MalformedResponseError)],
)
async def test_lookup_failures_are_typed_and_not_retried(
    status: int, error: type[Exception]
) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(status, content=b"not json")

    source = MeshLookupSource(MeshSettings(url="int"), transport=httpx.MockTransport(handler))
    query = MailboxQuery(mesh_url=MESH_ENVIRONMENTS["int"], ods_code="X26", workflow_id="WF")
    with pytest.raises(error) as caught:
        await source.fetch(query, correlation_id="abc")
    await source.aclose()
    assert calls == 1
    assert caught.value.correlation_id == "abc"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"subject": "line\r\nX-Injected: 1"}, "subject"),
        ({"subject": "x" * 501}, "subject"),
        ({"subject": "caf\u00e9"}, "subject"),
        ({"local_id": "y" * 301}, "local_id"),
        ({"filename": "../etc/passwd"}, "filename"),
        ({"filename": "f\x00.txt"}, "filename"),
        ({"checksum": "md5=abc"}, "checksum"),
        ({"checksum": "https://evil.example/"}, "checksum"),
        ({"content_type": "not a type"}, "content_type"),
        ({"compressed": "maybe"}, "compressed"),
        ({"mailbox_id": "X26:ABC"}, "mailbox_id"),
        ({"mailbox_id": "https://x"}, "mailbox_id"),
        ({"mailbox": "X26 ABC1"}, "mailbox"),
        ({"mesh_url": "ftp://mesh"}, "mesh_url"),
        ({"cert": "a\nb"}, "cert"),
        ({"password": 1234}, "password"),
        ({"party_key": "X26-1"}, "party_key"),
    ],
)
async def test_invalid_options_are_refused_before_anything_is_sent(
    router: Router, options: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        await router.route("mesh", org="X26", interaction="TEST_WORKFLOW", **options)
    assert caught.value.field == field
    assert _source(router).requests_sent == 0


@pytest.mark.parametrize(
    "workflow", ["", "TEST WORKFLOW", "A/B", "https://x", "W" * 301, "WF\n", "ÄRZTE"]
)
async def test_invalid_workflow_ids_are_refused_before_anything_is_sent(
    router: Router, workflow: str
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        await router.route("mesh", org="X26", interaction=workflow)
    assert caught.value.field == "interaction"
    assert _source(router).requests_sent == 0


async def test_missing_configuration_is_a_configuration_error(
    sds_register_plugin: RegisterPlugin, sds_router_factory: RouterFactory, mesh: MeshSandbox
) -> None:
    from sds_plugins_mesh import MeshPlugin

    sds_register_plugin(MeshPlugin(MeshSettings()), name="mesh")
    router = await sds_router_factory()
    with pytest.raises(ConfigurationError, match="MESH_URL"):
        await router.route("mesh", org="X26", interaction="TEST_WORKFLOW")
    with pytest.raises(ConfigurationError, match="MESH_MAILBOX"):
        await router.route("mesh", org="X26", interaction="TEST_WORKFLOW", mesh_url=mesh.url)
    # Options alone are enough, secrets as SecretStr so the request's repr masks them.
    from pydantic import SecretStr

    envelope = await router.route(
        "mesh",
        org="X26",
        interaction="TEST_WORKFLOW",
        mesh_url=mesh.url,
        mailbox="x26abc1",
        password=SecretStr("password"),
        shared_key=SecretStr(mesh.shared_key),
    )
    assert envelope.source.mailbox_id == "X26ABC1"


def test_settings_read_the_mesh_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESH_URL", "int")
    monkeypatch.setenv("MESH_MAILBOX", "x26abc1")
    monkeypatch.setenv("MESH_PASSWORD", "s3cret-pass")
    monkeypatch.setenv("MESH_SHARED_KEY", "shared-s3cret")
    monkeypatch.setenv("MESH_CERT", "/certs/int.pem")
    monkeypatch.setenv("MESH_TLS__PROD__CERT", "/certs/prod.pem")
    monkeypatch.setenv("MESH_TLS__PROD__KEY", "/certs/prod.key")
    settings = MeshSettings()
    assert settings.resolved_url() == MESH_ENVIRONMENTS["int"]
    credentials = settings.credentials()
    assert credentials is not None and credentials.mailbox == "X26ABC1"
    assert str(settings.tls_for(MESH_ENVIRONMENTS["int"]).cert) == "/certs/int.pem"
    prod = settings.tls_for(MESH_ENVIRONMENTS["prod"])
    assert prod.httpx_cert() == ("/certs/prod.pem", "/certs/prod.key")
    assert prod.httpx_verify() is True
    for shown in (repr(settings), str(settings), repr(credentials)):
        assert "s3cret" not in shown
    assert json.dumps(settings.model_dump(mode="json")).count("**********") == 2


async def test_a_bad_mesh_environment_only_fails_mesh_routes(
    monkeypatch: pytest.MonkeyPatch,
    sds_register_plugin: RegisterPlugin,
    sds_router_factory: RouterFactory,
) -> None:
    from sds_plugins_mesh import MeshPlugin

    monkeypatch.setenv("MESH_URL", "not a url")
    sds_register_plugin(MeshPlugin(), name="mesh")
    router = await sds_router_factory()  # starts: SDS routing is unaffected
    # The one policy for a misconfigured plugin: its adapter is there and refuses every route
    # naming the variable; its source is not registered (nothing would plan on it).
    assert "mesh" in router.adapters and "mesh" not in router.sources
    with pytest.raises(ConfigurationError, match="MESH_URL"):
        await router.route("mesh", org="X26", interaction="TEST_WORKFLOW")

    monkeypatch.setenv("MESH_LOOKUP_API_VERSION", "three")
    monkeypatch.setenv("MESH_PASSWORD", "s3cret")
    with pytest.raises(ConfigurationError, match="MESH_LOOKUP_API_VERSION") as caught:
        _ = MeshPlugin().settings
    assert "three" not in str(caught.value) and "s3cret" not in str(caught.value)


async def test_the_mesh_url_option_routes_to_another_host_with_its_own_cache_entry(
    router: Router, lookups: LookupRecorder, mesh: MeshSandbox
) -> None:
    default = await router.route("mesh", org="X26", interaction="TEST_WORKFLOW")
    # The same sandbox under another spelling of its host: another environment as far as the
    # cache knows, so a second lookup is made.
    other_url = mesh.url.replace("127.0.0.1", "localhost")
    other = await router.route("mesh", org="X26", interaction="TEST_WORKFLOW", mesh_url=other_url)
    assert other.request.url.startswith(other_url + "/messageexchange/")
    assert [event.cache for event in lookups.events] == ["miss", "miss"]
    assert default.provenance.lookups != other.provenance.lookups


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("mailbox_id", ".."),
        ("mailbox_id", "%2e%2e"),
        ("mailbox_id", "X26ABC2/.."),
        ("mailbox_id", "X26ABC2;x"),
        ("mailbox", ".."),
        ("mailbox", "X26%2fABC1"),
        ("mailbox", "X26ABC1\n"),
    ],
)
async def test_hostile_mailbox_ids_are_refused_before_any_lookup(
    router: Router, lookups: LookupRecorder, option: str, value: str
) -> None:
    with pytest.raises(InvalidInputError) as info:
        await router.route("mesh", org="X26", interaction="TEST_WORKFLOW", **{option: value})
    assert info.value.field == option
    assert lookups.events == []


@pytest.mark.parametrize("workflow", ["..", ".", "%2e%2e", "A/..", "A;B", "A\\B", "A%2fB"])
async def test_hostile_workflow_ids_are_refused_before_any_lookup(
    router: Router, lookups: LookupRecorder, workflow: str
) -> None:
    with pytest.raises(InvalidInputError) as info:
        await router.route("mesh", org="X26", interaction=workflow)
    assert info.value.field == "interaction"
    assert lookups.events == []


async def test_the_envelope_carries_the_senders_client_tls_for_the_core(
    router: Router, tmp_path: Path
) -> None:
    from sds_plugins import ClientTls

    envelope = await router.route(
        "mesh",
        org="X26",
        interaction="TEST_WORKFLOW",
        cert=str(tmp_path / "mesh.pem"),
        key=str(tmp_path / "mesh.key"),
        ca_bundle=str(tmp_path / "nhs-int-ca-bundle.pem"),
    )
    # The core's description (what EnvelopeClients reads) and MESH's own extension agree.
    assert envelope.tls == ClientTls(
        cert_path=str(tmp_path / "mesh.pem"),
        key_path=str(tmp_path / "mesh.key"),
        ca_bundle_path=str(tmp_path / "nhs-int-ca-bundle.pem"),
    )
    assert envelope.extensions["mesh"]["tls"] == {
        "cert": str(tmp_path / "mesh.pem"),
        "key": str(tmp_path / "mesh.key"),
        "ca_bundle": str(tmp_path / "nhs-int-ca-bundle.pem"),
    }
    plain = await router.route("mesh", org="X26", interaction="TEST_WORKFLOW")
    assert plain.tls is None
