"""The API platform's OAuth token endpoint: signed-JWT client assertions for bearer tokens."""

from __future__ import annotations

import json
import secrets
import string
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

import jwt
from starlette.requests import Request
from starlette.responses import Response

from ._common import FORM, PLAIN_JSON, TOKEN_PATH, _bounded_body, _json_bytes
from ._config import MAX_CONTROL_BODY
from ._state import _State

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_LIFETIME_S = 300


class _TokenError(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


class TokenEndpoint:
    """``POST /oauth2/token``."""

    def __init__(self, state: _State) -> None:
        self.state = state

    async def token(self, request: Request) -> Response:
        try:
            if request.method != "POST":
                raise _TokenError(405, "invalid_request", "Method not allowed - use POST")
            content_type = request.headers.get("content-type", "")
            if content_type.split(";", 1)[0].strip().lower() != FORM:
                raise _TokenError(
                    415, "invalid_request", f"Unsupported Content-Type - must be '{FORM}'"
                )
            raw = await _bounded_body(request, MAX_CONTROL_BODY)
            if raw is None:
                raise _TokenError(413, "invalid_request", "Request body too large")
            form = dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
            body = self._issue_token(request, form)
        except _TokenError as error:
            return Response(
                _json_bytes(
                    {
                        "error": error.error,
                        "error_description": error.description,
                        "message_id": self._message_id(),
                    }
                ),
                status_code=error.status,
                headers={"Allow": "POST"} if error.status == 405 else None,
                media_type=PLAIN_JSON,
            )
        return Response(
            _json_bytes(body),
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
            media_type=PLAIN_JSON,
        )

    def _message_id(self) -> str:
        self.state.message_counter += 1
        return f"rrt-{secrets.randbelow(10**19):019d}-a-sbx-{self.state.message_counter}"

    def _issue_token(self, request: Request, form: Mapping[str, str]) -> dict[str, str]:
        state = self.state
        grant_type = form.get("grant_type")
        if not grant_type:
            raise _TokenError(400, "invalid_request", "grant_type is missing")
        if grant_type != "client_credentials":
            raise _TokenError(400, "unsupported_grant_type", "grant_type is invalid")
        if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
            # The platform's message really does lack the closing quote.
            raise _TokenError(
                400,
                "invalid_request",
                f"Missing or invalid client_assertion_type - must be '{CLIENT_ASSERTION_TYPE}",
            )
        assertion = form.get("client_assertion")
        if not assertion:
            raise _TokenError(400, "invalid_request", "Missing client_assertion")
        if not state.keys:
            raise _TokenError(
                401,
                "invalid_client",
                "You need to register a public key to use this authentication method",
            )
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            raise _TokenError(400, "invalid_request", "Malformed JWT in client_assertion") from None
        if header.get("alg") != "RS512":
            raise _TokenError(
                400,
                "invalid_request",
                "Invalid 'alg' header in JWT - unsupported JWT algorithm - must be 'RS512'",
            )
        kid = header.get("kid")
        if not kid:
            raise _TokenError(400, "invalid_request", "Missing 'kid' header in JWT")
        if "typ" in header and str(header["typ"]).upper() != "JWT":
            raise _TokenError(400, "invalid_request", "Invalid 'typ' header in JWT - must be 'JWT'")
        key = state.keys.get(str(kid))
        if key is None:
            raise _TokenError(
                401, "invalid_request", "Invalid 'kid' header in JWT - no matching public key"
            )
        try:
            payload = jwt.PyJWS().decode(assertion, key=key.key, algorithms=["RS512"])
        except jwt.InvalidSignatureError:
            raise _TokenError(401, "invalid_request", "JWT signature verification failed") from None
        except jwt.PyJWTError:
            raise _TokenError(400, "invalid_request", "Malformed JWT in client_assertion") from None
        claims = _claims(payload)
        self._check_claims(request, claims)
        return self._new_token()

    def _check_claims(self, request: Request, claims: Mapping[str, Any]) -> None:
        state = self.state
        iss, sub = claims.get("iss"), claims.get("sub")
        if not iss or not isinstance(iss, str) or iss != sub:
            raise _TokenError(
                400, "invalid_request", "Missing or non-matching iss/sub claims in JWT"
            )
        if state.config.api_key is not None and iss != state.config.api_key:
            raise _TokenError(401, "invalid_request", "Invalid iss/sub claims in JWT")
        jti = claims.get("jti")
        if not jti:
            raise _TokenError(400, "invalid_request", "Missing jti claim in JWT")
        # The audience is the token URL exactly as this client reached it.
        token_url = f"{request.url.scheme}://{request.url.netloc}{TOKEN_PATH}"
        if claims.get("aud") != token_url:
            raise _TokenError(401, "invalid_request", "Missing or invalid aud claim in JWT")
        exp = claims.get("exp")
        if exp is None:
            raise _TokenError(400, "invalid_request", "Missing exp claim in JWT")
        now = time.time()
        if exp < now:
            raise _TokenError(400, "invalid_request", "Invalid exp claim in JWT - JWT has expired")
        if exp > now + MAX_ASSERTION_LIFETIME_S:
            raise _TokenError(
                400, "invalid_request", "Invalid exp claim in JWT - more than 5 minutes in future"
            )
        for seen, seen_exp in list(state.seen_jti.items()):
            if seen_exp < now:
                del state.seen_jti[seen]
        if jti in state.seen_jti:
            raise _TokenError(400, "invalid_request", "Non-unique jti claim in JWT")
        # An assertion reused after its exp fails on exp anyway, so jtis can be forgotten then.
        state.seen_jti[jti] = float(exp)

    def _new_token(self) -> dict[str, str]:
        ttl = self.state.config.token_ttl_s
        alphabet = string.ascii_letters + string.digits
        token = "".join(secrets.choice(alphabet) for _ in range(28))
        issued = time.time()
        tokens = self.state.tokens
        for expired in [t for t, expires in tokens.items() if expires <= issued]:
            del tokens[expired]
        tokens[token] = issued + ttl
        return {
            "access_token": token,
            "expires_in": str(ttl),
            "token_type": "Bearer",
            "issued_at": str(int(issued * 1000)),
        }


def _claims(payload: bytes) -> dict[str, Any]:
    try:
        claims = json.loads(payload)
    except ValueError:
        claims = None
    # The platform reports wrongly typed claims as a decoding failure, not as a bad claim.
    if (
        not isinstance(claims, dict)
        or ("jti" in claims and not isinstance(claims["jti"], str))
        or (
            "exp" in claims
            and (not isinstance(claims["exp"], int) or isinstance(claims["exp"], bool))
        )
    ):
        raise _TokenError(400, "invalid_request", "Failed to decode JWT")
    return claims


def _load_keys(jwks: Mapping[str, Any] | None) -> dict[str, jwt.PyJWK]:
    if jwks is None:
        return {}
    try:
        keyset = jwt.PyJWKSet.from_dict(dict(jwks))
    except jwt.PyJWTError as error:
        raise ValueError(f"unusable jwks: {error}") from error
    keys = {key.key_id: key for key in keyset.keys if key.key_id}
    if not keys:
        raise ValueError("jwks holds no key with a 'kid'")
    return keys
