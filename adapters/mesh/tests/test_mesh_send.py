"""Sending what the envelope says, to mesh-sandbox over real sockets; receiving with mesh-client."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from _mesh_support import SENDER, Received
from pydantic import SecretStr
from sds_plugins import (
    AmbiguousError,
    AuthenticationError,
    InvalidInputError,
    NotFoundError,
    RetryPolicy,
    Router,
    RoutingEnvelope,
)

from sds_plugins_mesh import (
    ChunkedSend,
    MeshCredentials,
    MeshRejectedError,
    MeshResendRefusedError,
    chunk_requests,
    nhsmesh_authorization,
    parse_send_response,
    send_chunked,
)
from sds_plugins_mesh.sandbox import MeshSandbox

Receive = Callable[[str, str], Received]


async def _route(router: Router, **options: Any) -> RoutingEnvelope:
    options.setdefault("org", "X26")
    options.setdefault("interaction", "TEST_WORKFLOW")
    return await router.route("mesh", **options)


async def test_the_envelope_request_as_is_is_received_by_the_recipient(
    router: Router, receive: Receive
) -> None:
    envelope = await _route(router, subject="Discharge summary", filename="summary.txt")
    body = b"Patient discharged at 09:30; follow-up in two weeks."
    request = envelope.build_request(body)
    # Exactly the envelope's method, URL and headers (httpx adds only Host and Content-Length).
    assert request.method == envelope.request.method
    assert str(request.url) == envelope.request.url
    for name, value in envelope.request.headers.items():
        assert request.headers[name] == value
    async with httpx.AsyncClient() as client:
        response = await client.send(request)
    assert response.status_code == 202
    message_id = parse_send_response(response)

    message = await asyncio.to_thread(receive, "X26ABC2", message_id)
    assert message.workflow_id == "TEST_WORKFLOW"
    assert message.subject == "Discharge summary"
    assert message.sender == SENDER
    assert message.local_id == envelope.provenance.correlation_id
    assert message.filename == "summary.txt"
    assert message.body == body


async def test_a_reused_auth_header_is_refused_by_the_sandbox(
    router: Router, receive: Receive, mesh: MeshSandbox
) -> None:
    envelope = await _route(router)
    async with httpx.AsyncClient() as client:
        first = await client.send(envelope.build_request(b"once"))
        second = await client.send(envelope.build_request(b"once"))
    message_id = parse_send_response(first)
    assert second.status_code == 403
    with pytest.raises(AuthenticationError) as caught:
        parse_send_response(second)
    assert caught.value.diagnostics == "Error Duplicated Authentication Token"
    assert mesh.replays_refused == 1
    # The replay did not become a second message.
    assert (await asyncio.to_thread(receive, "X26ABC2", message_id)).body == b"once"


async def test_the_sandbox_checks_the_token_signature_and_clock(
    router: Router, credentials: MeshCredentials, mesh: MeshSandbox
) -> None:
    envelope = await _route(router)
    wrong = MeshCredentials.build(mailbox=SENDER, password="wrong", shared_key=mesh.shared_key)
    stale = nhsmesh_authorization(credentials, now=datetime.now(UTC) - timedelta(hours=3))
    async with httpx.AsyncClient() as client:
        for token in (nhsmesh_authorization(wrong), stale):
            response = await client.send(
                envelope.build_request(b"x", headers={"Authorization": token})
            )
            with pytest.raises(AuthenticationError):
                parse_send_response(response)


async def test_an_unknown_recipient_is_refused_with_417(router: Router) -> None:
    envelope = (await _route(router)).with_headers(**{"mex-to": "NOBODY1"})
    async with httpx.AsyncClient() as client:
        response = await client.send(envelope.build_request(b"x"))
    assert response.status_code == 417
    with pytest.raises(MeshRejectedError) as caught:
        parse_send_response(response)
    assert caught.value.status_code == 417


async def test_a_chunked_message_arrives_whole(
    router: Router, credentials: MeshCredentials, receive: Receive
) -> None:
    envelope = await _route(router, subject="Big", content_type="text/csv")
    payload = os.urandom(150_000) + b"row,value\n" * 20_000  # part incompressible, part not
    chunked = chunk_requests(envelope, payload, credentials=credentials, chunk_size=100_000)
    assert chunked.total_chunks == 4

    first = chunked.first_request()
    assert first.url == envelope.request.url
    assert first.headers["mex-chunk-range"] == "1:4"
    assert first.headers["Content-Encoding"] == "gzip"
    assert first.headers["Content-Type"] == "application/octet-stream"
    assert first.headers["mex-content-type"] == "text/csv"
    assert first.headers["mex-to"] == "X26ABC2"
    assert first.headers["Authorization"] != envelope.request.headers["Authorization"]
    assert gzip.decompress(first.content) == payload[:100_000]

    async with httpx.AsyncClient() as client:
        message_id = chunked.accept(await client.send(first))
        tokens = {first.headers["Authorization"]}
        for number, request in enumerate(chunked.chunk_requests(), start=2):
            assert request.url.path.endswith(f"/outbox/{message_id}/{number}")
            tokens.add(request.headers["Authorization"])
            response = await client.send(request)
            assert response.status_code == 202, response.text
    assert len(tokens) == 4  # every request signed afresh

    message = await asyncio.to_thread(receive, "X26ABC2", message_id)
    assert message.body == payload
    assert message.subject == "Big"
    assert message.workflow_id == "TEST_WORKFLOW"


async def test_send_chunked_sends_the_first_post_once_and_retries_chunks(
    router: Router, credentials: MeshCredentials, mesh: MeshSandbox, receive: Receive
) -> None:
    envelope = await _route(router)
    payload = b"0123456789" * 5_000
    chunked = ChunkedSend(envelope, payload, credentials=credentials, chunk_size=20_000)
    failures = {"chunk 2": 1}
    real = httpx.AsyncHTTPTransport()

    class FlakyTransport(httpx.AsyncBaseTransport):
        """Drops chunk 2 once (before it reaches MESH); counts first POSTs."""

        first_posts = 0

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/outbox"):
                FlakyTransport.first_posts += 1
            if request.url.path.endswith("/2") and failures["chunk 2"]:
                failures["chunk 2"] -= 1
                raise httpx.ConnectError("dropped", request=request)
            return await real.handle_async_request(request)

    async with httpx.AsyncClient(transport=FlakyTransport()) as client:
        message_id = await send_chunked(
            client, chunked, retry=RetryPolicy(attempts=3, backoff_s=0.001, max_backoff_s=0.002)
        )
    assert FlakyTransport.first_posts == 1
    assert (await asyncio.to_thread(receive, "X26ABC2", message_id)).body == payload


async def test_the_first_post_is_never_handed_out_twice(
    router: Router, credentials: MeshCredentials
) -> None:
    envelope = await _route(router)
    chunked = ChunkedSend(envelope, b"x" * 10, credentials=credentials, chunk_size=4)
    chunked.first_request()
    with pytest.raises(MeshResendRefusedError, match="never sent twice"):
        chunked.first_request()
    with pytest.raises(InvalidInputError, match="message_id"):
        chunked.chunk_request(2)
    # Later chunks may be rebuilt (retried) freely, each with a new token.
    again = [chunked.chunk_request(3, message_id="M1") for _ in range(2)]
    assert again[0].headers["Authorization"] != again[1].headers["Authorization"]
    assert again[0].content == again[1].content
    with pytest.raises(InvalidInputError):
        chunked.chunk_request(4)


async def test_a_small_payload_is_one_request_with_its_own_content_type(
    router: Router, credentials: MeshCredentials, receive: Receive
) -> None:
    envelope = await _route(router, content_type="application/json")
    chunked = ChunkedSend(envelope, b'{"a": 1}', credentials=credentials, compress=False)
    request = chunked.first_request()
    assert chunked.total_chunks == 1
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["mex-chunk-range"] == "1:1"
    assert "Content-Encoding" not in request.headers
    assert list(chunked.chunk_requests("M")) == []
    async with httpx.AsyncClient() as client:
        message_id = chunked.accept(await client.send(request))
    assert (await asyncio.to_thread(receive, "X26ABC2", message_id)).body == b'{"a": 1}'


async def test_the_chunk_helper_refuses_what_cannot_work(
    router: Router, credentials: MeshCredentials, mesh: MeshSandbox
) -> None:
    envelope = await _route(router)
    other = MeshCredentials.build(mailbox="X26ABC2", password="p", shared_key="k")
    with pytest.raises(InvalidInputError) as caught:
        ChunkedSend(envelope, b"x", credentials=other)
    assert caught.value.field == "credentials"
    with pytest.raises(InvalidInputError):
        ChunkedSend(envelope, b"", credentials=credentials)
    with pytest.raises(InvalidInputError):
        ChunkedSend(envelope, b"x", credentials=credentials, chunk_size=0)
    expired = envelope.model_copy(update={"expires_at": datetime.now(UTC) - timedelta(1)})
    with pytest.raises(InvalidInputError, match="expired"):
        ChunkedSend(expired, b"x", credentials=credentials)


# --------------------------------------------------------------------------- secrets


async def test_secrets_never_appear_in_envelopes_logs_or_errors(
    router: Router,
    mesh: MeshSandbox,
    caplog: pytest.LogCaptureFixture,
    credentials: MeshCredentials,
) -> None:
    password, shared_key = "password", mesh.shared_key
    caplog.set_level(logging.DEBUG)
    envelope = await _route(
        router,
        mailbox=SENDER,
        password=SecretStr(password),
        shared_key=SecretStr(shared_key),
    )
    token = envelope.request.headers["Authorization"]
    shown = [
        repr(envelope),
        str(envelope),
        envelope.model_dump_json(),
        json.dumps(envelope.model_dump(mode="json")),
        repr(envelope.request),
        repr(credentials),
        str(credentials),
        credentials.model_dump_json(),
    ]
    for text in shown:
        assert shared_key not in text
        assert token not in text
        assert ":password:" not in text
    # The sender gets the token (not the password or key) from to_message().
    message = json.dumps(envelope.to_message())
    assert token in message
    assert shared_key not in message
    assert '"password"' not in message

    errors: list[Exception] = []
    cases: list[tuple[dict[str, Any], type[Exception]]] = [
        ({"org": "X26", "interaction": "TEST_WORKFLOW2"}, AmbiguousError),
        ({"org": "X26", "interaction": "NOPE"}, NotFoundError),
        ({"org": "X26", "password": 123}, InvalidInputError),  # wrong type
        ({"org": "X26", "password": "pässword"}, InvalidInputError),  # not ASCII
    ]
    for options, expected in cases:
        with pytest.raises(expected) as caught:
            await _route(router, shared_key=SecretStr(shared_key), **options)
        errors.append(caught.value)
    async with httpx.AsyncClient() as client:
        await client.send(envelope.build_request(b"x"))
        replay = await client.send(envelope.build_request(b"x"))
    with pytest.raises(AuthenticationError) as refused:
        parse_send_response(replay)
    errors.append(refused.value)
    for error in errors:
        for text in (str(error), repr(error), json.dumps(getattr(error, "to_dict", dict)())):
            assert shared_key not in text
            assert "pässword" not in text
            assert token not in text
    for record in caplog.records:
        assert shared_key not in record.getMessage()
        assert token not in record.getMessage()
