"""Helpers of the GP2GP tests (a module of its own: conftest.py is not importable by name)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sds_plugins import Router
from sds_plugins.testing import accredited_system_record, mhs_record

from sds_plugins_gp2gp import (
    GP2GP_INTERACTIONS,
    GP2GP_SERVICE,
    NEW_PRACTICE,
    PREVIOUS_PRACTICE,
    Practice,
)

#: The ``gp2gp_router`` fixture: ``await make(settings=None, sandbox=None, **router_settings)``.
Gp2gpRouterFactory = Callable[..., Awaitable[Router]]
#: SDS's reliability settings of the practices' records (those of the reference GP2GP records).
RELIABILITY: dict[str, Any] = {
    "retries": 2,
    "retry_interval": "PT2H",
    "persist_duration": "PT7H",
    "duplicate_elimination": "always",
    "ack_requested": "always",
    "sync_reply_mode": "None",
}


def practice_records(practice: Practice) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One practice's GP2GP records, built with the project's record builders: an MHS record per
    interaction (each its own CPA id) and one accredited system, on the same party key."""
    assert practice.party_key is not None and practice.asid is not None
    fqdn = f"mhs.{practice.ods.lower()}.example.nhs.uk"
    mhs = [
        mhs_record(
            practice.ods,
            interaction,
            party_key=practice.party_key,
            address=f"https://{fqdn}/reliablemessaging",
            fqdn=fqdn,
            cpa_id=f"S{practice.asid}{index:02d}",
            **RELIABILITY,
            nhsMHsSN=GP2GP_SERVICE,
            nhsMHsIN=interaction.rpartition(":")[2],
        )
        for index, interaction in enumerate(GP2GP_INTERACTIONS, start=1)
    ]
    systems = [
        accredited_system_record(
            practice.ods,
            list(GP2GP_INTERACTIONS),
            party_key=practice.party_key,
            asid=practice.asid,
            manufacturer="YGM24",
        )
    ]
    return mhs, systems


def built_records() -> dict[str, list[dict[str, Any]]]:
    """Both practices' records, as the sandbox's data files hold them."""
    mhs: list[dict[str, Any]] = []
    systems: list[dict[str, Any]] = []
    for practice in (NEW_PRACTICE, PREVIOUS_PRACTICE):
        more_mhs, more_systems = practice_records(practice)
        mhs += more_mhs
        systems += more_systems
    return {"mhs-records.json": mhs, "accredited-system-records.json": systems}
