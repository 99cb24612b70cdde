"""What a new user meets first: the example consumer file, numeric ASIDs, and every missing
option named at once (``endpoint``'s interaction is in tests/test_cli.py)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from sds_plugins import InvalidInputError, Router, Settings, normalise_asid
from sds_plugins._tools._demo import CONSUMER_TOML, CONSUMER_TOML_ADAPTERS, shell_route
from sds_plugins.sandbox import Sandbox

from ._reference import GPC_STRUCTURED, PSIS

ROOT = Path(__file__).resolve().parents[1]
CONSUMER = ROOT / CONSUMER_TOML
ASID = "200000000359"
GPCONNECT_REQUIRED = (
    "ssp_url",
    "system_url",
    "system_name",
    "system_version",
    "organization_ods",
    "organization_name",
    "practitioner_id",
    "practitioner_family_name",
)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SDS_")}
    environ["SDS_PLUGINS_LOAD"] = os.environ.get("SDS_PLUGINS_LOAD", "")
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "sds_plugins", *args],
        capture_output=True,
        text=True,
        env=environ,
        cwd=ROOT,  # the commands name examples/consumer.toml from a checkout
        timeout=60,
        check=False,
    )


# -- examples/consumer.toml ---------------------------------------------------------------------


def test_the_example_consumer_file_is_the_demos_consumer() -> None:
    from sds_plugins_example_ebxml import EbxmlExampleAdapter
    from sds_plugins_gpconnect import EXAMPLE_CONSUMER

    tables = tomllib.loads(CONSUMER.read_text())
    assert set(tables) == CONSUMER_TOML_ADAPTERS
    assert tables["gpconnect"] == dict(EXAMPLE_CONSUMER)
    assert tables["example-ebxml"] == {"from_asid": EbxmlExampleAdapter.example["from_asid"]}


def _demo_command(name: str) -> list[str]:
    """The command ``sds-plugins demo`` prints for adapter ``name``, as a shell would split it."""
    from sds_plugins_example_ebxml import EbxmlExampleAdapter
    from sds_plugins_gpconnect import GpConnectAdapter

    example = {"gpconnect": GpConnectAdapter, "example-ebxml": EbxmlExampleAdapter}[name].example
    words = shlex.split(shell_route(name, dict(example)).replace("\\\n", " "))
    assert words[:2] == ["sds-plugins", "route"]
    return words[1:]


@pytest.mark.parametrize("adapter", sorted(CONSUMER_TOML_ADAPTERS))
def test_the_demos_command_routes_with_the_file_against_the_sandbox(
    sandbox: Sandbox, adapter: str
) -> None:
    result = _cli(*_demo_command(adapter), env={"SDS_BASE_URL": sandbox.base_url})
    assert result.returncode == 0, result.stderr
    envelope = json.loads(result.stdout)
    assert envelope["adapter"] == adapter
    assert envelope["source"]["asid"] == ASID
    assert envelope["target"]["asid"]


def _readme_routes() -> list[list[str]]:
    """The README's ``sds-plugins route`` commands that use the example consumer file."""
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        if line.startswith("$ sds-plugins route ") and CONSUMER_TOML in line:
            commands.append(shlex.split(line.removeprefix("$ ").split("  #")[0])[1:])
    return commands


def test_the_readmes_route_with_the_example_file_runs(sandbox: Sandbox) -> None:
    commands = _readme_routes()
    assert commands, "the README shows no route with examples/consumer.toml"
    for command in commands:
        result = _cli(*command, env={"SDS_BASE_URL": sandbox.base_url})
        assert result.returncode == 0, (command, result.stderr)
        assert json.loads(result.stdout)["source"]["asid"] == ASID


# -- numeric ASIDs ------------------------------------------------------------------------------


def test_an_asid_given_as_a_number_becomes_its_text() -> None:
    assert normalise_asid(200000000359) == ASID
    assert normalise_asid(" 200000000359 ") == ASID


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "must be a string or an integer (12 digits), got bool"),
        (2.00000000359e11, "must be a string or an integer (12 digits), got float"),
        (20000000035, "consumer_asid: 20000000035 is not an ASID"),
        (2000000003590, "consumer_asid: 2000000003590 is not an ASID"),
        (-200000000359, "consumer_asid: -200000000359 is not an ASID"),
        (10**5000, "consumer_asid: a much longer number is not an ASID"),
    ],
    ids=["bool", "float", "11 digits", "13 digits", "negative", "5,000 digits"],
)
def test_numbers_that_are_not_asids_are_refused_naming_the_option(
    value: object, message: str
) -> None:
    with pytest.raises(InvalidInputError) as refused:
        normalise_asid(value, "consumer_asid")
    assert message in str(refused.value)
    assert len(str(refused.value)) < 200  # a 5,000-digit number is not echoed
    assert refused.value.field == "consumer_asid"


async def test_routes_take_numeric_asids_as_engines_send_them(sandbox: Sandbox) -> None:
    from sds_plugins_gpconnect import GpConnectAdapter

    async with Router(Settings(base_url=sandbox.base_url)) as router:
        example = {**GpConnectAdapter.example, "consumer_asid": int(ASID)}
        envelope = await router.route("gpconnect", **example)
        assert envelope.source.asid == ASID
        assert envelope.request is not None
        assert envelope.request.headers["Ssp-From"] == ASID  # text on the wire
        ebxml = await router.route(
            "example-ebxml", org="YES", interaction=PSIS, from_asid=int(ASID)
        )
        assert ebxml.source.asid == ASID


def test_a_numeric_asid_in_the_options_file_routes(sandbox: Sandbox, tmp_path: Path) -> None:
    config = tmp_path / "consumer.toml"
    # A TOML integer, as someone copying an ASID without quotes writes it.
    config.write_text(
        CONSUMER.read_text().replace(f'consumer_asid = "{ASID}"', f"consumer_asid = {ASID}")
    )
    assert tomllib.loads(config.read_text())["gpconnect"]["consumer_asid"] == int(ASID)
    result = _cli(
        "route", "gpconnect", "--org", "B82617", "--interaction", GPC_STRUCTURED,
        "--encounter", "e1", "--config", str(config),
        env={"SDS_BASE_URL": sandbox.base_url},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["source"]["asid"] == ASID


# -- missing options, together ------------------------------------------------------------------


async def _route_error(sandbox: Sandbox, **options: Any) -> InvalidInputError:
    async with Router(Settings(base_url=sandbox.base_url)) as router:
        with pytest.raises(InvalidInputError) as refused:
            await router.route(
                "gpconnect", org="B82617", interaction=GPC_STRUCTURED, encounter="e1", **options
            )
    return refused.value


async def test_every_missing_option_is_named_in_one_error(sandbox: Sandbox) -> None:
    error = await _route_error(sandbox, consumer_asid=ASID)
    message = str(error)
    assert message.startswith("gpconnect: " + ", ".join(GPCONNECT_REQUIRED) + ": are required")
    assert error.field == "ssp_url"


async def test_one_missing_option_reads_as_before(sandbox: Sandbox) -> None:
    from sds_plugins_gpconnect import EXAMPLE_CONSUMER

    options = {k: v for k, v in EXAMPLE_CONSUMER.items() if k != "practitioner_family_name"}
    error = await _route_error(sandbox, **options)
    assert str(error).startswith("gpconnect: practitioner_family_name: is required (")


async def test_a_wrong_option_is_named_and_the_missing_ones_listed(sandbox: Sandbox) -> None:
    error = await _route_error(sandbox, consumer_asid="not-an-asid")
    message = str(error)
    assert message.startswith("consumer_asid: 'not-an-asid' is not an ASID")
    assert message.endswith("; and missing: " + ", ".join(GPCONNECT_REQUIRED))
    assert error.field == "consumer_asid"


def test_the_cli_names_every_missing_option_on_one_line(sandbox: Sandbox) -> None:
    result = _cli(
        "route", "gpconnect", "--org", "B82617", "--interaction", GPC_STRUCTURED,
        "--encounter", "e1", "-o", f"consumer_asid={ASID}",
        env={"SDS_BASE_URL": sandbox.base_url},
    )  # fmt: skip
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert re.search(", ".join(GPCONNECT_REQUIRED) + ": are required", line), line
