"""``sds-plugins route gpconnect`` with a TOML config file, as an operator would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from gpconnect_cases import CONSUMER_OPTIONS, GPC, SINGLE, SINGLE_ASID

from sds_plugins.sandbox import Sandbox


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDS_")}
    return subprocess.run(
        [sys.executable, "-m", "sds_plugins", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_route_from_the_command_line(gpc_sandbox: Sandbox, tmp_path: Path) -> None:
    config = tmp_path / "consumer.toml"
    identity = {k: v for k, v in CONSUMER_OPTIONS.items() if k != "practitioner_id"}
    config.write_text("[gpconnect]\n" + "".join(f'{k} = "{v}"\n' for k, v in identity.items()))
    args = ("route", "gpconnect", "--org", SINGLE, "--interaction", GPC, "--config", str(config))
    common = (
        "-o",
        "practitioner_id=10019",
        "--encounter",
        "e1",
        "--base-url",
        gpc_sandbox.base_url,
    )
    masked = _run(*args, *common)
    assert masked.returncode == 0, masked.stderr
    envelope = json.loads(masked.stdout)
    assert envelope["request"]["headers"]["Ssp-To"] == SINGLE_ASID
    assert envelope["request"]["headers"]["Authorization"] == "**********"
    full = _run(*args, *common, "--with-secrets")
    assert json.loads(full.stdout)["request"]["headers"]["Authorization"].startswith("Bearer ey")
    missing = _run(*args, "--base-url", gpc_sandbox.base_url)
    assert missing.returncode == 2
    assert "practitioner_id" in missing.stderr


def test_the_adapters_listing_describes_if_match() -> None:
    # if_match is required only for two interactions, which the schema's "required" cannot say:
    # the description does.
    listed = _run("adapters")
    assert listed.returncode == 0, listed.stderr
    [gpconnect] = [a for a in json.loads(listed.stdout)["adapters"] if a["name"] == "gpconnect"]
    [if_match] = [o for o in gpconnect["options"] if o["name"] == "if_match"]
    assert if_match["required"] is False
    assert "fhir:rest:update:appointment-1" in if_match["description"]
    assert "fhir:rest:cancel:appointment-1" in if_match["description"]
    assert 'W/"23"' in if_match["description"]
