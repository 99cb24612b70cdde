"""API-key and signed-JWT OAuth security, as the NHS API platform applies it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from sds_plugins.sandbox import Sandbox, SandboxConfig

from .conftest import GP2GP, interaction, issue, org

API_KEY = "test-api-key-123"
KID = "test-1"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
GATEWAY_SYSTEM = "https://fhir.nhs.uk/R4/CodeSystem/Spine-ErrorOrWarningCode"


@pytest.fixture(scope="module")
def private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwks(key: rsa.RSAPrivateKey, kid: str = KID) -> dict[str, Any]:
    public = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {"keys": [{**public, "kid": kid, "use": "sig", "alg": "RS512"}]}


@pytest.fixture(scope="module")
def secured(private_key: rsa.RSAPrivateKey) -> Iterator[Sandbox]:
    config = SandboxConfig(api_key=API_KEY, jwks=_jwks(private_key), token_ttl_s=1)
    with Sandbox(config) as running:
        yield running


Assertion = Callable[..., str]


@pytest.fixture
def assertion(secured: Sandbox, private_key: rsa.RSAPrivateKey) -> Assertion:
    """Builds a client assertion; keyword arguments override claims (None removes one)."""

    def build(
        *,
        key: rsa.RSAPrivateKey | None = None,
        algorithm: str = "RS512",
        headers: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> str:
        claims: dict[str, Any] = {
            "iss": API_KEY,
            "sub": API_KEY,
            "aud": secured.token_url,
            "jti": str(uuid.uuid4()),
            "exp": int(time.time()) + 120,
        }
        for name, value in overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        header = {"kid": KID, "typ": "JWT"} if headers is None else headers
        if algorithm.startswith("HS"):
            return jwt.encode(claims, "a-shared-secret-of-at-least-32-bytes!", algorithm, header)
        return jwt.encode(claims, key or private_key, algorithm=algorithm, headers=header)

    return build


def _token_request(
    http: httpx.Client, sandbox: Sandbox, assertion: str | None, **form: str | None
) -> httpx.Response:
    data: dict[str, str] = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
    }
    if assertion is not None:
        data["client_assertion"] = assertion
    for name, value in form.items():
        if value is None:
            data.pop(name, None)
        else:
            data[name] = value
    return http.post(sandbox.token_url, data=data)


def _search(http: httpx.Client, sandbox: Sandbox, headers: dict[str, str]) -> httpx.Response:
    return http.get(
        sandbox.base_url + "/Device", params=[org("X26"), interaction(GP2GP)], headers=headers
    )


def _assert_token_error(response: httpx.Response, status: int, error: str, text: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error", "error_description", "message_id"]
    assert body["error"] == error
    assert body["error_description"] == text
    assert body["message_id"]


# ----------------------------------------------------------------------- API key


def test_without_api_key_anything_goes(start_sandbox: Any, http: httpx.Client) -> None:
    sandbox = start_sandbox()
    assert _search(http, sandbox, {}).status_code == 200
    assert _search(http, sandbox, {"apikey": "whatever"}).status_code == 200
    assert _search(http, sandbox, {"Authorization": "Bearer nonsense"}).status_code == 200


def test_api_key_is_required_when_configured(secured: Sandbox, http: httpx.Client) -> None:
    assert _search(http, secured, {"apikey": API_KEY}).status_code == 200
    for headers, diagnostics in (
        ({}, "Missing API Key"),
        ({"apikey": "wrong"}, "Invalid API Key"),
        ({"Authorization": f"Bearer {API_KEY}"}, "Missing API Key"),
    ):
        response = _search(http, secured, headers)
        assert response.status_code == 401
        body = response.json()
        assert body["resourceType"] == "OperationOutcome"
        assert body["id"] == response.headers["x-correlation-id"]
        [coding] = issue(response)["details"]["coding"]
        assert coding["system"] == GATEWAY_SYSTEM
        assert coding["code"] == "ACCESS_DENIED"
        assert coding["version"] == "1"
        assert issue(response)["diagnostics"] == diagnostics


def test_unknown_fhir_paths_need_credentials_too(secured: Sandbox, http: httpx.Client) -> None:
    assert http.get(secured.base_url + "/Nothing").status_code == 401
    assert http.get(secured.base_url + "/Nothing", headers={"apikey": API_KEY}).status_code == 404


# ----------------------------------------------------------------------- token endpoint


def test_tokens_are_issued_but_sds_takes_the_api_key_only(
    secured: Sandbox, assertion: Assertion, http: httpx.Client
) -> None:
    """The live SDS proxy's target PreFlow verifies the API key and nothing else
    (proxies/live/apiproxy/targets/target.xml: EnhancedVerifyApiKey, Quota, SpikeArrest,
    Response-Cache-SDS; OAuthV2.VerifyAccessToken is defined but in no flow). The token endpoint
    still issues tokens (other APIs, such as PDS, take them); SDS refuses a token alone."""
    before = int(time.time() * 1000)
    response = _token_request(http, secured, assertion())
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["access_token", "expires_in", "token_type", "issued_at"]
    assert body["expires_in"] == "1"
    assert body["token_type"] == "Bearer"
    assert isinstance(body["issued_at"], str)
    assert before - 1000 <= int(body["issued_at"]) <= int(time.time() * 1000) + 1000
    assert response.headers["cache-control"] == "no-store"
    token = body["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    refused = _search(http, secured, bearer)
    assert refused.status_code == 401
    assert issue(refused)["details"]["coding"][0]["code"] == "ACCESS_DENIED"
    # A token beside the key changes nothing either way: the key is what counts.
    assert _search(http, secured, {**bearer, "apikey": API_KEY}).status_code == 200
    assert _search(http, secured, {**bearer, "apikey": "wrong"}).status_code == 401


def test_default_token_lifetime_is_599_as_a_string(
    start_sandbox: Any, private_key: rsa.RSAPrivateKey, http: httpx.Client
) -> None:
    sandbox = start_sandbox(jwks=_jwks(private_key))
    claims = {
        "iss": "anyone",
        "sub": "anyone",
        "aud": sandbox.token_url,
        "jti": str(uuid.uuid4()),
        "exp": int(time.time()) + 60,
    }
    signed = jwt.encode(claims, private_key, algorithm="RS512", headers={"kid": KID})
    response = _token_request(http, sandbox, signed)
    assert response.json()["expires_in"] == "599"


def test_without_jwks_the_token_endpoint_refuses(
    start_sandbox: Any, assertion: Assertion, http: httpx.Client
) -> None:
    sandbox = start_sandbox(api_key=API_KEY)
    response = _token_request(http, sandbox, assertion())
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_token_endpoint_needs_a_form(
    secured: Sandbox, assertion: Assertion, http: httpx.Client
) -> None:
    body = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion(),
    }
    response = http.post(secured.token_url, json=body)
    assert response.status_code == 415
    assert response.json()["error"] == "invalid_request"
    assert http.get(secured.token_url).status_code == 405


@pytest.mark.parametrize(
    ("form", "status", "error", "text"),
    [
        ({"grant_type": None}, 400, "invalid_request", "grant_type is missing"),
        (
            {"grant_type": "authorization_code"},
            400,
            "unsupported_grant_type",
            "grant_type is invalid",
        ),
        (
            {"client_assertion_type": "INVALID"},
            400,
            "invalid_request",
            f"Missing or invalid client_assertion_type - must be '{ASSERTION_TYPE}",
        ),
        (
            {"client_assertion_type": None},
            400,
            "invalid_request",
            f"Missing or invalid client_assertion_type - must be '{ASSERTION_TYPE}",
        ),
        ({"client_assertion": None}, 400, "invalid_request", "Missing client_assertion"),
        (
            {"client_assertion": "INVALID"},
            400,
            "invalid_request",
            "Malformed JWT in client_assertion",
        ),
    ],
)
def test_form_errors(
    secured: Sandbox,
    assertion: Assertion,
    form: dict[str, str | None],
    status: int,
    error: str,
    text: str,
    http: httpx.Client,
) -> None:
    _assert_token_error(_token_request(http, secured, assertion(), **form), status, error, text)


@pytest.mark.parametrize(
    ("build", "status", "text"),
    [
        (
            {"algorithm": "RS256"},
            400,
            "Invalid 'alg' header in JWT - unsupported JWT algorithm - must be 'RS512'",
        ),
        (
            {"algorithm": "HS256"},
            400,
            "Invalid 'alg' header in JWT - unsupported JWT algorithm - must be 'RS512'",
        ),
        ({"headers": {"typ": "JWT"}}, 400, "Missing 'kid' header in JWT"),
        (
            {"headers": {"kid": "INVALID"}},
            401,
            "Invalid 'kid' header in JWT - no matching public key",
        ),
        (
            {"headers": {"kid": KID, "typ": "xyz"}},
            400,
            "Invalid 'typ' header in JWT - must be 'JWT'",
        ),
        ({"sub": "someone-else"}, 400, "Missing or non-matching iss/sub claims in JWT"),
        ({"iss": None}, 400, "Missing or non-matching iss/sub claims in JWT"),
        ({"sub": None}, 400, "Missing or non-matching iss/sub claims in JWT"),
        ({"iss": "INVALID", "sub": "INVALID"}, 401, "Invalid iss/sub claims in JWT"),
        ({"jti": None}, 400, "Missing jti claim in JWT"),
        ({"jti": 1234567890}, 400, "Failed to decode JWT"),
        (
            {"aud": "https://api.service.nhs.uk/oauth2/token"},
            401,
            "Missing or invalid aud claim in JWT",
        ),
        ({"aud": None}, 401, "Missing or invalid aud claim in JWT"),
        ({"exp": None}, 400, "Missing exp claim in JWT"),
        ({"exp": "INVALID"}, 400, "Failed to decode JWT"),
        ({"exp": 1.5e9}, 400, "Failed to decode JWT"),
        ({"exp_in": -10}, 400, "Invalid exp claim in JWT - JWT has expired"),
        (
            {"exp_in": 330},
            400,
            "Invalid exp claim in JWT - more than 5 minutes in future",
        ),
    ],
    ids=lambda value: str(value)[:40] if isinstance(value, dict) else None,
)
def test_assertion_errors(
    secured: Sandbox,
    assertion: Assertion,
    build: dict[str, Any],
    status: int,
    text: str,
    http: httpx.Client,
) -> None:
    build = dict(build)
    if "exp_in" in build:  # relative to now, not to when the parameters were collected
        build["exp"] = int(time.time()) + build.pop("exp_in")
    _assert_token_error(
        _token_request(http, secured, assertion(**build)), status, "invalid_request", text
    )


def test_signature_must_verify(
    secured: Sandbox, assertion: Assertion, other_key: rsa.RSAPrivateKey, http: httpx.Client
) -> None:
    response = _token_request(http, secured, assertion(key=other_key))
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_request"


def test_jti_cannot_be_reused(secured: Sandbox, assertion: Assertion, http: httpx.Client) -> None:
    signed = assertion()
    assert _token_request(http, secured, signed).status_code == 200
    _assert_token_error(
        _token_request(http, secured, signed), 400, "invalid_request", "Non-unique jti claim in JWT"
    )


def test_audience_is_the_url_the_client_called(
    secured: Sandbox, assertion: Assertion, http: httpx.Client
) -> None:
    """The same server reached as localhost is a different audience."""
    port = secured.url.rsplit(":", 1)[1]
    as_localhost = f"http://localhost:{port}/oauth2/token"
    response = http.post(
        secured.token_url,
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion(aud=as_localhost),
        },
    )
    assert response.status_code == 401
    response = http.post(
        secured.token_url,
        headers={"Host": f"localhost:{port}"},
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion(aud=as_localhost),
        },
    )
    assert response.status_code == 200


def test_bad_jwks_is_rejected_at_startup() -> None:
    from sds_plugins.sandbox import create_app

    with pytest.raises(ValueError, match="kid"):
        create_app(SandboxConfig(jwks={"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}))
