"""The command line, run as a real subprocess against the sandbox: output and exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sds_plugins.sandbox import Sandbox

from ._reference import GP2GP, GPC_STRUCTURED, PSIS

SDS = [sys.executable, "-m", "sds_plugins"]


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SDS_")}
    environ.update(env or {})
    return subprocess.run(
        [*SDS, *args], capture_output=True, text=True, env=environ, timeout=timeout, check=False
    )


def test_device(sandbox: Sandbox) -> None:
    result = run("device", "--org", "yes", "--interaction", PSIS, "--base-url", sandbox.base_url)
    assert result.returncode == 0, result.stderr
    [record] = json.loads(result.stdout)
    assert record["asid"] == "928942012545"
    assert set(record) == {"asid", "party_key", "ods_code", "manufacturer_ods", "interactions"}


def test_endpoint_reads_the_environment(sandbox: Sandbox) -> None:
    result = run(
        "endpoint", "--org", "X26", "--interaction", GP2GP, env={"SDS_BASE_URL": sandbox.base_url}
    )
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert len(records) == 2
    assert set(records[0]) == {
        "address",
        "party_key",
        "ods_code",
        "fqdn",
        "cpa_id",
        "mhs_id",
        "interaction",
        "reliability",
    }
    assert records[0]["reliability"]["retries"] == 2


def test_endpoint_shows_the_interaction_asked_for(sandbox: Sandbox) -> None:
    # B82617's MHS record lists many GP Connect interactions; structured record is not its
    # first (the record alone would show ...documents:fhir:rest:read:binary-1).
    result = run(
        "endpoint", "--org", "B82617", "--interaction", GPC_STRUCTURED,
        "--base-url", sandbox.base_url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [record] = json.loads(result.stdout)
    assert record["interaction"] == GPC_STRUCTURED
    # Without an interaction in the query, the record's own (first) one is all there is.
    by_key = run(
        "endpoint", "--org", "B82617", "--party-key", record["party_key"],
        "--base-url", sandbox.base_url,
    )  # fmt: skip
    assert by_key.returncode == 0, by_key.stderr
    assert json.loads(by_key.stdout)[0]["interaction"].startswith("urn:nhs:names:services:")


def test_plugins_marks_each_plugin_loaded() -> None:
    result = run("plugins")
    assert result.returncode == 0, result.stderr
    assert {p["status"] for p in json.loads(result.stdout)} == {"loaded"}


def test_no_records_is_exit_3(sandbox: Sandbox) -> None:
    result = run(
        "endpoint",
        "--org",
        "A99999",
        "--interaction",
        GPC_STRUCTURED,
        "--base-url",
        sandbox.base_url,
    )
    assert result.returncode == 3
    assert json.loads(result.stdout) == []
    assert "no matching records" in result.stderr
    assert "correlation_id=" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("device", "--org", "Y!S", "--interaction", PSIS),
        ("device", "--org", "YES", "--interaction", "psis"),
        ("endpoint", "--org", "YES"),
        ("device", "--org", "YES"),
        ("device", "--org", "YES", "--interaction", PSIS, "--correlation-id", "nope "),
    ],
)
def test_invalid_input_is_exit_2_and_sends_nothing(
    make_sandbox: Callable[..., Sandbox], args: tuple[str, ...]
) -> None:
    sb = make_sandbox()
    result = run(*args, "--base-url", sb.base_url)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") <= 3  # short, no traceback
    assert "Traceback" not in result.stderr
    assert sb.stats()["requests"] == {}


def test_endpoint_combination_message(sandbox: Sandbox) -> None:
    result = run("endpoint", "--org", "YES", "--base-url", sandbox.base_url)
    assert "org + interaction + party_key" in result.stderr


def test_unavailable_is_exit_5_with_correlation_id(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    sb.set_faults(outage=True, error_status=500)
    result = run("device", "--org", "YES", "--interaction", PSIS, "--base-url", sb.base_url)
    assert result.returncode == 5
    line = result.stderr.strip()
    assert line.startswith("error: DirectoryUnavailableError")
    assert "correlation_id=" in line
    assert "\n" not in line


def test_unreachable_is_exit_5() -> None:
    result = run(
        "device",
        "--org",
        "YES",
        "--interaction",
        PSIS,
        "--base-url",
        "http://127.0.0.1:1/x",
        env={"SDS_RETRY_ATTEMPTS": "1"},
    )
    assert result.returncode == 5
    assert "unreachable" in result.stderr


def test_auth_refused_is_exit_6(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox(api_key="right")
    result = run(
        "device",
        "--org",
        "YES",
        "--interaction",
        PSIS,
        "--base-url",
        sb.base_url,
        "--api-key",
        "wrong",
    )
    assert result.returncode == 6
    assert "wrong" not in result.stderr
    ok = run(
        "device",
        "--org",
        "YES",
        "--interaction",
        PSIS,
        env={"SDS_BASE_URL": sb.base_url, "SDS_API_KEY": "right"},
    )
    assert ok.returncode == 0


def test_bad_configuration_is_exit_2() -> None:
    result = run("device", "--org", "YES", "--interaction", PSIS, env={"SDS_ENV": "production"})
    assert result.returncode == 2
    assert "neither an environment" in result.stderr


def test_plugins_lists_the_built_ins() -> None:
    result = run("plugins")
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert "sds_plugins.selection" in plugins
    assert plugins["sds_plugins.sds"]["hooks"] == ["sds_provide_auth", "sds_register_sources"]
    assert plugins["sds_plugins.sds"]["distribution"] == "sds-plugins"


def test_plugins_honours_disable() -> None:
    result = run("plugins", env={"SDS_PLUGINS_DISABLE": "sds_plugins.selection"})
    names = {p["name"] for p in json.loads(result.stdout)}
    assert "sds_plugins.selection" not in names


def test_route_unknown_adapter_is_exit_2(sandbox: Sandbox) -> None:
    result = run(
        "route", "nope", "--org", "YES", "--interaction", PSIS, "--base-url", sandbox.base_url
    )
    assert result.returncode == 2
    assert "no adapter named 'nope'" in result.stderr


def test_route_option_syntax(sandbox: Sandbox) -> None:
    result = run("route", "nope", "--org", "YES", "--interaction", PSIS, "-o", "novalue")
    assert result.returncode == 2
    assert "key=value" in result.stderr


def test_sandbox_command(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [*SDS, "sandbox", "--port", "0", "--synthetic", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("sandbox listening on http://127.0.0.1:")
        url = line.removeprefix("sandbox listening on ")
        result = run(
            "device",
            "--org",
            "YES",
            "--interaction",
            PSIS,
            "--base-url",
            f"{url}/spine-directory/FHIR/R4",
        )
        assert result.returncode == 0, result.stderr
        # The default data routes the README's GP Connect example: B82617's accredited system.
        gpc = "urn:nhs:names:services:gpconnect:fhir:operation:gpc.getstructuredrecord-1"
        base = f"{url}/spine-directory/FHIR/R4"
        device = run("device", "--org", "B82617", "--interaction", gpc, "--base-url", base)
        assert device.returncode == 0, device.stderr
        assert "918999198993" in device.stdout
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=10)
    assert process.returncode in (0, -signal.SIGINT)


def test_python_dash_m_and_help() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("device", "endpoint", "route", "prewarm", "plugins", "sandbox", "demo"):
        assert command in result.stdout


# The example third-party adapter is installed by `make` and found through its entry point.
EXAMPLE = "example-ebxml"


def test_route_prints_a_masked_envelope(sandbox: Sandbox, tmp_path: Path) -> None:
    config = tmp_path / "sender.toml"
    config.write_text(f'[{EXAMPLE}]\nfrom_asid = "200000000359"\n')
    result = run(
        "route",
        EXAMPLE,
        "--org",
        "YES",
        "--interaction",
        PSIS,
        "--config",
        str(config),
        "--base-url",
        sandbox.base_url,
    )
    assert result.returncode == 0, result.stderr
    envelope = json.loads(result.stdout)
    assert envelope["adapter"] == EXAMPLE
    assert envelope["target"]["asid"] == "928942012545"
    assert envelope["source"]["asid"] == "200000000359"
    assert envelope["provenance"]["cache"] == "miss"


def test_route_option_overrides_config_and_bad_option_is_exit_2(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    config = tmp_path / "sender.toml"
    config.write_text(f'[{EXAMPLE}]\nfrom_asid = "200000000359"\n')
    result = run(
        "route",
        EXAMPLE,
        "--org",
        "YES",
        "--interaction",
        PSIS,
        "--config",
        str(config),
        "-o",
        "from_asid=12",
        "--base-url",
        sandbox.base_url,
    )
    assert result.returncode == 2
    assert "from_asid" in result.stderr


def test_route_ambiguous_is_exit_4(sandbox: Sandbox) -> None:
    result = run(
        "route", EXAMPLE, "--org", "X26", "--interaction", GP2GP, "--base-url", sandbox.base_url
    )
    assert result.returncode == 4
    assert "X26-9199246" in result.stderr and "X26-820918" in result.stderr


REDIS_URL = os.environ.get("SDS_TEST_REDIS_URL", "")


def _prewarm(sb: Sandbox, orgs: Path, *extra: str, env: dict[str, str] | None = None) -> Any:
    return run(
        "prewarm",
        "--adapter",
        EXAMPLE,
        "--interaction",
        PSIS,
        "--orgs",
        str(orgs),
        "--quiet",
        "--base-url",
        sb.base_url,
        *extra,
        env=env,
    )


def test_prewarm_refuses_to_warm_a_cache_that_dies_with_it(
    make_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    sb = make_sandbox()
    orgs = tmp_path / "orgs.txt"
    orgs.write_text("YES\n")
    result = _prewarm(sb, orgs)
    assert result.returncode == 2
    assert "SDS_REDIS_URL" in result.stderr
    assert sb.stats()["requests"] == {}  # refused before anything was sent


@pytest.mark.skipif(not REDIS_URL, reason="needs a real Redis: set SDS_TEST_REDIS_URL")
def test_prewarm_summary(make_sandbox: Callable[..., Sandbox], tmp_path: Path) -> None:
    sb = make_sandbox()
    orgs = tmp_path / "orgs.txt"
    orgs.write_text("# practices\nYES\nA99999\n\nX26  # moving supplier\nyes\n")
    env = {"SDS_REDIS_URL": REDIS_URL, "SDS_REDIS_PREFIX": f"sds-test-{uuid.uuid4().hex}:"}
    result = _prewarm(sb, orgs, env=env)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["organisations"], summary["duplicates"]) == (3, 1)
    assert (summary["resolved"], summary["not_found"]) == (1, 2)
    assert summary["directory_requests"] == sum(sb.stats()["requests"].values())
    assert summary["exit_code"] == 0
    assert summary["failures"]["A99999"]["error"] == "NotFoundError"
    assert summary["failures"]["A99999"]["correlation_id"]

    # The directory fails: exit 5, and each failure says what and with which correlation id.
    sb.set_faults(outage=True, error_status=500)
    orgs.write_text("B82617\nR1A14\n")
    result = _prewarm(sb, orgs, env=env)
    assert result.returncode == 5, result.stderr
    failures = json.loads(result.stdout)["failures"]
    assert set(failures) == {"B82617", "R1A14"}
    for failure in failures.values():
        assert failure["error"] in {"DirectoryUnavailableError", "BreakerOpenError"}
        assert failure["message"]
        assert failure["correlation_id"]


def test_without_the_sandbox_extra_routing_works_and_the_sandbox_says_what_to_install() -> None:
    # Run as if starlette were not installed: a deployment that only routes.
    blocked = "import sys; sys.modules['starlette'] = None; "
    routing = subprocess.run(
        [
            sys.executable,
            "-c",
            blocked + "import sds_plugins, sds_plugins.testing, sds_plugins.adapters; "
            "from sds_plugins import Router, Settings; Router(Settings()); print('ok')",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert routing.returncode == 0, routing.stderr
    assert routing.stdout.strip() == "ok"
    expected = {
        "sandbox": "error: the SDS sandbox needs starlette: pip install 'sds-plugins[sandbox]'",
        "demo": "error: the SDS sandbox needs starlette: pip install 'sds-plugins[sandbox]'",
        "serve": "error: serve needs starlette: pip install 'sds-plugins[serve]'",
    }
    for command, line in expected.items():
        refused = subprocess.run(
            [
                sys.executable,
                "-c",
                blocked + f"from sds_plugins._tools._cli import main; main([{command!r}])",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.strip().splitlines() == [line]
