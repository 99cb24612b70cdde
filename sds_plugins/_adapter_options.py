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

import hashlib
import secrets
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._exceptions import ConfigurationError

__all__ = [
    "MASKED_OPTIONS",
    "PERSONAL_OPTIONS",
    "SECRET_OPTIONS",
    "OptionsByAdapter",
    "check_adapter_options",
    "load_adapter_options",
    "options_key",
]

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


# -- options in prints and memos ------------------------------------------------------------

#: Option names whose values are credentials: masked wherever a request is printed.
SECRET_OPTIONS = frozenset(
    {"password", "shared_key", "api_key", "client_secret", "token", "user_access_token"}
)
#: Option names whose values may be a patient's personal data (MESH demographic routing, GP
#: Connect 0.7's NHS number, a message subject naming the patient): masked wherever a request
#: is printed, like credentials, and never kept beyond their route (not in any memo).
PERSONAL_OPTIONS = frozenset({"nhs_number", "birth_date", "family_name", "subject"})
#: Every option name masked when a request is printed.
MASKED_OPTIONS = SECRET_OPTIONS | PERSONAL_OPTIONS

_HASHABLE = frozenset((str, int, float, bool, type(None)))


def options_key(options: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """A key for remembering validated options: only plain values (a secret, a list, an object
    passed in could change or be unhashable, and is validated afresh every time), and none
    that may be a patient's (:data:`PERSONAL_OPTIONS`: a memo would keep them, and one route
    per patient would crowd out the others). A credential is in the key as a keyed digest:
    remembered routes hold no password in their keys."""
    # The types belong in the key: True == 1 == 1.0 hash alike but may validate differently.
    # Not sorted: the same options in another order only take one more slot of the memory.
    types = tuple(map(type, options.values()))
    if not _HASHABLE.issuperset(types):
        return None
    if not PERSONAL_OPTIONS.isdisjoint(options):
        return None
    if not SECRET_OPTIONS.isdisjoint(options):
        items = tuple(
            (name, _digest(value) if name in SECRET_OPTIONS else value)
            for name, value in options.items()
        )
        return (items, types)
    return (tuple(options.items()), types)


#: Keys the digests of credentials in memo keys (this process's own: they are never compared
#: across processes).
_DIGEST_KEY = secrets.token_bytes(32)


def _digest(value: object) -> str:
    return hashlib.blake2b(repr(value).encode(), key=_DIGEST_KEY, digest_size=16).hexdigest()
