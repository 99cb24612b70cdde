"""Directory records parsed from SDS FHIR resources.

Two layers: lenient ``_Fhir*`` models mirror the wire format (unknown fields ignored, so a new
field from NHS England does not break routing), and the public frozen records hold what routing
needs, with snake_case names. A structurally wrong body raises :class:`MalformedResponseError`
naming the offending field (``entry[0].resource.identifier[1].value``) rather than a bare
pydantic error.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from ._exceptions import MalformedResponseError

__all__ = [
    "AccreditedSystem",
    "MessageHandlingEndpoint",
    "Reliability",
    "parse_devices",
    "parse_endpoints",
]

ASID_SYSTEM = "https://fhir.nhs.uk/Id/nhsSpineASID"
PARTY_KEY_SYSTEM = "https://fhir.nhs.uk/Id/nhsMhsPartyKey"
FQDN_SYSTEM = "https://fhir.nhs.uk/Id/nhsMhsFQDN"
CPA_ID_SYSTEM = "https://fhir.nhs.uk/Id/nhsMhsCPAId"
MHS_ID_SYSTEM = "https://fhir.nhs.uk/Id/nhsMHSId"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
INTERACTION_SYSTEM = "https://fhir.nhs.uk/Id/nhsServiceInteractionId"
MANUFACTURER_EXT = "https://fhir.nhs.uk/StructureDefinition/Extension-SDS-ManufacturingOrganisation"
INTERACTION_EXT = "https://fhir.nhs.uk/StructureDefinition/Extension-SDS-NhsServiceInteractionId"
RELIABILITY_EXT = "https://fhir.nhs.uk/StructureDefinition/Extension-SDS-ReliabilityConfiguration"


# --- wire format -----------------------------------------------------------------------------


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Identifier(_Wire):
    system: str | None = None
    value: str | None = None


class _Reference(_Wire):
    identifier: _Identifier | None = None


class _Extension(_Wire):
    url: str
    valueReference: _Reference | None = None
    valueString: str | None = None
    valueInteger: int | None = None
    extension: list[_Extension] = Field(default_factory=list)


class _Device(_Wire):
    resourceType: Literal["Device"]
    id: str | None = None
    identifier: list[_Identifier] = Field(default_factory=list)
    extension: list[_Extension] = Field(default_factory=list)
    owner: _Reference | None = None


class _Endpoint(_Wire):
    resourceType: Literal["Endpoint"]
    id: str | None = None
    address: str | None = None
    managingOrganization: _Reference | None = None
    identifier: list[_Identifier] = Field(default_factory=list)
    extension: list[_Extension] = Field(default_factory=list)


class _Link(_Wire):
    relation: str
    url: str


class _Entry(_Wire):
    fullUrl: str | None = None
    resource: dict[str, Any]


class _Bundle(_Wire):
    resourceType: Literal["Bundle"]
    type: str | None = None
    total: int | None = None
    link: list[_Link] = Field(default_factory=list)
    entry: list[_Entry] = Field(default_factory=list)


# --- public records ------------------------------------------------------------------------


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Reliability(_Record):
    """ebXML reliability settings of an MHS record (``Extension-SDS-ReliabilityConfiguration``).

    Durations are kept as SDS sent them (``retry_interval``, e.g. ``"PT1M"``) and parsed to seconds
    (``retry_interval_s``); a value that is not an ISO-8601 duration keeps its text and parses to
    ``None`` rather than failing the whole lookup.
    """

    sync_reply_mode: str | None = None
    retries: int | None = None
    retry_interval: str | None = None
    retry_interval_s: float | None = None
    persist_duration: str | None = None
    persist_duration_s: float | None = None
    duplicate_elimination: str | None = None
    ack_requested: str | None = None
    actor: str | None = None

    @property
    def retry_interval_td(self) -> timedelta | None:
        return None if self.retry_interval_s is None else timedelta(seconds=self.retry_interval_s)

    @property
    def persist_duration_td(self) -> timedelta | None:
        if self.persist_duration_s is None:
            return None
        return timedelta(seconds=self.persist_duration_s)


class AccreditedSystem(_Record):
    """An accredited system (SDS ``/Device``): who may send and receive which interactions."""

    kind: Literal["device"] = "device"
    asid: str | None = None
    party_key: str | None = None
    ods_code: str | None = None
    manufacturer_ods: str | None = None
    interactions: tuple[str, ...] = ()


class MessageHandlingEndpoint(_Record):
    """One address of a message handling system (SDS ``/Endpoint``).

    ``address`` is ``None`` when the MHS record has none (SDS then sends a resource without it, or
    with an empty string); it is otherwise kept exactly as SDS returned it, because the Spine
    Secure Proxy refuses any change to it.
    """

    kind: Literal["endpoint"] = "endpoint"
    address: str | None = None
    party_key: str | None = None
    ods_code: str | None = None
    fqdn: str | None = None
    cpa_id: str | None = None
    mhs_id: str | None = None
    interaction: str | None = None
    reliability: Reliability | None = None


DirectoryRecord = Annotated[AccreditedSystem | MessageHandlingEndpoint, Field(discriminator="kind")]


# --- parsing ---------------------------------------------------------------------------------

_M = TypeVar("_M", bound=BaseModel)
_R = TypeVar("_R", bound=_Record)

_DURATION = TypeAdapter(timedelta)


def _seconds(text: str | None) -> float | None:
    # Only ISO-8601 durations: pydantic would otherwise also accept "12:00" or plain numbers.
    if not text or not text.startswith("P"):
        return None
    try:
        return _DURATION.validate_python(text).total_seconds()
    except ValidationError:
        return None


def _identifier(identifiers: Iterable[_Identifier], system: str) -> str | None:
    for identifier in identifiers:
        if identifier.system == system and identifier.value:
            return identifier.value
    return None


def _reference_value(reference: _Reference | None) -> str | None:
    if reference is None or reference.identifier is None:
        return None
    return reference.identifier.value or None


def _interactions(extensions: Iterable[_Extension]) -> list[str]:
    return [
        value
        for ext in extensions
        if ext.url == INTERACTION_EXT and (value := _reference_value(ext.valueReference))
    ]


def _reliability(extensions: Iterable[_Extension]) -> Reliability | None:
    for ext in extensions:
        if ext.url != RELIABILITY_EXT:
            continue
        values: dict[str, str | int | None] = {}
        for item in ext.extension:
            values[item.url] = (
                item.valueInteger if item.valueInteger is not None else item.valueString
            )
        retries = values.get("nhsMHSRetries")
        retry_interval = _str(values.get("nhsMHSRetryInterval"))
        persist_duration = _str(values.get("nhsMHSPersistDuration"))
        return Reliability(
            sync_reply_mode=_str(values.get("nhsMHSSyncReplyMode")),
            # Spine sends an integer; tolerate the LDAP-style string some proxies pass through.
            retries=int(retries)
            if isinstance(retries, int | str) and str(retries).isdigit()
            else None,
            retry_interval=retry_interval,
            retry_interval_s=_seconds(retry_interval),
            persist_duration=persist_duration,
            persist_duration_s=_seconds(persist_duration),
            duplicate_elimination=_str(values.get("nhsMHSDuplicateElimination")),
            ack_requested=_str(values.get("nhsMHSAckRequested")),
            actor=_str(values.get("nhsMHSActor")),
        )
    return None


def _str(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


def _device(resource: _Device) -> AccreditedSystem:
    manufacturer = next(
        (
            _reference_value(ext.valueReference)
            for ext in resource.extension
            if ext.url == MANUFACTURER_EXT
        ),
        None,
    )
    return AccreditedSystem(
        asid=_identifier(resource.identifier, ASID_SYSTEM),
        party_key=_identifier(resource.identifier, PARTY_KEY_SYSTEM),
        ods_code=_reference_value(resource.owner),
        manufacturer_ods=manufacturer,
        interactions=tuple(_interactions(resource.extension)),
    )


def _endpoint(resource: _Endpoint) -> MessageHandlingEndpoint:
    interactions = _interactions(resource.extension)
    return MessageHandlingEndpoint(
        address=resource.address or None,
        party_key=_identifier(resource.identifier, PARTY_KEY_SYSTEM),
        ods_code=_reference_value(resource.managingOrganization),
        fqdn=_identifier(resource.identifier, FQDN_SYSTEM),
        cpa_id=_identifier(resource.identifier, CPA_ID_SYSTEM),
        mhs_id=_identifier(resource.identifier, MHS_ID_SYSTEM),
        interaction=interactions[0] if interactions else None,
        reliability=_reliability(resource.extension),
    )


def _field_path(error: ValidationError, prefix: str) -> str:
    loc = error.errors()[0]["loc"] if error.errors() else ()
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


def _validate(model: type[_M], data: object, prefix: str) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        field = _field_path(exc, prefix)
        detail = exc.errors()[0]["msg"] if exc.errors() else str(exc)
        raise MalformedResponseError(
            f"malformed SDS response: {field}: {detail}", field=field
        ) from exc


class ParsedBundle(BaseModel, Generic[_R]):
    """Records of one page plus the link to the next page, if SDS ever sends one."""

    model_config = ConfigDict(frozen=True)

    records: tuple[_R, ...]
    total: int | None
    next_url: str | None


def _parse(
    body: object, resource_type: Literal["Device", "Endpoint"]
) -> tuple[list[Any], int | None, str | None]:
    if not isinstance(body, dict):
        raise MalformedResponseError(
            f"malformed SDS response: expected a JSON object, got {type(body).__name__}",
            field="body",
        )
    wire: type[_Device] | type[_Endpoint] = _Device if resource_type == "Device" else _Endpoint
    convert: Any = _device if resource_type == "Device" else _endpoint
    if body.get("resourceType") == resource_type:
        # A bare resource (the spec's examples); parse it as a one-record answer.
        return [convert(_validate(wire, body, ""))], 1, None
    bundle = _validate(_Bundle, body, "")
    records: list[Any] = []
    for index, entry in enumerate(bundle.entry):
        prefix = f"entry[{index}].resource"
        found = entry.resource.get("resourceType")
        if found != resource_type:
            raise MalformedResponseError(
                f"malformed SDS response: {prefix}.resourceType: expected {resource_type!r}, "
                f"got {found!r}",
                field=f"{prefix}.resourceType",
            )
        records.append(convert(_validate(wire, entry.resource, prefix)))
    next_url = next((link.url for link in bundle.link if link.relation == "next"), None)
    return records, bundle.total, next_url


def parse_devices(body: object) -> ParsedBundle[AccreditedSystem]:
    """Parse a ``/Device`` answer (a searchset Bundle, or a bare Device resource)."""
    records, total, next_url = _parse(body, "Device")
    return ParsedBundle[AccreditedSystem](records=tuple(records), total=total, next_url=next_url)


def parse_endpoints(body: object) -> ParsedBundle[MessageHandlingEndpoint]:
    """Parse an ``/Endpoint`` answer; one record per Endpoint resource (i.e. per address)."""
    records, total, next_url = _parse(body, "Endpoint")
    return ParsedBundle[MessageHandlingEndpoint](
        records=tuple(records), total=total, next_url=next_url
    )


def records_as_json(records: Sequence[_Record]) -> list[dict[str, Any]]:
    """Records as the CLI prints them (snake_case keys, no internal ``kind`` tag)."""
    return [record.model_dump(mode="json", exclude={"kind"}) for record in records]
