"""The SSP's client TLS: refused plain http, paths from settings, a real mutual-TLS handshake."""

from __future__ import annotations

from pathlib import Path

import pytest
from gpconnect_cases import CONSUMER_OPTIONS, GPC, SINGLE, SINGLE_ADDRESS

from sds_plugins import (
    ClientTls,
    ConfigurationError,
    EnvelopeClients,
    InvalidInputError,
    PluginHost,
    Router,
    Settings,
)
from sds_plugins.sandbox import Sandbox
from sds_plugins.testing import TlsFiles, make_tls_files, mtls_server


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("gpc-tls"), client_name="consumer-200000000359")


def _host() -> PluginHost:
    return PluginHost(environ={"SDS_PLUGINS_LOAD": "sds-plugins-gpconnect"})


def _tls_env(monkeypatch: pytest.MonkeyPatch, files: TlsFiles) -> None:
    monkeypatch.setenv("SDS_GPCONNECT_TLS_CERT", str(files.client_cert))
    monkeypatch.setenv("SDS_GPCONNECT_TLS_KEY", str(files.client_key))
    monkeypatch.setenv("SDS_GPCONNECT_TLS_CA_BUNDLE", str(files.ca))


async def test_a_plain_http_ssp_is_refused_before_any_lookup(
    router: Router, gpc_sandbox: Sandbox
) -> None:
    with pytest.raises(InvalidInputError) as info:
        await router.route(
            "gpconnect",
            org=SINGLE,
            interaction=GPC,
            **{**CONSUMER_OPTIONS, "ssp_url": "http://proxy.intspineservices.nhs.uk"},
        )
    assert info.value.field == "ssp_url"
    assert "SDS_GPCONNECT_ALLOW_INSECURE_SSP" in str(info.value)
    assert gpc_sandbox.stats()["requests"] == {}


async def test_the_envelope_carries_the_tls_paths_from_settings(
    gpc_sandbox: Sandbox, tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tls_env(monkeypatch, tls_files)
    async with Router(Settings(base_url=gpc_sandbox.base_url), host=_host()) as router:
        envelope = await router.route("gpconnect", org=SINGLE, interaction=GPC, **CONSUMER_OPTIONS)
    assert envelope.tls == ClientTls(
        cert_path=str(tls_files.client_cert),
        key_path=str(tls_files.client_key),
        ca_bundle_path=str(tls_files.ca),
    )
    assert "PRIVATE KEY" not in envelope.model_dump_json()


async def test_the_envelope_reaches_a_mutual_tls_ssp_with_the_consumers_certificate(
    gpc_sandbox: Sandbox, tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tls_env(monkeypatch, tls_files)
    with mtls_server(tls_files) as ssp:
        async with Router(Settings(base_url=gpc_sandbox.base_url), host=_host()) as router:
            envelope = await router.route(
                "gpconnect", org=SINGLE, interaction=GPC, **{**CONSUMER_OPTIONS, "ssp_url": ssp.url}
            )
        async with EnvelopeClients() as clients:
            response = await clients.async_client(envelope).send(envelope.build_request(b"{}"))
    assert response.status_code == 200
    [seen] = ssp.requests
    assert seen["client"] == "consumer-200000000359"
    # The provider's service root, appended verbatim after the proxy prefix.
    assert seen["path"] == f"/{SINGLE_ADDRESS}Patient/$gpc.getstructuredrecord"


def test_settings_errors_name_the_variable_never_its_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from sds_plugins_gpconnect.plugin import GpConnectPlugin

    monkeypatch.setenv("SDS_GPCONNECT_SHARED_CACHE", "secret-looking-value")
    _host()  # loading the plugin reads nothing; a starting router's registration does
    with pytest.raises(ConfigurationError) as info:
        GpConnectPlugin().settings  # noqa: B018 - reading it loads
    assert "SDS_GPCONNECT_SHARED_CACHE" in str(info.value)
    assert "secret-looking-value" not in str(info.value)
    monkeypatch.delenv("SDS_GPCONNECT_SHARED_CACHE")
    monkeypatch.setenv("SDS_GPCONNECT_TLS_KEY", str(tmp_path / "key.pem"))
    with pytest.raises(ConfigurationError, match="SDS_GPCONNECT_TLS_CERT"):
        GpConnectPlugin().settings  # noqa: B018 - reading it loads
