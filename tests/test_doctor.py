"""``sds-plugins doctor`` and ``adapters``, and the small CLI promises: ``-v`` after the
command, exit codes in ``--help``, environment variables named in option help, a busy port in
one line, and an unreachable directory named by its URL."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from pathlib import Path

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
        "pds": "ok",
        "redis": "ok",
    }
    assert "without credentials (an open sandbox)" in out
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
