"""Fixture names the project's tests use, as aliases of the shipped ``sds_plugins.testing`` ones.

The project dogfoods the pytest plugin it offers adapter authors: one implementation of the
sandbox fixtures, shared by every test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from sds_plugins.sandbox import Sandbox
    from sds_plugins.testing import SandboxFactory


@pytest.fixture
def sandbox(sds_sandbox: Sandbox) -> Sandbox:
    """The reference-data sandbox, shared by the session and reset before each test."""
    return sds_sandbox


@pytest.fixture
def make_sandbox(sds_sandbox_factory: SandboxFactory) -> SandboxFactory:
    """Start sandboxes with a custom configuration for one test; all stop afterwards."""
    return sds_sandbox_factory


@pytest.fixture
async def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The test's own sleeps, not taken; those of other event loops (an in-thread sandbox's
    server ticks) go on as usual."""
    waits: list[float] = []
    loop = asyncio.get_running_loop()
    real_sleep = asyncio.sleep

    async def fake_sleep(seconds: float, result: Any = None) -> Any:
        if asyncio.get_running_loop() is not loop:
            return await real_sleep(seconds, result)
        waits.append(seconds)
        return result

    monkeypatch.setattr("asyncio.sleep", fake_sleep)
    return waits


@pytest.fixture
def spans() -> Iterator[tuple[Any, Any]]:
    """``(tracer_provider, exporter)``: an OpenTelemetry SDK keeping finished spans in memory
    (the library itself never configures one)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()
