"""The MESH handshake ("Validate a mailbox") against NHS's mesh-sandbox over real sockets.

``NHSDigital/mesh-api-specification`` (``master``, ``specification/mesh-api.yaml``):
``POST /messageexchange/{mailbox_id}`` with ``mex-clientversion``, ``mex-osname`` and
``mex-osversion`` required, "only needs to be called once every 24 hours".
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from datetime import timedelta
from typing import Any

import httpx
import pytest
from _mesh_support import PASSWORD, SENDER
from sds_plugins import (
    AuthenticationError,
    ConfigurationError,
    DirectoryUnavailableError,
    PluginHost,
)
from sds_plugins.sandbox import Sandbox

from sds_plugins_mesh import (
    HANDSHAKE_INTERVAL,
    MailboxValidation,
    MeshCredentials,
    MeshPlugin,
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


# -- who performs it: doctor, and the long-running processes (sds_register_keepalives) ----------


def _registered(plugin: MeshPlugin) -> list[tuple[str, float, Any]]:
    found: list[tuple[str, float, Any]] = []
    host = PluginHost(load_entrypoints=False, environ={})
    host.register(plugin, name="mesh")
    host.register_keepalives(lambda name, every, call: found.append((name, every, call)))
    return found


async def test_the_plugin_registers_the_handshake_only_when_mesh_is_configured(
    mesh: MeshSandbox, mesh_settings: MeshSettings
) -> None:
    [(name, every, call)] = _registered(MeshPlugin(mesh_settings))
    assert (name, every) == ("mesh handshake", HANDSHAKE_INTERVAL.total_seconds())
    validation = await call()  # one handshake with the plugin's settings
    assert isinstance(validation, MailboxValidation) and validation.mailbox == SENDER
    # Without credentials (or a host) there is nothing to validate: no keepalive.
    assert _registered(MeshPlugin(MeshSettings(url=mesh.url))) == []
    assert _registered(MeshPlugin(MeshSettings(mailbox=SENDER, password="p", shared_key="k"))) == []


def _doctor_lines(env: dict[str, str]) -> tuple[int, list[str]]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SDS_", "MESH_"))}
    result = subprocess.run(
        [sys.executable, "-m", "sds_plugins", "doctor"],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=120,
        check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout.splitlines()


def test_doctor_performs_the_handshake_when_mesh_is_configured(
    mesh: MeshSandbox, sds_sandbox: Sandbox
) -> None:
    env = {
        "SDS_BASE_URL": sds_sandbox.base_url,
        "MESH_URL": mesh.url,
        "MESH_MAILBOX": SENDER,
        "MESH_PASSWORD": PASSWORD,
        "MESH_SHARED_KEY": mesh.shared_key,
    }
    code, lines = _doctor_lines(env)
    [line] = [line for line in lines if "mesh handshake" in line]
    assert re.fullmatch(r"ok   mesh handshake: done in \d+ ms \(due every 24 h\)", line), line
    # A wrong password: the handshake fails, doctor says why (never the password) and exits 1.
    code, lines = _doctor_lines({**env, "MESH_PASSWORD": "not-the-password"})
    [line] = [line for line in lines if "mesh handshake" in line]
    assert line.startswith("FAIL mesh handshake: AuthenticationError: "), line
    assert "not-the-password" not in "\n".join(lines)
    assert code == 1
    # MESH not configured: no line at all.
    code, lines = _doctor_lines({"SDS_BASE_URL": sds_sandbox.base_url})
    assert not [line for line in lines if "mesh handshake" in line]
