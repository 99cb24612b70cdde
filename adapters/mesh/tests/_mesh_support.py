"""Helpers the MESH tests import (a unique module name: conftest.py is not importable by name
when several adapters' test folders each have one)."""

from __future__ import annotations

from dataclasses import dataclass

from sds_plugins import LookupEvent, hookimpl

SENDER = "X26ABC1"
PASSWORD = "password"  # every reference mailbox's password (sds_plugins_mesh/data)


class LookupRecorder:
    """Collects the engine's ``sds_lookup_completed`` events."""

    def __init__(self) -> None:
        self.events: list[LookupEvent] = []

    @hookimpl
    def sds_lookup_completed(self, event: LookupEvent) -> None:
        self.events.append(event)


@dataclass(frozen=True)
class Received:
    """A message as the recipient's mesh-client saw it."""

    message_id: str
    sender: str
    workflow_id: str
    subject: str | None
    local_id: str | None
    filename: str | None
    body: bytes
