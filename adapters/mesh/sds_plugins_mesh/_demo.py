"""The MESH part of ``sds-plugins demo``: a real mesh-sandbox, a routed envelope, a real send;
a GP Connect Messaging Send Document by demographic routing and its acknowledgement; the
handshake."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import uuid
from datetime import date
from typing import TYPE_CHECKING, Any

import httpx
from sds_plugins import (
    AmbiguousError,
    AuthenticationError,
    LookupEvent,
    PluginHost,
    Router,
    Settings,
    hookimpl,
)

from ._chunks import ChunkedSend, send_chunked
from ._errors import MeshRejectedError, parse_send_response
from ._handshake import validate_mailbox
from ._itk import consultation_report_subject, route_acknowledgement
from .plugin import MeshPlugin

if TYPE_CHECKING:
    from rich.console import Console

    from ._config import MeshSettings
    from .sandbox import MeshSandbox

__all__ = ["demo"]

SENDER = "X26ABC1"
WORKFLOW = "TEST_WORKFLOW"


class _Lookups:
    def __init__(self) -> None:
        self.events: list[LookupEvent] = []

    @hookimpl
    def sds_lookup_completed(self, event: LookupEvent) -> None:
        self.events.append(event)


def demo(console: Console | None = None, *, sandbox: MeshSandbox | None = None) -> None:
    """Start mesh-sandbox on a free port, route a MESH envelope, send it and receive it.

    ``sds-plugins demo`` calls this through the ``sds_register_demos`` hook. Pass a
    running ``sandbox`` to reuse it (one process runs one mesh-sandbox at a time).
    """
    from rich.console import Console

    from .sandbox import MeshSandbox

    console = console or Console()
    if importlib.util.find_spec("mesh_sandbox") is None:  # pragma: no cover - extra missing
        console.print("MESH demo skipped: pip install 'sds-plugins-mesh[sandbox]'")
        return
    if sandbox is not None:
        asyncio.run(_demo(console, sandbox))
        return
    with MeshSandbox() as running:
        asyncio.run(_demo(console, running))


async def _demo(console: Console, sandbox: MeshSandbox) -> None:
    from rich.panel import Panel

    settings = sandbox.settings(mailbox=SENDER)
    credentials = settings.credentials()
    assert credentials is not None
    lookups = _Lookups()
    host = PluginHost(load_entrypoints=False)
    host.register(MeshPlugin(settings), name="mesh")
    host.register(lookups, name="demo.lookups")
    console.print(
        Panel.fit(
            f"NHS England's mesh-sandbox listening on [bold]{sandbox.url}[/]\n"
            "Mailboxes X26ABC1, X26ABC2 (ODS X26) and X26ABC3 (X27); sender X26ABC1",
            title="MESH adapter",
        )
    )
    async with Router(Settings(), host=host) as router, httpx.AsyncClient() as client:
        envelope = await router.route(
            "mesh", org="X26", interaction=WORKFLOW, subject="Discharge summary"
        )
        await router.route("mesh", org="X26", interaction=WORKFLOW)
        console.print(
            Panel(
                json.dumps(envelope.model_dump(mode="json"), indent=2),
                title="MESH envelope for X26 / TEST_WORKFLOW (credentials masked)",
            )
        )
        console.print(
            "  lookups: "
            + ", ".join(f"{event.query} cache={event.cache}" for event in lookups.events)
        )

        request = envelope.build_request(b"Patient discharged 09:30.")
        message_id = parse_send_response(await client.send(request))
        console.print(f"  POSTed with the envelope's own headers: message_id {message_id}")
        try:
            parse_send_response(await client.send(request))
        except AuthenticationError as exc:
            console.print(f"  the same request again: [yellow]refused[/] ({exc.diagnostics})")

        message = await asyncio.to_thread(_receive, sandbox, "X26ABC2", message_id)
        console.print(f"  X26ABC2 received it with mesh-client: {message}\n")

        await _to_the_patients_gp(console, settings, client, sandbox)
        await _send_document(console, settings, client, sandbox)

        validation = await validate_mailbox(settings, client=client)
        console.print(
            f"  handshake (POST /messageexchange/{validation.mailbox} with mex-clientversion, "
            f"mex-osname, mex-osversion): {validation.status_code}, next due "
            f"{validation.due_at:%Y-%m-%d %H:%M} UTC\n"
        )

        try:
            await router.route("mesh", org="X26", interaction="TEST_WORKFLOW2")
        except AmbiguousError as exc:
            console.print(f"[yellow]ambiguous:[/] {exc.message}")
        chosen = await router.route(
            "mesh", org="X26", interaction="TEST_WORKFLOW2", mailbox_id="X26ABC2"
        )
        console.print(f"  with mailbox_id=X26ABC2: to {chosen.target.mailbox_id}\n")

        # A new message needs a new envelope (its own mex-localid, its own routing freshness).
        large = await router.route("mesh", org="X26", interaction=WORKFLOW, subject="Imaging")
        payload = bytes(range(256)) * 4096  # 1 MiB
        chunked = ChunkedSend(large, payload, credentials=credentials, chunk_size=300_000)
        chunked_id = await send_chunked(client, chunked)
        received = await asyncio.to_thread(_receive, sandbox, "X26ABC2", chunked_id, body=False)
        console.print(
            f"  1 MiB in {chunked.total_chunks} gzipped chunks: message {chunked_id}, {received}"
        )
        try:
            chunked.first_request()
        except Exception as exc:
            console.print(f"  first POST asked for twice: [yellow]{type(exc).__name__}[/]\n")


async def _to_the_patients_gp(
    console: Console, settings: MeshSettings, client: httpx.AsyncClient, sandbox: MeshSandbox
) -> None:
    """A discharge summary to the patient's GP: the SDS sandbox's PDS names the practice."""
    from sds_plugins.sandbox import SANDBOX_PATIENTS, Sandbox

    host = PluginHost(load_entrypoints=False)
    host.register(MeshPlugin(settings), name="mesh")
    with Sandbox() as sds:
        async with Router(Settings(base_url=sds.base_url), host=host) as router:
            envelope = await router.route(
                "mesh", patient=SANDBOX_PATIENTS["mesh"], interaction=WORKFLOW
            )
    pds = envelope.provenance.records[0].model_dump(mode="json")
    message_id = parse_send_response(
        await client.send(envelope.build_request(b"Discharge summary for your patient."))
    )
    received = await asyncio.to_thread(
        _receive, sandbox, envelope.target.mailbox_id or "", message_id
    )
    console.print(
        f"  to the GP of patient {pds['patient']}: PDS says {pds['practice']}, MESH mailbox "
        f"{envelope.target.mailbox_id}; {received}\n"
    )


async def _send_document(
    console: Console, settings: MeshSettings, client: httpx.AsyncClient, sandbox: MeshSandbox
) -> None:
    """GP Connect Messaging's Send Document: MESH automated routing by the patient's NHS
    number, date of birth and surname, then the practice's acknowledgement back, in one call.

    mesh-sandbox has no automated routing (it looks mex-to up as a mailbox): the demographic
    envelope is shown, refused by mesh-sandbox at the recipient lookup only, and then sent to
    the practice's mailbox, which is what MESH would resolve.
    """
    from sds_plugins.sandbox import SANDBOX_PATIENTS, Sandbox

    host = PluginHost(load_entrypoints=False)
    host.register(MeshPlugin(settings), name="mesh")
    with Sandbox() as sds:
        number = SANDBOX_PATIENTS["mesh"]
        patient = await _pds_patient(client, sds.url, number)
        # The route names the patient: the router asks PDS, whose NHS number, date of birth and
        # usual surname make mex-to. The subject's name is the sender's to write.
        options: dict[str, Any] = {
            "routing": "demographic",
            "subject": consultation_report_subject(
                patient_name=f"{patient['given']} {patient['family']}",
                nhs_number=number,
                practice_name="Demo Urgent Treatment Centre",
                ods_code="X26",
            ),
            "local_id": "X26",
        }
        async with Router(Settings(base_url=sds.base_url), host=host) as router:
            report = await router.route(
                "mesh", patient=number, interaction="GPFED_CONSULT_REPORT", **options
            )
            second = await router.route(
                "mesh", patient=number, interaction="GPFED_CONSULT_REPORT", **options
            )
            headers = report.to_message()["request"]["headers"]  # the sender's copy: unmasked
            born = date.fromisoformat(patient["birthDate"])
            console.print(
                "  Send Document (GPFED_CONSULT_REPORT) for the sandbox patient born "
                f"{born:%d %B %Y}, surname {patient['family']} in PDS: "
                f"mex-to {headers['mex-to']}, mex-from {headers['mex-from']}, "
                f"acknowledged with {report.extensions['mesh']['ack_workflow_id']}"
            )
            try:
                parse_send_response(await client.send(report.build_request(b"<Bundle/>")))
            except MeshRejectedError as exc:
                console.print(
                    f"  as it is: mesh-sandbox checks every header, then [yellow]{exc.status_code}"
                    "[/] at the recipient (it has no automated routing)"
                )
            practice = second.with_headers(**{"mex-to": "X26ABC2"})
            message_id = parse_send_response(
                await client.send(practice.build_request(b"<Bundle/>"))
            )
            received = await asyncio.to_thread(_message, sandbox, "X26ABC2", message_id)
            console.print(
                f"  to X26ABC2 (what MESH would resolve): from {received['sender']}, "
                f"{received['workflow_id']}, subject {received['subject']!r}"
            )
            ack = await route_acknowledgement(
                router,
                workflow_id=received["workflow_id"],
                to_mailbox=received["sender"],
                org=received["local_id"] or "X26",
                mailbox="X26ABC2",
                password=settings.password,  # every reference mailbox has the same one
            )
            ack_id = parse_send_response(await client.send(ack.build_request(b"<ack/>")))
            back = await asyncio.to_thread(_receive, sandbox, received["sender"], ack_id)
            console.print(f"  the practice's acknowledgement, one call: {back}\n")


async def _pds_patient(client: httpx.AsyncClient, sds_url: str, number: str) -> dict[str, str]:
    """Date of birth and usual name as the (sandbox) PDS holds them: what a sender reads."""
    response = await client.get(
        f"{sds_url}/personal-demographics/FHIR/R4/Patient/{number}",
        headers={"X-Request-ID": str(uuid.uuid4())},
    )
    response.raise_for_status()
    resource = response.json()
    usual = next(n for n in resource["name"] if n.get("use") == "usual")
    return {
        "birthDate": resource["birthDate"],
        "family": usual["family"],
        "given": " ".join(usual.get("given", [])),
    }


def _message(sandbox: MeshSandbox, mailbox: str, message_id: str) -> dict[str, Any]:
    from mesh_client import MeshClient

    with MeshClient(
        sandbox.url, mailbox, "password", shared_key=sandbox.shared_key.encode(), max_retries=0
    ) as mesh:
        message = mesh.retrieve_message(message_id)
        message.read()
        message.acknowledge()
    return {
        "sender": message.sender,
        "workflow_id": message.workflow_id,
        "subject": message.subject,
        "local_id": message.local_id,
    }


def _receive(sandbox: MeshSandbox, mailbox: str, message_id: str, *, body: bool = True) -> str:
    from mesh_client import MeshClient

    with MeshClient(
        sandbox.url, mailbox, "password", shared_key=sandbox.shared_key.encode(), max_retries=0
    ) as mesh:
        message = mesh.retrieve_message(message_id)
        data = message.read()
        message.acknowledge()
    shown = repr(data.decode()) if body else f"{len(data)} bytes, whole"
    return f"workflow {message.workflow_id}, subject {message.subject!r}, body {shown}"
