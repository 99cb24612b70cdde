"""Fixture names the project's tests use, as aliases of the shipped ``sds_plugins.testing`` ones.

The project dogfoods the pytest plugin it offers adapter authors: one implementation of the
sandbox fixtures, shared by every test.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
