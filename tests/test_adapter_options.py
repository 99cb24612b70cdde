"""Per-adapter options from a file, in Python: the public loader and ``Router`` defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import sds_plugins_example_ebxml as example

from sds_plugins import (
    ConfigurationError,
    InvalidInputError,
    PluginHost,
    Router,
    Settings,
    load_adapter_options,
)
from sds_plugins.sandbox import Sandbox

from ._reference import PSIS

EXAMPLE = "example-ebxml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "adapters.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_every_table_is_one_adapters_options(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '[example-ebxml]\nfrom_asid = "200000000359"\n\n'
        '[gpconnect]\nconsumer_asid = "200000000359"\nretries = 3\n',
    )
    assert load_adapter_options(path) == {
        EXAMPLE: {"from_asid": "200000000359"},
        "gpconnect": {"consumer_asid": "200000000359", "retries": 3},
    }
    assert load_adapter_options(str(path)) == load_adapter_options(path)
    assert load_adapter_options(_write(tmp_path, "")) == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('from_asid = "200000000359"\n', "[from_asid] must be a table of options, not a str"),
        ("[example-ebxml\n", "cannot read adapter options"),
        ("[example-ebxml]\nfrom_asid = \n", "cannot read adapter options"),
    ],
)
def test_a_file_that_is_not_tables_of_options_is_a_configuration_error(
    tmp_path: Path, text: str, message: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigurationError, match=message.replace("[", r"\[")) as info:
        load_adapter_options(path)
    assert str(path) in str(info.value)


def test_a_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read adapter options"):
        load_adapter_options(tmp_path / "nope.toml")


def test_router_rejects_adapter_options_that_are_not_tables() -> None:
    with pytest.raises(ConfigurationError, match="must be a table"):
        Router(Settings(), adapter_options={EXAMPLE: "from_asid=1"})  # type: ignore[dict-item]


@pytest.fixture
def host() -> PluginHost:
    host = PluginHost(load_entrypoints=False, environ={})
    host.register(example, name="example_ebxml")
    return host


async def test_router_defaults_apply_and_a_routes_own_options_win(
    sandbox: Sandbox, host: PluginHost
) -> None:
    defaults = {EXAMPLE: {"from_asid": "200000000359"}, "other": {"from_asid": "nonsense"}}
    async with Router(
        Settings(base_url=sandbox.base_url), host=host, adapter_options=defaults
    ) as router:
        envelope = await router.route(EXAMPLE, org="YES", interaction=PSIS)
        assert envelope.source.asid == "200000000359"

        own = await router.route(EXAMPLE, org="YES", interaction=PSIS, from_asid="200000000123")
        assert own.source.asid == "200000000123"
    # The router copied the defaults: changing the caller's mapping later changes nothing.
    assert router.adapter_options[EXAMPLE] is not defaults[EXAMPLE]


async def test_defaults_are_validated_like_a_routes_options(
    sandbox: Sandbox, host: PluginHost
) -> None:
    async with Router(
        Settings(base_url=sandbox.base_url),
        host=host,
        adapter_options={EXAMPLE: {"from_asid": "12"}},
    ) as router:
        with pytest.raises(InvalidInputError, match="from_asid"):
            await router.route(EXAMPLE, org="YES", interaction=PSIS)


def test_route_config_goes_through_the_same_loader(sandbox: Sandbox, tmp_path: Path) -> None:
    from .test_cli import run

    path = _write(tmp_path, f'{EXAMPLE} = "from_asid=200000000359"\n')
    result = run(
        "route",
        EXAMPLE,
        "--org",
        "YES",
        "--interaction",
        PSIS,
        "--config",
        str(path),
        "--base-url",
        sandbox.base_url,
    )
    assert result.returncode == 2
    assert f"[{EXAMPLE}] must be a table of options" in result.stderr
