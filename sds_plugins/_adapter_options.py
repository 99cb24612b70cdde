"""Per-adapter options from a TOML file: one table per adapter, named after it.

::

    [gpconnect]
    consumer_asid = "200000000359"
    consumer_ods = "A12345"

    [example-ebxml]
    from_asid = "200000000359"

The same file serves ``sds-plugins route --config``, ``sds-plugins worker --config`` and Python
(``Router(settings, adapter_options=load_adapter_options(path))``).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._exceptions import ConfigurationError

__all__ = ["OptionsByAdapter", "check_adapter_options", "load_adapter_options"]

#: Options per adapter name: ``{"gpconnect": {"consumer_asid": "..."}}``.
OptionsByAdapter = Mapping[str, Mapping[str, Any]]


def load_adapter_options(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a per-adapter options file: ``{adapter name: {option: value}}``.

    Raises :class:`ConfigurationError` for a file that cannot be read, is not TOML, or has a
    top-level value that is not a table (every top-level key names an adapter).
    """
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"cannot read adapter options from {path}: {exc}") from exc
    try:
        return check_adapter_options(document)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{path}: {exc}") from None


def check_adapter_options(options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A copy of ``options`` once it is known to map adapter names to option tables."""
    checked: dict[str, dict[str, Any]] = {}
    for adapter, table in options.items():
        if not isinstance(adapter, str) or not adapter:
            raise ConfigurationError(f"adapter names must be non-empty strings, not {adapter!r}")
        if not isinstance(table, Mapping):
            raise ConfigurationError(
                f"[{adapter}] must be a table of options, not a {type(table).__name__}"
            )
        checked[adapter] = dict(table)
    return checked
