"""Paths to the reference data and interaction ids the tests share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Unchanged copies of NHS England's published data (see reference/README.md).
REFERENCE = Path(__file__).resolve().parent / "reference"
SDS_REFERENCE = REFERENCE / "sds"

GPC_STRUCTURED = "urn:nhs:names:services:gpconnect:fhir:operation:gpc.getstructuredrecord-1"
PSIS = "urn:nhs:names:services:psis:REPC_IN150016UK05"
GP2GP = "urn:nhs:names:services:gp2gp:COPC_IN000001UK01"


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())
