"""API-key and signed-JWT auth flows: claims, token reuse, one refresh under a burst, no leaks."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sds_plugins import (
    ApiKeyAuth,
    AuthenticationError,
    ConfigurationError,
    SdsClient,
    Settings,
    SignedJwtAuth,
)

from ._reference import GPC_STRUCTURED, SDS_REFERENCE, load_json

TOKEN_URL = "https://int.api.service.nhs.uk/oauth2/token"
BASE = "https://int.api.service.nhs.uk/spine-directory/FHIR/R4"
DEVICE_BODY = load_json(SDS_REFERENCE / "observed-responses" / "sds-server-single_device.json")
CLIENT_ID = "app-api-key-123456"


@pytest.fixture(scope="module")
def private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class Platform:
    """A token endpoint plus an API that accepts only the tokens it issued."""

    def __init__(self, key: rsa.RSAPrivateKey, expires_in: str = "599") -> None:
        self.public_key = key.public_key()
        self.expires_in = expires_in
        self.assertions: list[dict[str, object]] = []
        self.headers: list[dict[str, object]] = []
        self.issued: list[str] = []
        self.api_calls = 0
        self.revoked: set[str] = set()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth2/token":
            form = parse_qs(request.content.decode())
            assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
            assert form["grant_type"] == ["client_credentials"]
            assert form["client_assertion_type"] == [
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            ]
            assertion = form["client_assertion"][0]
            self.headers.append(jwt.get_unverified_header(assertion))
            self.assertions.append(
                jwt.decode(assertion, self.public_key, algorithms=["RS512"], audience=TOKEN_URL)
            )
            token = f"token-{len(self.issued)}"
            self.issued.append(token)
            return httpx.Response(
                200,
                json={
                    "access_token": token,
                    "expires_in": self.expires_in,
                    "token_type": "Bearer",
                    "issued_at": "1",
                },
            )
        self.api_calls += 1
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.issued or token in self.revoked:
            return httpx.Response(401, json={"resourceType": "OperationOutcome", "issue": []})
        return httpx.Response(200, json=DEVICE_BODY)


def _jwt_auth(key: rsa.RSAPrivateKey, **kwargs: object) -> SignedJwtAuth:
    return SignedJwtAuth(
        client_id=CLIENT_ID, private_key=_pem(key), kid="test-1", token_url=TOKEN_URL, **kwargs
    )  # type: ignore[arg-type]


async def _lookup(client: SdsClient) -> None:
    await client.devices(org="B82617", interaction=GPC_STRUCTURED)


async def test_assertion_claims(private_key: rsa.RSAPrivateKey) -> None:
    platform = Platform(private_key)
    async with SdsClient(
        BASE, auth=_jwt_auth(private_key), transport=httpx.MockTransport(platform)
    ) as client:
        await _lookup(client)
    [claims] = platform.assertions
    [header] = platform.headers
    assert header == {"alg": "RS512", "typ": "JWT", "kid": "test-1"}
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert claims["aud"] == TOKEN_URL
    assert isinstance(claims["exp"], int)
    assert time.time() < claims["exp"] <= time.time() + 300
    assert len(str(claims["jti"])) == 36


async def test_jti_is_unique_per_assertion(private_key: rsa.RSAPrivateKey) -> None:
    auth = _jwt_auth(private_key)
    jtis = {
        jwt.decode(auth.client_assertion(), options={"verify_signature": False})["jti"]
        for _ in range(20)
    }
    assert len(jtis) == 20


async def test_a_burst_causes_one_token_request(private_key: rsa.RSAPrivateKey) -> None:
    platform = Platform(private_key)
    auth = _jwt_auth(private_key)
    async with SdsClient(BASE, auth=auth, transport=httpx.MockTransport(platform)) as client:
        await asyncio.gather(*(_lookup(client) for _ in range(50)))
        await _lookup(client)
    assert len(platform.issued) == 1
    assert auth.tokens_fetched == 1
    assert platform.api_calls == 51


async def test_token_is_refreshed_shortly_before_expiry(private_key: rsa.RSAPrivateKey) -> None:
    now = [time.time()]
    platform = Platform(private_key, expires_in="599")
    auth = _jwt_auth(private_key, clock=lambda: now[0], refresh_margin_s=60)
    async with SdsClient(BASE, auth=auth, transport=httpx.MockTransport(platform)) as client:
        await _lookup(client)
        now[0] += 500  # still 99 s left: reuse
        await _lookup(client)
        assert len(platform.issued) == 1
        now[0] += 40  # 59 s left, inside the margin: refresh
        await _lookup(client)
    assert len(platform.issued) == 2


async def test_a_revoked_token_is_replaced_once(private_key: rsa.RSAPrivateKey) -> None:
    platform = Platform(private_key)
    async with SdsClient(
        BASE, auth=_jwt_auth(private_key), transport=httpx.MockTransport(platform)
    ) as client:
        await _lookup(client)
        platform.revoked.add("token-0")
        await _lookup(client)
    assert platform.issued == ["token-0", "token-1"]


async def test_token_endpoint_refusal_is_an_authentication_error(
    private_key: rsa.RSAPrivateKey,
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            401,
            json={
                "error": "invalid_request",
                "error_description": "Invalid 'kid' header in JWT - no matching public key",
                "message_id": "x",
            },
        )

    async with SdsClient(
        BASE, auth=_jwt_auth(private_key), transport=httpx.MockTransport(refuse)
    ) as client:
        with pytest.raises(AuthenticationError) as info:
            await _lookup(client)
    assert info.value.status_code == 401
    assert info.value.spine_code == "invalid_request"
    assert "kid" in (info.value.diagnostics or "")
    assert info.value.exit_code == 6


def test_sync_flow_reuses_the_token(private_key: rsa.RSAPrivateKey) -> None:
    platform = Platform(private_key)
    auth = _jwt_auth(private_key)
    with httpx.Client(auth=auth, transport=httpx.MockTransport(platform)) as client:
        for _ in range(3):
            assert client.get(f"{BASE}/Device").status_code == 200
    assert len(platform.issued) == 1


def test_api_key_header() -> None:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["apikey"])
        return httpx.Response(200, json=DEVICE_BODY)

    with httpx.Client(
        auth=ApiKeyAuth("secret-key-value"), transport=httpx.MockTransport(answer)
    ) as client:
        client.get(BASE)
    assert seen == ["secret-key-value"]


def test_api_key_with_crlf_is_refused() -> None:
    with pytest.raises(Exception, match="control character"):
        ApiKeyAuth("key\r\nX-Evil: 1")


async def test_secrets_never_leak(
    private_key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    platform = Platform(private_key)
    jwt_auth = _jwt_auth(private_key)
    api_auth = ApiKeyAuth("secret-key-value")
    async with SdsClient(BASE, auth=jwt_auth, transport=httpx.MockTransport(platform)) as client:
        await _lookup(client)
        platform.revoked.update(platform.issued)
        platform.issued.clear()

        def refuse(request: httpx.Request) -> httpx.Response:
            return httpx.Response(401, json={"resourceType": "OperationOutcome", "issue": []})

    async with SdsClient(BASE, auth=api_auth, transport=httpx.MockTransport(refuse)) as client:
        with pytest.raises(AuthenticationError) as info:
            await _lookup(client)
    pem = _pem(private_key).decode()
    settings = Settings(api_key="secret-key-value", base_url=BASE)
    texts = [
        repr(jwt_auth),
        repr(api_auth),
        str(info.value),
        repr(info.value),
        caplog.text,
        repr(settings),
        str(settings),
    ]
    for text in texts:
        assert "secret-key-value" not in text
        assert CLIENT_ID not in text
        assert "token-0" not in text
        assert pem[40:80] not in text


def test_bad_private_key_does_not_echo_it(tmp_path: Path) -> None:
    bad = tmp_path / "key.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nc2VjcmV0LW1hdGVyaWFs\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigurationError) as info:
        SignedJwtAuth(client_id=CLIENT_ID, private_key=bad, kid="k", token_url=TOKEN_URL)
    assert "c2VjcmV0" not in str(info.value)
    assert info.value.__cause__ is None
    with pytest.raises(ConfigurationError, match="cannot read"):
        SignedJwtAuth(
            client_id=CLIENT_ID, private_key=tmp_path / "missing.pem", kid="k", token_url=TOKEN_URL
        )


def test_sds_takes_an_api_key_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # NHS's live SDS proxy verifies the apikey header and no access token
    # (NHSDigital/spine-directory-service-api, proxies/live/apiproxy/targets/target.xml).
    monkeypatch.setenv("SDS_ENV", "int")
    monkeypatch.setenv("SDS_AUTH", "jwt")
    monkeypatch.setenv("SDS_CLIENT_ID", CLIENT_ID)
    with pytest.raises(ConfigurationError, match="SDS_API_KEY") as refused:
        Settings()
    assert "not an access token" in str(refused.value)
    monkeypatch.delenv("SDS_AUTH")
    # Signed-JWT settings alone cannot reach SDS: refused at start, naming the setting.
    with pytest.raises(ConfigurationError, match="needs an API key: set SDS_API_KEY"):
        Settings().build_auth()
    monkeypatch.setenv("SDS_API_KEY", "app-key")
    assert isinstance(Settings().build_auth(), ApiKeyAuth)


@pytest.mark.parametrize("env", ["int", "dep", "prod"])
def test_the_live_platform_without_a_key_is_refused_at_start(env: str) -> None:
    with pytest.raises(ConfigurationError, match="SDS_API_KEY"):
        Settings(env=env).build_auth()
    # Said on purpose (an egress proxy adds the key): no credentials, no refusal.
    assert Settings(env=env, auth="none").build_auth() is None


def test_open_sandboxes_and_other_urls_need_no_key() -> None:
    assert Settings(env="sandbox").build_auth() is None
    assert Settings(base_url="http://127.0.0.1:9000/spine-directory/FHIR/R4").build_auth() is None


def test_spine_core_ods_code_by_environment() -> None:
    # SDS_SPINE_CORE_ODS_CODE: YEA in ecs-proxies-deploy-prod.yml, YES in every other
    # ecs-proxies-deploy-*.yml (NHSDigital/spine-directory-service-api).
    assert Settings(env="prod").spine_core_ods() == "YEA"
    for env in ("sandbox", "int", "dep"):
        assert Settings(env=env).spine_core_ods() == "YES"
    assert (
        Settings(base_url="https://api.service.nhs.uk/spine-directory/FHIR/R4/").spine_core_ods()
        == "YEA"
    )
    assert (
        Settings(base_url="http://127.0.0.1:9000/spine-directory/FHIR/R4").spine_core_ods() == "YES"
    )


def test_settings_environments(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (
        Settings(env="prod").resolved_base_url()
        == "https://api.service.nhs.uk/spine-directory/FHIR/R4"
    )
    assert Settings(
        base_url="http://127.0.0.1:9000/spine-directory/FHIR/R4/", env="prod"
    ).resolved_base_url() == ("http://127.0.0.1:9000/spine-directory/FHIR/R4")
    monkeypatch.setenv("SDS_API_KEY", "k")
    assert isinstance(Settings().build_auth(), ApiKeyAuth)
    monkeypatch.delenv("SDS_API_KEY")
    assert Settings().build_auth() is None
    with pytest.raises(ConfigurationError, match="neither an environment"):
        Settings(env="production")
