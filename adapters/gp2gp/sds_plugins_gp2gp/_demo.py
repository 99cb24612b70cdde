"""The GP2GP part of ``sds-plugins demo``: one whole transfer between two sandbox practices."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sds_plugins import PluginHost, Router, Settings

from ._adapter import EHR_REQUEST
from ._conversation import SPINE_MAX_REQUEST_SIZE, Conversation
from ._large import EhrAttachment
from ._mime import reassemble
from ._records import NEW_PRACTICE, PREVIOUS_PRACTICE, accredited_system_records, mhs_records
from ._samples import sample_extract, sample_request
from ._settings import LARGE_MESSAGE_THRESHOLD, Gp2gpSettings
from .plugin import Gp2gpPlugin

if TYPE_CHECKING:
    from rich.console import Console
    from sds_plugins.sandbox import Sandbox

__all__ = ["demo"]

#: Just over the threshold, so the extract travels compressed, in two slices.
DEMO_EXTRACT_BYTES = 5_200_000


@contextlib.contextmanager
def gp2gp_sandbox() -> Iterator[Sandbox]:
    """An SDS sandbox whose data has the two GP2GP practices: the default data when it holds
    them already, else the default data plus their records (``{"mode": "add"}``, which keeps
    Spine's own intermediary records: SDS answers forward-reliable interactions with them)."""
    from sds_plugins.sandbox import Sandbox, SandboxConfig

    with Sandbox() as plain:
        if _has_practices(plain.base_url):
            yield plain
            return
    with tempfile.TemporaryDirectory(prefix="gp2gp-sandbox-") as folder:
        data = Path(folder)
        (data / "mhs-records.json").write_text(json.dumps(mhs_records()), encoding="utf-8")
        (data / "accredited-system-records.json").write_text(
            json.dumps(accredited_system_records()), encoding="utf-8"
        )
        (data / "sandbox-data.json").write_text(json.dumps({"mode": "add"}), encoding="utf-8")
        with Sandbox(SandboxConfig(data_dir=data)) as sandbox:
            yield sandbox


def _has_practices(base_url: str) -> bool:
    from sds_plugins import SyncSdsClient

    with SyncSdsClient(base_url) as client:
        found = client.endpoints(org=PREVIOUS_PRACTICE.ods, interaction=EHR_REQUEST)
    return bool(found.records)


def demo(console: Console | None = None) -> None:
    """Start an SDS sandbox with two GP2GP practices and route a whole transfer: the request,
    a large extract sent as a skeleton and slices, the continue, the acknowledgements; every
    message read back with the standard parsers and the extract rebuilt byte for byte.

    ``sds-plugins demo`` calls this through the ``sds_register_demos`` hook.
    """
    from rich.console import Console

    console = console or Console()
    with gp2gp_sandbox() as sandbox:
        asyncio.run(_demo(console, sandbox))


async def _demo(console: Console, sandbox: Sandbox) -> None:
    from rich.panel import Panel
    from rich.table import Table

    settings = Gp2gpSettings()
    host = PluginHost(load_entrypoints=False)
    host.register(Gp2gpPlugin(settings), name="gp2gp")
    new, previous = NEW_PRACTICE, PREVIOUS_PRACTICE
    async with Router(Settings(base_url=sandbox.base_url), host=host) as router:
        conversation = Conversation(
            router, new_practice=new, previous_practice=previous, settings=settings
        )
        console.print(
            Panel.fit(
                f"The patient moved from {previous.ods} ({previous.party_key}) to {new.ods} "
                f"({new.party_key}).\nConversationId {conversation.conversation_id}, on every "
                f"message.\nLarge-message threshold {LARGE_MESSAGE_THRESHOLD:,} bytes (NHS's "
                f"GP2GP adaptor); Spine's request limit {SPINE_MAX_REQUEST_SIZE:,} bytes (NHS's "
                "MHS adaptor).",
                title="GP2GP adapter: one transfer",
            )
        )
        extract_text = sample_extract(
            from_ods=previous.ods, to_ods=new.ods, size=DEMO_EXTRACT_BYTES
        )
        letter = EhrAttachment(os.urandom(150_000), "application/pdf", filename="letter.pdf")
        request = await conversation.request(sample_request(from_ods=new.ods, to_ods=previous.ods))
        extract = await conversation.extract(extract_text, attachments=[letter])
        go_on = await conversation.continue_transfer(extract)
        fragments = await conversation.fragments(extract)
        done = await conversation.acknowledge(request)
        final = await conversation.acknowledge(extract)
        messages = [request, extract, go_on, *fragments, done, final]

        table = Table(title=f"{len(messages)} messages, one conversation")
        for column in ("step", "from → to", "interaction", "message id", "bytes", "manifest"):
            table.add_column(column, overflow="fold")
        received = [message.read() for message in messages]
        for message, read in zip(messages, received, strict=True):
            sender = conversation.practices[message.sender].ods
            recipient = conversation.practices[message.recipient].ods
            refs = ", ".join(f"{ref.scheme}:" for ref in read.references[1:]) or "payload"
            table.add_row(
                message.step,
                f"{sender} → {recipient}",
                message.routing.action,
                message.message_id[:8] + "…",
                f"{message.size:,}",
                refs,
            )
        console.print(table)
        envelope = request.envelope
        console.print(
            f"  every message POSTs to {envelope.request.url} (Spine's reliable intermediary, "
            f"from SDS) with the recipient's party key and CPA id; retries "
            f"{envelope.reliability.retries if envelope.reliability else '?'}, "
            f"ack from the next MSH, no sync reply."
        )
        assert extract.plan is not None
        summary = extract.plan.summary()
        console.print(
            f"  the extract: {summary['extract_bytes']:,} bytes > {LARGE_MESSAGE_THRESHOLD:,}: "
            f"sent compressed, as a skeleton of {summary['core_payload_bytes']:,} bytes + "
            f"{summary['fragment_messages']} COPC messages (slices "
            f"{[d['chunks'] for d in summary['documents']]})"
        )
        rebuilt = reassemble(received[1], received[3:-2])
        same = rebuilt.extract == extract_text.encode("utf-8")
        digest = hashlib.sha256(rebuilt.extract).hexdigest()[:16]
        console.print(
            f"  read back with email + xml.etree; extract rebuilt from its slices: "
            f"{'identical' if same else '[red]DIFFERENT[/]'} (sha256 {digest}…); the letter: "
            f"{'identical' if next(iter(rebuilt.documents.values())) == letter.content else '?'}"
        )
        ids = {read.conversation_id for read in received}
        console.print(f"  ConversationIds seen on the wire: {sorted(ids)}\n")
