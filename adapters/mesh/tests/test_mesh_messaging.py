"""GP Connect Messaging over MESH: Send Document by automated (demographic) routing, Update
Record, acknowledgements back to the sender, and ``mex-from`` on every envelope; against
mesh-sandbox and the SDS sandbox's PDS over real sockets.

The requirements are ``nhsconnect/gpconnect-messaging`` (branch ``master``,
``_data/senddoc_requirements.yml``) GPCM-SD-056 to -064; the address format is
``pages/integration/integration_mesh.md`` ("MESH API"): ``GPPROVIDER_<NHS>_<DDMMYYYY>_<Surname>``.
mesh-sandbox has no automated routing (``handlers/outbox.py`` looks ``mex-to`` up as a mailbox
and answers 417 otherwise), so a demographic envelope is checked header by header, shown to
pass every check mesh-sandbox makes before the recipient lookup, and then delivered with
``mex-to`` replaced by the practice's mailbox: what MESH's automated routing would resolve.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path

import httpx
import pytest
from _mesh_support import SENDER, Demographics, LookupRecorder, Received, RouteRecorder
from _mesh_support import pds_demographics as read_pds
from pydantic import SecretStr
from sds_plugins import (
    InvalidInputError,
    NotFoundError,
    PatientRegistration,
    PatientRestrictedError,
    Router,
    RouteRequest,
    RoutingEnvelope,
)
from sds_plugins.sandbox import SANDBOX_PATIENTS, Sandbox
from sds_plugins.testing import RegisterPlugin, RouterFactory

from sds_plugins_mesh import (
    ACKNOWLEDGEMENT_WORKFLOWS,
    ITK3_MESSAGES,
    MeshAdapter,
    MeshCredentials,
    MeshOptions,
    MeshPlugin,
    MeshRejectedError,
    MeshSettings,
    acknowledgement_workflow,
    chunk_requests,
    consultation_report_subject,
    demographic_mex_to,
    parse_send_response,
    route_acknowledgement,
)
from sds_plugins_mesh.sandbox import MeshSandbox

SEND_DOCUMENT = "GPFED_CONSULT_REPORT"
UPDATE_RECORD = "GPCONNECT_UPDATE_RECORD"
#: The mailbox MESH's automated routing would give for the sandbox patient's practice (X26).
PRACTICE_MAILBOX = "X26ABC2"
SENDER_ODS = "X26"  # X26ABC1's organisation (sds_plugins_mesh/data/mailboxes.jsonl)


@pytest.fixture
def patient(sds_sandbox: Sandbox) -> Demographics:
    """The SDS sandbox's MESH patient (registered at X26), as its PDS holds them."""
    return read_pds(sds_sandbox.url, SANDBOX_PATIENTS["mesh"])


def _consultation(
    patient: Demographics, *, named: bool = True, **options: object
) -> dict[str, object]:
    """Send Document options for ``patient``: demographics as PDS holds them (``named``; a
    route to the patient takes them from PDS without), the subject."""
    demographics = {
        "nhs_number": patient.nhs_number,
        "birth_date": patient.birth_date,
        "family_name": patient.family_name,
    }
    return {
        "routing": "demographic",
        **(demographics if named else {}),
        "subject": consultation_report_subject(
            patient_name=f"{patient.given_name} {patient.family_name}",
            nhs_number=patient.nhs_number,
            practice_name="Urgent Treatment Centre",
            ods_code=SENDER_ODS,
        ),
        "local_id": SENDER_ODS,  # GPCM-SD-CS-080 (release/1.5.0 on): the sender's ODS code
        **options,
    }


def _offline() -> MeshSettings:
    """Settings for adapter-only checks (no server is contacted)."""
    return MeshSettings(url="http://127.0.0.1:9", mailbox=SENDER, password="p", shared_key="k")


def _ddmmyyyy(iso: str) -> str:
    return date.fromisoformat(iso).strftime("%d%m%Y")


async def _send(envelope: RoutingEnvelope, body: bytes) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.send(envelope.build_request(body))


async def test_send_document_headers_meet_gpcm_sd_056_to_064_and_mesh_sandbox_takes_them(
    router: Router,
    patient: Demographics,
    lookups: LookupRecorder,
    receive: Callable[[str, str], Received],
) -> None:
    # The demographics come from PDS (the route names the patient), not from the caller.
    envelope = await router.route(
        "mesh",
        patient=patient.nhs_number,
        interaction=SEND_DOCUMENT,
        **_consultation(patient, named=False),
    )
    headers = envelope.to_message()["request"]["headers"]
    # GPCM-SD-056 and -063: MESH automated routing, mex-to = NHS number, DOB, surname joined by
    # "_" after GPPROVIDER (integration_mesh.md), the surname as PDS holds it; no ODS lookup.
    expected = f"GPPROVIDER_{patient.nhs_number}_{_ddmmyyyy(patient.birth_date)}_"
    assert headers["mex-to"] == expected + patient.family_name
    assert re.fullmatch(r"GPPROVIDER_[0-9]{10}_[0-9]{8}_[^_]+", headers["mex-to"])
    assert len(headers["mex-to"]) <= 100
    assert [event.source for event in lookups.events] == ["pds"]  # PDS only: no mailbox lookup
    # GPCM-SD-057: the workflow id; -058: the acknowledgements' workflow, with the envelope.
    assert headers["mex-workflowid"] == "GPFED_CONSULT_REPORT"
    assert envelope.extensions["mesh"]["ack_workflow_id"] == "GPFED_CONSULT_REPORT_ACK"
    assert envelope.extensions["mesh"]["message_type"] == "consultation_report"
    assert envelope.extensions["mesh"]["routing"] == "demographic"
    # GPCM-SD-062: mex-from is the sender's mailbox (-059 to -061 are the same three values in
    # the MESH client's .CTL file: From_DTS, To_DTS, Subject).
    assert headers["mex-from"] == SENDER == envelope.source.mailbox_id
    # GPCM-SD-064: the subject's format, naming the same patient as mex-to.
    assert headers["mex-subject"] == (
        f"Consultation report for {patient.given_name} {patient.family_name}, NHS Number "
        f"{patient.nhs_number}, seen at Urgent Treatment Centre, ODS Code {SENDER_ODS}"
    )
    assert headers["mex-localid"] == SENDER_ODS
    # Where MESH routes is MESH's business: the envelope names no mailbox, only PDS's practice.
    assert envelope.target.mailbox_id is None
    assert envelope.target.ods_code == "X26"

    # mesh-sandbox checks every header (lengths, characters, no URLs, the token) before it
    # looks the recipient up: the envelope as it is gets as far as "unregistered recipient".
    refused = await _send(envelope, b"<Bundle/>")
    assert refused.status_code == 417, refused.text
    with pytest.raises(MeshRejectedError) as caught:
        parse_send_response(refused)
    assert caught.value.status_code == 417

    # With the mailbox automated routing would resolve, mesh-sandbox delivers it.
    again = await router.route(
        "mesh",
        patient=patient.nhs_number,
        interaction=SEND_DOCUMENT,
        **_consultation(patient, named=False),
    )
    assert [event.source for event in lookups.events] == ["pds", "pds"]  # never cached
    sent = await _send(again.with_headers(**{"mex-to": PRACTICE_MAILBOX}), b"<Bundle/>")
    assert sent.status_code == 202, sent.text
    received = await asyncio.to_thread(receive, PRACTICE_MAILBOX, parse_send_response(sent))
    assert received.sender == SENDER
    assert received.workflow_id == "GPFED_CONSULT_REPORT"
    assert received.subject == again.to_message()["request"]["headers"]["mex-subject"]
    assert received.local_id == SENDER_ODS
    assert received.body == b"<Bundle/>"


async def test_the_same_route_through_the_options_alone(
    router: Router, patient: Demographics
) -> None:
    # Without patient=, the demographics come from the caller alone; org is what the envelope
    # records as the practice (MESH does not use it).
    envelope = await router.route(
        "mesh", org="X26", interaction=SEND_DOCUMENT, **_consultation(patient)
    )
    assert envelope.to_message()["request"]["headers"]["mex-to"] == demographic_mex_to(
        patient.nhs_number, patient.birth_date, patient.family_name
    )
    assert envelope.provenance.records == ()
    assert envelope.provenance.lookups == ()


async def test_send_document_refuses_ods_routing(
    router: Router, patient: Demographics, mesh: MeshSandbox, lookups: LookupRecorder
) -> None:
    options = {k: v for k, v in _consultation(patient).items() if k != "routing"}
    with pytest.raises(InvalidInputError, match="GPCM-SD-056") as caught:
        await router.route("mesh", org="X26", interaction=SEND_DOCUMENT, routing="ods")
    assert caught.value.field == "routing"
    assert "routing=demographic" in str(caught.value)
    # Without a routing option, a Send Document is routed by demographics: the route names the
    # patient (patient=), or the options do, all three.
    with pytest.raises(InvalidInputError, match="patient=<NHS number>"):
        await router.route("mesh", org="X26", interaction=SEND_DOCUMENT, **no_names(options))
    with pytest.raises(InvalidInputError, match="birth_date, family_name too") as partial:
        await router.route(
            "mesh",
            org="X26",
            interaction=SEND_DOCUMENT,
            **{**no_names(options), "nhs_number": patient.nhs_number},
        )
    assert partial.value.field == "birth_date"
    # ... and the subject GPCM-SD-064 asks for.
    no_subject = {k: v for k, v in options.items() if k != "subject"}
    with pytest.raises(InvalidInputError, match="GPCM-SD-064") as missing:
        await router.route("mesh", org="X26", interaction=SEND_DOCUMENT, **no_subject)
    assert missing.value.field == "subject"
    with pytest.raises(InvalidInputError, match=r"not in the .* format"):
        await router.route(
            "mesh", org="X26", interaction=SEND_DOCUMENT, **{**options, "subject": "Report"}
        )
    other = consultation_report_subject(
        patient_name="Sam Other", nhs_number="9990001006", practice_name="UTC", ods_code="X26"
    )
    with pytest.raises(InvalidInputError, match="another NHS number"):
        await router.route(
            "mesh", org="X26", interaction=SEND_DOCUMENT, **{**options, "subject": other}
        )
    assert lookups.events == []  # every refusal before any lookup
    # The default (no routing option) is demographic: it routes with everything given.
    envelope = await router.route("mesh", org="X26", interaction=SEND_DOCUMENT, **options)
    assert envelope.to_message()["request"]["headers"]["mex-to"].startswith("GPPROVIDER_")


def no_names(options: dict[str, object]) -> dict[str, object]:
    return {
        k: v for k, v in options.items() if k not in ("nhs_number", "birth_date", "family_name")
    }


async def test_a_route_to_the_patient_takes_the_demographics_from_pds_and_keeps_none(
    router: Router, patient: Demographics, lookups: LookupRecorder
) -> None:
    envelope = await router.route(
        "mesh",
        patient=patient.nhs_number,
        interaction=SEND_DOCUMENT,
        **_consultation(patient, named=False),
    )
    sent = envelope.to_message()["request"]["headers"]
    assert sent["mex-to"] == demographic_mex_to(
        patient.nhs_number, patient.birth_date, patient.family_name
    )
    # The PDS answer went to this route alone: not cached (a second route asks again), and
    # neither the provenance nor the printed envelope carries the demographics.
    assert [(event.source, event.cache) for event in lookups.events] == [("pds", "bypass")]
    printed = f"{envelope} {envelope!r} {envelope.model_dump_json()}"
    for value in (patient.nhs_number, patient.family_name, _ddmmyyyy(patient.birth_date)):
        assert value not in printed
    # A subject naming another patient than PDS's is refused.
    other = consultation_report_subject(
        patient_name="Sam Other", nhs_number="9990001006", practice_name="UTC", ods_code="X26"
    )
    with pytest.raises(InvalidInputError, match="another NHS number"):
        await router.route(
            "mesh",
            patient=patient.nhs_number,
            interaction=SEND_DOCUMENT,
            **_consultation(patient, named=False, subject=other),
        )
    # Routes that need no demographics still share the PDS answer through the cache.
    lookups.events.clear()
    for _ in range(2):
        await router.route("mesh", patient=patient.nhs_number, interaction="TEST_WORKFLOW")
    assert [event.cache for event in lookups.events if event.source == "pds"] == ["miss", "hit"]


async def test_a_restricted_patient_is_refused(
    router: Router, patient: Demographics, sds_sandbox: Sandbox
) -> None:
    with pytest.raises(PatientRestrictedError):
        await router.route(
            "mesh",
            patient=SANDBOX_PATIENTS["restricted"],
            interaction=SEND_DOCUMENT,
            **_consultation(patient),
        )


async def test_the_adapter_refuses_a_restricted_record_and_a_patient_named_twice() -> None:
    # The core refuses a restricted patient before any adapter sees it; the adapter refuses
    # again. On a route to the patient, options naming a patient could name another one than
    # the route's: refused, whatever they say.
    adapter = MeshAdapter(_offline())
    options = adapter.parse_options(
        _consultation(
            Demographics("9990001014", "1951-02-11", "BIRCH", "SAM"),
        )
    )
    request = RouteRequest(
        adapter="mesh",
        org="X26",
        interaction=SEND_DOCUMENT,
        options=options,
        correlation_id="c1",
    )
    restricted = PatientRegistration(patient="pt-1", record="pt-1", restricted=True)
    with pytest.raises(PatientRestrictedError):
        adapter.check_patient(request, restricted)
    with pytest.raises(InvalidInputError, match="leave out nhs_number") as caught:
        adapter.check_patient(request, PatientRegistration(patient="pt-1", record="pt-1"))
    assert caught.value.field == "nhs_number"


async def test_a_route_to_one_patient_never_addresses_another(
    router: Router, patient: Demographics, lookups: LookupRecorder
) -> None:
    other = Demographics("9990001006", "1950-01-10", "ALDER", "SAM")
    with pytest.raises(InvalidInputError, match="leave out nhs_number"):
        await router.route(
            "mesh",
            patient=patient.nhs_number,
            interaction=SEND_DOCUMENT,
            **_consultation(other),
        )
    assert [event.source for event in lookups.events] == ["pds"]  # refused before sending


async def test_a_superseded_patient_is_addressed_by_the_current_record(
    router: Router, patient: Demographics
) -> None:
    # 9990001030 was superseded by 9990001006 (the sandbox's "superseded" patient): mex-to
    # names PDS's current record; a subject with the old number is refused, saying why; a
    # local id holding any NHS number is refused.
    old, current = SANDBOX_PATIENTS["superseded"], SANDBOX_PATIENTS["gpconnect"]
    subject = consultation_report_subject(
        patient_name="Sam Alder", nhs_number=old, practice_name="UTC", ods_code="X26"
    )
    with pytest.raises(InvalidInputError, match="superseded") as caught:
        await router.route(
            "mesh", patient=old, interaction=SEND_DOCUMENT, routing="demographic", subject=subject
        )
    assert caught.value.field == "subject"
    right = consultation_report_subject(
        patient_name="Sam Alder", nhs_number=current, practice_name="UTC", ods_code="X26"
    )
    envelope = await router.route(
        "mesh", patient=old, interaction=SEND_DOCUMENT, routing="demographic", subject=right
    )
    assert envelope.to_message()["request"]["headers"]["mex-to"].startswith(
        f"GPPROVIDER_{current}_"
    )
    with pytest.raises(InvalidInputError, match="local_id") as local:
        await router.route(
            "mesh",
            patient=old,
            interaction=SEND_DOCUMENT,
            routing="demographic",
            subject=right,
            local_id=f"ref-{old}",
        )
    assert old not in str(local.value)


async def test_every_mesh_envelope_has_mex_from(
    router: Router,
    patient: Demographics,
    credentials: MeshCredentials,
    receive: Callable[[str, str], Received],
) -> None:
    by_ods = await router.route("mesh", org="X26", interaction="TEST_WORKFLOW", partner_id="P-7")
    demographic = await router.route(
        "mesh", org="X26", interaction=SEND_DOCUMENT, **_consultation(patient)
    )
    to_mailbox = await router.route(
        "mesh", org="X27", interaction="TEST_WORKFLOW_ACK", routing="mailbox", mailbox_id="x26abc3"
    )
    update = await router.route(
        "mesh", org="X26", interaction=UPDATE_RECORD, routing="mailbox", mailbox_id="X26ABC2"
    )
    for envelope in (by_ods, demographic, to_mailbox, update):
        assert envelope.request.headers["mex-from"] == SENDER
    assert by_ods.extensions["mesh"]["personal_headers"] == []
    assert demographic.extensions["mesh"]["personal_headers"] == ["mex-to", "mex-subject"]
    assert to_mailbox.request.headers["mex-to"] == "X26ABC3"
    assert to_mailbox.target.mailbox_id == "X26ABC3"
    assert to_mailbox.provenance.lookups == ()  # a mailbox the caller named: no lookup
    # A chunked message's first request carries it too.
    chunked = chunk_requests(by_ods, b"x" * 10, credentials=credentials, chunk_size=4)
    assert chunked.first_request().headers["mex-from"] == SENDER
    # mesh-sandbox takes it (and the partner id, which NHS's mesh-client also sends).
    sent = await _send(to_mailbox, b"hello")
    assert sent.status_code == 202, sent.text
    received = await asyncio.to_thread(receive, "X26ABC3", parse_send_response(sent))
    assert received.sender == SENDER
    sent = await _send(by_ods, b"hello")
    received = await asyncio.to_thread(receive, "X26ABC2", parse_send_response(sent))
    assert received.partner_id == "P-7"


async def test_an_acknowledgement_goes_back_to_the_sender_in_one_call(
    router: Router, patient: Demographics, receive: Callable[[str, str], Received]
) -> None:
    report = await router.route(
        "mesh", org="X26", interaction=SEND_DOCUMENT, **_consultation(patient)
    )
    sent = await _send(report.with_headers(**{"mex-to": PRACTICE_MAILBOX}), b"report")
    received = await asyncio.to_thread(receive, PRACTICE_MAILBOX, parse_send_response(sent))

    # The practice acknowledges: one call, from what the received message says.
    ack = await route_acknowledgement(
        router,
        workflow_id=received.workflow_id,
        to_mailbox=received.sender,
        org=received.local_id or "",
        mailbox=PRACTICE_MAILBOX,  # the practice's own sender credentials
        password=SecretStr("password"),
    )
    headers = ack.request.headers
    assert headers["mex-workflowid"] == "GPFED_CONSULT_REPORT_ACK"  # GPCM-SD-058
    assert headers["mex-to"] == SENDER
    assert headers["mex-from"] == PRACTICE_MAILBOX
    assert ack.target.ods_code == SENDER_ODS
    assert ack.extensions["mesh"]["routing"] == "mailbox"
    sent = await _send(ack, b"<ITK ack/>")
    assert sent.status_code == 202, sent.text
    back = await asyncio.to_thread(receive, SENDER, parse_send_response(sent))
    assert (back.sender, back.workflow_id) == (PRACTICE_MAILBOX, "GPFED_CONSULT_REPORT_ACK")


async def test_acknowledgements_go_to_a_mailbox_not_to_the_patient(
    router: Router, patient: Demographics
) -> None:
    with pytest.raises(InvalidInputError, match="mailbox_id") as caught:
        await router.route("mesh", org="X26", interaction="GPFED_CONSULT_REPORT_ACK")
    assert caught.value.field == "mailbox_id"
    with pytest.raises(InvalidInputError, match="acknowledgement") as refused:
        await router.route(
            "mesh",
            org="X26",
            interaction="GPCONNECT_UPDATE_RECORD_ACK",
            routing="demographic",
            nhs_number=patient.nhs_number,
            birth_date=patient.birth_date,
            family_name=patient.family_name,
        )
    assert refused.value.field == "routing"
    with pytest.raises(InvalidInputError, match="no known acknowledgement workflow"):
        acknowledgement_workflow("TEST_WORKFLOW")


async def test_update_record_is_known_with_its_acknowledgement(
    router: Router, patient: Demographics
) -> None:
    assert ACKNOWLEDGEMENT_WORKFLOWS == {
        "GPFED_CONSULT_REPORT": "GPFED_CONSULT_REPORT_ACK",
        "GPCONNECT_UPDATE_RECORD": "GPCONNECT_UPDATE_RECORD_ACK",
    }
    update = ITK3_MESSAGES["update_record"]
    assert (update.workflow_id, update.ack_workflow_id) == (
        "GPCONNECT_UPDATE_RECORD",
        "GPCONNECT_UPDATE_RECORD_ACK",
    )
    assert "simplifier.net/guide/gp-connect--update-record--itk3" in update.source
    for message in ITK3_MESSAGES.values():  # every entry says where it comes from
        assert "nhsconnect/gpconnect-messaging" in message.source
    # Its default is automated routing to the registered GP; a named mailbox is allowed.
    envelope = await router.route(
        "mesh",
        org="X26",
        interaction=UPDATE_RECORD,
        nhs_number=patient.nhs_number,
        birth_date=patient.birth_date,
        family_name=patient.family_name,
        local_id="FA123",  # Simplifier: mex-localid is the sending pharmacy's ODS code
    )
    assert envelope.request.headers["mex-to"].startswith("GPPROVIDER_")
    assert envelope.extensions["mesh"]["ack_workflow_id"] == "GPCONNECT_UPDATE_RECORD_ACK"
    assert envelope.extensions["mesh"]["message_type"] == "update_record"


async def test_online_consultation_shares_the_workflow_and_goes_to_a_mailbox(
    router: Router, patient: Demographics
) -> None:
    # GPCM-SD-OC-163 (release/1.6.0): Mex-To is the receiver's mailbox, so the ODS lookup
    # runs (mesh-sandbox's reference data has no GPFED_CONSULT_REPORT receiver for X26).
    with pytest.raises(NotFoundError, match="no MESH mailbox receives X26"):
        await router.route(
            "mesh",
            org="X26",
            interaction=SEND_DOCUMENT,
            message_type="online_consultation_report",
        )
    with pytest.raises(InvalidInputError, match="routed by ods or mailbox") as caught:
        await router.route(
            "mesh",
            org="X26",
            interaction=SEND_DOCUMENT,
            message_type="Online_Consultation_Report",
            routing="demographic",
            nhs_number=patient.nhs_number,
            birth_date=patient.birth_date,
            family_name=patient.family_name,
        )
    assert caught.value.field == "routing"
    with pytest.raises(InvalidInputError, match="is sent with workflow GPCONNECT_UPDATE_RECORD"):
        await router.route(
            "mesh", org="X26", interaction=SEND_DOCUMENT, message_type="update_record"
        )


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("nhs_number", "9990001015", "check digit"),
        ("birth_date", "1951", "partial date"),
        ("birth_date", "1951-02", "partial date"),
        ("birth_date", "11/02/1951", "YYYY-MM-DD"),
        ("birth_date", "1951-02-30", "calendar date"),
        ("birth_date", "2999-01-01", "future"),
        ("family_name", "O_BIRCH", "delimiter"),
        ("family_name", "Müller", "ASCII"),
        ("family_name", "BIRCH\r\nmex-to: X", "ASCII"),
        ("family_name", "B" * 70, "room for 69"),
        ("family_name", "  ", "empty"),
    ],
)
def test_demographics_are_checked_without_repeating_them(
    field: str, value: str, match: str
) -> None:
    options = {
        "routing": "demographic",
        "nhs_number": "9990001014",
        "birth_date": "1951-02-11",
        "family_name": "BIRCH",
        field: value,
    }
    with pytest.raises(InvalidInputError, match=match) as caught:
        MeshAdapter().parse_options(options)
    assert caught.value.field == field
    assert value.strip() not in str(caught.value) or not value.strip()


def test_the_address_keeps_the_surname_as_pds_holds_it() -> None:
    assert demographic_mex_to("999 000 1014", date(1955, 1, 9), " Smith-Jones ") == (
        "GPPROVIDER_9990001014_09011955_Smith-Jones"
    )
    assert demographic_mex_to("9990001014", "1955-01-09", "O'Brien") == (
        "GPPROVIDER_9990001014_09011955_O'Brien"
    )
    assert len(demographic_mex_to("9990001014", "1955-01-09", "B" * 69)) == 100


def test_both_subject_formats_of_the_specification_are_accepted() -> None:
    # GPCM-SD-064 (master) has a space before the first comma; GPCM-SD-CS-068 (1.5.0 on) not.
    adapter = MeshAdapter(_offline())
    for subject in (
        "Consultation report for Sam Birch , NHS Number 9990001014, seen at UTC, ODS Code X26",
        "Consultation report for Sam Birch, NHS Number 9990001014, seen at UTC, ODS Code X26",
    ):
        options = adapter.parse_options(
            {
                "nhs_number": "9990001014",
                "birth_date": "1951-02-11",
                "family_name": "BIRCH",
                "subject": subject,
            }
        )
        request = RouteRequest(
            adapter="mesh",
            org="X26",
            interaction=SEND_DOCUMENT,
            options=options,
            correlation_id="c",
        )
        assert adapter.plan(request) == {}


async def test_personal_data_stays_out_of_logs_events_errors_and_reprs(
    tmp_path: Path,
    sds_register_plugin: RegisterPlugin,
    sds_router_factory: RouterFactory,
    mesh: MeshSandbox,
    patient: Demographics,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sds_register_plugin(MeshPlugin(mesh.settings(mailbox=SENDER)), name="mesh")
    routes = RouteRecorder()
    sds_register_plugin(routes, name="test.routes")
    audit = tmp_path / "audit.jsonl"
    router = await sds_router_factory(audit_log=audit)
    caplog.set_level(logging.DEBUG)
    options = _consultation(patient)
    envelope = await router.route(
        "mesh",
        patient=patient.nhs_number,
        interaction=SEND_DOCUMENT,
        **_consultation(patient, named=False),
    )
    errors: list[Exception] = []
    for bad in (
        {**options, "subject": "Consultation report"},
        {**options, "family_name": patient.family_name + "_X"},
        {**options, "local_id": f"ref-{patient.nhs_number}"},
        {**options, "routing": "ods"},
    ):
        try:
            await router.route("mesh", org="X26", interaction=SEND_DOCUMENT, **bad)
        except InvalidInputError as exc:
            errors.append(exc)
    assert len(errors) == 4
    parsed = MeshAdapter().parse_options(options)
    personal = (
        patient.nhs_number,
        patient.birth_date,
        _ddmmyyyy(patient.birth_date),
        patient.family_name,
    )
    places = {
        "logs": caplog.text,
        "audit log": audit.read_text(),
        "route events": repr(routes.events),
        "errors": " ".join(f"{exc!s} {exc!r}" for exc in errors),
        "options repr": repr(parsed),
        "options JSON": parsed.model_dump_json(),
        # Everything in the envelope but the headers the sender needs.
        "envelope": f"{envelope} {envelope!r} {envelope.model_dump_json()}",
        "target": repr(envelope.target),
        "provenance": repr(envelope.provenance),
    }
    for where, text in places.items():
        for value in personal:
            assert value not in text, f"{where} holds personal data"
    assert routes.events and audit.read_text()
    # Only the headers GPCM-SD-063/-064 ask for carry them, for the sender.
    headers = envelope.to_message()["request"]["headers"]
    assert patient.family_name in headers["mex-to"]
    assert envelope.extensions["mesh"]["personal_headers"] == ["mex-to", "mex-subject"]


async def test_a_printed_demographic_envelope_hides_the_patient(
    router: Router, patient: Demographics
) -> None:
    envelope = await router.route(
        "mesh", org="X26", interaction=SEND_DOCUMENT, **_consultation(patient)
    )
    for text in (str(envelope), repr(envelope), envelope.model_dump_json()):
        assert patient.family_name not in text
        assert patient.nhs_number not in text
    # The sender's own copy keeps them.
    assert patient.family_name in envelope.to_message()["request"]["headers"]["mex-to"]


def test_options_mask_the_patient_in_their_repr() -> None:
    parsed = MeshOptions(
        routing="demographic",
        nhs_number="9990001014",  # type: ignore[arg-type]
        birth_date="1951-02-11",  # type: ignore[arg-type]
        family_name="BIRCH",  # type: ignore[arg-type]
    )
    assert "BIRCH" not in repr(parsed)
    assert "9990001014" not in repr(parsed)
    assert parsed.family_name is not None
    assert parsed.family_name.get_secret_value() == "BIRCH"


def test_route_mesh_patient_demographic_from_the_command_line(
    mesh: MeshSandbox, sds_sandbox: Sandbox, patient: Demographics
) -> None:
    # `sds-plugins route mesh --patient N --interaction GPFED_CONSULT_REPORT -o routing=...`,
    # as an operator runs it (credentials from MESH_*, PDS from the SDS sandbox).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SDS_", "MESH_"))}
    env.update(
        MESH_URL=mesh.url,
        MESH_MAILBOX=SENDER,
        MESH_PASSWORD="password",
        MESH_SHARED_KEY=mesh.shared_key,
    )
    pairs = [f"{k}={v}" for k, v in _consultation(patient, named=False).items()]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sds_plugins",
            "route",
            "mesh",
            "--patient",
            patient.nhs_number,
            "--interaction",
            SEND_DOCUMENT,
            "--base-url",
            sds_sandbox.base_url,
            "--with-secrets",
            *(arg for pair in pairs for arg in ("-o", pair)),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    envelope = json.loads(result.stdout)
    headers = envelope["request"]["headers"]
    assert headers["mex-to"] == demographic_mex_to(
        patient.nhs_number, patient.birth_date, patient.family_name
    )
    assert headers["mex-from"] == SENDER
    assert headers["Authorization"].startswith("NHSMESH ")  # --with-secrets: the sender's
    assert envelope["extensions"]["mesh"]["ack_workflow_id"] == "GPFED_CONSULT_REPORT_ACK"
    assert patient.family_name not in result.stderr
    # ODS routing of a Send Document: refused, exit code 2 (invalid input), nothing sent.
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "sds_plugins",
            "route",
            "mesh",
            "--org",
            "X26",
            "--interaction",
            SEND_DOCUMENT,
            "-o",
            "routing=ods",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2
    assert "GPCM-SD-056" in refused.stderr
