"""``sds-plugins doctor`` and ``adapters``, and the small CLI promises: ``-v`` after the
command, exit codes in ``--help``, environment variables named in option help, a busy port in
one line, and an unreachable directory named by its URL."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sds_plugins._tools._cli import cli
from sds_plugins.sandbox import Sandbox
from sds_plugins.testing import SandboxFactory

from ._reference import PSIS

API_KEY = "the-right-key-0123456789"


def _doctor(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["doctor", *args], env=env)
    assert "Traceback" not in result.output + result.stderr, result.output + result.stderr
    return result.exit_code, result.stdout, result.stderr


def _check_lines(output: str) -> dict[str, str]:
    checks = {}
    for line in output.splitlines():
        if line.startswith(("ok ", "FAIL ")):
            verdict, rest = line.split(" ", 1)
            name, _, _ = rest.strip().partition(":")
            checks[name] = verdict
    return checks


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's SDS_* settings must not decide these tests."""
    for name in list(os.environ):
        if name.startswith("SDS_"):
            monkeypatch.delenv(name)


def test_doctor_passes_against_the_sandbox(make_sandbox: SandboxFactory, clean_env: None) -> None:
    sandbox = make_sandbox(api_key=API_KEY)
    code, out, err = _doctor({"SDS_BASE_URL": sandbox.base_url, "SDS_API_KEY": API_KEY})
    assert code == 0, out + err
    checks = _check_lines(out)
    assert checks == {
        "plugins": "ok",
        "adapters": "ok",
        "directory reachable": "ok",
        "credentials accepted": "ok",
        "clock skew": "ok",
        "files": "ok",
        "pds": "ok",
        "redis": "ok",
        "pacing": "ok",
        "broker": "ok",
    }
    assert "pacing: requests leave at the wire gate: spaced from it" in out
    assert "without credentials (an open sandbox)" in out
    assert "files: no certificate, key or CA bundle configured" in out
    assert "broker: not configured" in out
    assert API_KEY not in out + err
    assert "SDS_API_KEY = (set, hidden)" in out


def test_doctor_fails_naming_the_check_for_a_wrong_api_key(
    make_sandbox: SandboxFactory, clean_env: None
) -> None:
    sandbox = make_sandbox(api_key=API_KEY)
    code, out, err = _doctor({"SDS_BASE_URL": sandbox.base_url}, "--api-key", "a-wrong-key")
    assert code == 1
    checks = _check_lines(out)
    assert checks["credentials accepted"] == "FAIL"
    assert checks["directory reachable"] == "ok"
    assert "credentials accepted" in err
    assert "a-wrong-key" not in out + err


def test_doctor_fails_naming_the_check_for_an_unreachable_redis(
    sandbox: Sandbox, clean_env: None
) -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    env = {
        "SDS_BASE_URL": sandbox.base_url,
        "SDS_REDIS_URL": f"redis://:hunter2-secret@127.0.0.1:{port}/15",
    }
    code, out, err = _doctor(env)
    assert code == 1
    checks = _check_lines(out)
    assert checks["redis"] == "FAIL"
    assert checks["directory reachable"] == "ok"
    assert f"127.0.0.1:{port}/15" in out
    assert "hunter2-secret" not in out + err


def test_doctor_fails_for_an_unreachable_directory_naming_its_url(clean_env: None) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = f"http://127.0.0.1:{port}/spine-directory/FHIR/R4"
    code, out, _ = _doctor({"SDS_BASE_URL": url})
    assert code == 1
    assert _check_lines(out)["directory reachable"] == "FAIL"
    assert f"{url}/Device" in out


def test_the_unreachable_error_names_the_url_it_tried(clean_env: None) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = f"http://127.0.0.1:{port}/fhir"
    result = CliRunner().invoke(
        cli, ["device", "--org", "YES", "--interaction", PSIS, "--base-url", url]
    )
    assert result.exit_code == 5
    assert f"unreachable at {url}/Device" in result.stderr


def test_adapters_lists_what_get_adapters_lists(clean_env: None) -> None:
    result = CliRunner().invoke(cli, ["adapters"])
    assert result.exit_code == 0, result.output
    listed = {adapter["name"]: adapter for adapter in json.loads(result.stdout)["adapters"]}
    assert "example-ebxml" in listed
    example = listed["example-ebxml"]
    assert example["description"]
    assert all({"name", "type", "required"} <= set(option) for option in example["options"])


def test_verbose_is_accepted_after_the_command(clean_env: None) -> None:
    root = logging.getLogger()
    level = root.level
    try:
        result = CliRunner().invoke(cli, ["-v", "adapters", "-v"])
        assert root.level == logging.DEBUG  # the counts before and after add up
    finally:
        root.setLevel(level)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["adapters"]


def test_help_lists_the_exit_codes_and_options_name_their_variables() -> None:
    runner = CliRunner()
    text = runner.invoke(cli, ["--help"]).output
    assert "Exit codes" in text
    for code in range(8):
        assert re.search(rf"\n\s+{code}  \w", text), code
    for command in ("route", "device", "doctor", "prewarm"):
        help_text = runner.invoke(cli, [command, "--help"]).output
        assert "SDS_BASE_URL" in help_text and "SDS_API_KEY" in help_text, command


def test_sandbox_on_a_busy_port_is_one_clear_line(sandbox: Sandbox) -> None:
    port = sandbox.url.rsplit(":", 1)[1]
    result = CliRunner().invoke(cli, ["sandbox", "--port", port])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.output + result.stderr


@pytest.mark.parametrize("kid", ["kid-1", "unknown-kid"])
def test_doctor_obtains_a_signed_jwt_token_or_names_the_refusal(
    make_sandbox: SandboxFactory, clean_env: None, tmp_path: Path, kid: str
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "kid-1", "use": "sig", "alg": "RS512"})
    sandbox = make_sandbox(api_key="app-key", jwks={"keys": [jwk]})
    pem = tmp_path / "private.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    # SDS takes the API key; the signed-JWT credentials (for PDS) are checked on their own by
    # obtaining one token from the platform's token endpoint.
    env = {
        "SDS_BASE_URL": sandbox.base_url,
        "SDS_API_KEY": "app-key",
        "SDS_CLIENT_ID": "app-key",
        "SDS_PRIVATE_KEY_FILE": str(pem),
        "SDS_KID": kid,
        "SDS_TOKEN_URL": sandbox.token_url,
    }
    code, out, err = _doctor(env)
    checks = _check_lines(out)
    assert checks["credentials accepted"] == "ok"  # the API key, for SDS
    if kid == "kid-1":
        assert code == 0, out + err
        assert checks["signed-JWT token"] == "ok"
        assert checks["pds accepts the token"] == "ok"  # PDS, asked with the token
        assert "valid for" in out
    else:
        assert code == 1
        assert checks["signed-JWT token"] == "FAIL"
    assert "BEGIN PRIVATE KEY" not in out + err
    assert "app-key" not in out.split("ok   plugins")[0]  # the client id is a secret too


def test_doctor_says_when_routes_to_a_patient_would_be_refused(clean_env: None) -> None:
    # INT's PDS takes a signed-JWT token; with only an API key, patient routes are refused.
    from sds_plugins import Settings
    from sds_plugins._tools._doctor import _pds

    check = _pds(Settings(env="int", api_key="k"))
    assert "needs signed-JWT credentials" in check.detail and "SDS_KID" in check.detail
    assert "not deployed to DEP" in _pds(Settings(env="dep", api_key="k")).detail


# -- doctor tells the truth: each misconfiguration fails its check ------------------------------


def _sandbox_env(sandbox: Sandbox, **extra: str) -> dict[str, str]:
    return {"SDS_BASE_URL": sandbox.base_url, **extra}


def _only_failure(out: str, name: str) -> str:
    """The one FAIL line, which must be ``name``'s; its detail."""
    failed = [line for line in out.splitlines() if line.startswith("FAIL ")]
    assert len(failed) == 1 and failed[0].startswith(f"FAIL {name}: "), out
    return failed[0].removeprefix(f"FAIL {name}: ")


def test_doctor_fails_when_an_adapter_refuses_every_route(
    sandbox: Sandbox, clean_env: None
) -> None:
    # Before: a warning on stderr, then "ok adapters", exit 0.
    code, out, err = _doctor(_sandbox_env(sandbox, SDS_GPCONNECT_SHARED_CACHE="maybe"))
    assert code == 1, out + err
    detail = _only_failure(out, "adapters")
    assert detail.startswith("gpconnect refuses every route: ")
    assert "SDS_GPCONNECT_SHARED_CACHE" in detail
    working = detail.rsplit("(working: ", 1)[1].rstrip(")").split(", ")
    assert {"ers", "ers-fhir", "example-ebxml", "mesh"} <= set(working)
    assert "gpconnect" not in working and working == sorted(working)
    assert "adapters" in err


def _certificate(
    tmp_path: Path, name: str, *, days: int = 30, expired: bool = False
) -> tuple[Path, Path]:
    """A self-signed certificate and its key (PEM files)."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    start = now - timedelta(days=days + 10) if expired else now - timedelta(days=1)
    end = now - timedelta(days=10) if expired else now + timedelta(days=days)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .sign(key, hashes.SHA256())
    )
    cert_path = tmp_path / f"{name}.pem"
    key_path = tmp_path / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_doctor_checks_the_tls_files_the_plugins_name(
    sandbox: Sandbox, clean_env: None, tmp_path: Path
) -> None:
    cert, key = _certificate(tmp_path, "spine-client", days=400)
    ca, _ = _certificate(tmp_path, "ca")
    env = _sandbox_env(
        sandbox,
        SDS_GPCONNECT_TLS_CERT=str(cert),
        SDS_GPCONNECT_TLS_KEY=str(key),
        SDS_GPCONNECT_TLS_CA_BUNDLE=str(ca),
        MESH_TLS__INT__CA_BUNDLE=str(ca),
    )
    code, out, err = _doctor(env)
    assert code == 0, out + err
    [line] = [line for line in out.splitlines() if line.startswith("ok   files: ")]
    assert f"SDS_GPCONNECT_TLS_CERT={cert}: certificate valid until" in line
    assert f"SDS_GPCONNECT_TLS_KEY={key}: private key" in line
    assert f"SDS_GPCONNECT_TLS_CA_BUNDLE={ca}: 1 valid CA certificate(s)" in line
    assert f"MESH_TLS__INT__CA_BUNDLE={ca}" in line  # nested settings are walked too


def _text(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


_BAD_FILES: dict[str, tuple[str, Callable[[Path], Path], str]] = {
    "missing": ("SDS_GPCONNECT_TLS_CERT", lambda tmp: tmp / "missing.pem", "no such file"),
    "a folder": ("SDS_GPCONNECT_TLS_CA_BUNDLE", lambda tmp: tmp, "not a regular file"),
    "not PEM": (
        "ERS_TLS_CERT",
        lambda tmp: _text(tmp, "not-pem.txt", "hello\n"),
        "no PEM certificate",
    ),
    "not a key": (
        "ERS_PRIVATE_KEY_FILE",
        lambda tmp: _text(tmp, "k.pem", "-----BEGIN PRIVATE KEY-----\nxx\n"),
        "not a PEM private key",
    ),
    "expired": (
        "MESH_CERT",
        lambda tmp: _certificate(tmp, "old", expired=True)[0],
        "the certificate expired on",
    ),
    "expired CA bundle": (
        "MESH_CA_BUNDLE",
        lambda tmp: _certificate(tmp, "old-ca", expired=True)[0],
        "every certificate in it has expired",
    ),
}


@pytest.mark.parametrize("case", sorted(_BAD_FILES))
def test_doctor_fails_for_a_tls_file_that_cannot_work(
    sandbox: Sandbox, clean_env: None, tmp_path: Path, case: str
) -> None:
    variable, make, reason = _BAD_FILES[case]
    path = make(tmp_path)
    code, out, err = _doctor(_sandbox_env(sandbox, **{variable: str(path)}))
    assert code == 1, out + err
    detail = _only_failure(out, "files")
    # A private key file's path is hidden, as SDS_PRIVATE_KEY_FILE's is in the configuration.
    shown = variable if variable.endswith("PRIVATE_KEY_FILE") else f"{variable}={path}"
    assert detail.startswith(f"{shown}: {reason}"), detail
    assert variable.endswith("PRIVATE_KEY_FILE") is (str(path) not in out)


def test_doctor_fails_when_pds_refuses_the_token(
    make_sandbox: SandboxFactory, clean_env: None, tmp_path: Path
) -> None:
    """The token endpoint issues a token, and PDS refuses it: the signed-JWT check alone said
    ok. Here the token comes from one sandbox and PDS is another's, which never issued it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "kid-1", "use": "sig", "alg": "RS512"})
    issuer = make_sandbox(api_key="app-key", jwks={"keys": [jwk]})
    pds = make_sandbox(api_key="app-key", jwks={"keys": [jwk]})
    pem = tmp_path / "private.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    env = {
        "SDS_BASE_URL": issuer.base_url,
        "SDS_API_KEY": "app-key",
        "SDS_PRIVATE_KEY_FILE": str(pem),
        "SDS_KID": "kid-1",
        "SDS_TOKEN_URL": issuer.token_url,
        "SDS_PDS_BASE_URL": pds.url + "/personal-demographics/FHIR/R4",
    }
    code, out, err = _doctor(env)
    assert code == 1, out + err
    checks = _check_lines(out)
    assert checks["signed-JWT token"] == "ok"
    detail = _only_failure(out, "pds accepts the token")
    assert "refused the token (401)" in detail
    # The probe read no patient: PDS saw one request, for a number that cannot be one.
    assert pds.stats()["requests"]

    # The control: PDS on the issuer itself accepts the token (and answers 400 to the probe).
    code, out, err = _doctor(
        {**env, "SDS_PDS_BASE_URL": issuer.url + "/personal-demographics/FHIR/R4"}
    )
    assert code == 0, out + err
    assert (
        "ok   pds accepts the token: " in out and "(400 to a request that reads no patient)" in out
    )


def test_pds_configured_on_the_live_platform_without_credentials_fails() -> None:
    from sds_plugins import Settings
    from sds_plugins._tools._doctor import _pds

    pds = "https://int.api.service.nhs.uk/personal-demographics/FHIR/R4"
    configured = _pds(Settings(env="int", api_key="k", pds_base_url=pds))
    assert not configured.ok and "SDS_KID" in configured.detail
    # Derived from the environment rather than configured: information, not a failure.
    assert _pds(Settings(env="int", api_key="k")).ok


def _free_port() -> int:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port: int = closed.getsockname()[1]
    return port


def test_doctor_fails_for_an_unreachable_broker_with_the_password_masked(
    sandbox: Sandbox, clean_env: None
) -> None:
    port = _free_port()
    url = f"amqp://sds:hunter2-secret@127.0.0.1:{port}/"
    code, out, err = _doctor(_sandbox_env(sandbox, SDS_WORKER_BROKER_URL=url))
    assert code == 1, out + err
    detail = _only_failure(out, "broker")
    assert detail == f"cannot reach amqp://sds:***@127.0.0.1:{port}/: Connection refused"
    assert "hunter2-secret" not in out + err


class _SilentServer:
    """A TCP server that accepts, sends ``greeting`` (or nothing), and holds the connection."""

    def __init__(self, greeting: bytes = b"") -> None:
        import threading

        self.greeting = greeting
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            while True:
                connection, _ = self.listener.accept()
                self.accepted.append(connection)
                if self.greeting:
                    connection.sendall(self.greeting)
        except OSError:
            return

    def close(self) -> None:
        self.listener.close()
        for connection in self.accepted:
            connection.close()


@pytest.mark.parametrize(
    ("scheme", "greeting", "verdict", "said"),
    [
        ("nats", b'INFO {"server_id":"x","max_payload":1048576}\r\n', "ok", "NATS sent INFO"),
        ("nats", b"", "FAIL", "sent no greeting within 0.5s"),
        ("amqp", b"", "FAIL", "sent no greeting within 0.5s"),
        ("amqp", b"HTTP/1.1 400 Bad Request\r\n\r\n", "FAIL", "did not answer as an AMQP 0-9-1"),
    ],
)
def test_doctor_asks_the_broker_for_its_greeting(
    sandbox: Sandbox,
    clean_env: None,
    monkeypatch: pytest.MonkeyPatch,
    scheme: str,
    greeting: bytes,
    verdict: str,
    said: str,
) -> None:
    from sds_plugins._tools import _doctor_services as doctor_module

    monkeypatch.setattr(doctor_module, "BROKER_TIMEOUT_S", 0.5)
    server = _SilentServer(greeting)
    try:
        url = f"{scheme}://127.0.0.1:{server.port}"
        code, out, err = _doctor(_sandbox_env(sandbox, SDS_WORKER_BROKER_URL=url))
    finally:
        server.close()
    line = next(line for line in out.splitlines() if "broker: " in line)
    assert line.startswith("ok   " if verdict == "ok" else "FAIL"), line
    assert said in line
    assert code == (0 if verdict == "ok" else 1), out + err


@pytest.mark.parametrize("variable", ["SDS_TEST_AMQP_URL", "SDS_TEST_NATS_URL"])
def test_doctor_passes_for_a_real_broker(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    url = os.environ.get(variable)
    if not url:
        pytest.skip(f"{variable} is not set (no local broker)")
    for name in list(os.environ):
        if name.startswith("SDS_"):
            monkeypatch.delenv(name)
    code, out, err = _doctor(_sandbox_env(sandbox, SDS_WORKER_BROKER_URL=url))
    assert code == 0, out + err
    line = next(line for line in out.splitlines() if "broker: " in line)
    assert "accepts connections" in line
    assert ("connection.start received" if url.startswith("amqp") else "NATS sent INFO") in line


def test_doctor_fails_for_invalid_worker_settings_and_options_file(
    sandbox: Sandbox, clean_env: None, tmp_path: Path
) -> None:
    url = "amqp://guest:guest@127.0.0.1:5672/"
    code, out, _ = _doctor(
        _sandbox_env(sandbox, SDS_WORKER_BROKER_URL=url, SDS_WORKER_CONCURRENCY="0")
    )
    assert code == 1
    assert _only_failure(out, "broker") == "invalid worker settings: SDS_WORKER_CONCURRENCY"
    options = tmp_path / "adapters.toml"
    options.write_text("[gpconnect\n")
    code, out, _ = _doctor(
        _sandbox_env(sandbox, SDS_WORKER_BROKER_URL=url, SDS_WORKER_CONFIG=str(options))
    )
    assert code == 1
    assert _only_failure(out, "broker").startswith("SDS_WORKER_CONFIG: cannot read adapter options")


def test_doctor_fails_on_a_plugin_that_cannot_load_and_checks_the_rest(
    sandbox: Sandbox, clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed plugin whose import raises, faked as tests/test_plugins.py fakes entry
    points (importlib.metadata patched): FAIL naming the line to disable it, other checks run."""
    import importlib.metadata

    from .test_plugins import FakeDist, FakeEntryPoint

    real = importlib.metadata.entry_points
    broken = FakeEntryPoint(
        "broken",
        ModuleNotFoundError("No module named 'lxml'"),
        FakeDist("sds-plugins-broken", "2.0"),
    )

    def with_broken(**params: Any) -> Any:
        found = list(real(**params))
        return [*found, broken] if params.get("group") == "sds_plugins" else found

    monkeypatch.setattr(importlib.metadata, "entry_points", with_broken)
    code, out, err = _doctor(_sandbox_env(sandbox))
    assert code == 1, out + err
    detail = _only_failure(out, "plugins")
    assert detail.startswith(
        "'broken' (sds-plugins-broken 2.0) failed to load: ModuleNotFoundError: No module "
        "named 'lxml'; to run without it: SDS_PLUGINS_DISABLE=broken"
    )
    adapters = next(line for line in out.splitlines() if line.startswith("ok   adapters: "))
    named = adapters.removeprefix("ok   adapters: ").split(", ")
    assert {"ers", "ers-fhir", "example-ebxml", "gpconnect", "mesh"} <= set(named)
    # With the line it names, doctor passes.
    code, out, err = _doctor(_sandbox_env(sandbox, SDS_PLUGINS_DISABLE="broken"))
    assert code == 0, out + err
