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
import math
import re
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
from ._upstream import TooLarge, load_json, parse_retry_after, read_body, read_body_sync
from ._validation import check_header_value

__all__ = ["ApiKeyAuth", "SignedJwtAuth", "parse_token_response"]

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

    def _store(self, response: httpx.Response, body: bytes) -> str:
        correlation_id = response.request.headers.get("X-Correlation-ID")
        if response.status_code != 200:
            raise _token_error(response, body, correlation_id)
        try:
            token, expires_in = parse_token_response(body)
        except MalformedResponseError as exc:
            exc.status_code, exc.method, exc.url = 200, "POST", self.token_url
            exc.correlation_id = correlation_id
            raise
        self._token = _Token(token, self._clock() + expires_in)
        self.tokens_fetched += 1
        logger.debug("obtained access token from %s (expires in %.0fs)", self.token_url, expires_in)
        return token

    @property
    def token_expires_at(self) -> float | None:
        """When the token held now expires (``clock`` time), or ``None`` if none is held."""
        token = self._token
        return None if token is None else token.expires_at

    def _current(self) -> str | None:
        token = self._token
        if token is None or self._clock() >= token.expires_at - self._refresh_margin_s:
            return None
        return token.value

    async def obtain_token(self, http: httpx.AsyncClient) -> float:
        """Swap a fresh assertion for a token now (``doctor``'s check); when it expires."""
        request = self._token_request()
        response = await http.send(request, stream=True)
        try:
            try:
                body = await read_body(response, _TOKEN_BODY_BYTES)
            except TooLarge:
                raise _too_large(self.token_url) from None
        finally:
            await response.aclose()
        self._store(response, body)
        expires = self.token_expires_at
        assert expires is not None  # just stored
        return expires

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
                    try:
                        body = read_body_sync(token_response, _TOKEN_BODY_BYTES)
                    except TooLarge:
                        raise _too_large(self.token_url) from None
                    token = self._store(token_response, body)
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
                    try:
                        body = await read_body(token_response, _TOKEN_BODY_BYTES)
                    except TooLarge:
                        raise _too_large(self.token_url) from None
                    token = self._store(token_response, body)
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


#: A token answer is a few hundred bytes; anything much bigger is not one.
_TOKEN_BODY_BYTES = 64 * 1024
#: Bounds on a token's life: not past (a token per request), not for ever (never refreshed).
_MAX_EXPIRES_IN_S = 86_400.0
_MAX_TOKEN_LENGTH = 4096
_TOKEN = re.compile(r"[\x21-\x7e]+")  # visible ASCII: it goes into an Authorization header


def parse_token_response(body: bytes) -> tuple[str, float]:
    """``(access_token, expires_in seconds)`` from an OAuth token endpoint's 200 answer.

    The platform sends ``expires_in`` as a string (``"599"``); numbers are accepted too. A
    token that is not visible ASCII (it becomes a header), or a lifetime that is not a finite
    number of seconds between 1 and a day (``"-1"`` would mean a token request per call,
    ``"nan"`` or ``"1e400"`` never refreshing) is a :class:`MalformedResponseError`.
    """
    answer = load_json(body, what="token endpoint's answer")
    token = answer.get("access_token") if isinstance(answer, dict) else None
    raw_expires = answer.get("expires_in") if isinstance(answer, dict) else None
    if not isinstance(token, str) or len(token) > _MAX_TOKEN_LENGTH or not _TOKEN.fullmatch(token):
        raise MalformedResponseError(
            "token endpoint answered 200 without a usable access_token", field="access_token"
        )
    expires_in: float | None = None
    if isinstance(raw_expires, int | float) and not isinstance(raw_expires, bool):
        expires_in = float(raw_expires)
    elif isinstance(raw_expires, str) and raw_expires.isascii() and len(raw_expires) <= 20:
        try:
            expires_in = float(raw_expires)
        except ValueError:
            expires_in = None
    if (
        expires_in is None
        or not math.isfinite(expires_in)
        or not 1 <= expires_in <= _MAX_EXPIRES_IN_S
    ):
        raise MalformedResponseError(
            "token endpoint answered 200 without a usable expires_in "
            f"(a number of seconds between 1 and {_MAX_EXPIRES_IN_S:g})",
            field="expires_in",
        )
    return token, expires_in


def _too_large(url: str) -> MalformedResponseError:
    return MalformedResponseError(
        f"token endpoint's answer is larger than {_TOKEN_BODY_BYTES:,} bytes",
        field="body",
        method="POST",
        url=url,
    )


def _token_error(response: httpx.Response, body: bytes, correlation_id: str | None) -> Exception:
    description = ""
    error = ""
    try:
        answer: Any = load_json(body)
    except MalformedResponseError:
        answer = None
    if isinstance(answer, dict):
        error = _short(answer.get("error"))
        description = _short(answer.get("error_description"))
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
        kwargs["retry_after_s"] = parse_retry_after(response.headers.get("Retry-After"))
        return DirectoryUnavailableError("token endpoint failed", **kwargs)
    return AuthenticationError(
        f"token endpoint refused the client assertion ({error or response.status_code})", **kwargs
    )


def _short(value: object) -> str:
    return value[:300] if isinstance(value, str) else ""


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
