"""Fixtures for the sandbox's own tests: running sandboxes over real sockets, and helpers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sds_plugins.sandbox import Sandbox
from sds_plugins.testing import SandboxFactory

# Unchanged copies of NHS England's published SDS data, kept with the tests.
REFERENCE = Path(__file__).resolve().parents[1] / "reference" / "sds"
VECTORS = REFERENCE / "mapping-vectors"
OBSERVED = REFERENCE / "observed-responses"

ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
INTERACTION = "https://fhir.nhs.uk/Id/nhsServiceInteractionId"
PARTY_KEY = "https://fhir.nhs.uk/Id/nhsMhsPartyKey"

PSIS = "urn:nhs:names:services:psis:REPC_IN150016UK05"
GP2GP = "urn:nhs:names:services:gp2gp:COPC_IN000001UK01"
EBS_EXPRESS = "urn:nhs:names:services:ebs:PRSC_IN080000UK03"
ALERTS = "urn:nhs:names:services:alerts:COMT_IN000001UK01"
GPC_STRUCTURED = "urn:nhs:names:services:gpconnect:fhir:operation:gpc.getstructuredrecord-1"


# What httpx accepts as one query parameter; the helpers below build them.
Param = tuple[str, str | int | float | bool | None]


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def org(code: str) -> Param:
    return ("organization", f"{ODS}|{code}")


def interaction(value: str) -> Param:
    return ("identifier", f"{INTERACTION}|{value}")


def party_key(value: str) -> Param:
    return ("identifier", f"{PARTY_KEY}|{value}")


def manufacturer(code: str) -> Param:
    return ("manufacturing-organization", f"{ODS}|{code}")


def without_ids(value: Any) -> Any:
    """``value`` minus everything that differs per call: ids, fullUrls, link urls."""
    if isinstance(value, dict):
        return {
            key: without_ids(inner)
            for key, inner in value.items()
            if key not in {"id", "fullUrl", "link"}
        }
    if isinstance(value, list):
        return [without_ids(item) for item in value]
    return value


def issue(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert len(body["issue"]) == 1
    found: dict[str, Any] = body["issue"][0]
    return found


def spine_code(response: httpx.Response) -> str:
    code: str = issue(response)["details"]["coding"][0]["code"]
    return code


@pytest.fixture
def default_sandbox(sds_sandbox: Sandbox) -> Sandbox:
    """The reference data with default settings (the shared, per-test reset ``sds_sandbox``)."""
    return sds_sandbox


@pytest.fixture
def client(default_sandbox: Sandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=default_sandbox.base_url, timeout=10) as http:
        yield http


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    """One client per test: building a client per request costs a TLS context each time."""
    with httpx.Client(timeout=10) as shared:
        yield shared


@pytest.fixture
def start_sandbox(sds_sandbox_factory: SandboxFactory) -> SandboxFactory:
    """Start sandboxes with custom settings for one test; all are stopped afterwards."""
    return sds_sandbox_factory
