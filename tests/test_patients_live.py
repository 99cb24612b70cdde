"""Patients as live PDS answers them, checked against NHS's own code and examples.

Sources (``NHSDigital/personal-demographics-service-api``): the live proxy verifies an OAuth
access token first (``proxies/live/apiproxy/targets/ig3.xml``); the OAS describes the life
events (``deceasedDateTime``, ``Extension-UKCore-DeathNotificationStatus``,
``Extension-PDS-RemovalFromRegistration``), ``X-Request-ID`` ("if you re-send a failed request,
use the same value"), ``NHSD-End-User-Organisation-ODS`` ("mandatory for client applications
which service multiple end user organisations") and superseded records ("you must update your
system with the new patient details"); ``manifest_template.yml`` deploys PDS to the sandbox,
INT and production, not DEP. NHS's reference patients are in ``tests/reference/pds`` (MIT).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from sds_plugins_gpconnect import EXAMPLE_CONSUMER, GpConnectPlugin

from sds_plugins import (
    AuthenticationError,
    ConfigurationError,
    HttpRequestSpec,
    InvalidInputError,
    Party,
    PatientNotFoundError,
    PluginHost,
    Provenance,
    Router,
    RouteWorker,
    RoutingEnvelope,
    Settings,
    hookimpl,
)
from sds_plugins._patients import PatientRefs, london_today, parse_patient
from sds_plugins.sandbox import SANDBOX_PATIENTS, AppServer, Sandbox, SandboxConfig, create_app

from ._adapters import JoinAdapter, JoinPlugin
from ._reference import REFERENCE

GPC = "urn:nhs:names:services:gpconnect:fhir:operation:gpc.getstructuredrecord-1"
PSIS = "urn:nhs:names:services:psis:REPC_IN150016UK05"
PATIENT_PATH = "/personal-demographics/FHIR/R4/Patient/{id}"
CONSUMER: dict[str, Any] = dict(EXAMPLE_CONSUMER)
PDS_FIXTURES = REFERENCE / "pds"


def _patients_in(path: Path) -> list[dict[str, Any]]:
    data = json.loads(path.read_text())
    if data.get("resourceType") == "Patient":
        return [data]
    if data.get("resourceType") == "Bundle":
        return [
            entry["resource"]
            for entry in data.get("entry", [])
            if entry.get("resource", {}).get("resourceType") == "Patient"
        ]
    return []


NHS_PATIENTS = [
    (path.relative_to(PDS_FIXTURES).as_posix(), patient)
    for path in sorted(PDS_FIXTURES.rglob("*.json"))
    for patient in _patients_in(path)
]


# -- NHS's reference patients ---------------------------------------------------------------


def test_every_nhs_reference_patient_is_fixture_data() -> None:
    assert len(NHS_PATIENTS) >= 20
    assert "Crown Copyright" in (PDS_FIXTURES / "LICENSE").read_text()


@pytest.mark.parametrize(("source", "patient"), NHS_PATIENTS, ids=[s for s, _ in NHS_PATIENTS])
def test_every_nhs_reference_patient_parses(source: str, patient: dict[str, Any]) -> None:
    refs = PatientRefs(b"k")
    registration = parse_patient(json.dumps(patient).encode(), patient["id"], refs)
    assert registration.patient == refs.ref(patient["id"])
    assert not registration.superseded
    restricted = any(s.get("code") == "R" for s in patient.get("meta", {}).get("security", []))
    assert registration.restricted is restricted
    gps = patient.get("generalPractitioner") or []
    assert registration.practice == (
        None if restricted or not gps else gps[0]["identifier"]["value"]
    )
    assert registration.deceased is ("deceasedDateTime" in patient)
    # Nothing but references and registration facts leaves the parser.
    dumped = registration.model_dump_json()
    assert patient["id"] not in dumped
    for name in patient.get("name", []):
        assert name.get("family", "\0") not in dumped


def test_nhs_9000000009_is_deceased_and_removed_to_scotland() -> None:
    # NHS's maximal example: deceased 2010 (formal notice), removed from registration (SCT),
    # its registration at Y12345 over.
    [patient] = _patients_in(
        PDS_FIXTURES / "stubs" / "patientResponses" / "patient_9000000009.json"
    )
    registration = parse_patient(json.dumps(patient).encode(), "9000000009", PatientRefs(b"k"))
    assert registration.deceased is True
    assert registration.death_notification == "formal"
    assert registration.removal_reason == "SCT"
    assert registration.removal_start == date(2020, 1, 1)
    assert registration.practice == "Y12345"
    assert registration.current_practice(date(2026, 12, 7)) is None  # ended 2021-12-31
    assert registration.removed(date(2026, 12, 7))


# -- registration periods -------------------------------------------------------------------


def test_today_is_londons_date() -> None:
    # 23:30 UTC on 30 June is 00:30 on 1 July in London (BST); in winter they agree.
    assert london_today(datetime(2026, 6, 30, 23, 30, tzinfo=UTC).timestamp()) == date(2026, 7, 1)
    assert london_today(datetime(2026, 12, 7, 23, 30, tzinfo=UTC).timestamp()) == date(2026, 12, 7)


def test_periods_include_both_ends_and_a_future_start_is_not_current() -> None:
    refs = PatientRefs(b"k")
    body = {
        "resourceType": "Patient",
        "id": "9990001006",
        "generalPractitioner": [
            {
                "type": "Organization",
                "identifier": {
                    "system": "https://fhir.nhs.uk/Id/ods-organization-code",
                    "value": "B82617",
                    "period": {"start": "2026-12-01", "end": "2026-12-07"},
                },
            }
        ],
    }
    registration = parse_patient(json.dumps(body).encode(), "9990001006", refs)
    assert registration.current_practice(date(2026, 11, 30)) is None  # not started
    assert registration.current_practice(date(2026, 12, 1)) == "B82617"
    assert registration.current_practice(date(2026, 12, 7)) == "B82617"  # its last day
    assert registration.current_practice(date(2026, 12, 8)) is None


@pytest.fixture
def gpconnect_router(sds_register_plugin: Any, sds_router_factory: Any) -> Any:
    sds_register_plugin(GpConnectPlugin(), name="gpconnect")

    async def make(**settings: Any) -> Router:
        return await sds_router_factory(**settings)  # type: ignore[no-any-return]

    return make


async def _structured(router: Router, case: str, **kwargs: Any) -> Any:
    return await router.route(
        "gpconnect",
        patient=SANDBOX_PATIENTS[case],
        interaction=GPC,
        encounter=f"enc-{case}",
        **{**CONSUMER, **kwargs},
    )


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("deceased", "deceased"),
        ("deceased_informal", "deceased"),
        ("removed", "registration_ended"),
        ("starts_tomorrow", "registration_not_started"),
        ("ended_yesterday", "registration_ended"),
    ],
)
async def test_gp_connect_structured_refuses_what_pds_says_it_cannot_reach(
    gpconnect_router: Any, sds_sandbox: Sandbox, case: str, reason: str
) -> None:
    router = await gpconnect_router()
    with pytest.raises(PatientNotFoundError) as refused:
        await _structured(router, case)
    assert refused.value.reason == reason
    assert SANDBOX_PATIENTS[case] not in str(refused.value)
    # Refused before any SDS lookup: only PDS was asked.
    assert set(sds_sandbox.stats()["requests"]) == {PATIENT_PATH}


async def test_a_registration_ending_today_and_a_withdrawn_death_notice_route(
    gpconnect_router: Any,
) -> None:
    router = await gpconnect_router()
    for case in ("ends_today", "death_notice_removed"):
        envelope = await _structured(router, case)
        assert envelope.target.ods_code == "B82617"
    record = envelope.provenance.records[0]
    assert (record.deceased, record.death_notification) == (False, "removed")


async def test_an_adapter_that_decides_nothing_carries_the_facts_for_the_sender(
    sds_register_plugin: Any, sds_router_factory: Any
) -> None:
    # Documents and MESH decide nothing (the default): the envelope says what PDS said.
    sds_register_plugin(JoinPlugin(), name="join")
    router = await sds_router_factory()
    envelope = await router.route("join", patient=SANDBOX_PATIENTS["deceased"], interaction=GPC)
    record = envelope.provenance.records[0]
    assert (record.kind, record.deceased, record.death_notification) == (
        "pds_patient",
        True,
        "formal",
    )
    assert "deceasedDateTime" not in envelope.model_dump_json()  # the date stays out


# -- the sender's current NHS number --------------------------------------------------------


async def test_a_superseded_number_gives_the_sender_the_current_one_only(
    gpconnect_router: Any,
) -> None:
    router = await gpconnect_router()
    envelope = await _structured(router, "superseded")
    current = SANDBOX_PATIENTS["gpconnect"]
    assert envelope.current_nhs_number == current
    assert envelope.to_message()["current_nhs_number"] == current  # for the sender
    for shown in (envelope.model_dump_json(), str(envelope), repr(envelope)):
        assert current not in shown
    assert current not in envelope.provenance.model_dump_json()
    # Not superseded: no number is given (the sender has it).
    assert (await _structured(router, "gpconnect")).current_nhs_number is None


# -- PDS is authenticated -------------------------------------------------------------------


def _credentials(tmp_path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "kid-1", "use": "sig", "alg": "RS512"})
    pem = tmp_path / "private.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    settings = {"api_key": "app-key", "private_key_file": str(pem), "kid": "kid-1"}
    return {"keys": [jwk]}, settings


async def test_pds_with_credentials_takes_the_signed_jwt_token(
    make_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    jwks, credentials = _credentials(tmp_path)
    sb = make_sandbox(api_key="app-key", jwks=jwks)
    settings = Settings(base_url=sb.base_url, **credentials)  # type: ignore[arg-type]
    async with Router(settings, plugins=[JoinPlugin()]) as router:
        envelope = await router.route("join", patient=SANDBOX_PATIENTS["spine"], interaction=PSIS)
    assert envelope.target.ods_code == "YES"
    assert sb.stats()["requests"]["/oauth2/token"] == 1


async def test_pds_refusing_a_request_without_credentials_fails_at_once_naming_them(
    make_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    jwks, _ = _credentials(tmp_path)
    sb = make_sandbox(api_key="app-key", jwks=jwks)
    settings = Settings(base_url=sb.base_url, api_key="app-key", retry_attempts=4)
    async with Router(settings, plugins=[JoinPlugin()]) as router:
        with pytest.raises(AuthenticationError, match="SDS_PRIVATE_KEY_FILE") as refused:
            await router.route("join", patient=SANDBOX_PATIENTS["spine"], interaction=PSIS)
    assert "carried no credentials" in refused.value.message
    assert sb.stats()["requests"][PATIENT_PATH] == 1  # not retried


async def test_the_live_platform_without_credentials_is_refused_before_sending() -> None:
    settings = Settings(env="int", api_key="app-key")
    async with Router(settings, plugins=[JoinPlugin()]) as router:
        with pytest.raises(ConfigurationError, match="SDS_CLIENT_ID") as refused:
            await router.route("join", patient=SANDBOX_PATIENTS["spine"], interaction=PSIS)
    assert "int.api.service.nhs.uk" in str(refused.value)


async def test_dep_has_no_pds() -> None:
    async with Router(Settings(env="dep", api_key="k"), plugins=[JoinPlugin()]) as router:
        with pytest.raises(ConfigurationError, match="not deployed to DEP"):
            await router.route("join", patient=SANDBOX_PATIENTS["spine"], interaction=PSIS)
    # Given, it is used.
    given = Settings(env="dep", api_key="k", pds_base_url="https://pds.example/FHIR/R4")
    assert given.resolved_pds_base_url() == "https://pds.example/FHIR/R4"


# -- headers: the end-user organisation and a stable X-Request-ID ---------------------------


class RecordingHeaders:
    """ASGI middleware: keeps the headers of every PDS request the wrapped app receives."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[dict[str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and "/Patient/" in scope["path"]:
            self.seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await self.app(scope, receive, send)


@pytest.fixture
def recording() -> Any:
    app = RecordingHeaders(create_app(SandboxConfig()))
    with AppServer(app) as server:
        yield app, server.url + "/spine-directory/FHIR/R4"


async def test_the_end_user_organisation_follows_the_route(recording: Any) -> None:
    app, base_url = recording
    settings = Settings(base_url=base_url, pds_end_user_org="Y99999")
    host = PluginHost(load_entrypoints=False, environ={})
    plugins = [GpConnectPlugin(), JoinPlugin(scope=None)]
    async with Router(settings, host=host, plugins=plugins) as router:
        await _structured(router, "gpconnect")  # GP Connect's organization_ods
        await router.route(
            "join", patient=SANDBOX_PATIENTS["spine"], interaction=PSIS, requesting_org="a1b2c"
        )
        await router.route("join", patient=SANDBOX_PATIENTS["spine"], interaction=PSIS)
    sent = [headers.get("nhsd-end-user-organisation-ods") for headers in app.seen]
    assert sent == [CONSUMER["organization_ods"], "A1B2C", "Y99999"]


async def test_an_application_of_several_organisations_refuses_a_route_for_none(
    recording: Any,
) -> None:
    app, base_url = recording
    settings = Settings(base_url=base_url, pds_several_orgs=True)
    async with Router(settings, plugins=[JoinPlugin()]) as router:
        with pytest.raises(InvalidInputError, match="requesting_org") as refused:
            await router.route("join", patient=SANDBOX_PATIENTS["spine"], interaction=PSIS)
    assert refused.value.field == "requesting_org"
    assert app.seen == []


async def test_a_request_delivered_twice_sends_pds_the_same_x_request_id(recording: Any) -> None:
    app, base_url = recording
    # scope None: nothing kept, so every delivery asks PDS again, as after a crash it would.
    async with Router(Settings(base_url=base_url), plugins=[JoinPlugin(scope=None)]) as router:
        worker = RouteWorker(router)
        body = json.dumps(
            {"adapter": "join", "patient": SANDBOX_PATIENTS["spine"], "interaction": PSIS}
        )
        first = await worker.handle(body, request_id="message-1")
        again = await worker.handle(body, request_id="message-1", attempt=2)
        other = await worker.handle(body, request_id="message-2")
    assert first.disposition == again.disposition == other.disposition == "envelope"
    ids = [headers["x-request-id"] for headers in app.seen]
    assert len(ids) == 3 and ids[0] == ids[1] != ids[2]
    assert all(uuid.UUID(value) for value in ids)


# -- demographics, for the adapters that address the patient ----------------------------------


def _usual_family(patient: dict[str, Any], today: date) -> str | None:
    for name in patient.get("name", []):
        end = name.get("period", {}).get("end")
        if name.get("use") == "usual" and not (end and date.fromisoformat(end) < today):
            return str(name["family"])
    return None


@pytest.mark.parametrize(("source", "patient"), NHS_PATIENTS, ids=[s for s, _ in NHS_PATIENTS])
def test_every_nhs_reference_patient_gives_its_demographics_when_asked(
    source: str, patient: dict[str, Any]
) -> None:
    refs = PatientRefs(b"k")
    body = json.dumps(patient).encode()
    assert parse_patient(body, patient["id"], refs).demographics is None  # only when asked
    registration = parse_patient(body, patient["id"], refs, demographics=True)
    restricted = any(s.get("code") == "R" for s in patient.get("meta", {}).get("security", []))
    if restricted:
        assert registration.demographics is None
        return
    found = registration.demographics
    assert found is not None
    assert found.nhs_number == patient["id"]
    born = patient.get("birthDate")
    assert found.birth_date == (date.fromisoformat(born) if born and len(born) == 10 else None)
    assert found.family_name == _usual_family(patient, london_today(datetime.now(UTC).timestamp()))
    # In memory only: no dump (the cache's, the provenance's) and no repr carries them.
    for shown in (
        registration.model_dump_json(context={"reveal_secrets": True}),
        repr(registration),
        repr(found),
        str(found),
    ):
        assert patient["id"] not in shown
        if found.family_name:
            assert found.family_name not in shown


def test_a_former_usual_name_and_a_partial_birth_date_give_nothing() -> None:
    patient = {
        "resourceType": "Patient",
        "id": "9000000009",
        "birthDate": "1950-03",
        "name": [
            {"use": "usual", "family": "FORMER", "period": {"end": "2001-01-01"}},
            {"use": "nickname", "family": "NICK"},
            {"use": "usual", "family": "Current-Name", "period": {"start": "2001-01-02"}},
        ],
    }
    registration = parse_patient(
        json.dumps(patient).encode(), "9000000009", PatientRefs(b"k"), demographics=True
    )
    assert registration.demographics is not None
    assert registration.demographics.family_name == "Current-Name"  # as PDS holds it
    assert registration.demographics.birth_date is None  # DDMMYYYY needs a whole date


class _Addressing(JoinAdapter):
    """A test adapter that addresses the patient (as MESH's demographic routing does)."""

    name = "addressing"
    seen: list[Any]

    def needs_demographics(self, request: Any) -> bool:
        return True

    def plan(self, request: Any) -> Any:
        return {}

    def build(self, request: Any, resolved: Any) -> Any:
        self.seen.append(resolved.patient)
        return RoutingEnvelope(
            adapter=self.name,
            interaction=request.interaction,
            target=Party(ods_code=request.org),
            request=HttpRequestSpec(
                method="POST",
                url="https://mesh.example/outbox",
                headers={"mex-to": resolved.patient.demographics.family_name},
                personal_headers=("MEX-TO",),
            ),
            expires_at=resolved.now + timedelta(minutes=5),
            provenance=resolved.provenance(()),
        )


class _AddressingPlugin:
    def __init__(self) -> None:
        self.adapter = _Addressing()
        self.adapter.seen = []

    @hookimpl
    def sds_register_adapters(self, register: Any) -> None:
        register(self.adapter)


async def test_an_adapter_that_addresses_the_patient_gets_fresh_demographics_kept_nowhere(
    recording: Any,
) -> None:
    app, base_url = recording
    plugin = _AddressingPlugin()
    host = PluginHost(load_entrypoints=False, environ={})
    async with Router(
        Settings(base_url=base_url), host=host, plugins=[plugin, JoinPlugin()]
    ) as router:
        number = SANDBOX_PATIENTS["gpconnect"]
        for _ in range(2):
            envelope = await router.route("addressing", patient=number, interaction=GPC)
        [first, second] = plugin.adapter.seen
        assert second is not first and second.demographics is not None  # each its own
        assert first.demographics is not None and first.demographics.nhs_number == number
        surname = first.demographics.family_name
        assert surname and envelope.to_message()["request"]["headers"]["mex-to"] == surname
        # Asked afresh each time (never cached), and the envelope shows them to its sender only.
        assert len(app.seen) == 2
        for shown in (str(envelope), repr(envelope), envelope.model_dump_json()):
            assert surname not in shown and number not in shown
        # An adapter that does not ask shares the cached answer, which holds none.
        await router.route("join", patient=number, interaction=GPC)
        await router.route("join", patient=number, interaction=GPC)
        assert len(app.seen) == 3
        assert number not in envelope.provenance.model_dump_json()  # references only, as always


def test_personal_headers_are_masked_like_credentials_but_for_the_sender() -> None:
    spec = HttpRequestSpec(
        method="POST",
        url="https://mesh.example/outbox",
        headers={"Mex-To": "GPPROVIDER_9000000009_01011950_SMITH", "mex-workflowid": "W"},
        personal_headers=("mex-to",),
    )
    for shown in (repr(spec), spec.model_dump_json(), str(spec)):
        assert "SMITH" not in shown and "W" in shown
    assert spec.model_dump(context={"reveal_secrets": True})["headers"]["Mex-To"].endswith("SMITH")
    envelope = RoutingEnvelope(
        adapter="a",
        interaction="i",
        target=Party(),
        request=spec,
        expires_at=datetime.now(UTC) + timedelta(minutes=5),
        provenance=Provenance(correlation_id="c", resolved_at=datetime.now(UTC), cache="miss"),
    )
    kept = envelope.with_headers(**{"mex-subject": "s"})
    assert kept.request.personal_headers == ("mex-to",)
    assert "SMITH" not in str(kept)


class _Remembering(_Addressing):
    """Derives the address as an adapter might (wrongly closing over ``resolved``)."""

    name = "remembering"

    def build(self, request: Any, resolved: Any) -> Any:
        surname = resolved.derive(
            "to", (), lambda _request: resolved.patient.demographics.family_name
        )
        self.seen.append(surname)
        return super().build(request, resolved)


async def test_a_derivation_is_never_handed_from_one_patient_to_another(
    sds_router_factory: Any, sds_register_plugin: Any
) -> None:
    plugin = _AddressingPlugin()
    plugin.adapter = _Remembering()
    plugin.adapter.seen = []
    sds_register_plugin(plugin, name="remembering")
    router = await sds_router_factory()
    # Two patients of the same practice share the prepared route (B82617, same options).
    for key in ("gpconnect", "deceased"):
        await router.route("remembering", patient=SANDBOX_PATIENTS[key], interaction=GPC)
    surnames = [s for s in plugin.adapter.seen if isinstance(s, str)]
    assert len(surnames) == 2 and surnames[0] != surnames[1]


def test_headers_are_replaced_whatever_their_case_and_personal_names_always_masked() -> None:
    spec = HttpRequestSpec(
        method="POST",
        url="https://mesh.example/outbox",
        headers={"mex-to": "GPPROVIDER_9000000009_01011950_SMITH", "Content-Type": "a/b"},
        personal_headers=("mex-to",),
    )
    envelope = RoutingEnvelope(
        adapter="a",
        interaction="i",
        target=Party(),
        request=spec,
        expires_at=datetime.now(UTC) + timedelta(minutes=5),
        provenance=Provenance(correlation_id="c", resolved_at=datetime.now(UTC), cache="miss"),
    )
    sent = envelope.with_headers(**{"Mex-To": "X26ABC2"}).build_request(
        b"x", headers={"content-type": "text/plain"}
    )
    assert sent.headers.get_list("mex-to") == ["X26ABC2"]
    assert sent.headers.get_list("content-type") == ["text/plain"]
    # A copy made without validation keeps masking, whatever the case of the names.
    copied = envelope.model_copy(
        update={"request": spec.model_copy(update={"personal_headers": ("MEX-TO",)})}
    )
    assert "SMITH" not in str(copied) and "SMITH" not in repr(copied)


def test_personal_options_are_masked_in_requests_and_failure_documents() -> None:
    from sds_plugins._requests import WorkerRequest

    request = WorkerRequest(
        adapter="mesh",
        interaction="GPFED_CONSULT_REPORT",
        patient="9990001014",
        options={"birth_date": "1951-02-11", "family_name": "BIRCH", "subject": "for SAM BIRCH"},
    )
    shown = repr(request)
    assert "BIRCH" not in shown and "1951" not in shown and "9990001014" not in shown
