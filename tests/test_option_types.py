"""The option types adapters share: one check and one message per kind of identifier."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from pydantic import ValidationError

from sds_plugins import (
    Adapter,
    AdapterOptions,
    Asid,
    HeaderText,
    InvalidInputError,
    Lookup,
    OdsCode,
    PartyKey,
    Resolution,
    RouteRequest,
    RoutingEnvelope,
)


class Options(AdapterOptions):
    org_code: OdsCode | None = None
    mhs: PartyKey | None = None
    sender_asid: Asid | None = None
    note: HeaderText | None = None
    required_asid: Asid = "200000000359"


class OptionsAdapter(Adapter):
    name = "typed"
    options_model = Options

    def plan(self, request: RouteRequest) -> Mapping[str, Lookup]:  # pragma: no cover
        return {}

    def build(self, request: RouteRequest, resolved: Resolution) -> RoutingEnvelope:
        raise NotImplementedError  # pragma: no cover - only options are parsed here


def _parse(**options: Any) -> Any:
    return OptionsAdapter().parse_options(options)


def test_values_are_normalised_once() -> None:
    parsed = _parse(org_code=" b82617 ", mhs="x26-820918", sender_asid=" 200000000001 ", note="hi")
    assert (parsed.org_code, parsed.mhs, parsed.sender_asid) == (
        "B82617",
        "X26-820918",
        "200000000001",
    )
    assert _parse().org_code is None and _parse().required_asid == "200000000359"
    with pytest.raises(ValidationError, match="frozen"):  # the engine memoises options
        parsed.mhs = "Y1-1"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"org_code": "ß1234"}, "typed: org_code contains a character that is not ASCII"),
        ({"org_code": "B8"}, "org_code: 'B8' is not an ODS code"),
        ({"mhs": "X26"}, "mhs: 'X26' is not a party key"),
        ({"sender_asid": "20000000035"}, "sender_asid: '20000000035' is not an ASID (12 digits"),
        ({"sender_asid": "\uff1200000000359"}, "sender_asid contains a character that is not"),
        # An integer ASID is taken (engines send JSON numbers: tests/test_newcomer.py); one
        # that is not twelve digits is refused like the text.
        ({"sender_asid": 20000000035}, "sender_asid: 20000000035 is not an ASID (12 digits"),
        ({"sender_asid": True}, "sender_asid must be a string or an integer (12 digits)"),
        ({"sender_asid": "200000000359\n"}, "sender_asid contains a control character"),
        ({"required_asid": None}, "required_asid"),
        ({"note": "a\r\nX-Injected: 1"}, "note contains a control character"),
        ({"unknown": 1}, "unknown: is not a typed option; it takes mhs, note, org_code"),
    ],
)
def test_bad_values_are_one_invalid_input_error_naming_the_option(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidInputError) as refused:
        _parse(**options)
    assert message.removeprefix("typed: ") in str(refused.value)
    assert refused.value.exit_code == 2
