"""The retrying GET of every directory source (SDS, PDS, MESH's lookup, e-RS's token): one
idempotent request with the project's rules, and the platform's error mapping.

Retries with backoff and jitter within a budget that is also the deadline (``RetryPolicy``),
``Retry-After`` honoured, every attempt's whole answer within its own limit and a size bound,
the pacer's wire gate on every attempt (a missed slot waits for its new one without holding a
connection), the API gateway's spike arrest and quota told apart from the service's own limits,
and every failure one of the typed errors. Never for a request that is not idempotent.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel, ConfigDict, Field
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from ._exceptions import (
    AuthenticationError,
    DirectoryError,
    DirectoryTimeoutError,
    DirectoryUnavailableError,
    MalformedResponseError,
    RateLimitedError,
    RequestRejectedError,
)
from ._pacing import MissedSlot, RateLimiter, SendTicket, Throttle
from ._upstream import (
    DEFAULT_MAX_RESPONSE_BYTES,
    ERROR_BODY_BYTES,
    TooLarge,
    bounded_response,
    load_json,
    operation_outcome,
    parse_retry_after,
    read_body,
    safe_url,
)

if TYPE_CHECKING:
    from ._settings import Settings

__all__ = [
    "RetryPolicy",
    "error_from_response",
    "gateway_throttle",
    "get_with_retries",
    "parse_retry_after",
    "seconds_to_next_minute",
]

logger = logging.getLogger("sds_plugins.client")

_RETRY_STATUSES = frozenset({429, 502, 503, 504})


class RetryPolicy(BaseModel):
    """How idempotent GETs are retried on 429, 502, 503, 504 and transport errors.

    Waits grow exponentially from ``backoff_s`` up to ``max_backoff_s``, each drawn from the
    upper half of that ceiling ("equal jitter") so a fleet does not retry in step; a
    ``Retry-After`` from the server replaces the computed wait. Nothing sleeps past
    ``budget_s`` from the first attempt: when the next wait would cross it, the last error is
    raised instead, and the budget is also a deadline for the whole call. Each attempt must
    deliver its whole answer within ``attempt_timeout_s``.
    """

    model_config = ConfigDict(frozen=True)

    attempts: int = Field(default=4, ge=1, le=20)
    backoff_s: float = Field(default=0.2, ge=0)
    max_backoff_s: float = Field(default=5.0, ge=0)
    budget_s: float = Field(default=20.0, gt=0)
    #: The whole answer of one attempt (headers and body) must arrive within this.
    attempt_timeout_s: float = Field(default=10.0, gt=0)

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        """The router's policy (``SDS_RETRY_ATTEMPTS``, ``SDS_RETRY_BUDGET_S``,
        ``SDS_ATTEMPT_TIMEOUT_S``), which applies to every directory it asks."""
        return cls(
            attempts=settings.retry_attempts,
            budget_s=settings.retry_budget_s,
            attempt_timeout_s=settings.attempt_timeout_s,
        )

    def wait(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return max(retry_after, 0.0)
        ceiling = min(self.max_backoff_s, self.backoff_s * (2 ** (attempt - 1)))
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not cryptography


#: Spike-arrest refusals retried on the next slot without counting as attempts, at most (then
#: they count). A refusal says "come back in 25 ms", not "the directory is failing"; the time
#: budget still bounds them all.
_FREE_SPIKE_RETRIES = 10


async def get_with_retries(
    http: httpx.AsyncClient,
    url: str,
    *,
    policy: RetryPolicy,
    correlation_id: str,
    error_for: Callable[[httpx.Response, str], DirectoryError],
    params: httpx.QueryParams | None = None,
    headers: dict[str, str] | None = None,
    before_attempt: Callable[[], Awaitable[None]] | None = None,
    rate_limiter: RateLimiter | None = None,
    service: str = "SDS",
    max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    shown_url: str | None = None,
    on_answer: Callable[[float], object] | None = None,
) -> tuple[bytes, int]:
    """An idempotent GET with the project's retry rules; ``(body, attempts)`` on a 200.

    For directory sources (SDS, MESH lookup, yours): transport errors and timeouts become
    :class:`DirectoryUnavailableError`/:class:`DirectoryTimeoutError`; any other status becomes
    ``error_for(response, correlation_id)``. Errors that are :func:`retryable <_is_retryable>`
    (429, 502, 503, 504, timeouts, transport) are retried per ``policy``, honouring
    ``Retry-After``, and nothing waits beyond ``policy.budget_s`` from the first attempt.

    Each attempt must deliver its whole answer within ``policy.attempt_timeout_s`` and at most
    ``max_bytes`` of body (after decompression; else :class:`MalformedResponseError`), and the
    whole call ends within ``policy.budget_s`` (else :class:`DirectoryTimeoutError`).

    Every attempt first waits for ``rate_limiter`` (which refuses at once, with
    :class:`RateLimitedError`, a wait beyond the budget). A 429 from the API gateway's spike
    arrest is retried on the pacer's next slot without back-off and without counting as an
    attempt (up to a few times); a spent quota is waited out until the gateway's next calendar
    minute when that fits the budget. ``before_attempt`` runs just before each request is sent
    (counting). ``shown_url`` is what logs and errors say instead of ``url`` (PDS's path holds
    an NHS number). ``on_answer`` is given how long the 200 took to come back, in seconds from
    its request's headers being written to its answer's headers arriving (the server's time,
    without any wait for the pacer). Never use this for a request that is not idempotent.
    """
    deadline = time.monotonic() + policy.budget_s
    shown = shown_url if shown_url is not None else safe_url(url)
    sent = spikes = 0

    async def attempt() -> bytes:
        nonlocal sent, spikes
        ticket = None
        if rate_limiter is not None:
            ticket = await rate_limiter.acquire(deadline=deadline)
        if before_attempt is not None:
            await before_attempt()
        sent += 1
        try:
            while True:
                # The whole answer, headers and body, within the attempt's deadline (httpx's
                # timeouts are per read: a body trickled a byte at a time would never trip
                # them).
                limit_s = min(policy.attempt_timeout_s, deadline - time.monotonic())
                try:
                    async with asyncio.timeout(max(limit_s, 0.0)):
                        body, error, answer_s = await _fetch(
                            http,
                            url,
                            params,
                            headers,
                            ticket,
                            correlation_id,
                            error_for,
                            max_bytes,
                            shown_url,
                        )
                    break
                except MissedSlot as missed:
                    # Too late at the wire for its slot, nothing sent: wait for the new one
                    # without holding a connection, then go again (the same attempt).
                    await missed.ticket.wait_for_slot()
        except TimeoutError:
            # Cut by the lookup's budget (what was left of it), or by the attempt's own limit:
            # the message says which, whichever of the two timers happened to fire.
            cut_by_budget = limit_s < policy.attempt_timeout_s
            raise DirectoryTimeoutError(
                f"{service} gave no usable answer within the {policy.budget_s:g}s budget"
                if cut_by_budget
                else f"{service} did not answer in full within {limit_s:.3g}s",
                correlation_id=correlation_id,
                method="GET",
                url=shown,
            ) from None
        except httpx.TimeoutException as exc:
            raise DirectoryTimeoutError(
                f"{service} did not answer in time ({type(exc).__name__})",
                correlation_id=correlation_id,
                method="GET",
                url=shown,
            ) from exc
        except httpx.TransportError as exc:
            raise DirectoryUnavailableError(
                # The URL tried (without its query or credentials): with nothing configured,
                # that is the public sandbox, which is rarely what the caller expected.
                f"{service} is unreachable at {shown.split('?', 1)[0]} "
                f"({type(exc).__name__}: {_scrubbed(exc)})",
                correlation_id=correlation_id,
                method="GET",
                url=shown,
            ) from exc
        finally:
            if ticket is not None:
                ticket.finished()  # at the latest now (for a transport that does not trace)
        if error is not None:
            if isinstance(error, RateLimitedError) and error.limit in ("spike_arrest", "quota"):
                spikes += error.limit == "spike_arrest"
                if rate_limiter is not None:
                    await rate_limiter.throttled(
                        error.limit,  # type: ignore[arg-type]
                        retry_after_s=error.retry_after_s,
                    )
            raise error
        if on_answer is not None:
            on_answer(answer_s)
        return body

    def counted() -> int:
        return sent - min(spikes, _FREE_SPIKE_RETRIES)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RateLimitedError) and exc.limit == "spike_arrest":
            if rate_limiter is not None:
                return 0.0  # the pacer's next slot is the wait
            return policy.wait(1, None)  # unpaced: at least spread the retries apart
        retry_after = exc.retry_after_s if isinstance(exc, DirectoryUnavailableError) else None
        return policy.wait(max(counted(), 1), retry_after)

    def stop(state: RetryCallState) -> bool:
        return counted() >= policy.attempts or time.monotonic() + state.upcoming_sleep > deadline

    retrying = AsyncRetrying(
        stop=stop,
        wait=wait,
        retry=retry_if_exception(_is_retryable),
        before_sleep=lambda state: _log_retry(service, state),
        reraise=True,
    )
    try:
        # The retry budget is also a deadline for everything, waits and attempts alike.
        loop_deadline = asyncio.get_running_loop().time() + policy.budget_s
        async with asyncio.timeout_at(loop_deadline):
            body: bytes = await retrying(attempt)
    except TimeoutError:
        raise DirectoryTimeoutError(
            f"{service} gave no usable answer within the {policy.budget_s:g}s budget",
            correlation_id=correlation_id,
            method="GET",
            url=shown,
            attempts=sent,
        ) from None
    except DirectoryError as exc:
        exc.attempts = sent
        raise
    return body, sent


async def _fetch(
    http: httpx.AsyncClient,
    url: str,
    params: httpx.QueryParams | None,
    headers: dict[str, str] | None,
    ticket: SendTicket | None,
    correlation_id: str,
    error_for: Callable[[httpx.Response, str], DirectoryError],
    max_bytes: int,
    shown: str | None = None,
) -> tuple[bytes, DirectoryError | None, float]:
    """One GET, its body read within ``max_bytes``: ``(body, None, answer time)`` on a 200,
    else ``(b"", the typed error, answer time)`` (the error body read only as far as an
    OperationOutcome needs). The answer time runs from the request's headers written to the
    answer's headers arrived."""
    sent = _Sent(ticket)
    async with http.stream(
        "GET", url, params=params, headers=headers, extensions={"trace": sent.trace}
    ) as response:
        answer_s = time.monotonic() - (sent.at or time.monotonic())
        logger.debug(
            "GET %s -> %s (correlation_id=%r)",
            shown or safe_url(str(response.request.url)),
            response.status_code,
            correlation_id,
        )
        if response.status_code == 200:
            try:
                return await read_body(response, max_bytes), None, answer_s
            except TooLarge:
                raise MalformedResponseError(
                    f"answer larger than {max_bytes:,} bytes (after decompression)",
                    field="body",
                    status_code=200,
                    correlation_id=correlation_id,
                    method="GET",
                    url=shown,
                ) from None
            except MalformedResponseError as exc:
                exc.status_code, exc.correlation_id = 200, correlation_id
                exc.method, exc.url = "GET", shown or safe_url(url)
                raise
        try:
            error_body = await read_body(response, ERROR_BODY_BYTES)
        except (TooLarge, MalformedResponseError):
            error_body = b""  # an unreadable error body: the status alone tells the story
        error = error_for(bounded_response(response, error_body), correlation_id)
        error.url = shown or (safe_url(error.url) if error.url else error.url)
        return b"", error, answer_s


class _Sent:
    """An httpcore ``trace`` extension: holds the request at the pacer's gate right before its
    headers are written (the moment it leaves for the gateway, which is what pacing spaces),
    and notes when they were written (where the server's answer time starts)."""

    __slots__ = ("at", "ticket")

    def __init__(self, ticket: SendTicket | None) -> None:
        self.ticket = ticket
        self.at: float | None = None

    async def trace(self, event: str, info: Any) -> None:
        request = info.get("request") if isinstance(info, dict) else None
        if request is not None and request.method == b"CONNECT":
            # Through an HTTPS proxy, httpcore hands the tunnel's CONNECT the request's
            # extensions: it goes to the proxy, not the gateway, so it neither takes the
            # request's slot nor starts its answer time.
            return
        if event.endswith(".send_request_headers.started"):
            if self.ticket is not None:
                await self.ticket.at_wire()
        elif event.endswith(".send_request_headers.complete"):
            self.at = time.monotonic()
            if self.ticket is not None:
                self.ticket.written()


def _is_retryable(exc: BaseException) -> bool:
    """Whether to repeat the request now (within the budget); see ``DirectoryError.retryable``
    for whether to repeat it *later*."""
    if isinstance(exc, DirectoryTimeoutError):
        return True
    if isinstance(exc, MalformedResponseError | AuthenticationError | RequestRejectedError):
        return False
    if isinstance(exc, RateLimitedError) and exc.limit == "pace":
        return False  # nothing was sent, and the wait is already known to exceed the budget
    if isinstance(exc, DirectoryUnavailableError):
        # Transport errors have no status; 500 and other 5xx are not retried (not transient).
        return exc.status_code is None or exc.status_code in _RETRY_STATUSES
    return False


def _log_retry(service: str, state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    logger.info(
        "retrying %s lookup in %.2fs after attempt %d: %s", service, wait, state.attempt_number, exc
    )


def _scrubbed(exc: BaseException) -> str:
    return safe_url(str(exc))[:300]


def gateway_throttle(body: object) -> Throttle | None:
    """Which API-gateway limit an Apigee fault body names, if it is one.

    NHS's API platform answers its own 429s with Apigee's JSON, not an OperationOutcome:
    ``{"fault": {"faultstring": "Spike arrest violation. ...", "detail": {"errorcode":
    "policies.ratelimit.SpikeArrestViolation"}}}`` (or ``...QuotaViolation``), without
    ``Retry-After``.
    """
    if not isinstance(body, dict):
        return None
    fault = body.get("fault")
    detail = fault.get("detail") if isinstance(fault, dict) else None
    code = detail.get("errorcode") if isinstance(detail, dict) else None
    if code == "policies.ratelimit.SpikeArrestViolation":
        return "spike_arrest"
    if code == "policies.ratelimit.QuotaViolation":
        return "quota"
    return None


def seconds_to_next_minute(date_header: str | None, now: float | None = None) -> float:
    """Seconds until the next calendar minute by the server's ``Date`` (else our clock).

    ``Date`` has whole seconds; assuming the start of that second waits at most one second
    too long and never returns before the server's minute has turned.
    """
    when: float | None = None
    if date_header:
        try:
            parsed = email.utils.parsedate_to_datetime(date_header)
        except (TypeError, ValueError):
            parsed = None
        if parsed is not None:
            when = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    if when is None:
        when = time.time() if now is None else now
    return 60.0 - (when % 60.0)


def error_from_response(
    response: httpx.Response, correlation_id: str, *, service: str = "SDS"
) -> DirectoryError:
    """The typed error for a non-200 answer from an NHS API behind the API platform: 401/403,
    other 4xx, 429 (the gateway's spike arrest and quota told apart from the service's own
    limit), 504 and other 5xx; the OperationOutcome's code and diagnostics kept."""
    status = response.status_code
    try:
        body: object = load_json(response.content)
    except MalformedResponseError:
        body = None
    spine_code, diagnostics = operation_outcome(body)
    kwargs: dict[str, Any] = {
        # The caller's id, as given (SDS was sent a UUID derived from another id; a cached
        # answer may even echo another caller's).
        "correlation_id": correlation_id,
        "status_code": status,
        "spine_code": spine_code,
        "diagnostics": diagnostics,
        "method": response.request.method,
        "url": safe_url(str(response.request.url)),
    }
    if status in (401, 403):
        return AuthenticationError(f"{service} refused the credentials", **kwargs)
    if status < 500 and status != 429:
        return RequestRejectedError(f"{service} rejected the request with {status}", **kwargs)
    # 429, 503 and friends may say when to come back; the retry policy honours it.
    kwargs["retry_after_s"] = parse_retry_after(response.headers.get("Retry-After"))
    if status == 429:
        throttle = gateway_throttle(body)
        if throttle == "spike_arrest":
            kwargs["spine_code"] = "SpikeArrestViolation"
            return RateLimitedError(
                "the API gateway's spike arrest refused the request (requests too close together)",
                limit=throttle,
                **kwargs,
            )
        if throttle == "quota":
            kwargs["spine_code"] = "QuotaViolation"
            kwargs["retry_after_s"] = seconds_to_next_minute(response.headers.get("Date"))
            return RateLimitedError(
                "the API gateway's quota for this minute is spent", limit=throttle, **kwargs
            )
        return RateLimitedError(f"{service} is rate limiting this application", **kwargs)
    if status == 504:
        return DirectoryTimeoutError(f"{service} timed out upstream", **kwargs)
    return DirectoryUnavailableError(f"{service} failed with {status}", **kwargs)
