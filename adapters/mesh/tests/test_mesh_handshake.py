"""The MESH handshake ("Validate a mailbox") against NHS's mesh-sandbox over real sockets.

``NHSDigital/mesh-api-specification`` (``master``, ``specification/mesh-api.yaml``):
``POST /messageexchange/{mailbox_id}`` with ``mex-clientversion``, ``mex-osname`` and
``mex-osversion`` required, "only needs to be called once every 24 hours".
"""

from __future__ import annotations

import re
import socket
from datetime import timedelta

import httpx
import pytest
from _mesh_support import SENDER
from sds_plugins import AuthenticationError, ConfigurationError, DirectoryUnavailableError

from sds_plugins_mesh import (
    HANDSHAKE_INTERVAL,
    MailboxValidation,
    MeshCredentials,
    MeshSettings,
    handshake_request,
    validate_mailbox,
)
from sds_plugins_mesh.sandbox import MeshSandbox

REQUIRED = ("mex-clientversion", "mex-osname", "mex-osversion")


async def test_the_handshake_carries_its_required_headers_and_is_accepted(
    mesh: MeshSandbox, mesh_settings: MeshSettings
) -> None:
    sent: list[httpx.Request] = []

    async def keep(request: httpx.Request) -> None:
        sent.append(request)

    async with httpx.AsyncClient(event_hooks={"request": [keep]}) as client:
        first = await validate_mailbox(mesh_settings, client=client)
        second = await validate_mailbox(mesh_settings, client=client)  # a new token each time
    assert isinstance(first, MailboxValidation)
    assert (first.mailbox, first.mesh_url, first.status_code) == (SENDER, mesh.url, 200)
    assert second.validated_at >= first.validated_at
    assert first.due_at - first.validated_at == HANDSHAKE_INTERVAL == timedelta(hours=24)
    [request, again] = sent
    assert request.method == "POST"
    assert str(request.url) == f"{mesh.url}/messageexchange/{SENDER}"
    for name in REQUIRED:
        assert request.headers[name].strip(), name
    assert re.fullmatch(r"sds-plugins-mesh==\S+", request.headers["mex-clientversion"])
    assert request.headers["Authorization"].startswith(f"NHSMESH {SENDER}:")
    assert request.headers["Authorization"] != again.headers["Authorization"]
    assert mesh.replays_refused == 0


async def test_mesh_sandbox_requires_the_three_headers(
    mesh: MeshSandbox, credentials: MeshCredentials
) -> None:
    async with httpx.AsyncClient() as client:
        for missing in REQUIRED:
            request = handshake_request(credentials, mesh_url=mesh.url)
            del request.headers[missing]
            response = await client.send(request)
            assert response.status_code in (400, 422), (missing, response.status_code)
        complete = await client.send(handshake_request(credentials, mesh_url=mesh.url))
    assert complete.status_code == 200


def test_the_request_names_this_machine_unless_told_otherwise(
    credentials: MeshCredentials,
) -> None:
    request = handshake_request(
        credentials,
        mesh_url="https://msg.intspineservices.nhs.uk/",
        os_name="Linux",
        os_version="#44~18.04.2-Ubuntu\r\nX: y",
        os_architecture="x86_64",
        version="my-client==1.2",
    )
    assert str(request.url) == f"https://msg.intspineservices.nhs.uk/messageexchange/{SENDER}"
    assert request.headers["mex-osname"] == "Linux"
    assert request.headers["mex-osversion"] == "#44~18.04.2-Ubuntu X: y"  # no CR/LF
    assert request.headers["mex-osarchitecture"] == "x86_64"
    assert request.headers["mex-clientversion"] == "my-client==1.2"
    assert request.headers["Accept"] == "application/vnd.mesh.v2+json"


async def test_refused_credentials_are_an_authentication_error(mesh: MeshSandbox) -> None:
    wrong = mesh.settings(mailbox=SENDER, password="not-the-password")
    with pytest.raises(AuthenticationError) as caught:
        await validate_mailbox(wrong)
    assert caught.value.status_code == 403
    assert "not-the-password" not in str(caught.value)
    assert caught.value.url == f"{mesh.url}/messageexchange/{SENDER}"


async def test_nothing_configured_or_nothing_listening() -> None:
    with pytest.raises(ConfigurationError, match="MESH_MAILBOX"):
        await validate_mailbox(MeshSettings())
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    closed = MeshSettings(
        url=f"http://127.0.0.1:{port}", mailbox=SENDER, password="p", shared_key="k"
    )
    with pytest.raises(DirectoryUnavailableError, match="did not answer the handshake"):
        await validate_mailbox(closed, timeout_s=2)
