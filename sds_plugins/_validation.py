"""Input checks that run before anything is sent.

Every value that ends up in a query string or an HTTP header passes through here, so a caller's
typo becomes an :class:`InvalidInputError` naming the argument instead of a 400 from Spine (or, for
CR/LF, a header-injection hole).
"""

from __future__ import annotations

import os
import re
import uuid
from typing import Any

from pydantic import ValidationError

from ._exceptions import InvalidInputError

__all__ = [
    "check_correlation_id",
    "check_header_value",
    "invalid_input",
    "normalise_asid",
    "normalise_correlation_id",
    "normalise_interaction",
    "normalise_ods_code",
    "normalise_party_key",
    "sds_correlation_id",
]

# Control characters anywhere (not only at the ends): CR/LF would split a header, NUL and friends
# have no business in a directory key. Checked before stripping so "X26\n" is refused, not fixed.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# ODS codes are 3 to 10 letters and digits (YES, X26, B82617, 8HK52, RXX01...). Patterns are
# applied with fullmatch: "$" would also match before a trailing newline.
_ODS = re.compile(r"[A-Z0-9]{3,10}")
_ASID = re.compile(r"[0-9]{12}")
# An ASID given as a number has no leading zeros: twelve digits from 100000000000 up.
_MIN_ASID, _MAX_ASID = 10**11, 10**12 - 1
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# What SDS's server takes as an X-Correlation-ID: a hyphenated UUID of any version, in either
# case (sds/request/tracking_ids_headers_reader.py, NHSDigital/spine-directory-service-api).
_SDS_UUID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
#: The longest correlation id taken from a caller (it travels in headers and every log line).
MAX_CORRELATION_ID = 200
# Ids derived for SDS from a caller's id that is not a UUID (uuid5 of it in this namespace).
_SDS_CORRELATION_NAMESPACE = uuid.UUID("2f6b0c1e-8d4a-5e7f-9b3c-1a2d4e6f8a0b")
_PARTY_KEY = re.compile(r"[A-Z0-9]{3,10}-[0-9]{1,12}")
# Spine interaction ids: urn:nhs:names:services:<service>:<action>[:...]; the action may carry
# dots, dashes and underscores (gpc.getstructuredrecord-1, patient_appointments-1).
_INTERACTION = re.compile(
    r"urn:nhs:names:services:[A-Za-z0-9][A-Za-z0-9._-]*(?::[A-Za-z0-9][A-Za-z0-9._-]*)+"
)
#: No real interaction id comes close (the longest in Spine's lists is ~90 characters); the
#: limit keeps absurd input out of URLs, logs and error messages.
MAX_INTERACTION_LENGTH = 256
#: Longer than any value these fields can take; refused before anything else is done with them.
_MAX_INPUT_LENGTH = 64


def _clean(value: object, field: str, max_length: int = _MAX_INPUT_LENGTH) -> str:
    """A caller's text, checked *as given*: a string, no control characters, ASCII (before any
    case mapping: "ß".upper() is "SS", and "ﬀ" becomes "FF"), not too long, not blank."""
    if not isinstance(value, str):
        raise InvalidInputError(
            f"{field} must be a string, got {type(value).__name__}", field=field
        )
    if len(value) > max_length:
        raise InvalidInputError(
            f"{field} is too long ({len(value):,} characters; at most {max_length})", field=field
        )
    if _CONTROL.search(value):
        raise InvalidInputError(
            f"{field} contains a control character (CR, LF, NUL...)", field=field
        )
    if not value.isascii():
        raise InvalidInputError(
            f"{field} contains a character that is not ASCII ({_first_non_ascii(value)!r})",
            field=field,
        )
    cleaned = value.strip()
    if not cleaned:
        raise InvalidInputError(f"{field} is empty", field=field)
    return cleaned


def _first_non_ascii(value: str) -> str:
    return next((char for char in value if not char.isascii()), "")


def normalise_ods_code(value: object, field: str = "org") -> str:
    """Strip and upper-case an ODS organisation code; refuse anything that cannot be one."""
    code = _clean(value, field).upper()
    if not _ODS.fullmatch(code):
        raise InvalidInputError(
            f"{field}: {code!r} is not an ODS code (3 to 10 letters and digits, e.g. B82617)",
            field=field,
        )
    return code


def normalise_party_key(value: object, field: str = "party_key") -> str:
    """Strip and upper-case an MHS party key of the form ``<ODS>-<digits>``."""
    key = _clean(value, field).upper()
    if not _PARTY_KEY.fullmatch(key):
        raise InvalidInputError(
            f"{field}: {key!r} is not a party key (<ODS code>-<digits>, e.g. X26-820918)",
            field=field,
        )
    return key


def normalise_asid(value: object, field: str = "asid") -> str:
    """Strip an accredited system id (ASID): twelve ASCII digits, as text.

    An integer is taken too (engines send ``"consumer_asid": 200000000359`` as a JSON number)
    and becomes its digits; a bool, a float or an integer of any other length is refused.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        # Bounded before str(): a 5,000-digit integer must not cost a conversion (nor raise
        # ValueError past Python's int-to-str limit).
        if not _MIN_ASID <= value <= _MAX_ASID:
            shown = str(value) if abs(value) < 10**30 else "a much longer number"
            raise InvalidInputError(
                f"{field}: {shown} is not an ASID (12 digits, e.g. 200000000359)", field=field
            )
        return str(value)
    if not isinstance(value, str):
        raise InvalidInputError(
            f"{field} must be a string or an integer (12 digits), got {type(value).__name__}",
            field=field,
        )
    asid = _clean(value, field)
    if not _ASID.fullmatch(asid):
        raise InvalidInputError(
            f"{field}: {asid!r} is not an ASID (12 digits, e.g. 200000000359)", field=field
        )
    return asid


def normalise_interaction(value: object, field: str = "interaction") -> str:
    """Strip an interaction id and check it is a ``urn:nhs:names:services:...`` URN.

    Case is kept: Spine compares interaction ids exactly.
    """
    interaction = _clean(value, field, MAX_INTERACTION_LENGTH)
    if not _INTERACTION.fullmatch(interaction):
        raise InvalidInputError(
            f"{field}: {interaction!r} is not an interaction id "
            "(urn:nhs:names:services:<service>:<action>, "
            "e.g. urn:nhs:names:services:gpconnect:fhir:rest:read:metadata-1)",
            field=field,
        )
    return interaction


def uuid_text(digits: str, version: int) -> str:
    """The canonical text of the RFC 4122 UUID made of ``digits`` (32 or more hex digits, the
    first 32 used) with its version and variant set: what ``str(uuid.UUID(...))`` gives, a
    third of the cost (ids are made on every route and every message)."""
    # The version nibble; the variant's two top bits 10 (so the 17th digit is 8, 9, a or b).
    return (
        f"{digits[:8]}-{digits[8:12]}-{version}{digits[13:16]}-"
        f"{'89ab'[int(digits[16], 16) & 3]}{digits[17:20]}-{digits[20:32]}"
    )


def new_uuid() -> str:
    """A random (version 4) UUID in its canonical text form: ``str(uuid.uuid4())``, written
    straight from ``os.urandom`` (one is made on every route; the formatting is the cost)."""
    return uuid_text(os.urandom(16).hex(), 4)


def check_correlation_id(value: object | None, field: str = "correlation_id") -> str:
    """A caller's correlation id, kept byte for byte, or a fresh UUID when there is none.

    The id is the caller's: every echo (``serve``'s ``X-Correlation-ID``, the worker's
    outcome, errors, events, logs) gives it back exactly as sent, and PDS and e-RS, which take
    any string, are sent it unchanged. It must be something a header can carry unchanged:
    printable ASCII, no leading or trailing space, at most :data:`MAX_CORRELATION_ID`
    characters. SDS alone requires a UUID: :func:`sds_correlation_id` gives what it is sent.
    """
    if value is None:
        return new_uuid()
    if type(value) is str and _CANONICAL_UUID.fullmatch(value):
        return value
    text = _clean(value, field, MAX_CORRELATION_ID)
    if text != value:
        raise InvalidInputError(
            f"{field} has leading or trailing spaces (they would not survive a header)",
            field=field,
        )
    return text


def sds_correlation_id(correlation_id: str) -> str:
    """The ``X-Correlation-ID`` SDS is sent for a route whose correlation id is
    ``correlation_id``: the id itself when it is a UUID (SDS echoes it exactly as sent),
    otherwise a UUID derived from it (version 5), so that the same caller's id always reaches
    SDS as the same UUID. Provenance records both."""
    if _SDS_UUID.fullmatch(correlation_id):
        return correlation_id
    return str(uuid.uuid5(_SDS_CORRELATION_NAMESPACE, correlation_id))


def normalise_correlation_id(value: object | None, field: str = "correlation_id") -> str:
    """Return a caller's correlation id as a canonical UUID string, or a fresh one (a UUID
    only; :func:`check_correlation_id` takes any id a caller may send)."""
    if value is None:
        return new_uuid()
    if type(value) is str and _CANONICAL_UUID.fullmatch(value):
        return value  # already what str(uuid.UUID(...)) would make of it
    text = _clean(value, field)
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise InvalidInputError(
            f"{field}: {text!r} is not a UUID (SDS refuses other X-Correlation-ID values)",
            field=field,
        ) from None


#: The bytes no header may carry (see has_control_characters).
_CONTROL_BYTES = bytes(range(0x20)) + b"\x7f"


def has_control_characters(value: str) -> bool:
    """Whether ``value`` holds a character no header may carry (CR, LF, NUL, DEL...)."""
    if value.isascii():
        # C-level scans: printable ASCII is the usual header. A long value (a bearer token
        # is ~1.5 kB) is checked as bytes, several times faster than str.isprintable.
        if len(value) < 64:
            return not value.isprintable()
        raw = value.encode("ascii")
        return len(raw.translate(None, _CONTROL_BYTES)) != len(raw)
    # Non-ASCII text is allowed in places; the regex finds controls among it.
    return _CONTROL.search(value) is not None


def check_header_value(value: str, field: str) -> str:
    """Refuse a value that would break (or smuggle) an HTTP header: no CR, LF or other controls."""
    if has_control_characters(value):
        raise InvalidInputError(
            f"{field} contains a control character (CR, LF, NUL...)", field=field
        )
    return value


def invalid_input(
    error: ValidationError, *, missing: str, unknown: str, prefix: str = ""
) -> InvalidInputError:
    """The :class:`InvalidInputError` for a pydantic model of inputs that failed to validate.

    Every absent field is named, together (``ssp_url, system_url: are required (...)``), so a
    caller fixes them in one go rather than one per attempt; otherwise it names the first
    offending field, and a validator's own :class:`InvalidInputError` (which may name another
    field) is returned as it is. When fields are both absent and wrong, the first wrong one is
    reported and the absent ones are listed after it. ``missing`` (phrased for one field,
    ``"is required ..."``; ``"is"`` becomes ``"are"`` for several) and ``unknown`` complete
    the message for absent and unexpected fields. Raise it ``from None``: the pydantic error
    adds nothing.
    """
    errors = error.errors()
    absent = [_location(item) for item in errors if item["type"] == "missing"]
    wrong = next((item for item in errors if item["type"] != "missing"), None)
    if wrong is None:
        fields = ", ".join(name or "input" for name in absent)
        if len(absent) > 1 and missing.startswith("is "):
            missing = "are " + missing.removeprefix("is ")
        return InvalidInputError(f"{prefix}{fields}: {missing}", field=absent[0] or None)
    found = _one_error(wrong, unknown, prefix)
    if not absent:
        return found
    also = ", ".join(name or "input" for name in absent)
    return InvalidInputError(f"{found}; and missing: {also}", field=found.field)


def _location(item: Any) -> str:
    return ".".join(str(part) for part in item["loc"])


def _one_error(item: Any, unknown: str, prefix: str) -> InvalidInputError:
    cause = item.get("ctx", {}).get("error")
    if isinstance(cause, InvalidInputError):
        return cause
    field = _location(item) or None
    message = item["msg"].removeprefix("Value error, ")
    if item["type"] == "extra_forbidden":
        message = unknown
    text = f"{field}: {message}" if field else message
    return InvalidInputError(f"{prefix}{text}", field=field)


# --------------------------------------------------------------------------- URL paths

__all__ += ["MAX_PATH_LENGTH", "MAX_SEGMENT_LENGTH", "check_path_segment", "check_relative_path"]

#
# Values that become part of a URL path (a FHIR id, a MESH mailbox, a caller's FHIR path) are
# checked as the caller wrote them, before any decoding or normalisation: "..", "%2e%2e" or
# "..;" would otherwise make httpx (RFC 3986 dot-segment removal) or the server (Tomcat-style
# path parameters, double decoding) reach another resource with our credentials attached.

#: Longest path segment (a FHIR id is at most 64 characters; MESH ids at most 100) and path.
MAX_SEGMENT_LENGTH = 256
MAX_PATH_LENGTH = 2048

# Printable ASCII without space: anything else must be percent-encoded by the caller.
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")
_PERCENT = re.compile(r"%(?P<hex>[0-9A-Fa-f]{2})?")
# Percent-encoded bytes that change a path's structure or hide a control character: dot, slash,
# backslash, percent (double encoding), semicolon, query and fragment marks, and controls.
_STRUCTURAL_BYTES = frozenset({0x2E, 0x2F, 0x5C, 0x25, 0x3B, 0x3F, 0x23, 0x7F, *range(0x20)})


def _path_text(value: object, field: str, limit: int) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(
            f"{field} must be a string, got {type(value).__name__}", field=field
        )
    if not value:
        raise InvalidInputError(f"{field} is empty", field=field)
    if len(value) > limit:
        raise InvalidInputError(
            f"{field} is {len(value)} characters long; at most {limit} are accepted", field=field
        )
    if not _VISIBLE_ASCII.fullmatch(value):
        raise InvalidInputError(
            f"{field} must be printable ASCII without spaces or control characters "
            "(percent-encode anything else)",
            field=field,
        )
    if "\\" in value:
        raise InvalidInputError(f"{field} must not contain a backslash", field=field)
    for escape in _PERCENT.finditer(value):
        hex_digits = escape.group("hex")
        if hex_digits is None:
            raise InvalidInputError(
                f"{field} has a '%' that is not a percent-escape (%XX)", field=field
            )
        if int(hex_digits, 16) in _STRUCTURAL_BYTES:
            raise InvalidInputError(
                f"{field} contains the percent-encoded character %{hex_digits.upper()} "
                "(an encoded '.', '/', '\\', '%', ';', '?', '#' or control character)",
                field=field,
            )
    return value


def _check_segment(segment: str, field: str, *, query_allowed: bool = False) -> None:
    if not segment:
        raise InvalidInputError(f"{field} has an empty path segment", field=field)
    if segment in (".", ".."):
        raise InvalidInputError(
            f"{field} must not contain the dot segment {segment!r}", field=field
        )
    if ";" in segment:
        raise InvalidInputError(
            f"{field} must not contain ';' (a path parameter, as in '..;/')", field=field
        )
    if "#" in segment or (not query_allowed and "?" in segment):
        raise InvalidInputError(
            f"{field} must not contain '?' or '#' (a query or fragment)", field=field
        )


def check_path_segment(value: object, field: str, *, max_length: int = MAX_SEGMENT_LENGTH) -> str:
    """Refuse anything but one plain URL path segment; return ``value`` unchanged.

    Checked before any normalisation: printable ASCII without spaces, not empty, at most
    ``max_length`` characters, not a dot segment (``.``/``..``, or percent-encoded ones:
    encoded dots are refused outright), no ``/``, ``\\``, ``;``, ``?`` or ``#``, and no
    percent-escape of those or of control characters.
    """
    text = _path_text(value, field, max_length)
    if "/" in text:
        raise InvalidInputError(f"{field} must be a single path segment (no '/')", field=field)
    _check_segment(text, field)
    return text


def check_relative_path(
    value: object,
    field: str,
    *,
    allow_query: bool = False,
    max_length: int = MAX_PATH_LENGTH,
) -> str:
    """Refuse anything but a relative URL path (``Patient/123``); return ``value`` unchanged.

    Every segment must pass :func:`check_path_segment`'s rules (no empty segments, no dot
    segments literal or encoded, no ``;``); one leading ``/`` is allowed; the first segment may
    not contain ``:`` (it would read as a URL scheme, RFC 3986 section 4.2). With
    ``allow_query`` a ``?query`` may follow (no ``#`` in it); otherwise ``?`` is refused.
    """
    text = _path_text(value, field, max_length)
    path, mark, query = text.partition("?")
    if mark and not allow_query:
        raise InvalidInputError(
            f"{field} must not contain '?' or '#' (a query or fragment)", field=field
        )
    if "#" in query:
        raise InvalidInputError(f"{field} must not contain '#' (a fragment)", field=field)
    segments = path.removeprefix("/").split("/")
    if ":" in segments[0]:
        raise InvalidInputError(
            f"{field} must be a path relative to the service root, not a URL", field=field
        )
    for segment in segments:
        _check_segment(segment, field)
    return text
