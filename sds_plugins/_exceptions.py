"""Every error sds-plugins raises, under one root.

    SdsPluginsError
    ├── InvalidInputError            bad ODS code, interaction, party key... (nothing was sent)
    │   └── InvalidNhsNumberError    not an NHS number (10 digits, modulus-11 check digit)
    ├── ConfigurationError           settings or plugins that cannot work (unknown env, no key)
    │   └── PluginError              a plugin that cannot be loaded (async hook, unknown hook...)
    ├── EnvelopeVetoedError          a plugin refused to let an envelope out
    └── DirectoryError               a directory lookup did not give a usable answer
        ├── NotFoundError            the directory answered: no matching records
        │   ├── PatientNotFoundError     PDS: no such patient, or no current registered practice
        │   ├── PatientInvalidatedError  PDS: the record was invalidated (warn the user)
        │   └── PatientRestrictedError   PDS: a restricted record; its practice is not given
        ├── AmbiguousError           several candidates and nothing to choose between them
        ├── AuthenticationError      the directory or its token endpoint refused our credentials
        ├── RequestRejectedError     the directory refused the request itself (400, 404, 405, 406)
        └── DirectoryUnavailableError  the directory is failing or out of reach (retried first)
            ├── RateLimitedError     429 after the retry budget
            ├── DirectoryTimeoutError  no whole answer in time, after the retry budget
            ├── MalformedResponseError  a body that is not what the API promises (or too big)
            └── BreakerOpenError     not asked at all: the directory failed moments ago

A timeout is a :class:`DirectoryUnavailableError`, never a :class:`NotFoundError`: callers that
treat "not found" as final must not do so for an outage.

Every error says whether trying again later can help: ``retryable`` (``True`` exactly for
:class:`DirectoryUnavailableError` and its subclasses) and ``retry_after_s`` (seconds to wait
before trying again, when the directory or the breaker said so; otherwise ``None``). Brokers
and HTTP callers use them to choose between "retry later" and "fail now".

Messages and attributes never contain API keys, tokens or private keys: errors carry the request
method and URL (query strings are not secret) but never its headers.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AmbiguousError",
    "AuthenticationError",
    "BreakerOpenError",
    "ConfigurationError",
    "DirectoryError",
    "DirectoryTimeoutError",
    "DirectoryUnavailableError",
    "EnvelopeVetoedError",
    "InvalidInputError",
    "InvalidNhsNumberError",
    "MalformedResponseError",
    "NotFoundError",
    "PatientInvalidatedError",
    "PatientNotFoundError",
    "PatientRestrictedError",
    "PluginError",
    "RateLimitedError",
    "RequestRejectedError",
    "SdsPluginsError",
]


class SdsPluginsError(Exception):
    """Root of every error raised by sds-plugins."""

    #: The exit status the CLI uses for this class of error.
    exit_code: int = 1
    #: Whether the same request may succeed later (an outage, a rate limit), as opposed to a
    #: final answer (bad input, not found, refused). Brokers retry only these.
    retryable: bool = False
    #: Seconds to wait before trying again, when known (``Retry-After``, a breaker's cooldown).
    retry_after_s: float | None = None


class InvalidInputError(SdsPluginsError, ValueError):
    """Input refused before any request was made.

    ``field`` names the offending argument or option (e.g. ``"org"``, ``"party_key"``).
    """

    exit_code = 2

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidNhsNumberError(InvalidInputError):
    """Not an NHS number: 10 digits whose last is the modulus-11 check digit of the others.
    Refused before anything is sent; the message never repeats the value."""


class ConfigurationError(SdsPluginsError):
    """Settings, credentials files or plugins that cannot work as configured."""

    exit_code = 2


class PluginError(ConfigurationError):
    """A plugin cannot be loaded or registered. ``plugin`` names it."""

    def __init__(self, message: str, *, plugin: str | None = None) -> None:
        super().__init__(message)
        self.plugin = plugin


class EnvelopeVetoedError(SdsPluginsError):
    """A plugin's ``sds_finalize_envelope`` refused the envelope (policy, not failure)."""

    exit_code = 7


class DirectoryError(SdsPluginsError):
    """A directory (SDS, or another source such as MESH lookup) did not give a usable answer.

    Carries what an operator needs to chase the failure with NHS England: the HTTP status, the
    Spine error code and diagnostics from the ``OperationOutcome``, the correlation id sent as
    ``X-Correlation-ID``, and the method and URL of the request (never its headers).
    """

    exit_code = 5

    def __init__(
        self,
        message: str,
        *,
        correlation_id: str | None = None,
        status_code: int | None = None,
        spine_code: str | None = None,
        diagnostics: str | None = None,
        method: str | None = None,
        url: str | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.correlation_id = correlation_id
        self.status_code = status_code
        self.spine_code = spine_code
        self.diagnostics = diagnostics
        self.method = method
        self.url = url
        self.attempts = attempts

    def __str__(self) -> str:
        parts = [self.message]
        if self.status_code is not None:
            parts.append(f"status={self.status_code}")
        if self.spine_code:
            parts.append(f"code={self.spine_code}")
        if self.diagnostics and self.diagnostics not in self.message:
            parts.append(f"diagnostics={self.diagnostics!r}")
        if self.correlation_id:
            parts.append(f"correlation_id={self.correlation_id}")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly description (used by the CLI and the audit log)."""
        return {
            "error": type(self).__name__,
            "message": self.message,
            "status_code": self.status_code,
            "spine_code": self.spine_code,
            "diagnostics": self.diagnostics,
            "correlation_id": self.correlation_id,
            "attempts": self.attempts,
            "retryable": self.retryable,
            "retry_after_s": self.retry_after_s,
        }


class NotFoundError(DirectoryError):
    """The directory answered, and nothing matched (or nothing usable matched)."""

    exit_code = 3


class PatientNotFoundError(NotFoundError):
    """PDS knows no such patient (``reason="unknown"``), or the patient has no current
    registered practice (``"no_registration"``: none recorded; ``"registration_ended"``).

    Messages never carry the NHS number: they name the patient by its reference.
    """

    def __init__(self, message: str, *, reason: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.reason = reason


class PatientInvalidatedError(NotFoundError):
    """PDS says the record was invalidated (404 ``INVALIDATED_RESOURCE``). PDS's conformance
    asks that the user be warned: it is its own error so callers can."""


class PatientRestrictedError(NotFoundError):
    """A restricted patient (``meta.security`` R): PDS withholds the registered practice, and
    nothing more about the record is logged or said."""


class AmbiguousError(DirectoryError):
    """Several candidates matched and no option narrows them to one.

    ``candidates`` lists short JSON-friendly descriptions (party key, address, ASID...).
    """

    exit_code = 4

    def __init__(
        self, message: str, *, candidates: list[dict[str, Any]] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)
        self.candidates = candidates or []

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "candidates": self.candidates}


class AuthenticationError(DirectoryError):
    """Credentials refused: 401/403 from the API, or an error from the OAuth token endpoint."""

    exit_code = 6


class RequestRejectedError(DirectoryError):
    """The directory refused the request (400, 404, 405, 406): a bug here, or an API change."""


class DirectoryUnavailableError(DirectoryError):
    """The directory is failing or out of reach (5xx, 429, timeouts, connection errors).

    ``retry_after_s`` is when to try again, in seconds: the server's ``Retry-After``, the next
    calendar minute for a spent quota, a breaker's remaining cooldown; ``None`` when unknown.
    """

    retryable = True

    def __init__(self, message: str, *, retry_after_s: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after_s = retry_after_s


class RateLimitedError(DirectoryUnavailableError):
    """Still throttled (429) when the retry budget ran out, or the pace would wait too long.

    ``limit`` says which limit, when known: ``"spike_arrest"`` or ``"quota"`` (the API
    gateway's fault code), ``"pace"`` (the client's own pacer: nothing was sent because the
    next free slot lies beyond the request's deadline). ``retry_after_s`` says when to come
    back (for a spent quota: the gateway's next calendar minute).
    """

    def __init__(self, message: str, *, limit: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.limit = limit


class DirectoryTimeoutError(DirectoryUnavailableError):
    """No answer in time. Never to be read as "not found"."""


class MalformedResponseError(DirectoryUnavailableError):
    """The body is not what the API promises (or bigger than allowed).

    ``field`` is the path of the offending element (``body`` for the whole body). Retryable: a
    misbehaving proxy or a half-deployed upstream is usually mended, but the client does not
    repeat the request at once (the same bytes would most likely come back).
    """

    def __init__(self, message: str, *, field: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.field = field


class BreakerOpenError(DirectoryUnavailableError):
    """Nothing was sent: the directory failed moments ago and the breaker is open.

    ``retry_after_s`` is the time left until the breaker lets a probe through; ``attempts`` is
    0 and ``status_code`` is ``None`` (this is not an upstream answer). ``cause`` describes the
    failure that opened it.
    """

    def __init__(self, message: str, *, cause: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("attempts", 0)
        super().__init__(message, **kwargs)
        self.cause = cause
