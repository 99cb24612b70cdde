"""Packaging, the public surface, the NHSMESH token, header rules, the audit trail and the demo."""

from __future__ import annotations

import ast
import asyncio
import importlib.metadata
import inspect
import io
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from _mesh_support import SENDER
from mesh_client import AuthTokenGenerator
from rich.console import Console
from sds_plugins import AmbiguousError, InvalidInputError, PluginHost, Router, Settings
from sds_plugins.testing import RegisterPlugin, RouterFactory

import sds_plugins_mesh
from sds_plugins_mesh import MeshAdapter, MeshCredentials, MeshPlugin, nhsmesh_authorization
from sds_plugins_mesh._validation import MAX_LENGTHS, check_text_header, normalise_flag
from sds_plugins_mesh.sandbox import REFERENCE_DATA, MeshSandbox

SHARED_REFERENCE = Path("/work/shared/reference/mesh")


def _isort_style(name: str) -> tuple[int, list[int | str]]:
    group = 0 if len(name) > 1 and name.isupper() else 1 if name[:1].isupper() else 2
    return group, [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def test_public_surface_is_sorted_documented_and_real() -> None:
    names = list(sds_plugins_mesh.__all__)
    assert names == sorted(names, key=_isort_style)
    assert len(names) == len(set(names))
    for name in names:
        obj = getattr(sds_plugins_mesh, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert (obj.__doc__ or "").strip(), f"{name} has no docstring"


def test_the_entry_point_registers_the_adapter_and_source() -> None:
    (entry,) = [
        ep for ep in importlib.metadata.entry_points(group="sds_plugins") if ep.name == "mesh"
    ]
    assert entry.load() is sds_plugins_mesh.plugin.plugin
    host = PluginHost(environ={"SDS_PLUGINS_LOAD": "sds-plugins-mesh"})
    router = Router(Settings(), host=host)

    async def start() -> None:
        await router.start()
        assert isinstance(router.adapters["mesh"], MeshAdapter)
        assert router.sources["mesh"].name == "mesh"
        await router.aclose()

    asyncio.run(start())
    # Its demo comes through the sds_register_demos hook, like any plugin's.
    demos: dict[str, object] = {}
    host.register_demos(lambda name, show: demos.setdefault(name, show))
    assert demos == {"mesh": sds_plugins_mesh.demo}


def test_the_packaged_reference_data_is_the_shared_reference() -> None:
    if not SHARED_REFERENCE.is_dir():
        pytest.skip("shared reference folder not available")
    for packaged, shared in (
        ("mailboxes.jsonl", "sandbox-mailboxes.jsonl"),
        ("workflows.jsonl", "sandbox-workflows.jsonl"),
    ):
        assert (REFERENCE_DATA / packaged).read_bytes() == (SHARED_REFERENCE / shared).read_bytes()


def test_the_sandbox_serves_the_packaged_mailboxes(mesh: MeshSandbox) -> None:
    packaged = {
        json.loads(line)["mailbox_id"]
        for line in (REFERENCE_DATA / "mailboxes.jsonl").read_text().splitlines()
        if line.strip()
    }
    assert set(mesh._store.mailboxes) == packaged == {"X26ABC1", "X26ABC2", "X26ABC3"}
    with pytest.raises(RuntimeError, match="already running"):
        MeshSandbox().start()


def test_nhsmesh_token_matches_nhs_mesh_client() -> None:
    credentials = MeshCredentials.build(mailbox="x26abc1", password="password", shared_key="K")
    generator = AuthTokenGenerator(b"K", "X26ABC1", "password")
    theirs = generator.generate_token()
    # Ours at mesh-client's own timestamp, so a minute boundary in between cannot matter.
    minute = datetime.strptime(theirs.split(":")[3], "%Y%m%d%H%M").replace(tzinfo=UTC)
    ours = nhsmesh_authorization(
        credentials,
        now=minute,
        nonce=str(generator._nonce),  # mesh-client's first token uses count 0
    )
    assert ours == theirs
    assert re.fullmatch(r"NHSMESH X26ABC1:[0-9a-f-]{36}:0:\d{12}:[0-9a-f]{64}", ours)


@pytest.mark.parametrize("field", ["subject", "local_id", "filename"])
def test_length_limits_are_meshs(field: str) -> None:
    limit = MAX_LENGTHS[field]
    assert check_text_header("a" * limit, field) == "a" * limit
    with pytest.raises(InvalidInputError, match=f"at most {limit}") as caught:
        check_text_header("a" * (limit + 1), field)
    assert caught.value.field == field
    assert "aaaa" not in str(caught.value)  # values (possibly confidential) are not echoed


def test_flags_accept_bools_and_the_clis_strings() -> None:
    assert [normalise_flag(v, field="f") for v in (True, False, "Y", "no", "TRUE", "0")] == [
        "Y",
        "N",
        "Y",
        "N",
        "Y",
        "N",
    ]


async def test_audit_log_and_events_never_hold_secrets(
    tmp_path: Path,
    sds_register_plugin: RegisterPlugin,
    sds_router_factory: RouterFactory,
    mesh: MeshSandbox,
) -> None:
    # The worst case: secrets passed as plain strings in options.
    sds_register_plugin(MeshPlugin(mesh.settings()), name="mesh")
    audit = tmp_path / "audit.jsonl"
    router = await sds_router_factory(audit_log=audit)
    envelope = await router.route(
        "mesh",
        org="X26",
        interaction="TEST_WORKFLOW",
        mailbox=SENDER,
        password="password",
        shared_key=mesh.shared_key,
    )
    with pytest.raises(AmbiguousError):
        await router.route(
            "mesh", org="X26", interaction="TEST_WORKFLOW2", mailbox=SENDER, password="password"
        )
    text = audit.read_text()
    assert text.count("\n") >= 3  # lookups and routes were recorded
    assert mesh.shared_key not in text
    assert "password" not in text
    assert envelope.request.headers["Authorization"] not in text


def test_the_demo_routes_sends_and_receives(mesh: MeshSandbox) -> None:
    output = io.StringIO()
    sds_plugins_mesh.demo(Console(file=output, width=400), sandbox=mesh)
    text = output.getvalue()
    assert "MESH envelope for X26 / TEST_WORKFLOW (credentials masked)" in text
    assert '"Authorization": "**********"' in text
    assert mesh.shared_key not in text
    assert "cache=hit" in text
    assert "refused (Error Duplicated Authentication Token)" in text
    assert "body 'Patient discharged 09:30.'" in text
    assert "pass the mailbox_id option" in text
    assert "bytes, whole" in text
    assert "MeshResendRefusedError" in text
    # GP Connect Messaging: Send Document by demographic routing, the acknowledgement back.
    assert re.search(r"mex-to GPPROVIDER_9990001014_\d{8}_\w+, mex-from X26ABC1", text)
    assert "417 at the recipient (it has no automated routing)" in text
    assert "to X26ABC2 (what MESH would resolve): from X26ABC1, GPFED_CONSULT_REPORT" in text
    assert "acknowledgement, one call: workflow GPFED_CONSULT_REPORT_ACK" in text
    assert "handshake (POST /messageexchange/X26ABC1 with mex-clientversion" in text


README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)


def test_readme_samples_compile() -> None:
    blocks = _python_blocks()
    assert len(blocks) >= 4
    for block in blocks:
        compile(block, str(README), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


async def test_readme_httpx_sample_sends_an_envelope(router: Router, receive: Any) -> None:
    (sample,) = [block for block in _python_blocks() if "async def send(" in block]
    namespace: dict[str, Any] = {}
    exec(compile(sample, str(README), "exec"), namespace)
    envelope = await router.route("mesh", org="X27", interaction="TEST_WORKFLOW_ACK")
    from sds_plugins import EnvelopeClients

    async with EnvelopeClients(allow_plain_http=True) as clients:  # mesh-sandbox is plain http
        message_id = await namespace["send"](clients, envelope, b"from the README")
    received = await asyncio.to_thread(receive, "X26ABC3", message_id)
    assert received.body == b"from the README"
