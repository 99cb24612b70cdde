"""Authentication for the NHS API platform, as ``httpx.Auth`` flows.

- :class:`ApiKeyAuth`: application-restricted, API-key pattern (SDS): an ``apikey`` header.
- :class:`SignedJwtAuth`: application-restricted, signed-JWT pattern (e-RS and others): a client
  assertion signed with RS512 is exchanged at ``/oauth2/token`` for a bearer token, which is reused
  until shortly before it expires. The token request is yielded from the auth flow, so it travels
  over the same connection pool, timeouts and transport as the API calls.

Neither class lets a secret into its ``repr``, log lines or exception messages.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Generator
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from pydantic import SecretStr

from ._exceptions import (
    AuthenticationError,
    ConfigurationError,
    DirectoryUnavailableError,
    MalformedResponseError,
    RateLimitedError,
)
from ._validation import check_header_value

__all__ = ["ApiKeyAuth", "SignedJwtAuth"]

logger = logging.getLogger("sds_plugins.auth")

_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# The platform refuses assertions that expire more than 5 minutes ahead; stay well inside that so
# a little clock skew between us and the platform does not turn into a 400.
_ASSERTION_LIFETIME_S = 240
_RETRYABLE = {429, 502, 503, 504}


def _secret(value: str | SecretStr) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


class ApiKeyAuth(httpx.Auth):
    """Send the application's API key in the ``apikey`` header."""

    def __init__(self, api_key: str | SecretStr) -> None:
        key = _secret(api_key)
        if not key:
            raise ConfigurationError("API key is empty")
        check_header_value(key, "api_key")
        self._api_key = SecretStr(key)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["apikey"] = self._api_key.get_secret_value()
        yield request

    def __repr__(self) -> str:
        return "ApiKeyAuth(api_key='**********')"


class _Token:
    __slots__ = ("expires_at", "value")

    def __init__(self, value: str, expires_at: float) -> None:
        self.value = value
        self.expires_at = expires_at


class SignedJwtAuth(httpx.Auth):
    """OAuth 2.0 client credentials with a signed JWT client assertion (RS512, ``kid``).

    ``client_id`` is the application's API key (it becomes ``iss`` and ``sub``); ``token_url`` is
    the exact URL the assertion's ``aud`` must name. A burst of concurrent requests causes one
    token request: the refresh happens under a lock and the others reuse its result.
    """

    def __init__(
        self,
        *,
        client_id: str | SecretStr,
        private_key: str | bytes | Path | RSAPrivateKey,
        kid: str,
        token_url: str,
        refresh_margin_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client_id = SecretStr(_secret(client_id))
        if not self._client_id.get_secret_value():
            raise ConfigurationError(
                "signed-JWT auth needs a client id (the application's API key)"
            )
        if not kid:
            raise ConfigurationError(
                "signed-JWT auth needs the key id (kid) registered with the app"
            )
        self._key = _load_private_key(private_key)
        self.kid = kid
        self.token_url = token_url
        self._refresh_margin_s = refresh_margin_s
        self._clock = clock
        self._token: _Token | None = None
        self._async_lock: asyncio.Lock | None = None
        self._sync_lock = threading.Lock()
        #: How many tokens this auth has obtained (for metrics and tests).
        self.tokens_fetched = 0

    def __repr__(self) -> str:
        return f"SignedJwtAuth(kid={self.kid!r}, token_url={self.token_url!r})"

    # -- the assertion and the token exchange ----------------------------------------------

    def client_assertion(self) -> str:
        """A fresh signed assertion: RS512, ``kid``, ``iss``=``sub``=client id, unique ``jti``."""
        now = int(self._clock())
        client_id = self._client_id.get_secret_value()
        claims = {
            "iss": client_id,
            "sub": client_id,
            "aud": self.token_url,
            "jti": str(uuid.uuid4()),
            "exp": now + _ASSERTION_LIFETIME_S,
        }
        return jwt.encode(claims, self._key, algorithm="RS512", headers={"kid": self.kid})

    def _token_request(self) -> httpx.Request:
        return httpx.Request(
            "POST",
            self.token_url,
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": _ASSERTION_TYPE,
                "client_assertion": self.client_assertion(),
            },
            headers={"Accept": "application/json"},
        )

    def _store(self, response: httpx.Response) -> str:
        correlation_id = response.request.headers.get("X-Correlation-ID")
        if response.status_code != 200:
            raise _token_error(response, correlation_id)
        try:
            body = response.json()
            token = str(body["access_token"])
            # The platform sends expires_in as a string ("599").
            expires_in = float(body.get("expires_in", 0))
        except (ValueError, KeyError, TypeError) as exc:
            raise MalformedResponseError(
                "token endpoint answered 200 without a usable access_token/expires_in",
                field="access_token",
                status_code=200,
                url=str(response.request.url),
                method="POST",
            ) from exc
        self._token = _Token(token, self._clock() + expires_in)
        self.tokens_fetched += 1
        logger.debug("obtained access token from %s (expires in %.0fs)", self.token_url, expires_in)
        return token

    def _current(self) -> str | None:
        token = self._token
        if token is None or self._clock() >= token.expires_at - self._refresh_margin_s:
            return None
        return token.value

    def invalidate(self) -> None:
        """Forget the cached token (the next request fetches a new one)."""
        self._token = None

    # -- httpx flows -------------------------------------------------------------------------

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        for attempt in range(2):
            with self._sync_lock:
                token = self._current()
                if token is None:
                    token_request = self._token_request()
                    _copy_correlation(request, token_request)
                    token_response = yield token_request
                    token_response.read()
                    token = self._store(token_response)
            request.headers["Authorization"] = f"Bearer {token}"
            response = yield request
            # A 401 with a token we believed valid: it was revoked or the server restarted.
            # Fetch one new token and try once more; never loop.
            if response.status_code != 401 or attempt == 1:
                return
            self._forget(token)

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if self._async_lock is None:
            self._async_lock = asyncio.Lock()
        for attempt in range(2):
            async with self._async_lock:
                token = self._current()
                if token is None:
                    token_request = self._token_request()
                    _copy_correlation(request, token_request)
                    token_response = yield token_request
                    await token_response.aread()
                    token = self._store(token_response)
            request.headers["Authorization"] = f"Bearer {token}"
            response = yield request
            if response.status_code != 401 or attempt == 1:
                return
            self._forget(token)

    def _forget(self, token: str) -> None:
        # Only drop the token this request used: another task may already have replaced it.
        if self._token is not None and self._token.value == token:
            self._token = None


def _copy_correlation(source: httpx.Request, target: httpx.Request) -> None:
    correlation_id = source.headers.get("X-Correlation-ID")
    if correlation_id:
        target.headers["X-Correlation-ID"] = correlation_id


def _token_error(response: httpx.Response, correlation_id: str | None) -> Exception:
    description = ""
    error = ""
    try:
        body: Any = response.json()
        if isinstance(body, dict):
            error = str(body.get("error") or "")
            description = str(body.get("error_description") or "")
    except ValueError:
        pass
    kwargs: dict[str, Any] = {
        "status_code": response.status_code,
        "spine_code": error or None,
        "diagnostics": description or None,
        "correlation_id": correlation_id,
        "method": "POST",
        "url": str(response.request.url),
    }
    if response.status_code == 429:
        return RateLimitedError("token endpoint is rate limiting", **kwargs)
    if response.status_code in _RETRYABLE or response.status_code >= 500:
        return DirectoryUnavailableError("token endpoint failed", **kwargs)
    return AuthenticationError(
        f"token endpoint refused the client assertion ({error or response.status_code})", **kwargs
    )


def _load_private_key(key: str | bytes | Path | RSAPrivateKey) -> RSAPrivateKey:
    if isinstance(key, RSAPrivateKey):
        return key
    if isinstance(key, Path):
        path = key
        try:
            key = path.read_bytes()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read private key file {path}: {exc.strerror}"
            ) from None
    data = key.encode() if isinstance(key, str) else key
    try:
        loaded = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        # Deliberately not chained: the original error may quote the key material.
        raise ConfigurationError("private key is not an unencrypted PEM RSA key") from None
    if not isinstance(loaded, RSAPrivateKey):
        raise ConfigurationError("private key must be an RSA key (the platform requires RS512)")
    return loaded
