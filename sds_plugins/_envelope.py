"""The routing envelope: everything needed to send one message, and where it came from.

An envelope is frozen and JSON-serialisable so a broker can queue it. Secret header values
(``Authorization``, ``apikey``...) are part of the envelope (it must be ready to send) but are
masked in its ``repr``, its ``str`` and its default JSON form; ``to_message()`` (or
``model_dump(context={"reveal_secrets": True})``) includes them for the process that sends.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import PurePath
from typing import Annotated, Any, Literal

import httpx
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializeAsAny,
    field_serializer,
    field_validator,
    model_validator,
)

from ._models import DirectoryRecord
from ._validation import check_header_value, has_control_characters

__all__ = [
    "ENVELOPE_TTL",
    "SENSITIVE_HEADERS",
    "ClientTls",
    "EnvelopeReliability",
    "ForeignRecord",
    "HttpRequestSpec",
    "Party",
    "Provenance",
    "RoutingEnvelope",
]

#: Header names (lower case) whose values are credentials and never printed.
SENSITIVE_HEADERS = frozenset({"authorization", "apikey", "proxy-authorization", "cookie"})
MASK = "**********"

#: How long a sender may use an envelope (``expires_at = resolved.now + ENVELOPE_TTL``): long
#: enough for one send with its retries, short enough that a practice changing supplier or MHS
#: is noticed by the next message. Every adapter of this project uses it.
ENVELOPE_TTL = timedelta(minutes=5)

CacheStatus = Literal["miss", "hit", "stale", "bypass"]


class _Frozen(BaseModel):
    # Inputs may be credentials (a header value, a key pasted where a path belongs): validation
    # errors name the field, never echo the value.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


def _masked(headers: Mapping[str, str], personal: tuple[str, ...] = ()) -> dict[str, str]:
    # Lower-cased here too: model_copy(update=...) skips the field validator.
    hidden = SENSITIVE_HEADERS.union(name.lower() for name in personal) if personal else None
    return {
        k: (MASK if k.lower() in (hidden or SENSITIVE_HEADERS) else v) for k, v in headers.items()
    }


def _merged(headers: Mapping[str, str], more: Mapping[str, str]) -> dict[str, str]:
    """``headers`` with ``more`` added or replacing them, names compared as HTTP does (case
    aside): never the same header twice, the old value and the new."""
    replaced_names = {name.lower() for name in more}
    kept = {k: v for k, v in headers.items() if k.lower() not in replaced_names}
    return {**kept, **more}


def _reveal(info: SerializationInfo) -> bool:
    context = info.context
    if context is None:  # the usual case: no ABC check on every envelope's JSON
        return False
    return bool(isinstance(context, Mapping) and context.get("reveal_secrets"))


def _check_request(request: HttpRequestSpec) -> HttpRequestSpec:
    """No CR, LF or other control character in the method, URL or any header: nothing that
    would split (or smuggle) a header when the request is sent."""
    # One scan over everything (the usual case, on every route: nothing found), then one by
    # one to name the culprit.
    headers = request.headers
    if has_control_characters(" ".join((request.method, request.url, *headers, *headers.values()))):
        check_header_value(request.method, "method")
        check_header_value(request.url, "url")
        for name, value in headers.items():
            check_header_value(name, "header name")
            check_header_value(value, f"header {name}")
    return request


class HttpRequestSpec(_Frozen):
    """Method, URL and headers of the request to send (the body is the caller's).

    No CR, LF or other control character anywhere: checked when it is made, and again
    whenever it is put in an envelope (pydantic runs a model's after-validators for an
    instance nested in another model), so one made without validation (``model_construct``,
    ``model_copy``) cannot carry CR/LF out of an adapter. The second scan costs ~2 µs a route
    (``bench/warm_path.py --ablate``); remembering the last request checked to skip it was
    process-global state.
    """

    method: str
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    #: Headers (lower case names) whose values are personal data, such as a MESH ``mex-to``
    #: naming the patient (demographic routing): masked like credentials in every print, repr
    #: and dump but the sender's own (:meth:`RoutingEnvelope.to_message`, ``reveal_secrets``).
    personal_headers: tuple[str, ...] = ()

    @field_validator("personal_headers")
    @classmethod
    def _lower_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(name.lower() for name in names)

    @model_validator(mode="after")
    def _no_control_characters(self) -> HttpRequestSpec:
        return _check_request(self)

    @field_serializer("headers")
    def _mask(self, headers: dict[str, str], info: SerializationInfo) -> dict[str, str]:
        return dict(headers) if _reveal(info) else _masked(headers, self.personal_headers)

    def __repr_args__(self) -> Any:
        yield "method", self.method
        yield "url", self.url
        yield "headers", _masked(self.headers, self.personal_headers)
        if self.personal_headers:
            yield "personal_headers", self.personal_headers


class Party(BaseModel):
    """One end of the exchange. Adapters add what they resolved (``mailbox_id``, ``fqdn``...)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    ods_code: str | None = None
    asid: str | None = None
    party_key: str | None = None
    address: str | None = None
    mailbox_id: str | None = None
    cpa_id: str | None = None


class EnvelopeReliability(_Frozen):
    """Delivery settings for reliable messaging, in units a sender can use directly."""

    retries: int | None = None
    retry_interval_s: float | None = None
    persist_duration_s: float | None = None
    duplicate_elimination: bool | None = None
    ack_requested: bool | None = None
    ack_actor: str | None = None
    sync_reply: bool | None = None


class ClientTls(_Frozen):
    """Client TLS for the envelope's destination: **file paths only**.

    ``cert_path`` is the client certificate (PEM; it may also hold the key), ``key_path`` its
    private key, ``ca_bundle_path`` the CA bundle that verifies the server (NHS England's chain
    for Spine; the system/certifi bundle when ``None``). The envelope never carries key or
    certificate contents, so printing, logging or queueing it cannot leak a key: a value that
    looks like PEM text rather than a path is refused. :class:`~sds_plugins.EnvelopeClients`
    turns it into a TLS context, once per destination.
    """

    cert_path: str | None = None
    key_path: str | None = None
    ca_bundle_path: str | None = None

    @field_validator("cert_path", "key_path", "ca_bundle_path", mode="before")
    @classmethod
    def _path(cls, value: Any, info: Any) -> str | None:
        if value is None:
            return None
        text = str(value) if isinstance(value, PurePath) else value
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{info.field_name} must be a file path")
        if "-----BEGIN" in text or "\n" in text:
            # Only the type of mistake is reported: the value may be a private key.
            raise ValueError(f"{info.field_name} must be a file path, not PEM content")
        return check_header_value(text, info.field_name)

    @model_validator(mode="after")
    def _key_needs_cert(self) -> ClientTls:
        if self.key_path is not None and self.cert_path is None:
            raise ValueError("key_path is given without cert_path (the certificate it belongs to)")
        return self

    @property
    def configured(self) -> bool:
        """Whether any path is set."""
        return any((self.cert_path, self.key_path, self.ca_bundle_path))


class ForeignRecord(BaseModel):
    """A record from a directory source other than SDS (a MESH mailbox...), kept as its fields."""

    model_config = ConfigDict(frozen=True, extra="allow")

    kind: str


#: SDS records parse as their own types first; anything else keeps its fields.
ProvenanceRecord = Annotated[DirectoryRecord | ForeignRecord, Field(union_mode="left_to_right")]


class Provenance(_Frozen):
    """Where an envelope's routing came from."""

    #: The route's correlation id: the caller's, exactly as given (or one made for it).
    correlation_id: str
    #: The ``X-Correlation-ID`` SDS is sent for this route when it differs from
    #: ``correlation_id``: SDS takes only a UUID, so another id reaches it as a UUID derived
    #: from it (:func:`~sds_plugins.sds_correlation_id`); ``None`` when they are the same.
    sds_correlation_id: str | None = None
    resolved_at: datetime
    cache: CacheStatus
    # Serialised as what each record is (validation still takes only these types): a union's
    # serialiser tries its members one by one, a third of an envelope's JSON time.
    records: tuple[SerializeAsAny[ProvenanceRecord], ...] = ()
    lookups: tuple[str, ...] = ()


class RoutingEnvelope(_Frozen):
    """A ready-to-send routing decision for one message."""

    adapter: str
    interaction: str
    target: Party
    source: Party = Field(default_factory=Party)
    request: HttpRequestSpec
    reliability: EnvelopeReliability | None = None
    #: Client TLS for the destination (paths only); ``None`` when none is configured.
    tls: ClientTls | None = None
    expires_at: datetime
    provenance: Provenance
    #: Adapter-specific extras a sender needs (e.g. ebXML values); JSON-friendly.
    extensions: dict[str, Any] = Field(default_factory=dict)
    #: For the process that sends, and only when it differs from the number the route asked
    #: for: the patient's current NHS number. PDS answered for a superseded (merged) number
    #: with the surviving record, and says "you must update your system with the new patient
    #: details". Personal data: shown only with the envelope's secrets (:meth:`to_message`,
    #: ``reveal_secrets``), masked in every other dump, print and repr.
    current_nhs_number: str | None = Field(default=None, repr=False)

    @field_serializer("current_nhs_number")
    def _mask_number(self, value: str | None, info: SerializationInfo) -> str | None:
        return value if value is None or _reveal(info) else MASK

    def __str__(self) -> str:
        return self.model_dump_json(indent=2)

    @property
    def expired(self) -> bool:
        return datetime.now(UTC) >= self.expires_at

    def with_headers(self, **headers: str) -> RoutingEnvelope:
        """A copy with ``headers`` added or replaced (validated: no CR/LF).

        Use this rather than ``model_copy(update=...)``, which skips validation.
        """
        for name, value in headers.items():
            check_header_value(value, f"header {name}")
        merged = _merged(self.request.headers, headers)
        request = HttpRequestSpec(
            method=self.request.method,
            url=self.request.url,
            headers=merged,
            personal_headers=self.request.personal_headers,
        )
        return self.model_copy(update={"request": request})

    def to_message(self) -> dict[str, Any]:
        """The complete envelope, secrets included, as JSON-friendly data for the sender."""
        return self.model_dump(mode="json", context={"reveal_secrets": True})

    def build_request(
        self,
        content: bytes | str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Request:
        """An ``httpx.Request`` with the envelope's method, URL and headers, and ``content``."""
        extra = {
            name: check_header_value(v, f"header {name}") for name, v in (headers or {}).items()
        }
        merged = _merged(self.request.headers, extra) if extra else dict(self.request.headers)
        return httpx.Request(
            self.request.method, self.request.url, headers=merged, content=content, **kwargs
        )
