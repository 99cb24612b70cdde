"""End to end over real sockets: envelope → a local "SSP" that checks it → a stub provider."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from gpconnect_cases import AMEND_APPOINTMENT, CONSUMER_OPTIONS, GPC
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sds_plugins import PluginHost, Router, Settings
from sds_plugins.sandbox import AppServer, Sandbox, SandboxConfig
from sds_plugins.testing import accredited_system_record, mhs_record

PROVIDER_ASID = "918999777001"
REQUIRED = ("Ssp-TraceID", "Ssp-From", "Ssp-To", "Ssp-InteractionID", "Authorization", "Accept")
FHIR_JSON_UTF8 = "application/fhir+json;charset=utf-8"


def _provider_app(seen: list[dict[str, Any]]) -> Starlette:
    """A GP Connect provider: answers getstructuredrecord with a Bundle, checks the token."""

    async def structured(request: Request) -> Response:
        token = request.headers["Authorization"].removeprefix("Bearer ")
        claims = jwt.decode(token, options={"verify_signature": False})
        seen.append({"claims": claims, "body": await request.json(), "path": request.url.path})
        return JSONResponse(
            {"resourceType": "Bundle", "type": "collection", "entry": []},
            media_type="application/fhir+json",
        )

    async def amend(request: Request) -> Response:
        # A version-aware update: the provider compares If-Match with the current version.
        seen.append(
            {
                "path": request.url.path,
                "if_match": request.headers.get("if-match"),
                "content_type": request.headers.get("content-type"),
                "body": await request.json(),
            }
        )
        if request.headers.get("if-match") != 'W/"23"':
            return JSONResponse({"error": "version conflict"}, status_code=409)
        return JSONResponse(
            {"resourceType": "Appointment", "id": request.path_params["id"]},
            media_type="application/fhir+json",
        )

    return Starlette(
        routes=[
            Route(
                "/B99999/STU3/1/gpconnect/Patient/$gpc.getstructuredrecord",
                structured,
                methods=["POST"],
            ),
            Route("/B99999/STU3/1/gpconnect/Appointment/{id}", amend, methods=["PUT"]),
        ]
    )


def _ssp_app(allowed: dict[str, str], seen: list[dict[str, str]]) -> Starlette:
    """The Spine Secure Proxy's checks that matter here, then a forward to the provider."""

    async def proxy(request: Request) -> Response:
        target = request.url.path.removeprefix("/") + (
            f"?{request.url.query}" if request.url.query else ""
        )
        headers = dict(request.headers)
        seen.append(headers)
        missing = [name for name in REQUIRED if name.lower() not in headers]
        if missing:
            return JSONResponse({"error": f"missing {missing}"}, status_code=400)
        uuid.UUID(headers["ssp-traceid"])
        root = allowed.get(headers["ssp-to"])
        # The SSP compares the embedded address with SDS's exactly: no normalising.
        if root is None or not target.startswith(root):
            return JSONResponse({"error": "endpoint not registered for Ssp-To"}, status_code=403)
        claims = jwt.decode(
            headers["authorization"].removeprefix("Bearer "), options={"verify_signature": False}
        )
        if claims["aud"] != root:
            return JSONResponse(
                {"error": "aud is not the provider's service root"}, status_code=403
            )
        forwarded = {k: v for k, v in headers.items() if k not in ("host", "content-length")}
        async with httpx.AsyncClient() as client:
            answer = await client.request(
                request.method, target, headers=forwarded, content=await request.body()
            )
        return Response(
            answer.content,
            status_code=answer.status_code,
            media_type=answer.headers.get("content-type"),
        )

    return Starlette(routes=[Route("/{path:path}", proxy, methods=["GET", "POST", "PUT"])])


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    # This local "SSP" is plain http: the operator's switch for mocks (test_gpconnect_tls.py
    # covers the real thing, TLS with a client certificate).
    monkeypatch.setenv("SDS_GPCONNECT_ALLOW_INSECURE_SSP", "1")
    provider_seen: list[dict[str, Any]] = []
    ssp_seen: list[dict[str, str]] = []
    with AppServer(_provider_app(provider_seen)) as provider:
        root = f"{provider.url}/B99999/STU3/1/gpconnect/"
        (tmp_path / "mhs-records.json").write_text(
            json.dumps(
                [
                    mhs_record(
                        "B99999",
                        [GPC, AMEND_APPOINTMENT],
                        party_key="B99999-700001",
                        address=root,
                    )
                ]
            )
        )
        (tmp_path / "accredited-system-records.json").write_text(
            json.dumps(
                [
                    accredited_system_record(
                        "B99999",
                        [GPC, AMEND_APPOINTMENT],
                        party_key="B99999-700001",
                        asid=PROVIDER_ASID,
                    )
                ]
            )
        )
        with (
            Sandbox(SandboxConfig(data_dir=tmp_path)) as sandbox,
            AppServer(_ssp_app({PROVIDER_ASID: root}, ssp_seen)) as ssp,
        ):
            yield {
                "sandbox": sandbox,
                "ssp": ssp,
                "root": root,
                "provider_seen": provider_seen,
                "ssp_seen": ssp_seen,
            }


async def test_envelope_goes_through_the_ssp_to_the_provider(world: dict[str, Any]) -> None:
    host = PluginHost(environ={"SDS_PLUGINS_LOAD": "sds-plugins-gpconnect"})
    async with Router(Settings(base_url=world["sandbox"].base_url), host=host) as router:
        envelope = await router.route(
            "gpconnect",
            org="B99999",
            interaction=GPC,
            **{**CONSUMER_OPTIONS, "ssp_url": world["ssp"].url},
        )
    parameters = {"resourceType": "Parameters", "parameter": [{"name": "patientNHSNumber"}]}
    async with httpx.AsyncClient() as client:
        # Exactly the envelope's method, URL and headers, plus the body.
        response = await client.send(envelope.build_request(json.dumps(parameters)))
    assert response.status_code == 200, response.text
    assert response.json()["resourceType"] == "Bundle"
    [ssp_headers] = world["ssp_seen"]
    assert ssp_headers["ssp-from"] == "200000000359"
    assert ssp_headers["ssp-to"] == PROVIDER_ASID
    assert ssp_headers["ssp-interactionid"] == GPC
    assert ssp_headers["content-type"] == ssp_headers["accept"] == FHIR_JSON_UTF8
    [provider] = world["provider_seen"]
    assert provider["claims"]["aud"] == world["root"]
    assert provider["body"] == parameters


async def test_an_amend_reaches_the_provider_with_its_if_match(world: dict[str, Any]) -> None:
    host = PluginHost(environ={"SDS_PLUGINS_LOAD": "sds-plugins-gpconnect"})
    async with Router(Settings(base_url=world["sandbox"].base_url), host=host) as router:
        envelope = await router.route(
            "gpconnect",
            org="B99999",
            interaction=AMEND_APPOINTMENT,
            **{
                **CONSUMER_OPTIONS,
                "ssp_url": world["ssp"].url,
                "fhir_path": "Appointment/148",
                "if_match": 'W/"23"',
            },
        )
    appointment = {"resourceType": "Appointment", "id": "148", "comment": "Running late"}
    async with httpx.AsyncClient() as client:
        response = await client.send(envelope.build_request(json.dumps(appointment)))
    assert response.status_code == 200, response.text
    [ssp_headers] = world["ssp_seen"]
    assert ssp_headers["if-match"] == 'W/"23"'
    assert ssp_headers["ssp-interactionid"] == AMEND_APPOINTMENT
    [provider] = world["provider_seen"]
    assert provider == {
        "path": "/B99999/STU3/1/gpconnect/Appointment/148",
        "if_match": 'W/"23"',
        "content_type": FHIR_JSON_UTF8,
        "body": appointment,
    }


async def test_the_ssp_refuses_a_changed_address(world: dict[str, Any]) -> None:
    host = PluginHost(environ={"SDS_PLUGINS_LOAD": "sds-plugins-gpconnect"})
    async with Router(Settings(base_url=world["sandbox"].base_url), host=host) as router:
        envelope = await router.route(
            "gpconnect",
            org="B99999",
            interaction=GPC,
            **{**CONSUMER_OPTIONS, "ssp_url": world["ssp"].url},
        )
    # What a "helpful" normaliser would do: lower-case the path.
    tampered = envelope.build_request(b"{}")
    tampered.url = httpx.URL(str(tampered.url).replace("/B99999/", "/b99999/"))
    async with httpx.AsyncClient() as client:
        response = await client.send(tampered)
    assert response.status_code == 403
