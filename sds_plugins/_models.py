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
from typing import Annotated, Any, Generic, Literal, NotRequired, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)
from typing_extensions import TypedDict

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
# TypedDicts rather than models: pydantic validates them straight from the response bytes about
# four times faster than json.loads plus model instances (a Device listing 478 interactions is
# ~120 KB), and still reports the path of a bad element. Unknown keys are ignored.


# Text that ends up in headers, URLs and logs: control characters (CR, LF, NUL...) in an
# upstream answer are a malformed answer, not something to pass on. Checked by pydantic-core's
# regex engine while parsing, at a few percent of the parse time.
_Text = Annotated[str, StringConstraints(pattern=r"^[^\x00-\x1f\x7f]*$", max_length=8192)]


class _Identifier(TypedDict, total=False):
    system: _Text | None
    value: _Text | None


class _Reference(TypedDict, total=False):
    identifier: _Identifier | None


class _Extension(TypedDict):
    url: _Text
    valueReference: NotRequired[_Reference | None]
    valueString: NotRequired[_Text | None]
    valueInteger: NotRequired[int | None]
    extension: NotRequired[list[_Extension]]


class _Device(TypedDict):
    resourceType: Literal["Device"]
    identifier: NotRequired[list[_Identifier]]
    extension: NotRequired[list[_Extension]]
    owner: NotRequired[_Reference | None]


class _Endpoint(TypedDict):
    resourceType: Literal["Endpoint"]
    address: NotRequired[_Text | None]
    managingOrganization: NotRequired[_Reference | None]
    identifier: NotRequired[list[_Identifier]]
    extension: NotRequired[list[_Extension]]


class _Link(TypedDict):
    relation: _Text
    url: _Text


class _DeviceEntry(TypedDict):
    resource: _Device


class _EndpointEntry(TypedDict):
    resource: _Endpoint


class _DeviceBundle(TypedDict):
    resourceType: Literal["Bundle"]
    total: NotRequired[int | None]
    link: NotRequired[list[_Link]]
    entry: NotRequired[list[_DeviceEntry]]


class _EndpointBundle(TypedDict):
    resourceType: Literal["Bundle"]
    total: NotRequired[int | None]
    link: NotRequired[list[_Link]]
    entry: NotRequired[list[_EndpointEntry]]


# A search answer is a Bundle; the spec's examples also show bare resources.
_DEVICE_ANSWER: TypeAdapter[_DeviceBundle | _Device] = TypeAdapter(
    Annotated[_DeviceBundle | _Device, Field(discriminator="resourceType")]
)
_ENDPOINT_ANSWER: TypeAdapter[_EndpointBundle | _Endpoint] = TypeAdapter(
    Annotated[_EndpointBundle | _Endpoint, Field(discriminator="resourceType")]
)


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
        if identifier.get("system") == system and identifier.get("value"):
            return identifier.get("value")
    return None


def _reference_value(reference: _Reference | None) -> str | None:
    identifier = (reference or {}).get("identifier") or {}
    return identifier.get("value") or None


def _interactions(extensions: Iterable[_Extension]) -> list[str]:
    return [
        value
        for ext in extensions
        if ext["url"] == INTERACTION_EXT and (value := _reference_value(ext.get("valueReference")))
    ]


def _reliability(extensions: Iterable[_Extension]) -> Reliability | None:
    for ext in extensions:
        if ext["url"] != RELIABILITY_EXT:
            continue
        values: dict[str, str | int | None] = {}
        for item in ext.get("extension", []):
            integer = item.get("valueInteger")
            values[item["url"]] = integer if integer is not None else item.get("valueString")
        retries = values.get("nhsMHSRetries")
        retry_interval = _str(values.get("nhsMHSRetryInterval"))
        persist_duration = _str(values.get("nhsMHSPersistDuration"))
        return Reliability(
            sync_reply_mode=_str(values.get("nhsMHSSyncReplyMode")),
            retries=_retries(retries),
            retry_interval=retry_interval,
            retry_interval_s=_seconds(retry_interval),
            persist_duration=persist_duration,
            persist_duration_s=_seconds(persist_duration),
            duplicate_elimination=_str(values.get("nhsMHSDuplicateElimination")),
            ack_requested=_str(values.get("nhsMHSAckRequested")),
            actor=_str(values.get("nhsMHSActor")),
        )
    return None


def _retries(value: object) -> int | None:
    # Spine sends an integer; tolerate the LDAP-style string some proxies pass through, as
    # long as it is a plain ASCII number of sane size (str.isdigit() also accepts "²", and
    # int() refuses more than 4,300 digits).
    if isinstance(value, int) and not isinstance(value, bool):
        return value if 0 <= value <= 1_000_000 else None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 7:
        return int(value)
    return None


def _str(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


def _device(resource: _Device) -> AccreditedSystem:
    extensions = resource.get("extension", [])
    identifiers = resource.get("identifier", [])
    manufacturer = next(
        (
            _reference_value(ext.get("valueReference"))
            for ext in extensions
            if ext["url"] == MANUFACTURER_EXT
        ),
        None,
    )
    return AccreditedSystem(
        asid=_identifier(identifiers, ASID_SYSTEM),
        party_key=_identifier(identifiers, PARTY_KEY_SYSTEM),
        ods_code=_reference_value(resource.get("owner")),
        manufacturer_ods=manufacturer,
        interactions=tuple(_interactions(extensions)),
    )


def _endpoint(resource: _Endpoint) -> MessageHandlingEndpoint:
    extensions = resource.get("extension", [])
    identifiers = resource.get("identifier", [])
    interactions = _interactions(extensions)
    return MessageHandlingEndpoint(
        address=resource.get("address") or None,
        party_key=_identifier(identifiers, PARTY_KEY_SYSTEM),
        ods_code=_reference_value(resource.get("managingOrganization")),
        fqdn=_identifier(identifiers, FQDN_SYSTEM),
        cpa_id=_identifier(identifiers, CPA_ID_SYSTEM),
        mhs_id=_identifier(identifiers, MHS_ID_SYSTEM),
        interaction=interactions[0] if interactions else None,
        reliability=_reliability(extensions),
    )


def _malformed(error: ValidationError) -> MalformedResponseError:
    details = error.errors(include_url=False)
    first = details[0] if details else {"loc": (), "msg": str(error), "type": ""}
    loc = list(first["loc"])
    if first["type"] == "json_invalid":
        return MalformedResponseError("malformed SDS response: the body is not JSON", field="body")
    if first["type"] in ("model_attributes_type", "dict_type", "model_type") and not loc:
        return MalformedResponseError(
            "malformed SDS response: expected a JSON object", field="body"
        )
    if first["type"] in ("union_tag_invalid", "union_tag_not_found") and not loc:
        loc = ["resourceType"]
    elif loc and loc[0] in ("Bundle", "Device", "Endpoint"):
        loc = loc[1:]  # the discriminator's tag is not part of the document
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    path = path or "body"
    return MalformedResponseError(f"malformed SDS response: {path}: {first['msg']}", field=path)


class ParsedBundle(BaseModel, Generic[_R]):
    """Records of one page plus the link to the next page, if SDS ever sends one."""

    model_config = ConfigDict(frozen=True)

    records: tuple[_R, ...]
    total: int | None
    next_url: str | None


def _validate(adapter: TypeAdapter[Any], body: bytes | str | object) -> Any:
    try:
        if isinstance(body, bytes | str):
            return adapter.validate_json(body)
        return adapter.validate_python(body)
    except ValidationError as exc:
        raise _malformed(exc) from exc


def parse_devices(body: bytes | str | object) -> ParsedBundle[AccreditedSystem]:
    """Parse a ``/Device`` answer (raw bytes or decoded JSON): a Bundle or a bare Device."""
    answer = _validate(_DEVICE_ANSWER, body)
    if answer["resourceType"] == "Device":
        return ParsedBundle[AccreditedSystem](records=(_device(answer),), total=1, next_url=None)
    records = tuple(_device(entry["resource"]) for entry in answer.get("entry", []))
    return ParsedBundle[AccreditedSystem](
        records=records, total=answer.get("total"), next_url=_next(answer)
    )


def parse_endpoints(body: bytes | str | object) -> ParsedBundle[MessageHandlingEndpoint]:
    """Parse an ``/Endpoint`` answer; one record per Endpoint resource (i.e. per address)."""
    answer = _validate(_ENDPOINT_ANSWER, body)
    if answer["resourceType"] == "Endpoint":
        return ParsedBundle[MessageHandlingEndpoint](
            records=(_endpoint(answer),), total=1, next_url=None
        )
    records = tuple(_endpoint(entry["resource"]) for entry in answer.get("entry", []))
    return ParsedBundle[MessageHandlingEndpoint](
        records=records, total=answer.get("total"), next_url=_next(answer)
    )


def _next(bundle: _DeviceBundle | _EndpointBundle) -> str | None:
    return next(
        (link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None
    )


def records_as_json(records: Sequence[_Record]) -> list[dict[str, Any]]:
    """Records as the CLI prints them (snake_case keys, no internal ``kind`` tag)."""
    return [record.model_dump(mode="json", exclude={"kind"}) for record in records]
