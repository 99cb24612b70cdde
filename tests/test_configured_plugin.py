"""The one policy for plugins configured by settings (``ConfiguredPlugin``, ``PluginSettings``).

A misconfigured plugin's own routes fail with a :class:`ConfigurationError` naming the
variable (never its value) before any request; the router still starts and every other
adapter keeps routing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import ClassVar

import pytest
from pydantic_settings import SettingsConfigDict

from sds_plugins import (
    Adapter,
    ConfigurationError,
    ConfiguredPlugin,
    SignedJwtSettings,
)
from sds_plugins.sandbox import Sandbox
from sds_plugins.testing import RegisterPlugin, RouterFactory

from ._adapters import JoinAdapter, JoinPlugin
from ._reference import PSIS

SECRET = "s3cret-client-id"


class JoinSettings(SignedJwtSettings):
    model_config = SettingsConfigDict(env_prefix="JOINTEST_")
    configures: ClassVar[str] = "join-test"
    url_fields: ClassVar[tuple[str, ...]] = ("token_url", "base_url")

    base_url: str | None = None


class ConfiguredJoin(ConfiguredPlugin[JoinSettings]):
    settings_class = JoinSettings
    adapter_names = ("join",)

    def check(self, settings: JoinSettings) -> None:
        if settings.configured_auth():
            settings.signed_jwt_auth("https://example.invalid/oauth2/token")

    def adapters(self, settings: JoinSettings) -> Iterable[Adapter]:
        return (JoinAdapter(),)


class PlainJoin(JoinAdapter):
    name = "join-plain"


class PlainPlugin(JoinPlugin):
    def __init__(self) -> None:
        self.adapter = PlainJoin()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("CLIENT_ID", "API_KEY", "KID", "PRIVATE_KEY", "TOKEN_URL", "BASE_URL"):
        monkeypatch.delenv(f"JOINTEST_{variable}", raising=False)


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("JOINTEST_TOKEN_URL", f"https://{SECRET}@host/token", "JOINTEST_TOKEN_URL"),
        ("JOINTEST_BASE_URL", f"not a url {SECRET}", "JOINTEST_BASE_URL"),
        ("JOINTEST_CLIENT_ID", SECRET, "JOINTEST_KID"),  # half a set of credentials
    ],
)
async def test_a_misconfigured_plugin_fails_only_its_own_routes(
    variable: str,
    value: str,
    named: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    sds_sandbox: Sandbox,
    sds_register_plugin: RegisterPlugin,
    sds_router_factory: RouterFactory,
) -> None:
    monkeypatch.setenv(variable, value)
    sds_register_plugin(ConfiguredJoin())
    sds_register_plugin(PlainPlugin())
    with caplog.at_level(logging.WARNING, logger="sds_plugins.plugins"):
        router = await sds_router_factory()  # starts regardless
    assert "join" in router.adapters
    assert named in caplog.text and SECRET not in caplog.text
    with pytest.raises(ConfigurationError, match=named) as refused:
        await router.route("join", org="Y12345", interaction="urn:x")
    assert SECRET not in str(refused.value) and SECRET not in repr(refused.value)
    assert sds_sandbox.stats()["requests"] == {}  # refused before any lookup
    with pytest.raises(ConfigurationError, match=named):
        await router.route("join", org="Y12345", interaction="urn:x")
    # Another plugin's adapter is not affected.
    other = await router.route("join-plain", org="YES", interaction=PSIS)
    assert other.target.ods_code == "YES"


async def test_settings_are_read_when_a_router_starts_and_given_settings_win(
    monkeypatch: pytest.MonkeyPatch,
    sds_register_plugin: RegisterPlugin,
    sds_router_factory: RouterFactory,
) -> None:
    env_plugin = ConfiguredJoin()
    given = ConfiguredJoin(JoinSettings(base_url="https://given.example"))
    monkeypatch.setenv("JOINTEST_BASE_URL", "not a url")
    assert given.settings.base_url == "https://given.example"  # the environment is not read
    with pytest.raises(ConfigurationError, match="JOINTEST_BASE_URL"):
        env_plugin.settings  # noqa: B018 - reading it loads
    monkeypatch.setenv("JOINTEST_BASE_URL", "https://fixed.example")  # fixed before a start
    sds_register_plugin(env_plugin)
    router = await sds_router_factory()
    assert type(router.adapters["join"]) is JoinAdapter
    assert repr(env_plugin) == "ConfiguredJoin(env)" and repr(given) == "ConfiguredJoin(configured)"


def test_settings_errors_list_every_missing_variable_and_no_value() -> None:
    settings = JoinSettings(client_id=SECRET)
    with pytest.raises(ConfigurationError) as missing:
        settings.signed_jwt_auth("https://example.invalid/token", purpose="join auth")
    message = str(missing.value)
    assert message.startswith("join auth needs ")
    assert "JOINTEST_PRIVATE_KEY_FILE (or JOINTEST_PRIVATE_KEY)" in message
    assert "JOINTEST_KID" in message and "JOINTEST_CLIENT_ID" not in message
    assert SECRET not in message and SECRET not in repr(settings)
    assert JoinSettings.variable("token_url") == "JOINTEST_TOKEN_URL"
