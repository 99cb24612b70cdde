"""JetStream's side of the NATS transport: names, subjects, and declaring streams and consumer.

Stream names are the subjects upper-cased with other characters as ``_``
(``sds-plugins.requests`` -> ``SDS-PLUGINS_REQUESTS``); every worker on ``<requests>`` shares
one durable pull consumer, ``worker-<requests>``. :func:`declare` uses whatever already exists
(a stream that captures a subject, a consumer another worker made) and creates the rest.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, NamedTuple

import nats.js.errors
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from .._exceptions import ConfigurationError

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

    from ._settings import WorkerSettings

__all__ = [
    "Declared",
    "check_subject",
    "consumer_name",
    "declare",
    "stream_name",
    "subject_matches",
]

logger = logging.getLogger("sds_plugins.worker")

_NOT_A_NAME = re.compile(r"[^A-Za-z0-9_-]")


def stream_name(subject: str) -> str:
    """The stream the worker creates for ``subject`` when no stream captures it."""
    return _NOT_A_NAME.sub("_", subject).upper()


def consumer_name(requests: str) -> str:
    """The durable consumer every worker on ``requests`` shares."""
    return "worker-" + _NOT_A_NAME.sub("_", requests)


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether a stream subject ``pattern`` (``*`` one token, ``>`` the rest) captures
    ``subject``."""
    tokens = subject.split(".")
    parts = pattern.split(".")
    for index, part in enumerate(parts):
        if part == ">":
            return len(tokens) > index
        if index >= len(tokens) or (part != "*" and part != tokens[index]):
            return False
    return len(parts) == len(tokens)


def check_subject(subject: str, option: str) -> None:
    """Refuse (:class:`ConfigurationError`) anything but a plain subject: no wildcard,
    whitespace or empty token."""
    if not subject or any(c in subject for c in "*> \t\r\n") or ".." in subject:
        raise ConfigurationError(f"{option} {subject!r} is not a plain NATS subject")


class Declared(NamedTuple):
    """What :func:`declare` found or made."""

    #: The stream of the requests.
    stream: str
    #: The subjects that stream captures (the requests' first): an outcome sent to one of
    #: them would be taken for a request, or de-duplicated away.
    subjects: list[str]
    subscription: JetStreamContext.PullSubscription


async def declare(js: JetStreamContext, settings: WorkerSettings) -> Declared:
    """Find or create the streams of ``settings``' subjects and the durable consumer of its
    requests, and bind a pull subscription to that consumer."""
    requests = await _ensure_stream(js, settings.requests)
    for subject in (settings.envelopes, settings.failures):
        if await _ensure_stream(js, subject) == requests:
            raise ConfigurationError(
                f"stream {requests} captures both {settings.requests} and {subject}: "
                "outcomes carry their request's Nats-Msg-Id, so that stream's de-duplication "
                "would drop them; capture outcomes in another stream"
            )
    info = await js.stream_info(requests)
    subjects = [settings.requests, *(info.config.subjects or [])]
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
            _check_consumer(info.config, durable, settings.requests)
    else:
        _check_consumer(info.config, durable, settings.requests)
    subscription = await js.pull_subscribe_bind(durable=durable, stream=requests)
    return Declared(requests, subjects, subscription)


def _check_consumer(config: ConsumerConfig, durable: str, requests: str) -> None:
    if config.filter_subject not in (None, "", requests):
        raise ConfigurationError(
            f"consumer {durable} exists and filters {config.filter_subject!r}, not {requests!r}"
        )
    if config.ack_policy not in (None, AckPolicy.EXPLICIT):
        raise ConfigurationError(f"consumer {durable} exists without explicit acks")


async def _ensure_stream(js: JetStreamContext, subject: str) -> str:
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
