"""SDS FHIR search queries, validated when built.

A query object is the unit of everything downstream (cache keys, coalescing, audit), so it is
frozen, hashable and normalised: ``DeviceQuery(org=" b82617 ", ...)`` equals
``DeviceQuery(org="B82617", ...)``.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from ._exceptions import InvalidInputError
from ._models import INTERACTION_SYSTEM, ODS_SYSTEM, PARTY_KEY_SYSTEM
from ._validation import (
    invalid_input,
    normalise_interaction,
    normalise_ods_code,
    normalise_party_key,
)

__all__ = ["DeviceQuery", "EndpointQuery", "SdsQuery"]


class _Query(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    resource: ClassVar[Literal["Device", "Endpoint"]]
    #: The parameter combinations SDS accepts for this resource, for error messages.
    ALLOWED: ClassVar[str]

    @classmethod
    def build(cls, **fields: Any) -> Any:
        """Build a query, turning pydantic's validation error into :class:`InvalidInputError`."""
        try:
            return cls(**fields)
        except ValidationError as exc:
            raise invalid_input(
                exc,
                missing=f"is required: a {cls.resource} query needs {cls.ALLOWED}",
                unknown=f"is not a {cls.resource} query parameter; it takes {cls.ALLOWED}",
            ) from None

    def params(self) -> list[tuple[str, str]]:
        """Query parameters in SDS's ``system|value`` form, in a stable order."""
        raise NotImplementedError

    @cached_property
    def _key(self) -> str:
        return self.resource + "?" + "&".join(f"{name}={value}" for name, value in self.params())

    def key(self) -> str:
        """A stable text key for caches and logs: the resource and its parameters."""
        return self._key


class DeviceQuery(_Query):
    """``/Device``: organisation and interaction, optionally a party key and a manufacturer."""

    resource: ClassVar[Literal["Device", "Endpoint"]] = "Device"
    ALLOWED: ClassVar[str] = "org + interaction, optionally party_key and manufacturer"

    org: str
    interaction: str
    party_key: str | None = None
    manufacturer: str | None = None

    @field_validator("org", "manufacturer", mode="before")
    @classmethod
    def _ods(cls, value: object, info: Any) -> str | None:
        return None if value is None else normalise_ods_code(value, info.field_name)

    @field_validator("interaction", mode="before")
    @classmethod
    def _interaction(cls, value: object) -> str:
        return normalise_interaction(value)

    @field_validator("party_key", mode="before")
    @classmethod
    def _party_key(cls, value: object) -> str | None:
        return None if value is None else normalise_party_key(value)

    def params(self) -> list[tuple[str, str]]:
        params = [
            ("organization", f"{ODS_SYSTEM}|{self.org}"),
            ("identifier", f"{INTERACTION_SYSTEM}|{self.interaction}"),
        ]
        if self.party_key:
            params.append(("identifier", f"{PARTY_KEY_SYSTEM}|{self.party_key}"))
        if self.manufacturer:
            params.append(("manufacturing-organization", f"{ODS_SYSTEM}|{self.manufacturer}"))
        return params


_ENDPOINT_COMBINATIONS = (
    "org + interaction + party_key, org + party_key, org + interaction, interaction + party_key"
)


class EndpointQuery(_Query):
    """``/Endpoint``: one of the four combinations SDS allows (see ``ALLOWED``)."""

    resource: ClassVar[Literal["Device", "Endpoint"]] = "Endpoint"
    ALLOWED: ClassVar[str] = _ENDPOINT_COMBINATIONS

    org: str | None = None
    interaction: str | None = None
    party_key: str | None = None

    @field_validator("org", mode="before")
    @classmethod
    def _ods(cls, value: object) -> str | None:
        return None if value is None else normalise_ods_code(value)

    @field_validator("interaction", mode="before")
    @classmethod
    def _interaction(cls, value: object) -> str | None:
        return None if value is None else normalise_interaction(value)

    @field_validator("party_key", mode="before")
    @classmethod
    def _party_key(cls, value: object) -> str | None:
        return None if value is None else normalise_party_key(value)

    @model_validator(mode="after")
    def _combination(self) -> EndpointQuery:
        given = sum(value is not None for value in (self.org, self.interaction, self.party_key))
        # Every pair and the triple are allowed; a single criterion is not.
        if given < 2:
            raise InvalidInputError(
                "an Endpoint query needs one of these combinations: " + _ENDPOINT_COMBINATIONS
            )
        return self

    def params(self) -> list[tuple[str, str]]:
        params: list[tuple[str, str]] = []
        if self.org:
            params.append(("organization", f"{ODS_SYSTEM}|{self.org}"))
        if self.interaction:
            params.append(("identifier", f"{INTERACTION_SYSTEM}|{self.interaction}"))
        if self.party_key:
            params.append(("identifier", f"{PARTY_KEY_SYSTEM}|{self.party_key}"))
        return params


SdsQuery = DeviceQuery | EndpointQuery
