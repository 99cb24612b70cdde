"""NATS JetStream transport (nats-py): streams, a durable pull consumer, ``nak`` with delay.

Declared idempotently (anything that already exists is used as it is)::

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
must be a subject a stream captures (otherwise the outcome goes to <envelopes>/<failures>).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
import uuid
from typing import TYPE_CHECKING

import nats
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from .._exceptions import ConfigurationError
from ._core import RouteWorker, WorkerOutcome
from ._runtime import BrokerError, InFlight, explain, first_of, log_outcome

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

    from ._settings import WorkerSettings

__all__ = [
    "ATTEMPTS_HEADER",
    "CORRELATION_HEADER",
    "MSG_ID_HEADER",
    "OUTCOME_HEADER",
    "REPLY_TO_HEADER",
    "NatsTransport",
    "consumer_name",
    "stream_name",
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
_NOT_A_NAME = re.compile(r"[^A-Za-z0-9_-]")


def stream_name(subject: str) -> str:
    """The stream the worker creates for ``subject`` when no stream captures it."""
    return _NOT_A_NAME.sub("_", subject).upper()


def consumer_name(requests: str) -> str:
    """The durable consumer every worker on ``requests`` shares."""
    return "worker-" + _NOT_A_NAME.sub("_", requests)


def _check_subject(subject: str, option: str) -> None:
    if not subject or any(c in subject for c in "*> \t\r\n") or ".." in subject:
        raise ConfigurationError(f"{option} {subject!r} is not a plain NATS subject")


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

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        for subject, option in (
            (settings.requests, "--requests"),
            (settings.envelopes, "--envelopes"),
            (settings.failures, "--failures"),
        ):
            _check_subject(subject, option)
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
            subscription = await self._declare(js)
            logger.info(
                "worker ready: consuming %s (stream %s) on %s (concurrency %d)",
                settings.requests,
                self._requests_stream,
                settings.broker,
                settings.concurrency,
            )
            await self._consume(subscription, stop)
            if self._lost.is_set():
                raise BrokerError(f"lost the connection to {settings.broker}")
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
                if nc.is_connected:
                    # Acks and naks are plain publishes: make sure they left before closing.
                    await nc.flush(timeout=5)
            except Exception as exc:
                logger.debug("flush before close failed: %s", type(exc).__name__)
            await nc.close()

    # -- declarations -------------------------------------------------------------------------

    async def _declare(self, js: JetStreamContext) -> JetStreamContext.PullSubscription:
        settings = self.settings
        requests = await self._ensure_stream(js, settings.requests)
        for subject in (settings.envelopes, settings.failures):
            if await self._ensure_stream(js, subject) == requests:
                raise ConfigurationError(
                    f"stream {requests} captures both {settings.requests} and {subject}: "
                    "outcomes carry their request's Nats-Msg-Id, so that stream's de-duplication "
                    "would drop them; capture outcomes in another stream"
                )
        self._requests_stream = requests
        durable = consumer_name(settings.requests)
        try:
            info = await js.consumer_info(requests, durable)
        except nats.js.errors.NotFoundError:
            config = ConsumerConfig(
                durable_name=durable,
                description="sds-plugins workers (competing consumers)",
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=settings.ack_wait_s,
                deliver_policy=DeliverPolicy.ALL,
                filter_subject=settings.requests,
                max_deliver=-1,  # the worker counts attempts and gives up itself
                # Requests waiting for a delayed redelivery count as pending: leave room for
                # an outage's worth of them besides the ones being routed.
                max_ack_pending=max(10_000, settings.concurrency * 10),
            )
            try:
                await js.add_consumer(requests, config)
            except nats.js.errors.BadRequestError:
                # Another worker created it a moment ago with other settings: use theirs.
                info = await js.consumer_info(requests, durable)
                self._check_consumer(info.config, durable)
        else:
            self._check_consumer(info.config, durable)
        return await js.pull_subscribe_bind(durable=durable, stream=requests)

    def _check_consumer(self, config: ConsumerConfig, durable: str) -> None:
        if config.filter_subject not in (None, "", self.settings.requests):
            raise ConfigurationError(
                f"consumer {durable} exists and filters {config.filter_subject!r}, "
                f"not {self.settings.requests!r}"
            )
        if config.ack_policy not in (None, AckPolicy.EXPLICIT):
            raise ConfigurationError(f"consumer {durable} exists without explicit acks")

    async def _ensure_stream(self, js: JetStreamContext, subject: str) -> str:
        try:
            return await js.find_stream_name_by_subject(subject)
        except nats.js.errors.NotFoundError:
            pass
        name = stream_name(subject)
        config = StreamConfig(
            name=name,
            subjects=[subject],
            description="sds-plugins worker",
            # A queue's semantics: a message is gone once a consumer acknowledged it.
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=120.0,
        )
        try:
            await js.add_stream(config)
            logger.info("created stream %s for %s", name, subject)
        except nats.js.errors.BadRequestError:
            # Created meanwhile by another worker, or the name is taken: ask again.
            return await js.find_stream_name_by_subject(subject)
        return name

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
        if reply_to:
            try:
                _check_subject(reply_to, REPLY_TO_HEADER)
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


def _printable(text: str) -> str:
    return text if text.isprintable() else repr(text)
