"""Shared fixtures: NHS England's mesh-sandbox on loopback, routers with the MESH plugin.

One mesh-sandbox serves the whole session (starting it costs ~0.5 s, mostly importing FastAPI);
every test gets it emptied (messages and seen tokens) by ``mesh``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
from _mesh_support import PASSWORD, SENDER, LookupRecorder, Received
from mesh_client import MeshClient
from sds_plugins import Router
from sds_plugins.testing import RegisterPlugin, RouterFactory

from sds_plugins_mesh import MeshCredentials, MeshPlugin, MeshSettings
from sds_plugins_mesh.sandbox import MeshSandbox


@pytest.fixture(autouse=True)
def _no_mesh_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's MESH_* variables must not change what a test sees.
    for name in list(os.environ):
        if name.startswith("MESH_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def _mesh_session_sandbox() -> Iterator[MeshSandbox]:
    with MeshSandbox() as sandbox:
        yield sandbox


@pytest.fixture
def mesh(_mesh_session_sandbox: MeshSandbox) -> MeshSandbox:
    """The running mesh-sandbox, with empty mailboxes and no tokens seen."""
    _mesh_session_sandbox.reset()
    return _mesh_session_sandbox


@pytest.fixture
def mesh_settings(mesh: MeshSandbox) -> MeshSettings:
    """Settings for the sandbox, sending as X26ABC1."""
    return mesh.settings(mailbox=SENDER, password=PASSWORD)


@pytest.fixture
def credentials(mesh_settings: MeshSettings) -> MeshCredentials:
    found = mesh_settings.credentials()
    assert found is not None
    return found


@pytest.fixture
def lookups() -> LookupRecorder:
    return LookupRecorder()


@pytest.fixture
def mesh_plugins(
    sds_register_plugin: RegisterPlugin, mesh_settings: MeshSettings, lookups: LookupRecorder
) -> None:
    sds_register_plugin(MeshPlugin(mesh_settings), name="mesh")
    sds_register_plugin(lookups, name="test.lookups")


@pytest.fixture
async def router(mesh_plugins: None, sds_router_factory: RouterFactory) -> Router:
    """A started router with the MESH plugin for the sandbox (few retries, fast backoff)."""
    return await sds_router_factory(retry_attempts=2)


@pytest.fixture
def receive(mesh: MeshSandbox) -> Callable[[str, str], Received]:
    """``receive(mailbox, message_id)``: download and acknowledge it with NHS's mesh-client.

    mesh-client is synchronous: call it with ``asyncio.to_thread`` from async tests.
    """

    def _receive(mailbox: str, message_id: str) -> Received:
        with MeshClient(
            mesh.url, mailbox, PASSWORD, shared_key=mesh.shared_key.encode(), max_retries=0
        ) as client:
            message = client.retrieve_message(message_id)
            body = message.read()
            message.acknowledge()
            return Received(
                message_id=message.id(),
                sender=message.sender,
                workflow_id=message.workflow_id,
                subject=message.subject,
                local_id=message.local_id,
                filename=message.filename,
                body=body,
                partner_id=message.partner_id,
            )

    return _receive
