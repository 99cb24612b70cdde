"""Routing to a patient: NHS number → PDS → the registered practice → envelope, over real sockets.

The sandbox serves PDS from its own patients (``SANDBOX_PATIENTS``), one per case; the GP
Connect adapter routes to B82617 through the reference data. Every NHS number used here is
looked for in everything the router writes: logs (every logger, DEBUG), the audit log, events,
errors and envelopes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from sds_plugins_gpconnect import EXAMPLE_CONSUMER, GpConnectPlugin

from sds_plugins import (
    AuthenticationError,
    ConfigurationError,
    DirectoryUnavailableError,
    InvalidNhsNumberError,
    PatientInvalidatedError,
    PatientNotFoundError,
    PatientRestrictedError,
    RateLimitedError,
    Router,
    SdsPluginsError,
    Settings,
    check_nhs_number,
)
from sds_plugins._patients import PatientQuery, PatientRefs, PdsSource
from sds_plugins.sandbox import SANDBOX_PATIENTS, Sandbox
from sds_plugins.testing import ManualClock, RegisterPlugin, RouterFactory

from ._adapters import Recorder

GPC = "urn:nhs:names:services:gpconnect:fhir:operation:gpc.getstructuredrecord-1"
PSIS = "urn:nhs:names:services:psis:REPC_IN150016UK05"
PATIENT = "/personal-demographics/FHIR/R4/Patient/{id}"
CONSUMER: dict[str, Any] = dict(EXAMPLE_CONSUMER)


@pytest.fixture
def events(sds_register_plugin: RegisterPlugin) -> Recorder:
    recorder = Recorder()
    sds_register_plugin(recorder)
    sds_register_plugin(GpConnectPlugin(), name="gpconnect")
    return recorder


@pytest.fixture
def everything_logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


async def _gpc(router: Router, patient: str, encounter: str = "e1", **kwargs: Any) -> Any:
    return await router.route(
        "gpconnect", patient=patient, interaction=GPC, encounter=encounter, **CONSUMER, **kwargs
    )


# -- NHS numbers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("number", ["9990001006", " 999 000 1006 ", "9434765919"])
def test_valid_numbers(number: str) -> None:
    assert check_nhs_number(number) == number.replace(" ", "")


@pytest.mark.parametrize(
    "number",
    ["9990001007", "999000100", "99900010066", "999000100x", "\uff19990001006", "", 9990001006,
     "9990001006\n", "0000000000" + "0" * 40],
)  # fmt: skip
def test_invalid_numbers_are_refused_without_repeating_them(number: object) -> None:
    with pytest.raises(InvalidNhsNumberError) as refused:
        check_nhs_number(number)
    assert refused.value.exit_code == 2
    assert "999000100" not in str(refused.value)


async def test_an_invalid_number_sends_nothing(
    sds_sandbox: Sandbox, events: Recorder, sds_router_factory: RouterFactory
) -> None:
    router = await sds_router_factory()
    with pytest.raises(InvalidNhsNumberError):
        await _gpc(router, "9990001007")
    with pytest.raises(InvalidNhsNumberError):
        await router.patient("12345")
    assert sds_sandbox.stats()["requests"] == {}
    assert events.routes[-1].outcome == "invalid"


# -- outcomes ------------------------------------------------------------------------------------


async def test_a_registered_patient_routes_to_the_practice_with_provenance(
    sds_sandbox: Sandbox, events: Recorder, sds_router_factory: RouterFactory
) -> None:
    router = await sds_router_factory()
    envelope = await _gpc(router, SANDBOX_PATIENTS["gpconnect"])
    assert envelope.target.ods_code == "B82617"
    ref = router.patient_refs.ref(SANDBOX_PATIENTS["gpconnect"])
    first = envelope.provenance.records[0]
    assert first.kind == "pds_patient"
    assert first.model_dump() == {
        "kind": "pds_patient",
        "patient": ref,
        "record": ref,
        "superseded": False,
        "practice": "B82617",
        "registration_start": "2019-04-01",
        "registration_end": None,
        "restricted": False,
        "deceased": False,
        "death_notification": None,
        "removal_reason": None,
        "removal_start": None,
    }
    assert envelope.provenance.lookups[0] == f"pds:Patient/{ref}"
    # PDS, then SDS's three lookups issued together: two round trips.
    assert sds_sandbox.stats()["requests"] == {
        PATIENT: 1,
        "/spine-directory/FHIR/R4/Endpoint": 1,
        "/spine-directory/FHIR/R4/Device": 1,
    }
    assert events.routes[-1].details == {"patient": ref, "superseded": False}


async def test_a_superseded_number_routes_to_the_surviving_record_and_says_so(
    events: Recorder, sds_router_factory: RouterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sds_plugins")
    router = await sds_router_factory()
    envelope = await _gpc(router, SANDBOX_PATIENTS["superseded"])
    assert envelope.target.ods_code == "B82617"
    first = envelope.provenance.records[0].model_dump()
    assert first["superseded"] is True
    assert first["patient"] == router.patient_refs.ref(SANDBOX_PATIENTS["superseded"])
    assert first["record"] == router.patient_refs.ref(SANDBOX_PATIENTS["gpconnect"])
    assert "superseded" in caplog.text
    assert events.routes[-1].details["superseded"] is True


@pytest.mark.parametrize(
    ("case", "error", "reason"),
    [
        ("unknown", PatientNotFoundError, "unknown"),
        ("unregistered", PatientNotFoundError, "no_registration"),
        ("ended", PatientNotFoundError, "registration_ended"),
        ("invalidated", PatientInvalidatedError, None),
        ("restricted", PatientRestrictedError, None),
    ],
)
async def test_patients_without_a_current_practice_are_typed_errors(
    case: str,
    error: type[Exception],
    reason: str | None,
    sds_sandbox: Sandbox,
    events: Recorder,
    sds_router_factory: RouterFactory,
) -> None:
    router = await sds_router_factory()
    with pytest.raises(error) as refused:
        await _gpc(router, SANDBOX_PATIENTS[case])
    assert getattr(refused.value, "reason", None) == reason
    assert refused.value.exit_code == 3  # type: ignore[attr-defined]
    assert not refused.value.retryable  # type: ignore[attr-defined]
    assert router.patient_refs.ref(SANDBOX_PATIENTS[case]) in str(refused.value)
    # Nothing was asked of SDS for a patient without a practice.
    assert set(sds_sandbox.stats()["requests"]) == {PATIENT}
    assert events.routes[-1].outcome == "not_found"


async def test_org_or_patient_one_of_them(
    events: Recorder, sds_router_factory: RouterFactory
) -> None:
    router = await sds_router_factory()
    with pytest.raises(Exception, match="not both"):
        await router.route("gpconnect", org="B82617", patient="9990001006", interaction=GPC)
    with pytest.raises(Exception, match="is required"):
        await router.route("gpconnect", interaction=GPC)


# -- caching, coalescing, pacing ---------------------------------------------------------------


async def test_a_thousand_concurrent_routes_for_one_patient_ask_pds_once(
    sds_sandbox: Sandbox, events: Recorder, sds_router_factory: RouterFactory
) -> None:
    router = await sds_router_factory()
    envelopes = await asyncio.gather(
        *(_gpc(router, SANDBOX_PATIENTS["gpconnect"]) for _ in range(1000))
    )
    assert {e.target.ods_code for e in envelopes} == {"B82617"}
    assert sds_sandbox.stats()["requests"] == {
        PATIENT: 1,
        "/spine-directory/FHIR/R4/Endpoint": 1,
        "/spine-directory/FHIR/R4/Device": 1,
    }


async def test_gp_connect_reuses_a_pds_answer_only_within_the_encounter(
    sds_sandbox: Sandbox, events: Recorder, sds_router_factory: RouterFactory
) -> None:
    router = await sds_router_factory()
    number = SANDBOX_PATIENTS["gpconnect"]
    await _gpc(router, number, encounter="e1")
    await _gpc(router, number, encounter="e1")
    assert sds_sandbox.stats()["requests"][PATIENT] == 1
    await _gpc(router, number, encounter="e2")  # another encounter: PDS asked again
    assert sds_sandbox.stats()["requests"][PATIENT] == 2
    pds = [event for event in events.lookups if event.source == "pds"]
    assert [event.cache for event in pds] == ["miss", "hit", "miss"]


async def test_pds_answers_live_briefly_and_failures_are_not_kept(
    sds_sandbox: Sandbox,
    sds_clock: ManualClock,
    sds_register_plugin: RegisterPlugin,
    sds_router_factory: RouterFactory,
) -> None:
    import sds_plugins_example_ebxml

    sds_register_plugin(sds_plugins_example_ebxml)
    router = await sds_router_factory(clock=sds_clock, pds_cache_ttl_s=60)
    for _ in range(2):
        await router.route("example-ebxml", patient=SANDBOX_PATIENTS["spine"], interaction=PSIS)
    assert sds_sandbox.stats()["requests"][PATIENT] == 1
    sds_clock.advance(61)  # past PDS's own lifetime, well within SDS's
    await router.route("example-ebxml", patient=SANDBOX_PATIENTS["spine"], interaction=PSIS)
    assert sds_sandbox.stats()["requests"][PATIENT] == 2
    # Restricted and invalidated answers are errors: never stored, asked again each time.
    for case in ("restricted", "invalidated", "restricted", "invalidated"):
        with pytest.raises((PatientRestrictedError, PatientInvalidatedError)):
            await router.patient(SANDBOX_PATIENTS[case])
    assert sds_sandbox.stats()["requests"][PATIENT] == 6
    # During a PDS outage, an expired answer is not served stale: the error is the answer.
    sds_clock.advance(61)
    sds_sandbox.set_faults(outage=True)
    with pytest.raises(DirectoryUnavailableError) as outage:
        await router.patient(SANDBOX_PATIENTS["spine"])
    assert outage.value.retryable  # type: ignore[attr-defined]


async def test_the_same_x_request_id_on_every_retry(sds_sandbox: Sandbox) -> None:
    seen: list[str] = []
    statuses = iter([503, 503, 200])

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["X-Request-ID"])
        status = next(statuses)
        if status != 200:
            return httpx.Response(status, json={"resourceType": "OperationOutcome", "issue": []})
        return httpx.Response(200, json={"resourceType": "Patient", "id": SANDBOX_PATIENTS["mesh"]})

    refs = PatientRefs(b"k")
    source = PdsSource("https://pds.example/personal-demographics/FHIR/R4", refs=refs)
    source._http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    source.retry = source.retry.model_copy(update={"backoff_s": 0.0})
    number = SANDBOX_PATIENTS["mesh"]
    try:
        result = await source.fetch(
            PatientQuery(nhs_number=number, ref=refs.ref(number)), correlation_id="c"
        )
    finally:
        await source.aclose()
    assert result.attempts == 3
    assert len(seen) == 3 and len(set(seen)) == 1  # one id, re-sent as PDS asks


async def test_pds_is_paced_apart_from_sds(
    sds_sandbox_factory: Any, sds_register_plugin: RegisterPlugin, sds_router_factory: RouterFactory
) -> None:
    # The sandbox refuses PDS requests closer than 1/5 s (PDS's default application limit):
    # the router's own PDS pacer spaces these lookups at least that far apart, whatever SDS's
    # pacer does. (What the sandbox then sees also depends on the machine's load; a refusal,
    # if one came, was retried.)
    sandbox = sds_sandbox_factory(pds_rate_per_s=5)
    router = await sds_router_factory(sandbox, pds_rate_limit_per_s=5)
    cases = ("gpconnect", "mesh", "spine", "superseded", "ended", "unregistered", "unknown")
    answers = await asyncio.gather(
        *(router.patient(SANDBOX_PATIENTS[case]) for case in cases), return_exceptions=True
    )
    assert [type(a).__name__ for a in answers].count("PatientRegistration") == 4
    pacer = router.sources["pds"].rate_limiter  # type: ignore[attr-defined]
    assert pacer is not router.rate_limiter
    # Started with the router, so it knows when its requests leave, as the SDS pacer does.
    assert pacer.spacer.writes_at_gate is router.rate_limiter.spacer.writes_at_gate  # type: ignore[union-attr]
    assert pacer.spacer.released >= len(cases)
    assert pacer.spacer.closest_s >= 1 / pacer.per_second == 1 / 5
    refused = sandbox.stats()["statuses"].get("429", 0)
    assert sandbox.stats()["requests"][PATIENT] == len(cases) + refused


async def test_the_sandbox_requires_x_request_id_and_answers_like_pds(sds_sandbox: Sandbox) -> None:
    base = sds_sandbox.base_url.replace("/spine-directory/", "/personal-demographics/")
    async with httpx.AsyncClient() as http:
        missing = await http.get(f"{base}/Patient/{SANDBOX_PATIENTS['mesh']}")
        invalid = await http.get(f"{base}/Patient/9990001007", headers={"X-Request-ID": _id()})
        unknown = await http.get(
            f"{base}/Patient/{SANDBOX_PATIENTS['unknown']}", headers={"X-Request-ID": _id()}
        )
    assert (missing.status_code, _code(missing)) == (400, "MISSING_VALUE")
    assert (invalid.status_code, _code(invalid)) == (400, "INVALID_RESOURCE_ID")
    assert (unknown.status_code, _code(unknown)) == (404, "RESOURCE_NOT_FOUND")
    assert unknown.json()["issue"][0]["severity"] == "information"


def _id() -> str:
    import uuid

    return str(uuid.uuid4())


def _code(response: httpx.Response) -> str:
    return str(response.json()["issue"][0]["details"]["coding"][0]["code"])


# -- privacy -------------------------------------------------------------------------------------


async def test_no_nhs_number_in_clear_in_logs_audit_metrics_traces_errors_or_envelopes(
    tmp_path: Path,
    sds_sandbox: Sandbox,
    events: Recorder,
    everything_logged: pytest.LogCaptureFixture,
    sds_register_plugin: RegisterPlugin,
    sds_router_factory: RouterFactory,
    spans: tuple[Any, Any],
) -> None:
    from prometheus_client import CollectorRegistry

    from sds_plugins import OpenTelemetryTracing, PrometheusMetrics

    provider, exporter = spans
    metrics = PrometheusMetrics(registry=CollectorRegistry())
    sds_register_plugin(metrics, name="sds_plugins.metrics")
    sds_register_plugin(OpenTelemetryTracing(tracer_provider=provider), name="sds_plugins.tracing")
    audit = tmp_path / "audit.jsonl"
    router = await sds_router_factory(audit_log=audit)
    written: list[str] = []
    routed = []
    for case in SANDBOX_PATIENTS:
        try:
            envelope = await _gpc(router, SANDBOX_PATIENTS[case])
        except SdsPluginsError as exc:  # no practice, or one without GP Connect
            written.append(f"{exc!s} {exc!r} {getattr(exc, 'url', '')}")
            continue
        routed.append(case)
        written.append(envelope.model_dump_json())
        written.append(str(envelope))
        written.append(repr(envelope))
        # The sender's own message holds the current number of a superseded patient, and no
        # other number: that one is for the sender to update its records with.
        message = envelope.to_message()
        current = message.pop("current_nhs_number")
        assert current == (SANDBOX_PATIENTS["gpconnect"] if case == "superseded" else None)
        written.append(json.dumps(message))
    # Registered at B82617 today (one of them until today, inclusive), and one whose death
    # notice was withdrawn; the deceased are refused by Access Record Structured.
    assert routed == ["gpconnect", "superseded", "death_notice_removed", "ends_today"]
    sds_sandbox.set_faults(outage=True)  # and the failures' messages and retry logs
    with pytest.raises(DirectoryUnavailableError) as outage:
        await router.patient(SANDBOX_PATIENTS["mesh"], bypass_cache=True)
    written.append(f"{outage.value!s} {outage.value!r} {getattr(outage.value, 'url', '')}")
    written += [e.model_dump_json() for e in (*events.lookups, *events.routes)]
    written.append(everything_logged.text)
    written.append(audit.read_text())
    written.append(metrics.render()[0].decode())
    finished = exporter.get_finished_spans()
    written += [json.dumps({"name": span.name, **dict(span.attributes or {})}) for span in finished]
    everything = "\n".join(written)
    assert "pds:Patient/pt-" in everything and "B82617" in everything  # it did log
    assert any(span.name.startswith("sds route") for span in finished)  # and trace
    for number in SANDBOX_PATIENTS.values():
        assert number not in everything


async def test_the_audit_log_holds_numbers_only_when_the_operator_says_so(
    tmp_path: Path, events: Recorder, sds_router_factory: RouterFactory
) -> None:
    audit = tmp_path / "audit.jsonl"
    router = await sds_router_factory(audit_log=audit, audit_nhs_numbers=True)
    await _gpc(router, SANDBOX_PATIENTS["gpconnect"])
    route = [json.loads(line) for line in audit.read_text().splitlines() if '"route"' in line]
    assert route[-1]["details"]["nhs_number"] == SANDBOX_PATIENTS["gpconnect"]


def test_references_are_keyed() -> None:
    one, other = PatientRefs(b"one"), PatientRefs(b"other")
    number = SANDBOX_PATIENTS["gpconnect"]
    assert one.ref(number) == PatientRefs(b"one").ref(number) != other.ref(number)
    assert one.ref(number).startswith("pt-") and len(one.ref(number)) == 19
    assert number not in repr(PatientQuery(nhs_number=number, ref=one.ref(number)))
    assert one.scrub(f"Patient {number} not found") == f"Patient {one.ref(number)} not found"
    settings = Settings(patient_hash_key="k")  # type: ignore[arg-type]
    assert PatientRefs.for_settings(settings).ref(number) == PatientRefs("k").ref(number)


async def test_half_configured_pds_credentials_leave_organisation_routes_working(
    events: Recorder, sds_router_factory: RouterFactory, sds_sandbox: Sandbox
) -> None:
    # A key id alone: signed-JWT auth cannot be built for PDS. SDS (no auth here) still routes.
    router = await sds_router_factory(kid="only-a-kid")
    envelope = await router.route(
        "gpconnect", org="B82617", interaction=GPC, encounter="e", **CONSUMER
    )
    assert envelope.target.ods_code == "B82617"
    with pytest.raises(ConfigurationError, match="SDS_PRIVATE_KEY_FILE"):
        await _gpc(router, SANDBOX_PATIENTS["gpconnect"])
    assert PATIENT not in sds_sandbox.stats()["requests"]  # nothing was sent to PDS


def test_pds_behind_the_api_gateway_gets_the_platforms_error_mapping() -> None:
    # PDS sits behind the same API platform as SDS: a spike-arrest fault is the gateway's
    # (retried on the pacer's next slot, without counting as an attempt), not PDS's own limit;
    # no error's URL or text shows the number.
    fault = {
        "fault": {
            "faultstring": "Spike arrest violation. Allowed rate : 15ps",
            "detail": {"errorcode": "policies.ratelimit.SpikeArrestViolation"},
        }
    }
    refs = PatientRefs(b"k")
    number = SANDBOX_PATIENTS["mesh"]
    query = PatientQuery(nhs_number=number, ref=refs.ref(number))
    base = "https://pds.example/personal-demographics/FHIR/R4"
    source = PdsSource(base, refs=refs)
    shown = f"{base}/Patient/{query.ref}"

    def error(status: int, body: Any) -> Any:
        request = httpx.Request("GET", f"{base}/Patient/{number}")
        response = httpx.Response(status, json=body, request=request)
        return source._error(response, "c", query, shown)

    spike = error(429, fault)
    assert isinstance(spike, RateLimitedError) and spike.limit == "spike_arrest"
    refused = error(403, {})
    assert isinstance(refused, AuthenticationError)
    gone = error(404, _outcome_body("INVALIDATED_RESOURCE", f"Patient {number} invalidated"))
    assert isinstance(gone, PatientInvalidatedError)
    for each in (spike, refused, gone):
        assert each.url == shown
        assert number not in f"{each} {each!r} {each.diagnostics}"


def _outcome_body(code: str, diagnostics: str) -> dict[str, Any]:
    coding = {"system": "https://fhir.nhs.uk/R4/CodeSystem/Spine-ErrorOrWarningCode", "code": code}
    issue = {"severity": "error", "code": "not-found", "details": {"coding": [coding]}}
    return {"resourceType": "OperationOutcome", "issue": [{**issue, "diagnostics": diagnostics}]}
