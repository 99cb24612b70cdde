"""NATS JetStream transport (nats-py): streams, a durable pull consumer, ``nak`` with delay.

Declared idempotently by ``_nats_streams`` (anything that already exists is used as it is)::

    stream <REQUESTS>      captures <requests> unless a stream already does (work-queue retention)
    stream <ENVELOPES>     captures <envelopes>, likewise; <FAILURES> captures <failures>
    consumer worker-<requests>   durable, pull, explicit acks, shared by every worker

Stream names are the subjects upper-cased with other characters as ``_``
(``sds-plugins.requests`` -> ``SDS-PLUGINS_REQUESTS``). Outcomes are published with
``Nats-Msg-Id`` = the request id, so JetStream drops a duplicate outcome within the stream's
duplicate window; that is also why outcomes may not land in the requests' stream (its
de-duplication would swallow an outcome that has its request's id).

A request is acknowledged only after JetStream acknowledged its outcome. Retries are
``nak(delay)``; the attempt is the message's delivery count; ``in_progress()`` keeps the ack wait
from running out under a slow route. Replies go to the request's ``Reply-To`` header, which
must be a subject a stream other than the requests' captures (otherwise the outcome goes to
<envelopes>/<failures>).

Every message leaves the stream: an outcome JetStream refuses (too large, a limit reached) is
tried again, at most ``MAX_PUBLISH_REFUSALS`` times by this worker, and then the request is
terminated (``AckTerm``: JetStream announces it on
``$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.<stream>.<consumer>``; a work-queue stream
deletes it, a stream with limits retention keeps it for a dead-letter consumer). An outcome
stream that is gone stops the worker, for a restart to declare it again. A watchdog pings the
server every ``PING_S`` seconds: when no ping was answered for ``STALL_S`` seconds (a server
that accepts but never answers, or one that does not come back), the worker exits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from typing import TYPE_CHECKING

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from .._exceptions import ConfigurationError
from ._core import RouteWorker, WorkerOutcome
from ._nats_streams import check_subject, consumer_name, declare, subject_matches
from ._refusals import MAX_PUBLISH_REFUSALS, Refusals
from ._runtime import BrokerError, InFlight, explain, first_of, log_outcome

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

    from ._settings import WorkerSettings

__all__ = [
    "ATTEMPTS_HEADER",
    "CORRELATION_HEADER",
    "MAX_PUBLISH_REFUSALS",
    "MSG_ID_HEADER",
    "OUTCOME_HEADER",
    "PING_S",
    "REPLY_TO_HEADER",
    "STALL_S",
    "NatsTransport",
]

logger = logging.getLogger("sds_plugins.worker")

MSG_ID_HEADER = "Nats-Msg-Id"
REPLY_TO_HEADER = "Reply-To"
CORRELATION_HEADER = "Correlation-Id"
OUTCOME_HEADER = "Sds-Outcome"
ATTEMPTS_HEADER = "Sds-Attempts"

_FETCH_WAIT_S = 1.0  # how long an idle fetch waits: also how soon an idle worker sees a stop
_API_TIMEOUT_S = 10.0
_REPUBLISH_DELAY_S = 1.0  # after a failed outcome publish, redeliver the request this soon
# While idle, how often to ask whether the durable consumer is still there: once it (or its
# stream) is deleted, pulls time out exactly as they do on an empty stream.
_CONSUMER_CHECK_S = 5.0
# Request ids the worker assigns live in their own namespace: derived from the stream sequence,
# so a redelivered request keeps the id it had.
_REQUEST_ID_NAMESPACE = uuid.UUID("8c4f8f0e-2b1d-4e49-a7a8-6f0f5c1c2d3b")
#: How often the watchdog pings the server (a PING it must answer with a PONG), and how long
#: it waits for each answer.
PING_S = 5.0
_PONG_WAIT_S = 5
#: No answer to any ping for this long: the server is gone or silent (it accepted the TCP
#: connection but answers nothing), and the worker exits. Noticed 20 to 30 s after it stalls.
STALL_S = 20.0
# Closing a connection to a server that stopped answering must not hang the exit.
_CLOSE_TIMEOUT_S = 5.0


class NatsTransport:
    """Pulls ``settings.requests`` from JetStream and publishes outcomes to JetStream."""

    def __init__(self, settings: WorkerSettings, worker: RouteWorker) -> None:
        self.settings = settings
        self.worker = worker
        self.in_flight = InFlight()
        self._lost = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._js: JetStreamContext | None = None
        self._requests_stream = ""
        self._closing = False
        self._consumer_gone = False
        self._next_check = 0.0
        self._stalled = False
        # A stream the worker declared is gone (nothing captures an outcome's subject).
        self._gone = asyncio.Event()
        self._gone_reason = ""
        # What the requests' stream captures: a Reply-To there would be de-duplicated away.
        self._requests_subjects: list[str] = []
        # Refusals of an outcome so far, by the request's stream sequence.
        self._refusals = Refusals[int]()

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        for subject, option in (
            (settings.requests, "--requests"),
            (settings.envelopes, "--envelopes"),
            (settings.failures, "--failures"),
        ):
            check_subject(subject, option)
        try:
            nc = await nats.connect(
                settings.broker_url.get_secret_value(),
                name=f"sds-plugins worker {socket.gethostname()}:{os.getpid()}",
                connect_timeout=10,
                allow_reconnect=True,
                # ~30 s of reconnecting, at start and after a loss; then the worker exits (1)
                # and its supervisor restarts it, as the RabbitMQ transport does at once.
                max_reconnect_attempts=15,
                reconnect_time_wait=2,
                # nats-py's own pings (default: every 2 minutes) only start a reconnect, to
                # another server of a cluster say; the watchdog below decides to exit.
                ping_interval=int(PING_S),
                max_outstanding_pings=2,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
                closed_cb=self._on_closed,
            )
        except Exception as exc:
            raise BrokerError(
                f"cannot connect to {settings.broker}: {explain(exc, settings)}"
            ) from None
        try:
            js = nc.jetstream(timeout=_API_TIMEOUT_S)
            self._js = js
            declared = await declare(js, settings)
            self._requests_stream, self._requests_subjects, subscription = declared
            logger.info(
                "worker ready: consuming %s (stream %s) on %s (concurrency %d)",
                settings.requests,
                self._requests_stream,
                settings.broker,
                settings.concurrency,
            )
            watchdog = asyncio.create_task(self._watch(nc))
            consuming = asyncio.create_task(self._consume(subscription, stop))
            try:
                # A lost (or silent) server ends the consuming at once, whatever it waits for.
                await first_of(asyncio.shield(consuming), self._lost.wait(), self._gone.wait())
                if not consuming.done():
                    consuming.cancel()
                try:
                    await consuming  # its own errors (nats.errors.Error) are raised here
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise  # this task is being cancelled, not only the consuming
            finally:
                watchdog.cancel()
                consuming.cancel()
            if self._stalled:
                raise BrokerError(
                    f"{settings.broker} stopped answering: no answer to a ping for {STALL_S:.0f} s"
                )
            if self._lost.is_set():
                raise BrokerError(f"lost the connection to {settings.broker}")
            if self._gone.is_set():
                # Declared at start: only a restart declares it again. What was taken is
                # finished first, or delivered again.
                await self.in_flight.drained(settings.drain_timeout_s)
                raise BrokerError(
                    f"{self._gone_reason}: stopping, so that a restart declares it again"
                )
            if self._consumer_gone:
                # What was delivered is finished first; then a restart declares them again.
                await self.in_flight.drained(settings.drain_timeout_s)
                raise BrokerError(
                    f"the consumer of {settings.requests} on {settings.broker} is gone (was "
                    f"stream {self._requests_stream} or its consumer deleted?): stopping, so "
                    "that a restart declares them again"
                )
            if await self.in_flight.drained(settings.drain_timeout_s):
                logger.info("stopped: every request taken was answered and acknowledged")
        except nats.errors.Error as exc:
            raise BrokerError(f"{settings.broker}: {explain(exc, settings)}") from None
        finally:
            self._closing = True
            for task in list(self._tasks):
                task.cancel()
            try:
                if nc.is_connected and not self._stalled:
                    # Acks and naks are plain publishes: make sure they left before closing.
                    await nc.flush(timeout=5)
            except Exception as exc:
                logger.debug("flush before close failed: %s", type(exc).__name__)
            try:
                # A server that stopped answering would hold the close for ever.
                await asyncio.wait_for(nc.close(), _CLOSE_TIMEOUT_S)
            except Exception as exc:
                logger.debug("close failed: %s", type(exc).__name__)

    # -- consuming ----------------------------------------------------------------------------

    async def _consume(
        self, subscription: JetStreamContext.PullSubscription, stop: asyncio.Event
    ) -> None:
        concurrency = self.settings.concurrency
        while not stop.is_set() and not self._lost.is_set():
            free = concurrency - self.in_flight.count
            if free <= 0:
                self._slot_free.clear()
                await first_of(self._slot_free.wait(), stop.wait(), self._lost.wait())
                continue
            try:
                messages = await subscription.fetch(batch=free, timeout=_FETCH_WAIT_S)
            except TimeoutError:
                # nats-py raises its own TimeoutError (a subclass) or, when the deadline runs
                # out between its two pull requests, a plain asyncio.TimeoutError: both = idle.
                if await self._consumer_deleted():
                    break
                continue
            except nats.errors.ConnectionClosedError:
                break
            for message in messages:
                self.in_flight.begin()
                task = asyncio.create_task(self._on_message(message))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _watch(self, nc: Client) -> None:
        """Ping the server every ``PING_S``; when none was answered for ``STALL_S``, it is gone
        or silent: the worker stops (exit 1), for its supervisor to restart it."""
        answered = time.monotonic()
        while True:
            await asyncio.sleep(PING_S)
            try:
                # Not connected (reconnecting) is no answer: nats-py's flush() then returns at
                # once without a ping. The outer timeout guards its own writes too.
                if not nc.is_connected:
                    raise nats.errors.ConnectionReconnectingError
                await asyncio.wait_for(nc.flush(timeout=_PONG_WAIT_S), _PONG_WAIT_S + 1)
                if not nc.is_connected:
                    raise nats.errors.ConnectionReconnectingError
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                silent = time.monotonic() - answered
                logger.debug("ping unanswered for %.0f s: %s", silent, type(exc).__name__)
                if silent >= STALL_S:
                    logger.error(
                        "%s answered no ping for %.0f s: giving up on it",
                        self.settings.broker,
                        silent,
                    )
                    self._stalled = True
                    self._lost.set()
                    return
            else:
                answered = time.monotonic()

    async def _consumer_deleted(self) -> bool:
        """Whether the durable consumer (or its stream) is gone; asked at most every few
        seconds, and only while idle."""
        now = time.monotonic()
        if self._js is None or now < self._next_check:
            return False
        self._next_check = now + _CONSUMER_CHECK_S
        try:
            await self._js.consumer_info(
                self._requests_stream, consumer_name(self.settings.requests)
            )
        except nats.js.errors.NotFoundError:
            self._consumer_gone = True
            return True
        except Exception as exc:  # cannot tell now (reconnecting, a timeout): ask again later
            logger.debug("could not check the consumer: %s", type(exc).__name__)
        return False

    async def _on_message(self, message: Msg) -> None:
        try:
            await self._handle(message)
        finally:
            self.in_flight.end()
            self._slot_free.set()

    async def _handle(self, message: Msg) -> None:
        headers = message.headers or {}
        metadata = message.metadata
        request_id = headers.get(MSG_ID_HEADER) or str(
            uuid.uuid5(_REQUEST_ID_NAMESPACE, f"{metadata.stream}:{metadata.sequence.stream}")
        )
        keep_alive = asyncio.create_task(self._keep_alive(message))
        try:
            outcome = await self.worker.handle(
                message.data,
                request_id=request_id,
                attempt=metadata.num_delivered,
                first_seen=metadata.timestamp.timestamp(),
                headers=headers,
            )
        finally:
            keep_alive.cancel()
        if outcome.disposition == "retry":
            assert outcome.delay_s is not None
            try:
                await message.nak(delay=max(outcome.delay_s, 0.001))
            except Exception as exc:  # not lost: the ack wait runs out and it comes back
                logger.warning(
                    "request_id=%s: nak failed (%s)",
                    outcome.request_id,
                    explain(exc, self.settings),
                )
                return
            log_outcome(outcome, self.settings.requests)
            return
        try:
            destination = await self._publish_outcome(headers, outcome)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, nats.js.errors.NoStreamResponseError) and not self._gone.is_set():
                # No stream captures --envelopes/--failures any more (a Reply-To without one
                # falls back to them): not the message's fault. It is delivered again, and the
                # worker stops to declare the stream again.
                self._gone_reason = (
                    f"no stream captures {self.settings.envelopes} or {self.settings.failures} "
                    "any more (deleted?)"
                )
                self._gone.set()
            if _is_refusal(exc) and await self._refused(message, outcome, exc):
                return
            if not _is_refusal(exc):
                logger.error(
                    "request_id=%s: could not publish its %s (%s); it will be delivered again",
                    outcome.request_id,
                    outcome.disposition,
                    explain(exc, self.settings),
                )
            try:
                await message.nak(delay=_REPUBLISH_DELAY_S)
            except Exception as nak_error:
                logger.debug("nak failed too: %s", type(nak_error).__name__)
            return
        self._refusals.published(metadata.sequence.stream)
        try:
            await message.ack()
        except Exception as exc:
            logger.warning(
                "request_id=%s: published, but the acknowledgement failed (%s); a duplicate "
                "outcome with the same Nats-Msg-Id may follow",
                outcome.request_id,
                explain(exc, self.settings),
            )
            return
        log_outcome(outcome, destination)

    async def _refused(self, message: Msg, outcome: WorkerOutcome, exc: BaseException) -> bool:
        """Count a refusal of this request's outcome; past the limit, terminate the request
        (``True``): JetStream announces it as terminated, and delivers it no more."""
        key = message.metadata.sequence.stream
        refusals = self._refusals.refused(key)
        if refusals < MAX_PUBLISH_REFUSALS:
            logger.error(
                "request_id=%s: JetStream refused its %s (%s), %d of %d times; it will be "
                "delivered again",
                outcome.request_id,
                outcome.disposition,
                explain(exc, self.settings),
                refusals,
                MAX_PUBLISH_REFUSALS,
            )
            return False
        try:
            await message.term()
        except Exception as term_error:  # not lost: the ack wait runs out and it comes back
            logger.warning(
                "request_id=%s: could not terminate it (%s)",
                outcome.request_id,
                explain(term_error, self.settings),
            )
            return True
        logger.error(
            "request_id=%s: JetStream refused its %s %d times (%s): giving up; the request is "
            "terminated (announced on $JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.%s.%s) and has "
            "no outcome",
            outcome.request_id,
            outcome.disposition,
            refusals,
            explain(exc, self.settings),
            self._requests_stream,
            consumer_name(self.settings.requests),
        )
        return True

    async def _keep_alive(self, message: Msg) -> None:
        """Tell JetStream the request is being worked on, so its ack wait does not run out."""
        interval = max(self.settings.ack_wait_s / 3, 0.5)
        while True:
            await asyncio.sleep(interval)
            try:
                await message.in_progress()
            except Exception as exc:
                logger.debug("in_progress failed: %s", type(exc).__name__)

    async def _publish_outcome(self, headers: dict[str, str], outcome: WorkerOutcome) -> str:
        assert self._js is not None
        settings = self.settings
        subject = settings.envelopes if outcome.disposition == "envelope" else settings.failures
        outgoing = {
            MSG_ID_HEADER: outcome.request_id,
            CORRELATION_HEADER: outcome.correlation_id,
            OUTCOME_HEADER: outcome.disposition,
            ATTEMPTS_HEADER: str(outcome.attempt),
            "Content-Type": "application/json",
        }
        reply_to = headers.get(REPLY_TO_HEADER, "").strip()
        if reply_to and any(subject_matches(p, reply_to) for p in self._requests_subjects):
            # Into the requests' stream: its de-duplication would drop the outcome (it has its
            # request's Nats-Msg-Id), or it would be taken for a request. Refused as
            # --envelopes/--failures would be.
            logger.warning(
                "request_id=%s: Reply-To %s is captured by the requests' stream %s; "
                "publishing to %s",
                outcome.request_id,
                _printable(reply_to),
                self._requests_stream,
                subject,
            )
            reply_to = ""
        if reply_to:
            try:
                check_subject(reply_to, REPLY_TO_HEADER)
                await self._js.publish(reply_to, outcome.body, headers=dict(outgoing))
            except (ConfigurationError, nats.js.errors.NoStreamResponseError):
                logger.warning(
                    "request_id=%s: no stream captures Reply-To %s; publishing to %s",
                    outcome.request_id,
                    _printable(reply_to),
                    subject,
                )
            else:
                return reply_to
        # A duplicate ack (an earlier delivery published this outcome, then died before
        # acknowledging the request) is success: the outcome is there, once.
        await self._js.publish(subject, outcome.body, headers=outgoing)
        return subject

    # -- connection events --------------------------------------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        logger.warning("NATS: %s", explain(exc, self.settings))

    async def _on_disconnected(self) -> None:
        if self._closing:
            return
        logger.warning("disconnected from %s; reconnecting", self.settings.broker)

    async def _on_reconnected(self) -> None:
        logger.info("reconnected to %s", self.settings.broker)

    async def _on_closed(self) -> None:
        self._lost.set()


def _is_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` is JetStream (or the client) refusing this one message — too large, a
    stream's limit — rather than a connection or a server in trouble (a timeout, JetStream
    unavailable), which is waited out by redelivering as long as it lasts, or a stream that is
    gone, which a restart declares again."""
    if isinstance(exc, nats.js.errors.ServiceUnavailableError):
        return False
    return isinstance(
        exc,
        nats.errors.MaxPayloadError
        | nats.js.errors.APIError
        | nats.errors.BadSubjectError
        | nats.errors.BadHeaderError
        | TypeError
        | ValueError,
    )


def _printable(text: str) -> str:
    return text if text.isprintable() else repr(text)
