"""The ``ers-fhir`` adapter: catalogue, e-RS headers, and the bearer token from the sandbox."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sds_plugins_ers import (
    FHIR_INTERACTION_PREFIX,
    USER_CONTEXT_HEADERS,
    ErsSettings,
)

from sds_plugins import (
    AuthenticationError,
    ConfigurationError,
    InvalidInputError,
    LookupEvent,
    Router,
    hookimpl,
)
from sds_plugins.sandbox import Sandbox
from sds_plugins.testing import RegisterPlugin, RouterFactory

# The ers_router fixture (conftest.py): ``await ers_router(settings=None, sandbox=None)``.
ErsRouterFactory = Callable[..., Awaitable[Router]]
Settings = Callable[..., ErsSettings]

A005 = f"{FHIR_INTERACTION_PREFIX}a005-retrieve-referral-request"
A008 = f"{FHIR_INTERACTION_PREFIX}a008-retrieve-worklist"
A030 = f"{FHIR_INTERACTION_PREFIX}a030-retrieve-business-functions"
A042 = f"{FHIR_INTERACTION_PREFIX}a042-retrieve-attachment"
A033 = f"{FHIR_INTERACTION_PREFIX}a033-retrieve-healthcare-service"
UBRN = "000000070000"
USER_TOKEN = "cis2-user-token-0123456789"
CLINICIAN: dict[str, Any] = {"business_function": "SERVICE_PROVIDER_CLINICIAN"}
# A user-restricted route: the caller's CIS2 token, as the adapter requires in that mode.
AS_USER: dict[str, Any] = {"user_access_token": USER_TOKEN, **CLINICIAN}
SPCA = "SERVICE_PROVIDER_CLINICIAN_ADMIN"


def _token_requests(sandbox: Sandbox) -> int:
    return int(sandbox.stats()["requests"].get("/oauth2/token", 0))


async def test_many_envelopes_share_one_token_from_the_signed_jwt_exchange(
    oauth_sandbox: Sandbox, ers_settings: Settings, ers_router: ErsRouterFactory
) -> None:
    router = await ers_router(ers_settings(), sandbox=oauth_sandbox)
    concurrent = await asyncio.gather(
        *(router.route("ers-fhir", org="R69", interaction=A005, ubrn=UBRN) for _ in range(20))
    )
    later = [await router.route("ers-fhir", org="R69", interaction=A008) for _ in range(5)]
    envelopes = [*concurrent, *later]

    assert _token_requests(oauth_sandbox) == 1
    assert router.sources["ers"].auth.tokens_fetched == 1  # type: ignore[attr-defined]
    authorizations = {e.to_message()["request"]["headers"]["Authorization"] for e in envelopes}
    assert len(authorizations) == 1
    [authorization] = authorizations
    assert authorization.startswith("Bearer ")
    # The platform (here the sandbox) accepts the token it issued, where a bearer token is
    # what an API takes (its PDS; SDS takes only the API key).
    from sds_plugins.sandbox import SANDBOX_PATIENTS

    async with httpx.AsyncClient() as client:
        response = await client.get(
            f"{oauth_sandbox.url}/personal-demographics/FHIR/R4/Patient/"
            f"{SANDBOX_PATIENTS['gpconnect']}",
            headers={"Authorization": authorization, "X-Request-ID": str(uuid.uuid4())},
        )
    assert response.status_code == 200


async def test_user_restricted_envelopes_carry_the_users_token_and_the_user_context(
    oauth_sandbox: Sandbox, ers_settings: Settings, ers_router: ErsRouterFactory
) -> None:
    router = await ers_router(ers_settings(access_mode="user-restricted"), sandbox=oauth_sandbox)
    envelope = await router.route(
        "ers-fhir",
        org="r69",
        interaction=A005,
        ubrn=UBRN,
        user_access_token=USER_TOKEN,
        business_function=SPCA,
        on_behalf_of="000000000101",
    )
    request = envelope.request
    assert (request.method, request.url) == (
        "GET",
        f"https://sandbox.api.service.nhs.uk/referrals/FHIR/STU3/ReferralRequest/{UBRN}",
    )
    headers = envelope.to_message()["request"]["headers"]
    assert headers["Authorization"] == f"Bearer {USER_TOKEN}"
    assert headers["NHSD-eRS-Business-Function"] == SPCA
    assert headers["NHSD-End-User-Organisation-ODS"] == "R69"
    assert headers["NHSD-eRS-On-Behalf-Of-User-ID"] == "000000000101"
    assert envelope.extensions["ers"]["access_mode"] == "user-restricted"
    # The user's token is the bearer: no signed-JWT exchange, no lookup at all.
    assert oauth_sandbox.stats()["requests"] == {}
    assert envelope.provenance.lookups == ()
    assert headers["X-Correlation-ID"] == envelope.provenance.correlation_id
    assert headers["Accept"] == "application/fhir+json"
    assert envelope.extensions["ers"]["operation"] == "A005"
    assert envelope.expires_at > envelope.provenance.resolved_at


async def test_the_token_is_never_printed(
    oauth_sandbox: Sandbox,
    ers_settings: Settings,
    sds_register_plugin: RegisterPlugin,
    sds_router_factory: RouterFactory,
) -> None:
    from sds_plugins_ers import ErsPlugin

    events: list[LookupEvent] = []

    class Listener:
        @hookimpl
        def sds_lookup_completed(self, event: LookupEvent) -> None:
            events.append(event)

    sds_register_plugin(ErsPlugin(ers_settings()), name="ers")
    sds_register_plugin(Listener())
    router = await sds_router_factory(oauth_sandbox)
    envelope = await router.route("ers-fhir", org="R69", interaction=A005, ubrn=UBRN)
    token = envelope.to_message()["request"]["headers"]["Authorization"].split()[1]

    printed = [str(envelope), repr(envelope), envelope.model_dump_json(), *map(repr, events)]
    assert events
    assert all(token not in text for text in printed)


async def test_application_restricted_mode_sends_no_user_context(
    oauth_sandbox: Sandbox, ers_settings: Settings, ers_router: ErsRouterFactory
) -> None:
    settings = ers_settings(access_mode="application-restricted", business_function="COMMISSIONER")
    router = await ers_router(settings, sandbox=oauth_sandbox)
    envelope = await router.route("ers-fhir", org="R69", interaction=A042, attachment_id="c5d2-1")

    assert USER_CONTEXT_HEADERS.isdisjoint(envelope.request.headers)
    assert envelope.request.url.endswith("/R4/Binary/c5d2-1")
    assert "Authorization" in envelope.request.headers
    assert envelope.extensions["ers"]["access_mode"] == "application-restricted"

    with pytest.raises(InvalidInputError, match="not allowed in application-restricted"):
        await router.route("ers-fhir", org="R69", interaction=A005, ubrn=UBRN, **CLINICIAN)
    with pytest.raises(InvalidInputError, match="user-restricted access only"):
        await router.route("ers-fhir", org="R69", interaction=A030)


async def test_practitioner_roles_take_no_user_context(
    oauth_sandbox: Sandbox, ers_settings: Settings, ers_router: ErsRouterFactory
) -> None:
    settings = ers_settings(access_mode="user-restricted", business_function="REFERRING_ADMIN")
    router = await ers_router(settings, oauth_sandbox)
    envelope = await router.route(
        "ers-fhir", org="R69", interaction=A030, user_access_token=USER_TOKEN
    )
    assert envelope.request.url.endswith("/R4/PractitionerRole")
    assert USER_CONTEXT_HEADERS.isdisjoint(envelope.request.headers)
    with pytest.raises(InvalidInputError, match="takes no business_function"):
        await router.route("ers-fhir", org="R69", interaction=A030, **AS_USER)


@pytest.mark.parametrize(
    ("org", "interaction", "options", "field"),
    [
        ("R69", A005, {"ubrn": UBRN, "business_function": "SURGEON"}, "business_function"),
        ("R69", A005, {"ubrn": UBRN, "business_function": "COMMISSIONER"}, "business_function"),
        ("R69", A005, {"ubrn": UBRN}, "business_function"),
        ("R69\r\nX-Evil: 1", A005, {"ubrn": UBRN, **CLINICIAN}, "org"),
        ("R6", A005, {"ubrn": UBRN, **CLINICIAN}, "org"),
        ("R69", A005, CLINICIAN, "ubrn"),
        ("R69", A005, {"ubrn": "12/../34", **CLINICIAN}, "ubrn"),
        ("R69", A008, {"ubrn": UBRN, **CLINICIAN}, "ubrn"),
        ("R69", A005, {"ubrn": UBRN, "on_behalf_of": "bob", **CLINICIAN}, "on_behalf_of"),
        ("R69", f"{FHIR_INTERACTION_PREFIX}a999-nothing", CLINICIAN, "interaction"),
        ("R69", A005, {"ubrn": UBRN, "colour": "red", **CLINICIAN}, "colour"),
        # On-behalf-of: required for SPCA where the operation lists it, refused otherwise.
        ("R69", A005, {"ubrn": UBRN, "business_function": SPCA}, "on_behalf_of"),
        ("R69", A042, {"attachment_id": "a1", "business_function": SPCA}, "on_behalf_of"),
        ("R69", A005, {"ubrn": UBRN, "on_behalf_of": "000000000101", **CLINICIAN}, "on_behalf_of"),
        (
            "R69",
            A033,
            {
                "service_id": "1",
                "business_function": "REFERRING_CLINICIAN",
                "on_behalf_of": "000000000101",
            },
            "on_behalf_of",
        ),
        (
            "R69",
            A005,
            {"ubrn": UBRN, "on_behalf_of": "0000000001010", "business_function": SPCA},
            "on_behalf_of",
        ),
        # The user's token: present, and a bearer token.
        ("R69", A005, {"ubrn": UBRN, "user_access_token": None, **CLINICIAN}, "user_access_token"),
        (
            "R69",
            A005,
            {"ubrn": UBRN, "user_access_token": "secret with spaces", **CLINICIAN},
            "user_access_token",
        ),
        (
            "R69",
            A005,
            {"ubrn": UBRN, "user_access_token": "secret\r\nX: 1", **CLINICIAN},
            "user_access_token",
        ),
        ("R69", A005, {"ubrn": UBRN, "user_access_token": 42, **CLINICIAN}, "user_access_token"),
        (
            "R69",
            A005,
            {"ubrn": UBRN, "user_access_token": lambda: "", **CLINICIAN},
            "user_access_token",
        ),
    ],
)
async def test_invalid_input_is_refused_and_nothing_is_sent(
    oauth_sandbox: Sandbox,
    ers_settings: Settings,
    ers_router: ErsRouterFactory,
    org: str,
    interaction: str,
    options: dict[str, Any],
    field: str,
) -> None:
    router = await ers_router(ers_settings(access_mode="user-restricted"), sandbox=oauth_sandbox)
    options = {"user_access_token": USER_TOKEN, **options}
    if options["user_access_token"] is None:
        del options["user_access_token"]
    with pytest.raises(InvalidInputError) as info:
        await router.route("ers-fhir", org=org, interaction=interaction, **options)
    token = options.get("user_access_token")
    if isinstance(token, str):
        assert token not in str(info.value)  # a credential is never repeated
    assert info.value.field == field
    assert oauth_sandbox.stats()["requests"] == {}


async def test_unknown_interactions_list_the_catalogue(ers_router: ErsRouterFactory) -> None:
    router = await ers_router()
    with pytest.raises(InvalidInputError) as info:
        await router.route("ers-fhir", org="R69", interaction="urn:nhs:names:services:ers:x")
    assert A005 in str(info.value)
    assert A042 in str(info.value)


async def test_without_credentials_nothing_is_sent(
    oauth_sandbox: Sandbox, ers_router: ErsRouterFactory
) -> None:
    router = await ers_router(ErsSettings(), sandbox=oauth_sandbox)
    with pytest.raises(ConfigurationError) as info:
        await router.route("ers-fhir", org="R69", interaction=A005, ubrn=UBRN)
    # The default is application-restricted: the message says what that needs, and the way out.
    message = str(info.value)
    assert "application-restricted" in message
    assert all(name in message for name in ("ERS_CLIENT_ID", "ERS_KID", "ERS_PRIVATE_KEY_FILE"))
    assert "ERS_ACCESS_MODE=user-restricted" in message
    assert oauth_sandbox.stats()["requests"] == {}


async def test_a_refused_assertion_is_an_authentication_error(
    oauth_sandbox: Sandbox, ers_settings: Settings, ers_router: ErsRouterFactory
) -> None:
    router = await ers_router(ers_settings(kid="unknown-kid"), sandbox=oauth_sandbox)
    with pytest.raises(AuthenticationError):
        await router.route("ers-fhir", org="R69", interaction=A005, ubrn=UBRN)


def test_incomplete_credentials_are_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="ERS_KID"):
        ErsSettings(client_id="key", private_key="-----BEGIN...").build_auth()


def test_environment_and_token_url() -> None:
    settings = ErsSettings(env="int")
    assert settings.resolved_base_url() == "https://int.api.service.nhs.uk/referrals/FHIR"
    assert settings.resolved_token_url() == "https://int.api.service.nhs.uk/oauth2/token"


async def test_broken_credentials_fail_e_rs_routes_not_the_router(
    sds_sandbox: Sandbox, ers_router: ErsRouterFactory
) -> None:
    router = await ers_router(ErsSettings(client_id="key-without-kid-or-private-key"))
    assert "ers-fhir" in router.adapters  # the router started
    with pytest.raises(ConfigurationError, match="ERS_KID"):
        await router.route("ers-fhir", org="R69", interaction=A005, ubrn=UBRN)
    assert sds_sandbox.stats()["requests"] == {}


def test_invalid_settings_name_the_variable_not_its_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sds_plugins_ers.plugin import ErsPlugin

    monkeypatch.setenv("ERS_TOKEN_TIMEOUT_S", "secret-looking-value")
    with pytest.raises(ConfigurationError) as info:
        ErsPlugin().settings  # noqa: B018 - reading it loads
    assert "ERS_TOKEN_TIMEOUT_S" in str(info.value)
    assert "secret-looking-value" not in str(info.value)


# Values that would build another URL than the operation's (``.../R4/Binary/..`` is normalised
# by httpx to ``.../R4/``, bearer token attached), or smuggle a second line or a lookalike.
HOSTILE_PATH_VALUES = [
    "..",
    ".",
    "%2e%2e",
    "%2E.",
    "..;",
    "a/b",
    "a%2fb",
    "a\\b",
    "x\n",
    "",
    "ä1",
    "a" * 65,
]


@pytest.mark.parametrize(
    ("interaction", "option"), [(A042, "attachment_id"), (A033, "service_id"), (A005, "ubrn")]
)
@pytest.mark.parametrize("value", HOSTILE_PATH_VALUES)
async def test_hostile_path_parameters_are_refused_before_any_request(
    oauth_sandbox: Sandbox,
    ers_settings: Settings,
    ers_router: ErsRouterFactory,
    interaction: str,
    option: str,
    value: str,
) -> None:
    settings = ers_settings(access_mode="application-restricted")
    router = await ers_router(settings, sandbox=oauth_sandbox)
    with pytest.raises(InvalidInputError) as info:
        await router.route("ers-fhir", org="R69", interaction=interaction, **{option: value})
    assert info.value.field == option
    assert option in str(info.value)
    assert oauth_sandbox.stats()["requests"] == {}


@pytest.mark.parametrize("ubrn", ["000000070000\n", "00000007000\uff10", " 000000070000"])
async def test_a_ubrn_must_be_exactly_twelve_ascii_digits(
    oauth_sandbox: Sandbox, ers_settings: Settings, ers_router: ErsRouterFactory, ubrn: str
) -> None:
    settings = ers_settings(access_mode="application-restricted")
    router = await ers_router(settings, sandbox=oauth_sandbox)
    with pytest.raises(InvalidInputError) as info:
        await router.route("ers-fhir", org="R69", interaction=A005, ubrn=ubrn)
    assert info.value.field == "ubrn"
    assert oauth_sandbox.stats()["requests"] == {}


async def test_a_user_token_with_application_restricted_access_is_refused(
    oauth_sandbox: Sandbox, ers_settings: Settings, ers_router: ErsRouterFactory
) -> None:
    router = await ers_router(ers_settings(), sandbox=oauth_sandbox)  # the default mode
    with pytest.raises(InvalidInputError) as info:
        await router.route(
            "ers-fhir", org="R69", interaction=A005, ubrn=UBRN, user_access_token=USER_TOKEN
        )
    assert info.value.field == "user_access_token"
    assert "ERS_ACCESS_MODE=user-restricted" in str(info.value)
    assert USER_TOKEN not in str(info.value)
    assert oauth_sandbox.stats()["requests"] == {}


async def test_user_restricted_access_without_a_user_token_is_refused(
    oauth_sandbox: Sandbox, ers_settings: Settings, ers_router: ErsRouterFactory
) -> None:
    # The signed-JWT credentials are configured, but they are the application's: e-RS refuses
    # them for user-restricted calls, so they are never used as if they were the user's.
    router = await ers_router(ers_settings(access_mode="user-restricted"), sandbox=oauth_sandbox)
    with pytest.raises(InvalidInputError) as info:
        await router.route("ers-fhir", org="R69", interaction=A005, ubrn=UBRN, **CLINICIAN)
    assert info.value.field == "user_access_token"
    assert "ERS_ACCESS_MODE=application-restricted" in str(info.value)
    assert oauth_sandbox.stats()["requests"] == {}


@pytest.mark.parametrize(
    "supplied",
    [SecretStr(USER_TOKEN), lambda: USER_TOKEN, lambda: SecretStr(USER_TOKEN)],
    ids=["SecretStr", "callable", "callable-SecretStr"],
)
async def test_the_user_token_may_be_a_secret_or_a_callable(
    sds_sandbox: Sandbox, ers_router: ErsRouterFactory, supplied: object
) -> None:
    router = await ers_router(ErsSettings(access_mode="user-restricted"))
    envelope = await router.route(
        "ers-fhir",
        org="R69",
        interaction=A008,
        user_access_token=supplied,
        business_function=SPCA,  # on_behalf_of is optional for A008
    )
    headers = envelope.to_message()["request"]["headers"]
    assert headers["Authorization"] == f"Bearer {USER_TOKEN}"
    assert "NHSD-eRS-On-Behalf-Of-User-ID" not in headers
    assert USER_TOKEN not in repr(envelope)
    assert sds_sandbox.stats()["requests"] == {}


def test_the_user_token_is_masked_in_a_route_requests_repr() -> None:
    from sds_plugins import RouteRequest

    request = RouteRequest(
        adapter="ers-fhir",
        org="R69",
        interaction=A005,
        options={"user_access_token": USER_TOKEN},
        correlation_id="0b6e7f5c-8a8e-4a43-9d5e-3f1f2a3b4c5d",
    )
    assert USER_TOKEN not in repr(request)


def test_the_cli_names_what_to_set_for_user_restricted_access() -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SDS_", "ERS_"))}
    env.update({"ERS_ACCESS_MODE": "user-restricted", "SDS_PLUGINS_LOAD": "sds-plugins-ers"})
    args = ("route", "ers-fhir", "--org", "R69", "--interaction", A005, "-o", f"ubrn={UBRN}")
    result = subprocess.run(
        [sys.executable, "-m", "sds_plugins", *args, "-o", "business_function=REFERRING_CLINICIAN"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "user_access_token" in result.stderr
    assert "ERS_ACCESS_MODE=application-restricted" in result.stderr
