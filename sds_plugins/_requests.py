"""Route requests as JSON bodies: one parser for ``serve`` and the worker.

:func:`decode_body` reads a body as JSON with limits (size of numbers, depth of nesting), and
:func:`parse_request` checks its fields and gives a :class:`WorkerRequest`, what
:meth:`Router.route` is called with. ``serve`` (the adapter named in the path) and the worker
(the adapter named in the body) accept exactly the same requests and refuse the rest with the
same :class:`InvalidInputError`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._adapter_options import MASKED_OPTIONS
from ._exceptions import InvalidInputError

__all__ = ["REQUEST_FIELDS", "WorkerRequest", "decode_body", "parse_request"]

#: The fields a request body may have; the first three are required.
REQUEST_FIELDS = (
    "adapter",
    "org",
    "patient",
    "interaction",
    "options",
    "encounter",
    "correlation_id",
    "requesting_org",
)
_REQUIRED = ("adapter", "interaction")
_TEXT_FIELDS = (
    "adapter",
    "org",
    "patient",
    "interaction",
    "encounter",
    "correlation_id",
    "requesting_org",
)
# Keyword arguments of Router.route(): an option with one of these names would collide.
_RESERVED_OPTIONS = frozenset(
    {
        "adapter",
        "org",
        "patient",
        "interaction",
        "correlation_id",
        "encounter",
        "bypass_cache",
        "requesting_org",
        "request_id",
    }
)
_MASK = "**********"
# JSON numbers: longer literals are refused before Python converts them (an integer of
# thousands of digits raises ValueError, and costs quadratic time on the way).
_NUMBER_CHARS = 100


@dataclass(frozen=True, kw_only=True)
class WorkerRequest:
    """A request body, parsed and checked: what :meth:`Router.route` is called with."""

    adapter: str
    interaction: str
    #: One of the two: an organisation (ODS code), or a patient (NHS number) whose registered
    #: practice PDS names.
    org: str | None = None
    patient: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    encounter: str | None = None
    correlation_id: str | None = None
    #: The organisation a patient route is made for (PDS's NHSD-End-User-Organisation-ODS).
    requesting_org: str | None = None

    def __repr__(self) -> str:
        # Options may hold credentials (a MESH password): never print their values; an NHS
        # number is personal data: never print it either.
        options = {k: (_MASK if k in MASKED_OPTIONS else v) for k, v in self.options.items()}
        patient = None if self.patient is None else _MASK
        return (
            f"WorkerRequest(adapter={self.adapter!r}, org={self.org!r}, patient={patient!r}, "
            f"interaction={self.interaction!r}, options={options!r}, "
            f"encounter={self.encounter!r}, correlation_id={self.correlation_id!r}, "
            f"requesting_org={self.requesting_org!r})"
        )


#: The most '[' and '{' a request body may hold (see decode_body).
_MAX_CONTAINERS = 500


def decode_body(body: bytes | str) -> Any:
    """A request body's JSON value: an :class:`InvalidInputError` for anything else.

    Numbers are read with limits: a literal longer than
    ``_NUMBER_CHARS`` characters (Python would refuse an integer of more than 4,300 digits
    with a bare ``ValueError``), a float out of range and ``NaN``/``Infinity`` (not JSON) are
    invalid input, like nesting deeper than the parser's recursion limit.
    """
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
    except UnicodeDecodeError:
        raise InvalidInputError("the request body is not UTF-8 text", field="body") from None
    # Depth is bounded before parsing, whatever the interpreter's recursion limit (a test run
    # or an embedding application may raise it): a routing request holds a handful of
    # objects and arrays, never hundreds. Counted at C speed, brackets in strings included.
    if text.count("[") + text.count("{") > _MAX_CONTAINERS:
        raise InvalidInputError(
            f"the request body is nested too deeply (over {_MAX_CONTAINERS} JSON objects "
            "and arrays, or brackets)",
            field="body",
        )
    try:
        return json.loads(
            text, parse_int=_json_int, parse_float=_json_float, parse_constant=_json_constant
        )
    except InvalidInputError:
        raise
    except RecursionError:
        raise InvalidInputError("the request body is nested too deeply", field="body") from None
    except json.JSONDecodeError as exc:
        raise InvalidInputError(
            f"the request body is not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
            field="body",
        ) from None
    except ValueError:  # anything else the parser could not convert
        raise InvalidInputError(
            "the request body has a number that cannot be read", field="body"
        ) from None


def _long_number(literal: str) -> InvalidInputError:
    return InvalidInputError(
        f"the request body has a number {len(literal):,} characters long; "
        f"at most {_NUMBER_CHARS} are read",
        field="body",
    )


def _json_int(literal: str) -> int:
    if len(literal) > _NUMBER_CHARS:
        raise _long_number(literal)
    return int(literal)


def _json_float(literal: str) -> float:
    if len(literal) > _NUMBER_CHARS:
        raise _long_number(literal)
    value = float(literal)
    if not math.isfinite(value):
        raise InvalidInputError(
            f"the request body has a number out of range ({literal})", field="body"
        )
    return value


def _json_constant(name: str) -> float:
    raise InvalidInputError(
        f"the request body is not JSON ({name} is not a JSON number)", field="body"
    )


def parse_request(raw: Any) -> WorkerRequest:
    """The request a decoded body makes: an :class:`InvalidInputError` naming the field
    for an unknown or missing field, a value of the wrong type, neither or both of ``org``
    and ``patient``, or an option that would collide with a request field."""
    if not isinstance(raw, dict):
        raise InvalidInputError(
            f"the request body must be a JSON object, not {_json_type(raw)}", field="body"
        )
    unknown = sorted(set(raw) - set(REQUEST_FIELDS))
    if unknown:
        raise InvalidInputError(
            f"unknown request field {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(REQUEST_FIELDS)})",
            field=unknown[0],
        )
    for name in _REQUIRED:
        if raw.get(name) is None:
            raise InvalidInputError(f"the request has no {name!r}", field=name)
    if (raw.get("org") is None) == (raw.get("patient") is None):
        raise InvalidInputError(
            "the request needs 'org' (an ODS code) or 'patient' (an NHS number), one of them",
            field="org",
        )
    for name in _TEXT_FIELDS:
        value = raw.get(name)
        if value is not None and not isinstance(value, str):
            raise InvalidInputError(
                f"{name!r} must be a string, not {_json_type(value)}", field=name
            )
    options = raw.get("options")
    if options is None:
        options = {}
    elif not isinstance(options, dict):
        raise InvalidInputError(
            f"'options' must be a JSON object, not {_json_type(options)}", field="options"
        )
    clash = sorted(_RESERVED_OPTIONS.intersection(options))
    if clash:
        raise InvalidInputError(
            f"options cannot set {', '.join(map(repr, clash))} (a request field, not an option)",
            field=f"options.{clash[0]}",
        )
    return WorkerRequest(
        adapter=raw["adapter"],
        org=raw.get("org"),
        patient=raw.get("patient"),
        interaction=raw["interaction"],
        options=options,
        encounter=raw.get("encounter"),
        correlation_id=raw.get("correlation_id"),
        requesting_org=raw.get("requesting_org"),
    )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
