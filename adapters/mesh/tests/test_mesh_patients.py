"""A discharge summary "to the patient's GP" over MESH: PDS → practice → MESH mailbox, sent."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
from _mesh_support import Received
from sds_plugins import (
    InvalidNhsNumberError,
    PatientInvalidatedError,
    PatientNotFoundError,
    PatientRestrictedError,
    Router,
)
from sds_plugins.sandbox import SANDBOX_PATIENTS, Sandbox

from sds_plugins_mesh import parse_send_response

PATIENT = "/personal-demographics/FHIR/R4/Patient/{id}"


async def test_a_message_to_the_patients_gp_reaches_the_practice_mailbox(
    router: Router, sds_sandbox: Sandbox, receive: Callable[[str, str], Received]
) -> None:
    envelope = await router.route(
        "mesh", patient=SANDBOX_PATIENTS["mesh"], interaction="TEST_WORKFLOW"
    )
    assert envelope.target.ods_code == "X26"
    assert envelope.provenance.records[0].model_dump()["practice"] == "X26"
    assert SANDBOX_PATIENTS["mesh"] not in envelope.model_dump_json()
    async with httpx.AsyncClient() as http:
        sent = await http.send(envelope.build_request(b"discharge summary"))
    assert sent.status_code == 202, sent.text
    message_id = parse_send_response(sent)
    received = await asyncio.to_thread(receive, envelope.target.mailbox_id or "", message_id)
    assert received.body == b"discharge summary"
    assert sds_sandbox.stats()["requests"] == {PATIENT: 1}  # MESH's own lookup did the rest


async def test_many_messages_for_one_patient_ask_pds_once(
    router: Router, sds_sandbox: Sandbox
) -> None:
    envelopes = await asyncio.gather(
        *(
            router.route("mesh", patient=SANDBOX_PATIENTS["mesh"], interaction="TEST_WORKFLOW")
            for _ in range(200)
        )
    )
    assert {e.target.mailbox_id for e in envelopes} == {envelopes[0].target.mailbox_id}
    assert sds_sandbox.stats()["requests"] == {PATIENT: 1}


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("unknown", PatientNotFoundError),
        ("unregistered", PatientNotFoundError),
        ("ended", PatientNotFoundError),
        ("invalidated", PatientInvalidatedError),
        ("restricted", PatientRestrictedError),
    ],
)
async def test_patients_without_a_current_practice_send_nothing(
    case: str, error: type[Exception], router: Router, sds_sandbox: Sandbox
) -> None:
    with pytest.raises(error):
        await router.route("mesh", patient=SANDBOX_PATIENTS[case], interaction="TEST_WORKFLOW")
    assert set(sds_sandbox.stats()["requests"]) == {PATIENT}


async def test_a_superseded_number_is_routed_and_flagged(router: Router) -> None:
    # The superseded number's surviving record is registered at B82617, which has no MESH
    # mailbox for this workflow: the chain gets as far as MESH's own answer.
    with pytest.raises(Exception, match="B82617"):
        await router.route(
            "mesh", patient=SANDBOX_PATIENTS["superseded"], interaction="TEST_WORKFLOW"
        )


async def test_an_invalid_number_sends_nothing(router: Router, sds_sandbox: Sandbox) -> None:
    with pytest.raises(InvalidNhsNumberError):
        await router.route("mesh", patient="9990001015", interaction="TEST_WORKFLOW")
    assert sds_sandbox.stats()["requests"] == {}
