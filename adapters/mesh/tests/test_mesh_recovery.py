"""Recovering a first outbox POST whose answer was lost, against NHS England's mesh-sandbox.

A "lossy" proxy forwards the POST to mesh-sandbox (so the message lands) and then closes the
connection without answering: the sender sees ``RemoteProtocolError`` and no message id, as
after a timeout on a real network. The recovery helper then uses MESH's current tracking
interface (``/outbox/tracking?messageID=``) and never resends anything itself.
"""

from __future__ import annotations

import asyncio
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from _mesh_support import PASSWORD, Received
from mesh_client import MeshClient
from sds_plugins import InvalidInputError, Router, RoutingEnvelope

from sds_plugins_mesh import (
    ChunkedSend,
    FirstPostOutcome,
    MeshCredentials,
    parse_send_response,
    recover_first_post,
    send_chunked,
)
from sds_plugins_mesh.sandbox import MeshSandbox

Receive = Callable[[str, str], Received]
RECIPIENT = "X26ABC2"


class LossyProxy:
    """Forwards each request to ``upstream``, then drops the connection without an answer."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        #: The message ids MESH gave to the requests whose answers were dropped.
        self.landed: list[str] = []
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                method, path, _ = self.rfile.readline().decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while (line := self.rfile.readline().decode("latin-1").strip()) != "":
                    name, _, value = line.partition(":")
                    headers[name.strip()] = value.strip()
                length = int(
                    next((v for k, v in headers.items() if k.lower() == "content-length"), 0)
                )
                body = self.rfile.read(length)
                forwarded = {
                    k: v for k, v in headers.items() if k.lower() not in ("host", "content-length")
                }
                with httpx.Client(base_url=proxy.upstream) as client:
                    answer = client.request(method, path, headers=forwarded, content=body)
                proxy.landed.append(parse_send_response(answer))
                # ...and the answer is lost: close without a byte.

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> LossyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def via(self, request: httpx.Request) -> httpx.Request:
        """``request`` sent to the proxy instead of MESH (same path, headers and body)."""
        return httpx.Request(
            request.method,
            f"{self.url}{request.url.raw_path.decode()}",
            headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
            content=request.content,
        )


@pytest.fixture
def lossy(mesh: MeshSandbox) -> Iterator[LossyProxy]:
    with LossyProxy(mesh.url) as proxy:
        yield proxy


def _inbox(mesh: MeshSandbox, mailbox: str) -> list[str]:
    with MeshClient(
        mesh.url, mailbox, PASSWORD, shared_key=mesh.shared_key.encode(), max_retries=0
    ) as client:
        return client.list_messages()


async def _route(router: Router) -> RoutingEnvelope:
    return await router.route("mesh", org="X26", interaction="TEST_WORKFLOW", mailbox_id=RECIPIENT)


async def _send_and_lose(lossy: LossyProxy, request: httpx.Request) -> BaseException:
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.TransportError) as info:
            await client.send(lossy.via(request))
    return info.value


async def test_a_lost_answer_is_unknown_and_nothing_is_resent(
    router: Router,
    mesh: MeshSandbox,
    credentials: MeshCredentials,
    lossy: LossyProxy,
    receive: Receive,
) -> None:
    envelope = await _route(router)
    error = await _send_and_lose(lossy, envelope.build_request(b"discharge summary"))
    assert isinstance(error, httpx.RemoteProtocolError)

    async with httpx.AsyncClient() as client:
        recovery = await recover_first_post(client, envelope, credentials=credentials, error=error)
    assert recovery.outcome is FirstPostOutcome.UNKNOWN
    assert not recovery.may_send_again
    assert recovery.local_id == envelope.request.headers["mex-localid"]
    assert recovery.local_id is not None and recovery.local_id in recovery.explanation
    # Rightly so: the message did land, and sending it again would have made two.
    [landed] = lossy.landed
    assert await asyncio.to_thread(_inbox, mesh, RECIPIENT) == [landed]


async def test_with_its_message_id_the_message_is_tracked_on_the_current_interface(
    router: Router,
    mesh: MeshSandbox,
    credentials: MeshCredentials,
    lossy: LossyProxy,
    receive: Receive,
) -> None:
    envelope = await _route(router)
    await _send_and_lose(lossy, envelope.build_request(b"results"))
    [landed] = lossy.landed  # what a journal that recorded the 202 would hold

    async with httpx.AsyncClient() as client:
        accepted = await recover_first_post(
            client, envelope, credentials=credentials, message_id=landed
        )
        assert accepted.outcome is FirstPostOutcome.ACCEPTED
        assert not accepted.may_send_again
        assert accepted.tracking is not None
        assert accepted.tracking.local_id == envelope.request.headers["mex-localid"]
        assert accepted.tracking.recipient == RECIPIENT

        await asyncio.to_thread(receive, RECIPIENT, landed)  # downloads and acknowledges
        # A second tracking request: a fresh single-use token each time.
        acknowledged = await recover_first_post(
            client, envelope, credentials=credentials, message_id=landed
        )
    assert acknowledged.outcome is FirstPostOutcome.ACKNOWLEDGED


async def test_a_request_that_never_left_may_be_sent_again(
    router: Router, credentials: MeshCredentials
) -> None:
    envelope = await _route(router)
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError) as info:
            await client.send(httpx.Request("POST", f"http://127.0.0.1:{port}/outbox"))
        recovery = await recover_first_post(
            client, envelope, credentials=credentials, error=info.value
        )
    assert recovery.outcome is FirstPostOutcome.NOT_SENT
    assert recovery.may_send_again


async def test_a_chunked_message_whose_first_answer_was_lost_is_never_delivered(
    router: Router,
    mesh: MeshSandbox,
    credentials: MeshCredentials,
    lossy: LossyProxy,
    receive: Receive,
) -> None:
    payload = bytes(range(256)) * 300
    envelope = await _route(router)
    chunked = ChunkedSend(envelope, payload, credentials=credentials, chunk_size=30_000)
    assert chunked.total_chunks == 3
    error = await _send_and_lose(lossy, chunked.first_request())
    [orphan] = lossy.landed

    async with httpx.AsyncClient() as client:
        recovery = await recover_first_post(
            client,
            envelope,
            credentials=credentials,
            error=error,
            total_chunks=chunked.total_chunks,
        )
        assert recovery.outcome is FirstPostOutcome.NOT_DELIVERED
        assert recovery.may_send_again
        # The orphan sits in MESH as "uploading", and not in the recipient's inbox.
        tracked = await recover_first_post(
            client, envelope, credentials=credentials, message_id=orphan
        )
        assert tracked.outcome is FirstPostOutcome.UPLOADING
        assert tracked.resume_chunks
        assert await asyncio.to_thread(_inbox, mesh, RECIPIENT) == []

        # Sending again (a new envelope, a new first POST) gives the recipient one message.
        again = await _route(router)
        resent = ChunkedSend(again, payload, credentials=credentials, chunk_size=30_000)
        message_id = await send_chunked(client, resent)
    assert await asyncio.to_thread(_inbox, mesh, RECIPIENT) == [message_id]
    received = await asyncio.to_thread(receive, RECIPIENT, message_id)
    assert received.body == payload


async def test_an_uploading_message_is_completed_by_resuming_its_chunks(
    router: Router, mesh: MeshSandbox, credentials: MeshCredentials, receive: Receive
) -> None:
    payload = b"0123456789" * 5_000
    envelope = await _route(router)
    chunked = ChunkedSend(envelope, payload, credentials=credentials, chunk_size=20_000)
    async with httpx.AsyncClient() as client:
        message_id = chunked.accept(await client.send(chunked.first_request()))
        # ...the sender crashed here; it had recorded the message id.
        recovery = await recover_first_post(
            client, envelope, credentials=credentials, message_id=message_id
        )
        assert recovery.resume_chunks
        for request in chunked.chunk_requests(message_id):
            assert (await client.send(request)).status_code == 202
        done = await recover_first_post(
            client, envelope, credentials=credentials, message_id=message_id
        )
    assert done.outcome is FirstPostOutcome.ACCEPTED
    assert (await asyncio.to_thread(receive, RECIPIENT, message_id)).body == payload


async def test_unknown_and_foreign_message_ids(
    router: Router, credentials: MeshCredentials
) -> None:
    envelope = await _route(router)
    other = await _route(router)
    async with httpx.AsyncClient() as client:
        missing = await recover_first_post(
            client, envelope, credentials=credentials, message_id="0123456789ABCDEF0123456789ABCDEF"
        )
        assert missing.outcome is FirstPostOutcome.NOT_FOUND
        sent = parse_send_response(await client.send(other.build_request(b"another message")))
        with pytest.raises(InvalidInputError, match="another message") as info:
            await recover_first_post(client, envelope, credentials=credentials, message_id=sent)
    assert info.value.field == "message_id"


@pytest.mark.parametrize("message_id", ["..", "%2e%2e", "A/B", "A;B", "A\nB", "", "x" * 101])
async def test_hostile_message_ids_are_refused_before_any_request(
    router: Router, credentials: MeshCredentials, message_id: str
) -> None:
    envelope = await _route(router)
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500)

    async with httpx.AsyncClient(transport=httpx.MockTransport(record)) as client:
        with pytest.raises(InvalidInputError) as info:
            await recover_first_post(
                client, envelope, credentials=credentials, message_id=message_id
            )
    assert info.value.field == "message_id"
    assert sent == []


async def test_only_mesh_envelopes_and_their_own_mailbox(
    router: Router, credentials: MeshCredentials
) -> None:
    envelope = await _route(router)
    stranger = MeshCredentials.build(mailbox="X26ABC3", password="p", shared_key="k")
    async with httpx.AsyncClient() as client:
        with pytest.raises(InvalidInputError, match="credentials"):
            await recover_first_post(client, envelope, credentials=stranger)
