"""The broker-neutral core of the routing worker: one request body in, one outcome out.

:class:`RouteWorker` parses a request body, routes it with a started :class:`Router` and says
what a transport must do with the message it came in::

    envelope   publish ``outcome.body`` (the envelope JSON), then acknowledge the request
    failure    publish ``outcome.body`` (the failure document), then acknowledge the request
    retry      redeliver the request in ``outcome.delay_s`` seconds (attempt + 1)

Classification uses the errors' own ``retryable`` and ``retry_after_s``: final answers (invalid
input, unknown adapter, not found, ambiguous, refused, vetoed) fail at once; retryable ones
(directory unavailable, rate limited, open breaker, timeouts) are retried with exponential
back-off, never before ``retry_after_s``, until ``max_attempts`` or ``max_age_s``, and then fail
with ``"gave_up": true``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import random
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .._adapter_options import MASKED_OPTIONS
from .._exceptions import ConfigurationError, InvalidInputError, SdsPluginsError
from .._observability._tracing import incoming_trace_context
from .._patients import PatientRefs
from .._requests import WorkerRequest, decode_body, parse_request
from .._validation import check_correlation_id, uuid_text

if TYPE_CHECKING:
    from .._engine import Router
    from .._envelope import RoutingEnvelope
    from .._observability._metrics import PrometheusMetrics

__all__ = [
    "MAX_FAILURE_BYTES",
    "MAX_REQUEST_BYTES",
    "MAX_REQUEST_ID_CHARS",
    "Disposition",
    "RouteWorker",
    "WorkerOutcome",
    "WorkerPolicy",
]

logger = logging.getLogger("sds_plugins.worker")

#: What a transport does with a request: publish its envelope or its failure document (then
#: acknowledge it), or deliver it again later.
Disposition = Literal["envelope", "failure", "retry"]

_MASK = "**********"
# What a log line shows unquoted: letters, digits and "-_.:/@+" (one regex: this runs for
# several fields of every request's log line).
_PLAIN = re.compile(r"[\w\-.:/@+]+")
_METRIC_EVENTS: dict[str, str] = {"envelope": "out", "failure": "failed", "retry": "retried"}
# Correlation ids derived from request ids live in their own UUID namespace (uuid5), so every
# attempt and every redelivery of a request sends SDS the same X-Correlation-ID.
_CORRELATION_NAMESPACE = uuid.UUID("5d1b7a4e-3f0c-4c1e-9a55-6f2d8e1b9c07")
_NAMESPACE_BYTES = _CORRELATION_NAMESPACE.bytes

#: The largest request body the worker reads (the limit ``serve`` has): a bigger one is a final
#: failure without being parsed, so no message can make the worker build a large object.
MAX_REQUEST_BYTES = 64 * 1024
#: No failure document is larger than this (bytes of its JSON): it must fit any broker's limit
#: (NATS's 1 MiB payload, a stream's ``max_msg_size``) with room to spare.
MAX_FAILURE_BYTES = 64 * 1024
# A failure document echoes the request when its JSON is at most this long; a longer one is
# summarised (size, SHA-256, the first _HEAD_CHARS characters).
_ECHO_CHARS = 16 * 1024
_HEAD_CHARS = 200
# Error messages in failure documents are cut here (one may quote a long input).
_MESSAGE_CHARS = 2000
# A request id longer than this (a NATS header may hold a megabyte) makes the request invalid,
# and its outcome carries a shortened id: the first _ID_KEPT characters and a SHA-256 prefix.
MAX_REQUEST_ID_CHARS = 1024
_ID_KEPT = 1000


def correlation_id_for(request_id: str) -> str:
    """The correlation id of a request without one of its own: the same for every delivery
    of the request id, so a redelivered request logs under the same id.

    ``str(uuid.uuid5(namespace, request_id))``, written straight from the digest (a third of
    the cost, on every message).
    """
    # SHA-1 because RFC 4122 names it for version 5: an identifier, not a security measure.
    digest = hashlib.sha1(_NAMESPACE_BYTES + request_id.encode(), usedforsecurity=False)
    return uuid_text(digest.hexdigest(), 5)


@dataclass(frozen=True, kw_only=True)
class WorkerPolicy:
    """When to retry a retryable failure, when to give up, and what envelopes may carry.

    The delay before attempt ``n + 1`` is exponential with equal jitter (half fixed, half random)
    from ``retry_initial_s``, capped at ``retry_max_s``, and never shorter than the error's
    ``retry_after_s`` (a breaker's cooldown, a ``Retry-After``). A request gives up after
    ``max_attempts`` attempts, or when the next attempt would come more than ``max_age_s``
    after the request was first seen. ``with_secrets`` publishes credentials inside envelopes
    (and leaves secret options unmasked in failure documents).
    """

    max_attempts: int = 10
    max_age_s: float = 900.0
    retry_initial_s: float = 1.0
    retry_max_s: float = 60.0
    with_secrets: bool = False

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError("max_attempts must be at least 1")
        if not self.max_age_s > 0:
            raise ConfigurationError("max_age_s must be positive")
        if not 0 < self.retry_initial_s <= self.retry_max_s:
            raise ConfigurationError("retry delays need 0 < retry_initial_s <= retry_max_s")

    def backoff_s(
        self, attempt: int, retry_after_s: float | None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1 for the first)."""
        ceiling = min(self.retry_max_s, self.retry_initial_s * 2.0 ** min(attempt - 1, 62))
        # Equal jitter: spreads a burst of failures (a breaker fails every cold key at once)
        # without ever retrying sooner than half the exponential delay.
        delay = ceiling / 2 + (rng or random).uniform(0, ceiling / 2)
        if retry_after_s is not None and math.isfinite(retry_after_s):
            delay = max(delay, retry_after_s)
        return delay


@dataclass(frozen=True, kw_only=True, repr=False)
class WorkerOutcome:
    """What became of one request, and what the transport must do with its message.

    ``body`` is the JSON document to publish (the envelope, or the failure document) and is
    empty for ``retry``, whose ``delay_s`` says when to deliver the request again.
    ``correlation_id`` is the route's (the request's own, or one derived from the request id)
    and travels as the published message's correlation id, with ``request_id`` as its id.
    """

    disposition: Disposition
    request_id: str
    correlation_id: str
    attempt: int
    first_seen: float
    body: bytes = b""
    delay_s: float | None = None
    error: Exception | None = None
    gave_up: bool = False
    envelope: RoutingEnvelope | None = None
    request: WorkerRequest | None = None
    duration_s: float = 0.0

    def __repr__(self) -> str:
        # The body may hold credentials (--with-secrets): the repr shows what it is, not it.
        error = type(self.error).__name__ if self.error is not None else None
        return (
            f"WorkerOutcome({self.disposition}, request_id={self.request_id!r}, "
            f"correlation_id={self.correlation_id!r}, attempt={self.attempt}, "
            f"error={error}, gave_up={self.gave_up}, delay_s={self.delay_s})"
        )


class RouteWorker:
    """Routes request bodies with a started :class:`Router`; one :class:`WorkerOutcome` each.

    Broker-neutral: a transport (RabbitMQ, NATS JetStream, Kafka, SQS...) hands over each
    message's body, its request id, which attempt this is (``1`` for the first delivery) and
    when the request was first seen (epoch seconds; ``None`` means now), then publishes or
    redelivers as the outcome says. ``handle`` never raises for a bad request or a failed
    route: those are outcomes.

    ``metrics`` counts messages in, out (envelopes), retried and failed. A message's
    ``headers`` (any mapping; values may be bytes) may carry a W3C ``traceparent``: with the
    ``otel`` extra, the route's span becomes its child.
    """

    def __init__(
        self,
        router: Router,
        policy: WorkerPolicy | None = None,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        metrics: PrometheusMetrics | None = None,
    ) -> None:
        self.router = router
        # How failure documents name a patient (the router's references, so they match its
        # logs and events; a stand-in router without them gets this process's own).
        self._refs: PatientRefs = getattr(router, "patient_refs", None) or PatientRefs()
        self.metrics = metrics
        self.policy = policy if policy is not None else WorkerPolicy()
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - jitter, not crypto

    async def handle(
        self,
        body: bytes | str,
        *,
        request_id: str | None = None,
        attempt: int = 1,
        first_seen: float | None = None,
        headers: Mapping[str, Any] | None = None,
        correlation_id: str | None = None,
        reject: SdsPluginsError | None = None,
    ) -> WorkerOutcome:
        """Route one request body; say whether to publish an envelope, a failure, or retry.

        ``correlation_id`` is the broker message's own (an AMQP ``correlation_id`` property),
        the route's when the body names none. ``reject`` fails the request with that error
        without routing it: a transport found the message itself unusable (properties that are
        not UTF-8, say); the failure document still echoes the body.
        """
        metrics = self.metrics
        if metrics is not None:
            metrics.worker_message("in")
        with incoming_trace_context(headers):
            outcome = await self._handle(
                body, request_id, attempt, first_seen, correlation_id, reject
            )
        if metrics is not None:
            metrics.worker_message(_METRIC_EVENTS[outcome.disposition])
        return outcome

    async def _handle(
        self,
        body: bytes | str,
        request_id: str | None,
        attempt: int,
        first_seen: float | None,
        message_correlation_id: str | None = None,
        reject: SdsPluginsError | None = None,
    ) -> WorkerOutcome:
        started = time.perf_counter()
        now = self._clock()
        if request_id is None or not request_id:
            request_id = str(uuid.uuid4())
        elif len(request_id) > MAX_REQUEST_ID_CHARS:
            # Refused, and answered under an id short enough for any broker's headers (the
            # same at every delivery, so duplicates still de-duplicate).
            reject = InvalidInputError(
                f"the request id is {len(request_id):,} characters long; "
                f"at most {MAX_REQUEST_ID_CHARS:,} are taken",
                field="request_id",
            )
            request_id = shorten_id(request_id)
        attempt = max(1, attempt)
        first_seen = now if first_seen is None else min(first_seen, now)
        correlation_id = correlation_id_for(request_id)
        request: WorkerRequest | None = None
        raw: Any = None
        try:
            size = _size(body)
            if size > MAX_REQUEST_BYTES:
                raise InvalidInputError(
                    f"the request body is {size:,} bytes; at most {MAX_REQUEST_BYTES:,} are read",
                    field="body",
                )
            if reject is not None:
                # Parsed only for the echo (masked as usual): the message's own error wins.
                with contextlib.suppress(InvalidInputError):
                    raw = decode_body(body)
                raise reject
            raw = decode_body(body)
            request = parse_request(raw)
            # The caller's id, kept as given: the body's, else the message's own.
            given = request.correlation_id
            if given is None and message_correlation_id:
                with contextlib.suppress(InvalidInputError):
                    given = check_correlation_id(message_correlation_id)
            if given is not None:
                correlation_id = check_correlation_id(given)
            envelope = await self.router.route(
                request.adapter,
                org=request.org,
                patient=request.patient,
                interaction=request.interaction,
                correlation_id=correlation_id,
                encounter=request.encounter,
                requesting_org=request.requesting_org,
                # Every delivery of this request sends PDS the same X-Request-ID.
                request_id=request_id,
                **request.options,
            )
        except SdsPluginsError as exc:
            error: Exception = exc
        except Exception as exc:
            # A bug in an adapter or a plugin: retrying would fail the same way, so the request
            # fails now (echoed in its failure document) and the traceback goes to the log.
            logger.error(
                "request_id=%s: unexpected %s while routing",
                _text(request_id),
                type(exc).__name__,
                exc_info=True,
            )
            error = exc
        else:
            data = (
                envelope.model_dump_json(context={"reveal_secrets": True})
                if self.policy.with_secrets
                else envelope.model_dump_json()
            )
            return WorkerOutcome(
                disposition="envelope",
                request_id=request_id,
                correlation_id=correlation_id,
                attempt=attempt,
                first_seen=first_seen,
                body=data.encode(),
                envelope=envelope,
                request=request,
                duration_s=time.perf_counter() - started,
            )

        gave_up = False
        if getattr(error, "retryable", False):
            delay = self._retry_delay(error, attempt, now - first_seen)
            if delay is not None:
                return WorkerOutcome(
                    disposition="retry",
                    request_id=request_id,
                    correlation_id=correlation_id,
                    attempt=attempt,
                    first_seen=first_seen,
                    delay_s=delay,
                    error=error,
                    request=request,
                    duration_s=time.perf_counter() - started,
                )
            gave_up = True
        return WorkerOutcome(
            disposition="failure",
            request_id=request_id,
            correlation_id=correlation_id,
            attempt=attempt,
            first_seen=first_seen,
            body=self._failure_document(
                request_id, error, correlation_id, attempt, gave_up, raw, body
            ),
            error=error,
            gave_up=gave_up,
            request=request,
            duration_s=time.perf_counter() - started,
        )

    def _retry_delay(self, error: Exception, attempt: int, age_s: float) -> float | None:
        """Seconds until the next attempt, or ``None`` to give up."""
        policy = self.policy
        if attempt >= policy.max_attempts:
            return None
        remaining = policy.max_age_s - age_s
        retry_after = getattr(error, "retry_after_s", None)
        earliest = retry_after if isinstance(retry_after, int | float) else 0.0
        if remaining <= 0 or earliest > remaining:
            return None  # the next attempt could only come after the deadline
        return min(policy.backoff_s(attempt, retry_after, self._rng), remaining)

    def _failure_document(
        self,
        request_id: str,
        error: Exception,
        correlation_id: str,
        attempt: int,
        gave_up: bool,
        raw: Any,
        body: bytes | str,
    ) -> bytes:
        """The failure document's JSON, never larger than :data:`MAX_FAILURE_BYTES`.

        Every part that a request can make long is bounded: the error's message (cut at
        ``_MESSAGE_CHARS``), the request id (at most ``MAX_REQUEST_ID_CHARS``) and the echo of
        the request (summarised past ``_ECHO_CHARS``), whatever escaping JSON adds.
        """
        described = _describe(error, correlation_id)
        message = described["message"]
        if len(message) > _MESSAGE_CHARS:
            described["message"] = (
                f"{message[:_MESSAGE_CHARS]}... (cut: {len(message):,} characters in all)"
            )
        document: dict[str, Any] = {
            "request_id": request_id,
            "error": described,
            "attempts": attempt,
            "gave_up": gave_up,
        }
        echo, summary = self._echo(raw, body)
        document["request"] = echo
        if summary is not None:
            document["request_summary"] = summary
        data = _dump(document)
        if len(data) > MAX_FAILURE_BYTES:  # not reachable by the bounds above: a last guard
            described["message"] = described["message"][:_HEAD_CHARS] + "... (cut)"
            document["request"] = None
            document["request_summary"] = _summary(body, "")
            data = _dump(document)
        return data

    def _echo(self, raw: Any, body: bytes | str) -> tuple[Any, dict[str, Any] | None]:
        """The original request for the failure document, and its summary when it is too long.

        As JSON when it was JSON (secret options masked), otherwise as its text. Anything in
        it that looks like an NHS number (the request's patient; a number in a body that did
        not parse) is written as the patient's reference: the failures queue keeps its
        documents, and no number may stay there in clear. A request whose JSON would be longer
        than ``_ECHO_CHARS`` (a body of control characters grows six-fold as JSON) is not
        echoed: ``request`` is ``null`` and ``request_summary`` gives its size in bytes, its
        SHA-256 and its first characters (scrubbed and masked likewise).
        """
        if raw is None:
            if _size(body) > MAX_REQUEST_BYTES:
                # Never decoded whole: the head is enough to recognise it.
                head = body[: 4 * _HEAD_CHARS]
                text = head.decode("utf-8", errors="replace") if isinstance(head, bytes) else head
                return None, _summary(body, self._refs.scrub(text[:_HEAD_CHARS]))
            text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
            text = self._refs.scrub(text)
            if len(json.dumps(text, ensure_ascii=False)) > _ECHO_CHARS:
                return None, _summary(body, text[:_HEAD_CHARS])
            return text, None
        echo = raw
        if isinstance(raw, dict) and not self.policy.with_secrets:
            options = raw.get("options")
            if isinstance(options, dict) and MASKED_OPTIONS.intersection(options):
                masked = {k: (_MASK if k in MASKED_OPTIONS else v) for k, v in options.items()}
                echo = {**raw, "options": masked}
        if isinstance(echo, dict) and isinstance(echo.get("patient"), str):
            compact = echo["patient"].replace(" ", "")
            echo = {**echo, "patient": self._refs.scrub(compact)}
        text = json.dumps(echo, ensure_ascii=False)
        scrubbed = self._refs.scrub(text)
        if len(scrubbed) > _ECHO_CHARS:
            return None, _summary(body, scrubbed[:_HEAD_CHARS])
        return (echo if scrubbed == text else json.loads(scrubbed)), None


def shorten_id(request_id: str) -> str:
    """A request id cut to at most ``MAX_REQUEST_ID_CHARS`` characters, the same every time:
    its first characters, ``~`` and the first 16 hex digits of its SHA-256."""
    if len(request_id) <= MAX_REQUEST_ID_CHARS:
        return request_id
    digest = hashlib.sha256(request_id.encode("utf-8", errors="surrogatepass")).hexdigest()
    return f"{request_id[:_ID_KEPT]}~{digest[:16]}"


def _size(body: bytes | str) -> int:
    """The body's size in bytes (a text body as UTF-8; only a long one is measured exactly)."""
    if isinstance(body, bytes):
        return len(body)
    if len(body) * 4 <= MAX_REQUEST_BYTES:
        return len(body)  # short: however it encodes, it is under the limit
    return len(body.encode("utf-8", errors="surrogatepass"))


def _summary(body: bytes | str, head: str) -> dict[str, Any]:
    data = body if isinstance(body, bytes) else body.encode("utf-8", errors="surrogatepass")
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "head": head}


def _dump(document: Mapping[str, Any]) -> bytes:
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode()
    except UnicodeEncodeError:
        # A lone surrogate (in a text body an embedding application passed) is written as its
        # JSON escape, \udcXX: the document stays UTF-8 and JSON.
        return text.encode(errors="backslashreplace")


def _describe(error: Exception, correlation_id: str) -> dict[str, Any]:
    if isinstance(error, SdsPluginsError):
        described = {
            "type": type(error).__name__,
            "message": str(error),
            "retryable": error.retryable,
            "retry_after_s": error.retry_after_s,
            "exit_code": error.exit_code,
            "correlation_id": correlation_id,
        }
        reason = getattr(error, "reason", None)  # PatientNotFoundError's
        if isinstance(reason, str):
            described["reason"] = reason
        return described
    # Not one of ours: its message could say anything, so the document names the class only
    # and the worker's log has the traceback.
    return {
        "type": type(error).__name__,
        "message": "unexpected error while routing (the worker's log has the details)",
        "retryable": False,
        "retry_after_s": None,
        "exit_code": 1,
        "correlation_id": correlation_id,
    }


def _text(value: object, limit: int = 200) -> str:
    """``value`` safe for a log line: one line, bounded, quoted when it needs to be."""
    text = str(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    if _PLAIN.fullmatch(text):
        return text
    return json.dumps(text)
