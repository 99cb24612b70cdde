"""The test suite sees only this repository's plugins, whatever else is installed beside it.

A developer who installed their own adapter (or any distribution with an ``sds_plugins`` entry
point) into the same environment must still get a green suite: tests count adapters, list
plugins and route by name, so a stray plugin would change their answers. Two seams cover it:

- in this process, ``importlib.metadata.entry_points`` is wrapped so that the ``sds_plugins``
  group yields only the distributions of this workspace (pluggy's documented way to fake entry
  points: patch ``importlib.metadata``);
- in the processes the tests start (the CLI, ``serve``, the worker, fleet nodes),
  ``SDS_PLUGINS_LOAD`` names the same distributions: the switch the project offers users.

Tests of discovery itself (``tests/test_plugins.py``) patch ``entry_points`` again on top, and
tests that pass ``environ=`` to a :class:`~sds_plugins.PluginHost` decide for themselves.
"""

from __future__ import annotations

import importlib.metadata
import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parent
GROUP = "sds_plugins"


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def workspace_distributions() -> frozenset[str]:
    """The distributions this repository builds: the project, its adapters and its examples."""
    names = set()
    for pyproject in [ROOT / "pyproject.toml", *ROOT.glob("adapters/*/pyproject.toml")]:
        names.add(tomllib.loads(pyproject.read_text())["project"]["name"])
    for pyproject in ROOT.glob("examples/*/pyproject.toml"):
        names.add(tomllib.loads(pyproject.read_text())["project"]["name"])
    return frozenset(_normalise(name) for name in names)


def only_workspace_plugins(
    entry_points: Callable[..., Any], allowed: frozenset[str]
) -> Callable[..., Any]:
    """``entry_points`` with the ``sds_plugins`` group cut down to the ``allowed`` distributions
    (every other group, and every other call shape, passed through untouched)."""

    def filtered(**params: Any) -> Any:
        found = entry_points(**params)
        if params.get("group") != GROUP:
            return found
        return importlib.metadata.EntryPoints(
            ep
            for ep in found
            if getattr(ep, "dist", None) is not None and _normalise(ep.dist.name) in allowed
        )

    filtered.__wrapped__ = entry_points  # type: ignore[attr-defined]
    return filtered


_saved: dict[str, Any] = {}


def pytest_configure(config: pytest.Config) -> None:
    allowed = workspace_distributions()
    _saved["entry_points"] = importlib.metadata.entry_points
    _saved["load"] = os.environ.get("SDS_PLUGINS_LOAD")
    importlib.metadata.entry_points = only_workspace_plugins(  # type: ignore[assignment]
        importlib.metadata.entry_points, allowed
    )
    os.environ["SDS_PLUGINS_LOAD"] = ",".join(sorted(allowed))


def pytest_unconfigure(config: pytest.Config) -> None:
    if "entry_points" in _saved:
        importlib.metadata.entry_points = _saved.pop("entry_points")
    load = _saved.pop("load", None)
    if load is None:
        os.environ.pop("SDS_PLUGINS_LOAD", None)
    else:
        os.environ["SDS_PLUGINS_LOAD"] = load
