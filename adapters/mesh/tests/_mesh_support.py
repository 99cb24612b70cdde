"""Helpers the MESH tests import (a unique module name: conftest.py is not importable by name
when several adapters' test folders each have one)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import httpx
from sds_plugins import LookupEvent, RouteEvent, hookimpl

SENDER = "X26ABC1"
PASSWORD = "password"  # every reference mailbox's password (sds_plugins_mesh/data)


class LookupRecorder:
    """Collects the engine's ``sds_lookup_completed`` events."""

    def __init__(self) -> None:
        self.events: list[LookupEvent] = []

    @hookimpl
    def sds_lookup_completed(self, event: LookupEvent) -> None:
        self.events.append(event)


class RouteRecorder:
    """Collects the engine's ``sds_route_completed`` events."""

    def __init__(self) -> None:
        self.events: list[RouteEvent] = []

    @hookimpl
    def sds_route_completed(self, event: RouteEvent) -> None:
        self.events.append(event)


@dataclass(frozen=True)
class Demographics:
    """A patient as PDS holds them (``birthDate``, the usual name)."""

    nhs_number: str
    birth_date: str
    family_name: str
    given_name: str


def pds_demographics(sds_url: str, nhs_number: str) -> Demographics:
    """Read a patient from the SDS sandbox's PDS over HTTP, as a sender reads PDS before a
    demographic MESH route (the router's patient lookup keeps no demographics)."""
    response = httpx.get(
        f"{sds_url}/personal-demographics/FHIR/R4/Patient/{nhs_number}",
        headers={"X-Request-ID": str(uuid.uuid4()), "Accept": "application/fhir+json"},
        timeout=10,
    )
    response.raise_for_status()
    patient = response.json()
    [usual] = [name for name in patient["name"] if name.get("use") == "usual"]
    return Demographics(
        nhs_number=patient["id"],
        birth_date=patient["birthDate"],
        family_name=usual["family"],
        given_name=" ".join(usual.get("given", [])),
    )


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
    partner_id: str | None = None
