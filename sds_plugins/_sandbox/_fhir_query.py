"""Reading a ``/Device`` or ``/Endpoint`` search request as NHS's server reads it: the query
string's validation and search criteria, Accept negotiation, the correlation id, and the
gateway's ``Cache-Control`` check."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl

from starlette.requests import Request

from .._models import INTERACTION_SYSTEM, ODS_SYSTEM, PARTY_KEY_SYSTEM
from ._common import (
    _UUID_RE,
    FHIR_JSON,
    IDENTIFIER_PARAM,
    MANUFACTURER_PARAM,
    ORG_PARAM,
    PAGE_PARAM,
    PLAIN_JSON,
    _BadRequest,
    _HttpError,
    joined_header,
    spine_uuid,
)


def _negotiate(accept: str | None) -> str:
    """The response media type for an Accept header, exactly as NHS's server picks it.

    ``sds/request/content_type_validator.py`` ``get_valid_accept_type``: the header (absent:
    ``application/fhir+json``) is lower-cased, split on commas and each part stripped, then
    compared *exactly* with ``*/*``, ``application/fhir+json`` and ``application/json``. So any
    media-type parameter (``;q=0.8``, ``;charset=utf-8``) makes a part unacceptable, and an
    empty header (one part, ``""``) is a 406.
    """
    header = FHIR_JSON if accept is None else accept
    offered = [part.strip() for part in header.lower().split(",")]
    if "*/*" in offered or FHIR_JSON in offered:
        return FHIR_JSON
    if PLAIN_JSON in offered:
        return PLAIN_JSON
    raise _HttpError(406)


def _form(param: str, system: str) -> str:
    return f"'{param}={system}|value'"


def _invalid_param(param: str, system: str) -> _BadRequest:
    return _BadRequest(
        f"Missing or invalid '{param}' query parameter. Should be {_form(param, system)}"
    )


def _invalid_identifier() -> _BadRequest:
    return _BadRequest(
        f"Missing or invalid '{IDENTIFIER_PARAM}' query parameter. Should be one or both of: ["
        f"{_form(IDENTIFIER_PARAM, INTERACTION_SYSTEM)}, "
        f"{_form(IDENTIFIER_PARAM, PARTY_KEY_SYSTEM)}"
    )


def _invalid_endpoint_combination() -> _BadRequest:
    org = f"{ORG_PARAM}={ODS_SYSTEM}|value"
    interaction = f"{IDENTIFIER_PARAM}={INTERACTION_SYSTEM}|value"
    party_key = f"{IDENTIFIER_PARAM}={PARTY_KEY_SYSTEM}|value"
    # The server's items run together with no separator: ['A&B&C''A&B'...]
    # (sds/request/routing_reliability_handler.py _raise_invalid_query_params_error).
    combinations = "".join(
        f"'{combination}'"
        for combination in (
            f"{org}&{interaction}&{party_key}",
            f"{org}&{interaction}",
            f"{org}&{party_key}",
            f"{interaction}&{party_key}",
        )
    )
    return _BadRequest(
        "Missing or invalid query parameters. "
        f"Should one of following combinations: [{combinations}]"
    )


@dataclass(frozen=True)
class _Criteria:
    ods: str | None
    interaction: str | None
    party_key: str | None
    manufacturer: str | None = None


def _device_criteria(query: _Query) -> _Criteria:
    ods = query.get(ORG_PARAM, ODS_SYSTEM)
    if not ods:
        raise _invalid_param(ORG_PARAM, ODS_SYSTEM)
    interaction = query.get(IDENTIFIER_PARAM, INTERACTION_SYSTEM)
    if not interaction:
        raise _invalid_param(IDENTIFIER_PARAM, INTERACTION_SYSTEM)
    return _Criteria(
        ods,
        interaction,
        party_key=query.get(IDENTIFIER_PARAM, PARTY_KEY_SYSTEM),
        manufacturer=query.get(MANUFACTURER_PARAM, ODS_SYSTEM),
    )


def _endpoint_criteria(query: _Query) -> _Criteria:
    ods = query.get(ORG_PARAM, ODS_SYSTEM)
    interaction = query.get(IDENTIFIER_PARAM, INTERACTION_SYSTEM)
    party_key = query.get(IDENTIFIER_PARAM, PARTY_KEY_SYSTEM)
    if (ods and not interaction and not party_key) or (
        not ods and (not interaction or not party_key)
    ):
        raise _invalid_endpoint_combination()
    return _Criteria(ods, interaction, party_key)


#: Tornado replaces these with a space in every query argument before stripping it
#: (``tornado/web.py`` ``RequestHandler._remove_control_chars_regex``).
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0e-\x1f]")


def _query_items(raw: str) -> list[tuple[str, bytes]]:
    """The query string as Tornado parses it for NHS's server: names as latin-1 text, values as
    bytes (``tornado/escape.py`` ``parse_qs_bytes``)."""
    return [
        (name, value.encode("latin-1"))
        for name, value in parse_qsl(
            raw, keep_blank_values=True, encoding="latin-1", errors="strict"
        )
    ]


class _Query:
    """A search's query string, validated the way NHS's server validates it.

    ``_validate_query_params`` of ``sds/request/accredited_system_handler.py`` and
    ``routing_reliability_handler.py``: parameter by parameter, in order of first appearance,
    an unknown name is a 400; then each value is decoded as UTF-8 (a failure escapes as a 500)
    and must start with an allowed ``system|``, else 400.
    """

    def __init__(self, items: Sequence[tuple[str, bytes]], allowed: Sequence[str]) -> None:
        grouped: dict[str, list[bytes]] = {}
        for key, raw in items:
            grouped.setdefault(key, []).append(raw)
        decoded: dict[str, list[str]] = {}
        for key, raw_values in grouped.items():
            if key not in allowed:
                raise _BadRequest(f"Illegal query parameter '{key}'")
            values = decoded.setdefault(key, [])
            for raw_value in raw_values:
                try:
                    value = raw_value.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise _HttpError(500, str(error)) from None
                values.append(value)
                if key == ORG_PARAM and not value.startswith(f"{ODS_SYSTEM}|"):
                    raise _invalid_param(ORG_PARAM, ODS_SYSTEM)
                if key == MANUFACTURER_PARAM and not value.startswith(f"{ODS_SYSTEM}|"):
                    raise _invalid_param(MANUFACTURER_PARAM, ODS_SYSTEM)
                if key == IDENTIFIER_PARAM and not (
                    value.startswith(f"{INTERACTION_SYSTEM}|")
                    or value.startswith(f"{PARTY_KEY_SYSTEM}|")
                ):
                    raise _invalid_identifier()
        self._values = decoded

    def get(self, param: str, system: str) -> str | None:
        """The last non-blank value of ``param`` with ``system``, as the directory matches it.

        The server reads values with Tornado's ``get_query_arguments`` (control characters
        made spaces, then stripped) and keeps the last one whose system is ``system`` and
        whose remainder is not blank (``sds/request/base_handler.py``
        ``get_optional_query_param``). It puts that remainder into its LDAP filter, where
        ldap3 strips it again (``ldap3/operation/search.py`` ``evaluate_match``): so the value
        matched is stripped.
        """
        found: str | None = None
        for value in self._values.get(param, []):
            text = _CONTROL_CHARS.sub(" ", value).strip()
            head, sep, rest = text.partition("|")
            if sep and head == system and rest.strip():
                found = rest.strip()
        return found

    def page(self) -> int:
        values = self._values.get(PAGE_PARAM)
        if not values:
            return 1
        text = values[-1].strip()
        if not (text.isascii() and text.isdigit()) or len(text) > 6 or int(text) < 1:
            raise _BadRequest(
                f"Invalid '{PAGE_PARAM}' query parameter. Should be a positive integer "
                "(at most 999999)"
            )
        return int(text)


def _correlation_id(request: Request) -> tuple[str, bool]:
    """The correlation id to answer with, and whether the one sent (if any) is invalid.

    ``sds/request/tracking_ids_headers_reader.py``: a sent id matching the UUID pattern (any
    case, any version) is used exactly as sent; an absent or empty one is generated with
    ``get_uuid()`` (upper case); an invalid one is a 400, answered under a newly generated id.
    """
    sent = joined_header(request, "x-correlation-id")
    if not sent:
        return spine_uuid(), False
    if _UUID_RE.fullmatch(sent):
        return sent, False
    return spine_uuid(), True


def _no_cache(request: Request) -> bool:
    """``request.header.cache-control = "no-cache"`` in the live cache's skip conditions.

    Apigee's ``request.header.<name>`` is the header's *first* comma-separated value (Apigee's
    "multi-value HTTP headers" antipattern page), so ``no-cache, no-store`` skips the cache and
    ``no-store, no-cache`` does not.
    """
    first = request.headers.get("cache-control")
    return first is not None and first.split(",", 1)[0].strip() == "no-cache"
