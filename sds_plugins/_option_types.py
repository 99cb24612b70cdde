"""What adapters' options have in common: one base model and the identifiers they all take.

An adapter declares its options as a model (``options_model``); deriving it from
:class:`AdapterOptions` and typing fields with these annotated types gives every adapter the
same checks and the same messages (``from_asid: 'x' is not an ASID (12 digits...)``, exit code
2) instead of one hand-written validator per adapter:

    class MyOptions(AdapterOptions):
        party_key: PartyKey | None = None
        from_asid: Asid | None = None

Each type checks the value *as given* (a string, ASCII, no control characters, not absurdly
long) before normalising it, and names the option in the error.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationInfo

from ._validation import (
    check_header_value,
    normalise_asid,
    normalise_ods_code,
    normalise_party_key,
)

__all__ = ["AdapterOptions", "Asid", "HeaderText", "OdsCode", "PartyKey"]


def _name(info: ValidationInfo) -> str:
    return info.field_name or "option"


def _ods(value: Any, info: ValidationInfo) -> Any:
    return normalise_ods_code(value, _name(info))


def _party_key(value: Any, info: ValidationInfo) -> Any:
    return normalise_party_key(value, _name(info))


def _asid(value: Any, info: ValidationInfo) -> Any:
    return normalise_asid(value, _name(info))


def _header_text(value: Any, info: ValidationInfo) -> Any:
    # Only the header-breaking characters are refused; the type check is pydantic's own.
    return check_header_value(value, _name(info)) if isinstance(value, str) else value


#: An ODS organisation code, stripped and upper-cased (``b82617`` → ``B82617``).
OdsCode = Annotated[str, BeforeValidator(_ods)]
#: An MHS party key, ``<ODS code>-<digits>``, stripped and upper-cased.
PartyKey = Annotated[str, BeforeValidator(_party_key)]
#: An accredited system id: twelve digits.
Asid = Annotated[str, BeforeValidator(_asid)]
#: Free text that ends up in a header or a JWT claim: no CR, LF or other control characters.
HeaderText = Annotated[str, BeforeValidator(_header_text)]


class AdapterOptions(BaseModel):
    """Base for an adapter's options model: immutable (the engine memoises parsed options),
    unknown options refused (a misspelt option is an error, not silently ignored), surrounding
    whitespace stripped from text."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)
