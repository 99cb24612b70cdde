"""Shared fixtures: running sandboxes over real sockets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from sds_plugins.sandbox import Sandbox


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    """The default sandbox (reference data), shared by the session. Do not set faults on it."""
    from sds_plugins.sandbox import Sandbox, SandboxConfig

    with Sandbox(SandboxConfig()) as running:
        yield running


@pytest.fixture
def make_sandbox() -> Iterator[Callable[..., Sandbox]]:
    """Start sandboxes with a custom configuration for one test; all stop afterwards."""
    from sds_plugins.sandbox import Sandbox, SandboxConfig

    started: list[Sandbox] = []

    def factory(**config: Any) -> Sandbox:
        running = Sandbox(SandboxConfig(**config))
        running.start()
        started.append(running)
        return running

    yield factory
    for running in started:
        running.stop()
