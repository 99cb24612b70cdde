"""RabbitMQ transport (aio-pika): durable queues, publisher confirms, retries by TTL.

Queues (all durable, declared idempotently; ones that already exist are used as they are)::

    <requests>                 requests, consumed with prefetch = concurrency
    <envelopes>, <failures>    outcomes (or the request's ``reply_to``)
    <requests>.retry.<N>s      retries waiting to go back: per-message TTL (``expiration``),
                               dead-lettered to <requests> when it runs out; N = 1, 2, 4...

A request is acknowledged only after its outcome (or its retry copy) is confirmed by the
broker. Retry copies carry ``x-sds-attempts`` (attempts made so far) and ``x-sds-first-seen``
(whole epoch seconds of the first attempt, an integer: a float header travels as a 32-bit
float, which is minutes out at today's epoch). Each retry queue holds delays in (N/2, N]
seconds: a per-message TTL only expires at the head of a queue, so mixing 1 s and 60 s delays
in one queue would hold the short ones back; this way a retry is late by less than its own
delay at worst, and never early. No broker plugin is needed.

Every message leaves the queue: an outcome the broker refuses (nacked, not encodable) is tried
again, at most ``MAX_PUBLISH_REFUSALS`` times by this worker, and then the request is rejected
without requeue (dead-lettered, when the queue has a dead-letter exchange); one that is
unroutable means a queue was deleted, and the worker stops for a restart to declare it again.
Properties and header names that are not UTF-8 are read per message (``_amqp_strings``) and
answered with a failure document. The connection asks for a heartbeat every ``HEARTBEAT_S``
seconds (unless the URL sets its own ``heartbeat``): a broker that stops answering is noticed
after about three of them, and the worker exits.

aio-pika opens the connection and declares; messages move on its underlying aiormq channel
(``get_underlay_channel``). aio-pika's consumer wraps each delivery in a second task and an
``IncomingMessage`` that converts every property, and its ``Message`` validates each field of
an outcome the worker builds itself: together about a sixth of the worker's CPU per message.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
import math
import os
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq import Channel as RawChannel
from aiormq.abc import DeliveredMessage
from yarl import URL

from .._exceptions import InvalidInputError
from ._amqp_strings import decodable, install, lenient, request_id_of, undecodable_fields, writable
from ._core import RouteWorker, WorkerOutcome
from ._refusals import MAX_PUBLISH_REFUSALS, Refusals
from ._runtime import BrokerError, InFlight, explain, first_of, log_outcome

if TYPE_CHECKING:
    from ._settings import WorkerSettings

__all__ = [
    "ATTEMPTS_HEADER",
    "FIRST_SEEN_HEADER",
    "HEARTBEAT_S",
    "MAX_PUBLISH_REFUSALS",
    "AmqpTransport",
    "retry_queue_name",
]

logger = logging.getLogger("sds_plugins.worker")

ATTEMPTS_HEADER = "x-sds-attempts"
FIRST_SEEN_HEADER = "x-sds-first-seen"
# Headers the broker adds when dead-lettering: it adds them again on the next round.
_BROKER_HEADERS = ("x-death", "x-first-death-", "x-last-death-")
_PUBLISH_TIMEOUT_S = 30.0
_PERSISTENT = 2  # delivery mode: written to disk with the durable queue
# After a failed publish the request goes back to the queue; pausing first keeps a broker that
# refuses everything (disk alarm) from turning the worker into a busy loop.
_REQUEUE_PAUSE_S = 1.0
#: The heartbeat the worker asks for (seconds), unless the URL has its own ``heartbeat=``.
#: aiormq gives up on a connection that sent nothing for 3 x (heartbeat + 1) s, checking every
#: heartbeat/2 s: about 18 to 20 s at 5 (RabbitMQ's default, 60, takes over three minutes).
HEARTBEAT_S = 5
# Closing a connection to a broker that stopped answering must not hang the exit.
_CLOSE_TIMEOUT_S = 5.0


def retry_queue_name(requests: str, delay_s: float) -> str:
    """The retry queue for ``delay_s``: the smallest power-of-two seconds that holds it."""
    bucket = 1 if delay_s <= 1 else 2 ** math.ceil(math.log2(delay_s))
    return f"{requests}.retry.{bucket}s"


class AmqpTransport:
    """Consumes ``settings.requests`` and publishes outcomes on one RabbitMQ connection."""

    def __init__(self, settings: WorkerSettings, worker: RouteWorker) -> None:
        self.settings = settings
        self.worker = worker
        self.in_flight = InFlight()
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._raw: RawChannel | None = None
        self._declared: set[str] = set()
        self._declaring = asyncio.Lock()
        self._lost = asyncio.Event()
        self._lost_reason = ""
        self._cancelled = asyncio.Event()
        # A queue the worker declared is gone (an outcome to it was unroutable).
        self._gone = asyncio.Event()
        self._gone_reason = ""
        # Refusals of an outcome so far, by request (message id, or the body's digest).
        self._refusals = Refusals[str]()

    # -- life cycle ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        install()  # strings that are not UTF-8: per message, on this connection only
        try:
            url = with_heartbeat(settings.broker_url.get_secret_value())
            with lenient():  # the connection's reader task inherits this
                connection = await aio_pika.connect(
                    url,
                    timeout=30,
                    client_properties={
                        "connection_name": (
                            f"sds-plugins worker {socket.gethostname()}:{os.getpid()}"
                        )
                    },
                )
        except Exception as exc:
            raise BrokerError(
                f"cannot connect to {settings.broker}: {explain(exc, settings)}"
            ) from None
        self._connection = connection
        connection.close_callbacks.add(self._on_close)
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            channel.close_callbacks.add(self._on_close)
            self._channel = channel
            for name in (settings.requests, settings.envelopes, settings.failures):
                await self._declare(name)
            await channel.set_qos(prefetch_count=settings.concurrency)
            # aiormq's own Channel: its basic_publish takes the wait= its abstract one lacks.
            self._raw = raw = cast(RawChannel, await channel.get_underlay_channel())
            # The broker cancels the consumer when the queue goes (deleted, or a node lost):
            # nothing would arrive any more, yet the connection stays up.
            raw.on_consumer_cancel_callbacks.add(self._on_cancelled)
            consuming = await raw.basic_consume(settings.requests, self._on_message)
            tag = consuming.consumer_tag
            assert tag is not None
            logger.info(
                "worker ready: consuming %s on %s (concurrency %d)",
                settings.requests,
                settings.broker,
                settings.concurrency,
            )
            await first_of(
                stop.wait(), self._lost.wait(), self._cancelled.wait(), self._gone.wait()
            )
            if self._lost.is_set():
                raise BrokerError(f"lost the connection to {settings.broker}: {self._lost_reason}")
            if self._gone.is_set():
                # Declared once at start: only a restart declares it again. What was delivered
                # goes back to the queue (or is finished first).
                await self._stop_consuming(raw, tag)
                await self.in_flight.drained(settings.drain_timeout_s)
                raise BrokerError(
                    f"{self._gone_reason}: stopping, so that a restart declares it again"
                )
            if self._cancelled.is_set():
                # What was delivered is finished first; then a restart declares the queue again.
                await self.in_flight.drained(settings.drain_timeout_s)
                raise BrokerError(
                    f"{settings.broker} cancelled the consumer of {settings.requests} (was the "
                    "queue deleted?): stopping, so that a restart declares it again"
                )
            await self._stop_consuming(raw, tag)
            if await self.in_flight.drained(settings.drain_timeout_s):
                logger.info("stopped: every request taken was answered and acknowledged")
        except aiormq.exceptions.AMQPError as exc:
            raise BrokerError(f"{settings.broker}: {explain(exc, settings)}") from None
        finally:
            connection.close_callbacks.discard(self._on_close)
            if self._channel is not None:
                self._channel.close_callbacks.discard(self._on_close)
            # A broker that stopped answering would never finish the closing handshake.
            await _quietly(asyncio.wait_for(connection.close(), _CLOSE_TIMEOUT_S))

    async def _stop_consuming(self, raw: RawChannel, tag: str) -> None:
        # basic.cancel: the broker sends nothing more; deliveries already here are in flight
        # (each has its task) and are finished before the channel closes.
        try:
            await raw.basic_cancel(tag)
        except Exception as exc:  # the drain still waits; the broker requeues the rest anyway
            logger.warning("could not cancel the consumer: %s", explain(exc, self.settings))

    def _on_cancelled(self, frame: aiormq.spec.Basic.Cancel) -> None:
        self._cancelled.set()

    def _on_close(self, sender: object, exc: BaseException | None = None) -> None:
        if exc is not None and not self._lost.is_set():
            if isinstance(exc, asyncio.CancelledError):
                # aiormq cancels its reader when no frame came for 3 heartbeats.
                self._lost_reason = "the broker stopped answering (no heartbeat, no frame)"
            else:
                self._lost_reason = explain(exc, self.settings)
            self._lost.set()

    # -- declarations -------------------------------------------------------------------------

    async def _declare(self, name: str, arguments: Mapping[str, Any] | None = None) -> None:
        """Declare a durable queue, once; an existing one with other arguments is used as is.

        Declaring on a throwaway channel: a mismatch (PRECONDITION_FAILED) closes the channel
        it happens on, which must not be the one consuming.
        """
        if name in self._declared:
            return
        async with self._declaring:
            if name in self._declared:
                return
            assert self._connection is not None
            channel = await self._connection.channel(publisher_confirms=False)
            try:
                await channel.declare_queue(name, durable=True, arguments=dict(arguments or {}))
            except aiormq.exceptions.ChannelPreconditionFailed as exc:
                if arguments:
                    # A retry queue without our dead-letter settings would keep retries forever.
                    raise BrokerError(
                        f"queue {name} exists with other arguments than the worker needs "
                        f"({dict(arguments)}): delete it or choose another --requests name"
                    ) from exc
                logger.info("queue %s exists with its own arguments; using it as it is", name)
            finally:
                await _quietly(channel.close())
            self._declared.add(name)

    # -- one request --------------------------------------------------------------------------

    async def _on_message(self, message: DeliveredMessage) -> None:
        with self.in_flight:
            await self._handle(message)

    async def _handle(self, message: DeliveredMessage) -> None:
        raw = self._raw
        assert raw is not None
        properties = message.header.properties
        delivery_tag = message.delivery_tag
        assert delivery_tag is not None  # a delivery (not a basic.get or a return) has one
        headers = dict(properties.headers or {})
        undecodable = undecodable_fields(properties, headers)
        reject = None
        if undecodable:
            shown = ", ".join(undecodable[:5])
            more = f" and {len(undecodable) - 5} more" if len(undecodable) > 5 else ""
            reject = InvalidInputError(
                "the message has properties or header names that are not UTF-8 text (shown "
                f"with \\x escapes): {shown}{more}",
                field="properties",
            )
        request_id = request_id_of(properties.message_id)
        outcome = await self.worker.handle(
            message.body,
            request_id=request_id,
            attempt=_int(headers.get(ATTEMPTS_HEADER)) + 1,
            first_seen=_float(headers.get(FIRST_SEEN_HEADER)),
            headers=headers,
            correlation_id=decodable(properties.correlation_id),
            reject=reject,
        )
        try:
            if outcome.disposition == "retry":
                destination = await self._publish_retry(message, headers, outcome)
            else:
                destination = await self._publish_outcome(message, outcome)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, aiormq.exceptions.PublishError):
                # Unroutable through the default exchange: the queue is gone (deleted). Not
                # the message's fault: it goes back, and the worker stops to declare it again.
                queue = _routing_key(exc) or "a queue"
                if not self._gone.is_set():
                    self._gone_reason = f"queue {queue} is gone (deleted?)"
                    self._gone.set()
                logger.error(
                    "request_id=%s: could not publish its %s: queue %s is gone; it goes back "
                    "to the queue",
                    outcome.request_id,
                    outcome.disposition,
                    queue,
                )
            elif outcome.disposition != "retry" and _is_refusal(exc):
                if await self._refused(message, delivery_tag, outcome, exc):
                    return
            else:
                logger.error(
                    "request_id=%s: could not publish its %s (%s); it goes back to the queue",
                    outcome.request_id,
                    outcome.disposition,
                    explain(exc, self.settings),
                )
            await asyncio.sleep(_REQUEUE_PAUSE_S)
            await _quietly(raw.basic_nack(delivery_tag, requeue=True))
            return
        self._refusals.published(_refusal_key(message))
        try:
            # wait=False: queued behind the outcome's publish on the one connection, and not
            # waiting for the socket to drain; a lost ack only means a duplicate outcome.
            await raw.basic_ack(delivery_tag, wait=False)
        except Exception as exc:  # the connection went: the broker delivers it again
            logger.warning(
                "request_id=%s: published, but the acknowledgement failed (%s); a duplicate "
                "outcome with the same request id may follow",
                outcome.request_id,
                explain(exc, self.settings),
            )
            return
        log_outcome(outcome, destination)

    async def _refused(
        self,
        message: DeliveredMessage,
        delivery_tag: int,
        outcome: WorkerOutcome,
        exc: BaseException,
    ) -> bool:
        """Count a refusal of this request's outcome; past the limit, reject the request
        without requeue (``True``): dead-lettered if the queue has a dead-letter exchange."""
        key = _refusal_key(message)
        refusals = self._refusals.refused(key)
        if refusals < MAX_PUBLISH_REFUSALS:
            logger.error(
                "request_id=%s: the broker refused its %s (%s), %d of %d times; it goes back "
                "to the queue",
                outcome.request_id,
                outcome.disposition,
                explain(exc, self.settings),
                refusals,
                MAX_PUBLISH_REFUSALS,
            )
            return False
        assert self._raw is not None
        try:
            await self._raw.basic_nack(delivery_tag, requeue=False)
        except Exception as nack_error:  # the connection went: it is delivered again
            logger.warning(
                "request_id=%s: could not reject it (%s)",
                outcome.request_id,
                explain(nack_error, self.settings),
            )
            return True
        logger.error(
            "request_id=%s: the broker refused its %s %d times (%s): giving up; the request is "
            "rejected without requeue (dead-lettered if %s has a dead-letter exchange, else "
            "dropped) and has no outcome",
            outcome.request_id,
            outcome.disposition,
            refusals,
            explain(exc, self.settings),
            self.settings.requests,
        )
        return True

    async def _publish_outcome(self, message: DeliveredMessage, outcome: WorkerOutcome) -> str:
        settings = self.settings
        queue = settings.envelopes if outcome.disposition == "envelope" else settings.failures
        incoming = message.header.properties
        properties = aiormq.spec.Basic.Properties(
            content_type="application/json",
            delivery_mode=_PERSISTENT,
            message_id=outcome.request_id,
            # An RPC caller matches the reply by its own correlation id, exactly as it set it.
            correlation_id=decodable(incoming.correlation_id) or outcome.correlation_id,
            message_type=outcome.disposition,
            headers={ATTEMPTS_HEADER: outcome.attempt},
            timestamp=datetime.datetime.now(datetime.UTC),
            app_id="sds-plugins",
        )
        reply_to = decodable(incoming.reply_to)
        if reply_to and self._is_requests_queue(reply_to):
            # It would be taken for a request (or, in a retry queue, block the retries behind
            # it): refused as --envelopes/--failures would be.
            logger.warning(
                "request_id=%s: reply_to %s is the requests queue or one of its retry queues; "
                "publishing to %s",
                outcome.request_id,
                _printable(reply_to),
                queue,
            )
            reply_to = None
        if reply_to:
            try:
                await self._publish(outcome.body, properties, reply_to)
            except aiormq.exceptions.PublishError:
                # Nobody listens at reply_to any more (a requester's reply queue went away):
                # the outcome goes where it would have gone without one rather than nowhere.
                logger.warning(
                    "request_id=%s: reply_to %s is unroutable; publishing to %s",
                    outcome.request_id,
                    _printable(reply_to),
                    queue,
                )
            else:
                return reply_to
        await self._publish(outcome.body, properties, queue)
        return queue

    def _is_requests_queue(self, name: str) -> bool:
        requests = self.settings.requests
        return name == requests or name.startswith(f"{requests}.retry.")

    async def _publish_retry(
        self,
        message: DeliveredMessage,
        headers: dict[str, Any],
        outcome: WorkerOutcome,
    ) -> str:
        assert outcome.delay_s is not None
        requests = self.settings.requests
        queue = retry_queue_name(requests, outcome.delay_s)
        await self._declare(
            queue, {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": requests}
        )
        kept = {k: writable(v) for k, v in headers.items() if not k.startswith(_BROKER_HEADERS)}
        kept[ATTEMPTS_HEADER] = outcome.attempt
        kept[FIRST_SEEN_HEADER] = math.floor(outcome.first_seen)
        original = message.header.properties
        properties = aiormq.spec.Basic.Properties(
            headers=kept,
            content_type=original.content_type,
            content_encoding=original.content_encoding,
            delivery_mode=_PERSISTENT,
            priority=original.priority,
            correlation_id=original.correlation_id,
            reply_to=original.reply_to,
            # In whole milliseconds, at least 1: RabbitMQ reads an expiration of 0 as "expire
            # unless consumed now".
            expiration=str(max(int(outcome.delay_s * 1000), 1)),
            message_id=outcome.request_id,  # an id the worker assigned sticks from now on
            timestamp=original.timestamp,
            message_type=original.message_type,
            app_id=original.app_id,
        )
        await self._publish(message.body, properties, queue)
        return queue

    async def _publish(
        self, body: bytes, properties: aiormq.spec.Basic.Properties, routing_key: str
    ) -> None:
        assert self._raw is not None
        # mandatory + on_return_raises (the channel's): a message no queue takes raises
        # PublishError instead of vanishing; publisher confirms: this returns only once the
        # broker has it (a nack raises DeliveryError). wait=False: the confirmation, not the
        # socket draining, is what this waits for.
        await self._raw.basic_publish(
            body,
            routing_key=routing_key,
            properties=properties,
            mandatory=True,
            timeout=_PUBLISH_TIMEOUT_S,
            wait=False,
        )


def with_heartbeat(url: str) -> URL:
    """``url`` asking for heartbeats every :data:`HEARTBEAT_S` s, unless it sets its own."""
    parsed = URL(url)
    if "heartbeat" in parsed.query:
        return parsed
    return parsed.update_query(heartbeat=HEARTBEAT_S)


def _is_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` is the broker (or the client) refusing this one message — nacked, not
    encodable — rather than a connection or a broker in trouble (a timeout, a closed channel),
    which is waited out by requeueing as long as it lasts, or a queue that is gone
    (unroutable), which a restart declares again."""
    if isinstance(exc, aiormq.exceptions.PublishError):
        return False
    return isinstance(exc, aiormq.exceptions.DeliveryError | TypeError | ValueError | OverflowError)


def _routing_key(exc: aiormq.exceptions.PublishError) -> str | None:
    delivery = getattr(exc.message, "delivery", None)
    key = getattr(delivery, "routing_key", None)
    return key if isinstance(key, str) else None


def _refusal_key(message: DeliveredMessage) -> str:
    """The same for every delivery of a request: its message id, else its body's digest."""
    message_id = message.header.properties.message_id
    if message_id:
        return "id:" + message_id
    return "sha256:" + hashlib.sha256(message.body).hexdigest()


def _printable(text: str) -> str:
    return text if text.isprintable() else repr(text)


async def _quietly(awaitable: Any) -> None:
    try:
        await awaitable
    except Exception as exc:
        logger.debug("ignored while closing: %s", type(exc).__name__)


def _int(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def _float(value: Any) -> float | None:
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None
