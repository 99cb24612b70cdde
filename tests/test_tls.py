"""Client TLS over real sockets: a local HTTPS server that requires a client certificate."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from sds_plugins import (
    ClientTls,
    ConfigurationError,
    EnvelopeClients,
    HttpRequestSpec,
    Party,
    Provenance,
    RoutingEnvelope,
)
from sds_plugins.testing import MtlsServer, TlsFiles, make_tls_files, mtls_server


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def server(tls_files: TlsFiles) -> Iterator[MtlsServer]:
    with mtls_server(tls_files) as running:
        yield running


def _envelope(url: str, tls: ClientTls | None) -> RoutingEnvelope:
    now = datetime.now(UTC)
    return RoutingEnvelope(
        adapter="test",
        interaction="urn:nhs:names:services:test:TEST_IN000001UK01",
        target=Party(ods_code="A12345"),
        request=HttpRequestSpec(method="GET", url=url, headers={"Authorization": "Bearer x"}),
        tls=tls,
        expires_at=now + timedelta(minutes=5),
        provenance=Provenance(
            correlation_id="0b6e7f5c-8a8e-4a43-9d5e-3f1f2a3b4c5d", resolved_at=now, cache="miss"
        ),
    )


def _full(files: TlsFiles) -> ClientTls:
    return ClientTls(
        cert_path=str(files.client_cert),
        key_path=str(files.client_key),
        ca_bundle_path=str(files.ca),
    )


async def test_the_helpers_client_presents_the_certificate(
    server: MtlsServer, tls_files: TlsFiles
) -> None:
    envelope = _envelope(f"{server.url}/STU3/1/gpconnect/metadata", _full(tls_files))
    async with EnvelopeClients() as clients:
        response = await clients.async_client(envelope).send(envelope.build_request())
    assert response.status_code == 200
    assert response.json() == {
        "method": "GET",
        "path": "/STU3/1/gpconnect/metadata",
        "client": "sds-plugins-test-client",
    }


def test_the_sync_client_too(server: MtlsServer, tls_files: TlsFiles) -> None:
    envelope = _envelope(f"{server.url}/x", _full(tls_files))
    with EnvelopeClients() as clients:
        response = clients.client(envelope).send(envelope.build_request(b"{}"))
    assert response.json()["client"] == "sds-plugins-test-client"


@pytest.mark.parametrize("with_ca", [True, False], ids=["ca-only", "nothing"])
async def test_a_client_without_the_certificate_is_refused(
    server: MtlsServer, tls_files: TlsFiles, with_ca: bool
) -> None:
    tls = ClientTls(ca_bundle_path=str(tls_files.ca)) if with_ca else None
    envelope = _envelope(f"{server.url}/x", tls)
    async with EnvelopeClients() as clients:
        # Without a client certificate the server ends the handshake (with the CA only, the
        # client trusts the server; with nothing, it does not trust it either). Under TLS 1.3
        # the server's "certificate required" alert may arrive while the request is written,
        # and httpx then lets the ssl.SSLError through unwrapped: a refusal either way.
        with pytest.raises((httpx.TransportError, ssl.SSLError)):
            await clients.async_client(envelope).send(envelope.build_request())
    assert server.requests == []


async def test_one_client_and_one_tls_context_per_destination(
    server: MtlsServer, tls_files: TlsFiles
) -> None:
    tls = _full(tls_files)
    first = _envelope(f"{server.url}/a", tls)
    second = _envelope(f"{server.url}/b?x=1", tls)
    other_tls = _envelope(f"{server.url}/a", ClientTls(ca_bundle_path=str(tls_files.ca)))
    elsewhere = _envelope("https://127.0.0.2:1/a", tls)
    async with EnvelopeClients() as clients:
        client = clients.async_client(first)
        for _ in range(20):
            assert clients.async_client(second) is client
            await client.send(second.build_request())
        assert clients.async_client(other_tls) is not client
        assert clients.async_client(elsewhere) is not client
        assert clients.ssl_context(first) is clients.ssl_context(second)
        assert clients.destinations == 3
    assert len(server.requests) == 20


def test_tls_and_urls_come_from_the_envelope_not_the_options() -> None:
    with pytest.raises(TypeError, match="verify"):
        EnvelopeClients(verify=False)
    with pytest.raises(TypeError, match="cert"):
        EnvelopeClients(cert="/etc/client.pem")


def test_plain_http_is_refused_unless_allowed() -> None:
    plain = _envelope("http://127.0.0.1:9/x", None)
    with pytest.raises(ConfigurationError, match="allow_plain_http"):
        EnvelopeClients().async_client(plain)
    assert EnvelopeClients(allow_plain_http=True).ssl_context(plain) is None
    with_tls = _envelope("http://127.0.0.1:9/x", ClientTls(cert_path="/etc/client.pem"))
    with pytest.raises(ConfigurationError, match="client TLS"):
        EnvelopeClients(allow_plain_http=True).client(with_tls)


def test_unreadable_files_name_the_path_never_the_contents(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    missing = _envelope("https://127.0.0.1:9/x", ClientTls(cert_path=str(tmp_path / "none.pem")))
    with pytest.raises(ConfigurationError, match=r"none\.pem"):
        EnvelopeClients().async_client(missing)
    # A key that does not belong to the certificate: refused, its contents never quoted.
    wrong = ClientTls(cert_path=str(tls_files.client_cert), key_path=str(tls_files.server_key))
    with pytest.raises(ConfigurationError) as info:
        EnvelopeClients().client(_envelope("https://127.0.0.1:9/x", wrong))
    assert "PRIVATE KEY" not in str(info.value)
    assert str(tls_files.server_key) in str(info.value)


def test_the_envelope_carries_paths_only(tls_files: TlsFiles) -> None:
    envelope = _envelope("https://127.0.0.1:9/x", _full(tls_files))
    key_text = tls_files.client_key.read_text()
    for printed in (str(envelope), repr(envelope), envelope.model_dump_json()):
        assert str(tls_files.client_key) in printed
        assert key_text not in printed and "PRIVATE KEY" not in printed
    assert RoutingEnvelope.model_validate(envelope.to_message()).tls == envelope.tls
    with pytest.raises(ValidationError, match="not PEM content") as info:
        ClientTls(cert_path=str(tls_files.client_cert), key_path=key_text)
    assert "PRIVATE KEY" not in str(info.value)
    with pytest.raises(ValidationError, match="without cert_path"):
        ClientTls(key_path=str(tls_files.client_key))


def test_a_key_given_as_a_path_is_not_echoed_by_the_envelopes_errors(tls_files: TlsFiles) -> None:
    envelope = _envelope("https://127.0.0.1:9/x", None).to_message()
    envelope["tls"] = {"cert_path": "/x", "key_path": tls_files.client_key.read_text()}
    with pytest.raises(ValidationError) as info:
        RoutingEnvelope.model_validate(envelope)
    assert "PRIVATE KEY" not in str(info.value)
    assert "tls.key_path" in str(info.value)
