"""The worker's settings and command line, without a broker: options, env, masking, extras."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from sds_plugins import (
    InvalidInputError,
    WorkerOutcome,
    WorkerPolicy,
    WorkerRequest,
    WorkerSettings,
)
from sds_plugins._worker._amqp import retry_queue_name
from sds_plugins._worker._nats_streams import consumer_name, stream_name
from sds_plugins._worker._runtime import import_extra, log_outcome, redact
from sds_plugins._worker._settings import mask_url

from .test_cli import run

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/", "amqp://guest:***@127.0.0.1:5672/"),
        ("amqps://svc:p%40ss@mq.example.com/prod?heartbeat=30", "amqps://svc:***@mq.example.com/prod?heartbeat=30"),
        ("nats://s3cr3t-token@127.0.0.1:4222", "nats://***@127.0.0.1:4222"),
        ("tls://user:pw@[::1]:4222", "tls://user:***@[::1]:4222"),
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
    ],
)  # fmt: skip
def test_broker_urls_are_shown_with_credentials_masked(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    settings = WorkerSettings(broker_url=url)
    assert settings.broker == masked
    assert url not in repr(settings) or url == masked


def test_redact_removes_passwords_and_tokens_from_any_text() -> None:
    settings = WorkerSettings(broker_url="amqp://svc:p%40ss@mq/")
    text = "failed for amqp://svc:p%40ss@mq/ (user svc, password p@ss)"
    assert redact(text, settings) == "failed for amqp://svc:***@mq/ (user svc, password ***)"
    token = WorkerSettings(broker_url="nats://tok3n@127.0.0.1")
    assert "tok3n" not in redact("authorization violation for tok3n", token)


def test_every_option_reads_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "SDS_WORKER_BROKER_URL": "nats://127.0.0.1:4222",
        "SDS_WORKER_REQUESTS": "r",
        "SDS_WORKER_ENVELOPES": "e",
        "SDS_WORKER_FAILURES": "f",
        "SDS_WORKER_CONCURRENCY": "7",
        "SDS_WORKER_MAX_ATTEMPTS": "3",
        "SDS_WORKER_MAX_AGE_S": "60",
        "SDS_WORKER_RETRY_INITIAL_S": "0.5",
        "SDS_WORKER_RETRY_MAX_S": "8",
        "SDS_WORKER_WITH_SECRETS": "true",
        "SDS_WORKER_DRAIN_TIMEOUT_S": "5",
        "SDS_WORKER_ACK_WAIT_S": "9",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = WorkerSettings()  # type: ignore[call-arg]
    assert settings.transport == "nats"
    assert (settings.requests, settings.envelopes, settings.failures) == ("r", "e", "f")
    assert (settings.concurrency, settings.drain_timeout_s, settings.ack_wait_s) == (7, 5, 9)
    assert settings.policy() == WorkerPolicy(
        max_attempts=3, max_age_s=60, retry_initial_s=0.5, retry_max_s=8, with_secrets=True
    )


@pytest.mark.parametrize(
    ("fields", "transport"),
    [({}, "amqp"), ({"broker_url": "AMQPS://h/"}, "amqp"), ({"broker_url": "tls://h"}, "nats")],
)
def test_the_scheme_chooses_the_transport(fields: dict[str, Any], transport: str) -> None:
    settings = WorkerSettings(**{"broker_url": "amqp://guest:guest@h/", **fields})
    assert settings.transport == transport


def test_a_bad_setting_never_echoes_the_broker_url() -> None:
    with pytest.raises(ValidationError) as info:
        WorkerSettings(broker_url="kafka://user:hunter2@h:9092")
    assert "hunter2" not in str(info.value)
    assert "amqp://" in str(info.value)


def test_cli_bad_broker_url_is_exit_2_without_the_password() -> None:
    result = run("worker", "kafka://user:hunter2@h:9092")
    assert result.returncode == 2
    assert "broker_url: Value error, the broker URL must start with amqp://" in result.stderr
    assert "hunter2" not in result.stderr


def test_cli_bad_option_value_is_a_usage_error() -> None:
    result = run("worker", "amqp://h/", "--concurrency", "0")
    assert result.returncode == 2
    assert "--concurrency" in result.stderr


def test_cli_unreachable_broker_is_exit_1_without_the_password() -> None:
    result = run(
        "worker", env={"SDS_WORKER_BROKER_URL": "amqp://svc:hunter2@127.0.0.1:1/"}, timeout=60
    )
    assert result.returncode == 1
    assert "BrokerError: cannot connect to amqp://svc:***@127.0.0.1:1/" in result.stderr
    assert "hunter2" not in result.stderr


def test_core_and_cli_import_without_broker_libraries() -> None:
    program = (
        "import sys\n"
        "sys.modules['aio_pika'] = None\n"  # None in sys.modules: 'import aio_pika' fails
        "sys.modules['nats'] = None\n"
        "import sds_plugins, sds_plugins._tools._cli\n"
        "for name in sds_plugins.__all__: getattr(sds_plugins, name)\n"
        "from sds_plugins._tools._cli import main\n"
        "main(['worker', 'amqp://svc:hunter2@127.0.0.1:1/'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert result.returncode == 2, result.stderr
    assert "needs the 'amqp' extra: pip install 'sds-plugins[amqp]'" in result.stderr
    assert "hunter2" not in result.stderr


def test_a_missing_extra_is_a_configuration_error_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sds_plugins import ConfigurationError

    monkeypatch.setitem(sys.modules, "nats", None)
    with pytest.raises(ConfigurationError, match=r"sds-plugins\[nats\]"):
        import_extra("nats")


def test_names_derived_for_brokers() -> None:
    assert stream_name("sds-plugins.requests") == "SDS-PLUGINS_REQUESTS"
    assert consumer_name("sds-plugins.requests") == "worker-sds-plugins_requests"
    assert retry_queue_name("q", 0.2) == "q.retry.1s"
    assert retry_queue_name("q", 1.0) == "q.retry.1s"
    assert retry_queue_name("q", 1.01) == "q.retry.2s"
    assert retry_queue_name("q", 33) == "q.retry.64s"


def test_one_log_line_per_outcome_without_options(caplog: pytest.LogCaptureFixture) -> None:
    request = WorkerRequest(
        adapter="mesh",
        org="X26",
        interaction="SPINE\nFAKE line",
        options={"password": "hunter2", "mailbox": "X26OT001"},
    )
    outcome = WorkerOutcome(
        disposition="failure",
        request_id="r-1",
        correlation_id="c",
        attempt=2,
        first_seen=0.0,
        body=b'{"secret": "hunter2"}',
        error=InvalidInputError("bad"),
        request=request,
    )
    with caplog.at_level(logging.INFO, logger="sds_plugins.worker"):
        log_outcome(outcome, "sds-plugins.failures")
    [record] = caplog.records
    line = record.getMessage()
    assert line.startswith("request_id=r-1 outcome=failure to=sds-plugins.failures adapter=mesh")
    assert 'interaction="SPINE\\nFAKE line"' in line  # one line: user text cannot forge another
    assert "error=InvalidInputError gave_up=false" in line
    assert "hunter2" not in line
    assert "X26OT001" not in line
    assert "hunter2" not in repr(request) and "hunter2" not in repr(outcome)
