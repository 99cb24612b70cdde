"""The worker's options, from arguments or ``SDS_WORKER_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import SplitResult, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ._core import WorkerPolicy

__all__ = ["WorkerSettings", "mask_url"]

_SCHEMES: dict[str, Literal["amqp", "nats"]] = {
    "amqp": "amqp",
    "amqps": "amqp",
    "nats": "nats",
    "tls": "nats",
}


class WorkerSettings(BaseSettings):
    """Everything ``sds-plugins worker`` needs besides the SDS settings (``SDS_*``).

    Each field reads ``SDS_WORKER_<FIELD>`` (``SDS_WORKER_BROKER_URL``,
    ``SDS_WORKER_CONCURRENCY``...). ``broker_url`` is ``amqp://``/``amqps://`` (RabbitMQ) or
    ``nats://``/``tls://`` (NATS JetStream); it is a secret (it may hold a password) and is only
    ever shown with the password masked.
    """

    # hide_input_in_errors: a validation error must not echo the broker URL (or its password).
    model_config = SettingsConfigDict(
        env_prefix="SDS_WORKER_", frozen=True, extra="ignore", hide_input_in_errors=True
    )

    broker_url: SecretStr
    requests: str = Field(default="sds-plugins.requests", min_length=1, max_length=200)
    envelopes: str = Field(default="sds-plugins.envelopes", min_length=1, max_length=200)
    failures: str = Field(default="sds-plugins.failures", min_length=1, max_length=200)
    #: Per-adapter options (TOML, one table per adapter), as for ``route --config``.
    config: Path | None = None
    #: Requests routed at once (the AMQP prefetch; the JetStream fetch batch).
    concurrency: int = Field(default=32, ge=1, le=10_000)
    max_attempts: int = Field(default=10, ge=1, le=1000)
    max_age_s: float = Field(default=900.0, gt=0)
    retry_initial_s: float = Field(default=1.0, gt=0)
    retry_max_s: float = Field(default=60.0, gt=0)
    with_secrets: bool = False
    #: How long a graceful stop waits for in-flight requests before closing anyway.
    drain_timeout_s: float = Field(default=30.0, gt=0)
    #: JetStream only: the durable consumer's ack wait (``in_progress()`` extends it).
    ack_wait_s: float = Field(default=30.0, ge=1)
    #: Serve Prometheus metrics at ``http://metrics_host:metrics_port/metrics`` (0: a free
    #: port, logged at start); ``None``: no metrics endpoint. Needs the ``metrics`` extra.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = Field(default="127.0.0.1", min_length=1, max_length=255)

    @field_validator("broker_url")
    @classmethod
    def _known_scheme(cls, value: SecretStr) -> SecretStr:
        scheme = urlsplit(value.get_secret_value()).scheme.lower()
        if scheme not in _SCHEMES:
            raise ValueError(
                "the broker URL must start with amqp://, amqps:// (RabbitMQ), "
                "nats:// or tls:// (NATS JetStream)"
            )
        return value

    @field_validator("requests", "envelopes", "failures")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if any(c.isspace() or not c.isprintable() for c in value):
            raise ValueError("must not contain spaces or control characters")
        return value

    @model_validator(mode="after")
    def _outcomes_not_into_requests(self) -> WorkerSettings:
        # An outcome published where requests are taken would come back as a request (and on
        # NATS be dropped by the requests' stream as a duplicate of its request); into a
        # RabbitMQ retry queue it would sit at the head for ever, holding every retry behind.
        # The transports refuse a request's reply-to there likewise.
        for option, name in (("envelopes", self.envelopes), ("failures", self.failures)):
            retry_queue = self.transport == "amqp" and name.startswith(f"{self.requests}.retry.")
            if name == self.requests or retry_queue:
                raise ValueError(
                    f"--{option} {name!r} is where requests are taken ({self.requests!r}"
                    f"{' or one of its retry queues' if retry_queue else ''}): outcomes must go "
                    "elsewhere"
                )
        return self

    @property
    def transport(self) -> Literal["amqp", "nats"]:
        """``amqp`` (RabbitMQ) or ``nats`` (NATS JetStream), from the URL's scheme."""
        return _SCHEMES[urlsplit(self.broker_url.get_secret_value()).scheme.lower()]

    @property
    def broker(self) -> str:
        """The broker URL with its password masked: safe for logs."""
        return mask_url(self.broker_url.get_secret_value())

    def policy(self) -> WorkerPolicy:
        """The retry and publishing policy these settings describe."""
        return WorkerPolicy(
            max_attempts=self.max_attempts,
            max_age_s=self.max_age_s,
            retry_initial_s=self.retry_initial_s,
            retry_max_s=max(self.retry_max_s, self.retry_initial_s),
            with_secrets=self.with_secrets,
        )


def mask_url(url: str) -> str:
    """``url`` with any password (and a token-only userinfo) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparseable URL>"
    if "@" not in parts.netloc:
        return url
    user = parts.username or ""
    masked_user = f"{user}:***" if parts.password is not None else "***"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{masked_user}@{host}" + (f":{port}" if port is not None else "")
    return SplitResult(parts.scheme, netloc, parts.path, parts.query, parts.fragment).geturl()
