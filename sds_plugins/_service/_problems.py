"""Errors as RFC 9457 problem documents (``application/problem+json``).

Status by error (the ``type`` is docs/operations.md with the anchor ``#problem-<slug>``):

- 400 ``invalid-input``: :class:`InvalidInputError`, a body that is not a route request;
  ``malformed-request``: not HTTP/1.1 the server can parse;
- 401 ``unauthorized``: no or wrong service token;
- 403 ``vetoed``: :class:`EnvelopeVetoedError`;
- 404 ``not-found``: :class:`NotFoundError` (``not-enabled``: ``/metrics`` without the extra;
  ``unknown-adapter``: ``/route/{adapter}`` for an adapter not installed; ``no-such-path``);
- 405 ``method-not-allowed``, with ``Allow``;
- 408 ``request-timeout``: a body not received in time;
- 409 ``ambiguous``: :class:`AmbiguousError`, with its ``candidates``;
- 413 ``too-large``: a body over the limit;
- 415 ``unsupported-media-type``: a route request that is not ``application/json``;
- 431 ``headers-too-large``: too many header fields, or too many bytes of them;
- 500 ``internal``: :class:`ConfigurationError`, or anything unexpected;
- 502 ``bad-directory-answer``: the directory answered unusably (:class:`MalformedResponseError`,
  :class:`AuthenticationError`, :class:`RequestRejectedError`);
- 503 ``directory-unavailable``, with ``Retry-After``: any other
  :class:`DirectoryUnavailableError` (unreachable, 5xx, timeout, rate limited, breaker open).

Every document has ``type``, ``title``, ``status``, ``detail`` and the extension members
``error`` (the class name), ``correlation_id``, ``retryable`` and ``retry_after_s``; an
ambiguity adds ``candidates``, invalid input ``field``. Messages never hold secrets (the
errors are built that way); an unexpected exception's message is not shown at all.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.responses import Response

from .._exceptions import (
    AmbiguousError,
    ConfigurationError,
    DirectoryError,
    DirectoryUnavailableError,
    EnvelopeVetoedError,
    InvalidInputError,
    MalformedResponseError,
    NotFoundError,
    PatientInvalidatedError,
    PatientNotFoundError,
    PatientRestrictedError,
    SdsPluginsError,
)

__all__ = [
    "MEDIA_TYPE",
    "PROBLEM_TYPES",
    "plain_problem",
    "problem_body",
    "problem_for",
    "problem_response",
]

DOCS = "https://github.com/sds-plugins/sds-plugins/blob/main/docs/operations.md"
MEDIA_TYPE = "application/problem+json"

#: slug: (status, title)
PROBLEM_TYPES: dict[str, tuple[int, str]] = {
    "invalid-input": (400, "Invalid input"),
    "malformed-request": (400, "Malformed HTTP request"),
    "unauthorized": (401, "Missing or wrong service token"),
    "vetoed": (403, "Envelope vetoed by a plugin"),
    "not-found": (404, "No matching directory records"),
    "patient-not-found": (404, "No current registered practice for the patient"),
    "patient-restricted": (403, "The patient's record is restricted"),
    "patient-invalidated": (410, "The patient's record was invalidated"),
    "ambiguous": (409, "Several candidates and nothing to choose between them"),
    "not-enabled": (404, "Not enabled in this service"),
    "unknown-adapter": (404, "No such adapter"),
    "no-such-path": (404, "No such path"),
    "method-not-allowed": (405, "Method not allowed"),
    "request-timeout": (408, "Request not received in time"),
    "too-large": (413, "Request body too large"),
    "unsupported-media-type": (415, "Unsupported media type"),
    "headers-too-large": (431, "Request header fields too large"),
    "internal": (500, "Internal error"),
    "bad-directory-answer": (502, "The directory answered unusably"),
    "directory-unavailable": (503, "The directory is unavailable or rate limited"),
}


def _slug(exc: BaseException) -> str:
    if isinstance(exc, InvalidInputError):
        return "invalid-input"
    if isinstance(exc, EnvelopeVetoedError):
        return "vetoed"
    if isinstance(exc, PatientNotFoundError):
        return "patient-not-found"
    if isinstance(exc, PatientRestrictedError):
        return "patient-restricted"
    if isinstance(exc, PatientInvalidatedError):
        return "patient-invalidated"
    if isinstance(exc, NotFoundError):
        return "not-found"
    if isinstance(exc, AmbiguousError):
        return "ambiguous"
    # A malformed body is "unavailable" to a broker (retryable), but to an HTTP caller the
    # directory did answer: unusably.
    if isinstance(exc, DirectoryUnavailableError) and not isinstance(exc, MalformedResponseError):
        return "directory-unavailable"
    if isinstance(exc, DirectoryError):
        return "bad-directory-answer"
    return "internal"


def problem_body(slug: str, detail: str, **extensions: Any) -> bytes:
    """The problem document of ``slug``, encoded."""
    status, title = PROBLEM_TYPES[slug]
    document = {
        "type": f"{DOCS}#problem-{slug}",
        "title": title,
        "status": status,
        "detail": detail,
        **extensions,
    }
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"), default=str).encode()


def problem_response(
    slug: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> Response:
    status = PROBLEM_TYPES[slug][0]
    body = problem_body(slug, detail, **extensions)
    return Response(body, status_code=status, headers=headers, media_type=MEDIA_TYPE)


def plain_problem(
    slug: str, detail: str, error: str, *, headers: dict[str, str] | None = None
) -> Response:
    """A problem raised by the service itself rather than by routing: no correlation id, not
    retryable."""
    return problem_response(
        slug,
        detail,
        headers=headers,
        error=error,
        correlation_id=None,
        retryable=False,
        retry_after_s=None,
    )


def problem_for(exc: BaseException, correlation_id: str | None) -> Response:
    """The problem response for an error raised while routing."""
    slug = _slug(exc)
    if isinstance(exc, SdsPluginsError) and not (
        slug == "internal" and not isinstance(exc, ConfigurationError)
    ):
        detail = str(exc)
    else:
        # Not one of ours (or one we did not expect here): its message could say anything.
        detail = "unexpected error while routing (the service's log has the details)"
    retryable = bool(getattr(exc, "retryable", False))
    retry_after = getattr(exc, "retry_after_s", None)
    extensions: dict[str, Any] = {
        "error": type(exc).__name__,
        "correlation_id": getattr(exc, "correlation_id", None) or correlation_id,
        "retryable": retryable,
        "retry_after_s": retry_after,
    }
    if isinstance(exc, AmbiguousError):
        extensions["candidates"] = exc.candidates
    if isinstance(exc, InvalidInputError) and exc.field is not None:
        extensions["field"] = exc.field
    if isinstance(exc, PatientNotFoundError):
        extensions["reason"] = exc.reason
    headers: dict[str, str] = {}
    if extensions["correlation_id"]:
        headers["X-Correlation-ID"] = str(extensions["correlation_id"])
    if slug == "directory-unavailable":
        # Whole seconds, at least one: what a client or proxy honours.
        wait = retry_after if isinstance(retry_after, int | float) else 1.0
        headers["Retry-After"] = str(max(1, math.ceil(wait)) if math.isfinite(wait) else 1)
    return problem_response(slug, detail, headers=headers, **extensions)
