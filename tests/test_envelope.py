"""The routing envelope: frozen, JSON for brokers, ready for httpx, secrets masked when printed."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from sds_plugins import (
    EnvelopeReliability,
    HttpRequestSpec,
    InvalidInputError,
    LowestPartyKeyPolicy,
    MessageHandlingEndpoint,
    Party,
    Provenance,
    Router,
    RoutingEnvelope,
    Settings,
)
from sds_plugins.sandbox import Sandbox

from ._adapters import JoinPlugin
from ._reference import GP2GP

TOKEN = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJzZWNyZXQifQ."


def _envelope() -> RoutingEnvelope:
    now = datetime.now(UTC)
    return RoutingEnvelope(
        adapter="test",
        interaction="urn:nhs:names:services:gpconnect:fhir:rest:read:metadata-1",
        target=Party(ods_code="B82617", asid="918999198993", party_key="B82617-0000806", fqdn="x"),
        source=Party(asid="200000000359"),
        request=HttpRequestSpec(
            method="GET",
            url="https://proxy.example/https://provider.example/B82617/STU3/1/gpconnect/metadata",
            headers={"Authorization": f"Bearer {TOKEN}", "Ssp-TraceID": "abc", "apikey": "k3y"},
        ),
        reliability=EnvelopeReliability(retries=2, retry_interval_s=60.0),
        expires_at=now + timedelta(minutes=5),
        provenance=Provenance(
            correlation_id="abc",
            resolved_at=now,
            cache="miss",
            records=(
                MessageHandlingEndpoint(
                    address="https://provider.example", party_key="B82617-0000806"
                ),
            ),
        ),
    )


def test_secrets_are_masked_in_repr_str_and_default_json(caplog: pytest.LogCaptureFixture) -> None:
    envelope = _envelope()
    logging.getLogger("test").warning("routing %s / %r", envelope, envelope)
    for text in (
        repr(envelope),
        str(envelope),
        envelope.model_dump_json(),
        caplog.text,
        repr(envelope.request),
        json.dumps(envelope.model_dump(mode="json")),
    ):
        assert TOKEN not in text
        assert "k3y" not in text
    assert envelope.model_dump(mode="json")["request"]["headers"]["Ssp-TraceID"] == "abc"


def test_to_message_carries_everything_for_the_sender() -> None:
    message = _envelope().to_message()
    assert message["request"]["headers"]["Authorization"] == f"Bearer {TOKEN}"
    restored = RoutingEnvelope.model_validate(message)
    assert restored == _envelope().model_copy(
        update={"expires_at": restored.expires_at, "provenance": restored.provenance}
    )
    assert restored.target.model_extra == {"fqdn": "x"}


def test_build_request() -> None:
    request = _envelope().build_request(
        b'{"resourceType": "Parameters"}', headers={"Content-Type": "application/fhir+json"}
    )
    assert isinstance(request, httpx.Request)
    assert request.method == "GET"
    assert str(request.url).startswith("https://proxy.example/https://provider.example/")
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Type"] == "application/fhir+json"
    assert request.content == b'{"resourceType": "Parameters"}'
    with pytest.raises(InvalidInputError):
        _envelope().build_request(headers={"X-Evil": "a\r\nb"})


def test_envelopes_are_frozen_and_refuse_header_injection() -> None:
    envelope = _envelope()
    with pytest.raises(ValueError, match="frozen"):
        envelope.adapter = "other"  # type: ignore[misc]
    with pytest.raises(ValueError, match="control character"):
        HttpRequestSpec(method="GET", url="https://x", headers={"Ssp-From": "1\r\nInjected: yes"})


@pytest.mark.parametrize(
    "fields",
    [
        {"method": "GET\r\nX: y"},
        {"url": "https://x/\npath"},
        {"headers": {"X-Evil\r\n": "v"}},
        {"headers": {"Authorization": "Bearer " + "t" * 1500 + "\r\nSet-Cookie: x"}},
    ],
)
def test_every_part_of_a_request_is_checked_for_control_characters(
    fields: dict[str, object],
) -> None:
    given: dict[str, object] = {"method": "GET", "url": "https://x", "headers": {}, **fields}
    with pytest.raises(ValueError, match="control character"):
        HttpRequestSpec.model_validate(given)


def test_a_request_made_without_validation_is_checked_when_put_in_an_envelope() -> None:
    whole = _envelope()
    fine = HttpRequestSpec(method="GET", url="https://x", headers={"A": "b"})
    smuggled = [
        HttpRequestSpec.model_construct(
            method="GET", url="https://x", headers={"X": "a\r\nInjected: 1"}
        ),
        fine.model_copy(update={"headers": {"X": "a\r\nInjected: 1"}}),
        fine.model_copy(update={"url": "https://x\r\nHost: evil"}),
        whole.request.model_copy(
            update={"headers": {**whole.request.headers, "Authorization": "Bearer t\n"}}
        ),
    ]
    for request in smuggled:
        with pytest.raises(ValueError, match="control character"):
            RoutingEnvelope(**{**dict(whole), "request": request})
    assert RoutingEnvelope(**{**dict(whole), "request": fine}).request is fine


def test_expiry() -> None:
    assert not _envelope().expired
    assert (
        _envelope()
        .model_copy(update={"expires_at": datetime.now(UTC) - timedelta(seconds=1)})
        .expired
    )


async def test_opt_in_policy_chooses_among_several(
    sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    async with Router(
        Settings(base_url=sandbox.base_url), plugins=[JoinPlugin(), LowestPartyKeyPolicy()]
    ) as router:
        envelope = await router.route("join", org="X26", interaction=GP2GP)
        explicit = await router.route("join", org="X26", interaction=GP2GP, party_key="X26-9199246")
    assert envelope.target.party_key == "X26-820918"
    assert explicit.target.party_key == "X26-9199246"
    assert "chose party key X26-820918 by policy" in caplog.text
