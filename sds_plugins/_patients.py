"""Patients: from an NHS number to the registered GP practice, through PDS.

The Personal Demographics Service (PDS FHIR API, ``GET /Patient/{nhs_number}``) is a directory
source like SDS: cached, coalesced, paced (at PDS's own application limit), retried and
observed by the engine. What it answers is reduced at once to a :class:`PatientRegistration`:
the practice, whether the number was superseded, whether the registration has ended or the
record is restricted. Nothing else from the record is kept.

NHS numbers are personal data. They are sent to PDS and nowhere else: logs, events, errors,
cache keys and envelopes name a patient by a keyed hash (:meth:`PatientRefs.ref`,
``pt-<16 hex>``), unless the operator's governance requires the number in the audit log
(``SDS_AUDIT_NHS_NUMBERS``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
import uuid
from datetime import date, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

import httpx
from pydantic import BaseModel, ConfigDict, Field, SerializationInfo, field_serializer

from ._demographics import PatientDemographics, parse_demographics
from ._envelope import ForeignRecord
from ._exceptions import (
    AuthenticationError,
    ConfigurationError,
    DirectoryError,
    DirectoryTimeoutError,
    InvalidNhsNumberError,
    MalformedResponseError,
    PatientInvalidatedError,
    PatientRestrictedError,
    RequestRejectedError,
)
from ._pacing import Pacer, RateLimiter
from ._retrying import RetryPolicy, error_from_response, get_with_retries
from ._sources import DirectorySource, FetchResult
from ._upstream import load_json

__all__ = [
    "PDS_SOURCE",
    "PatientQuery",
    "PatientRefs",
    "PatientRegistration",
    "PdsSource",
    "UnavailablePds",
    "check_nhs_number",
]

logger = logging.getLogger("sds_plugins.pds")

#: The directory source name PDS is registered under.
PDS_SOURCE = "pds"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
#: PDS's life-event extensions (``specification/components/schemas/extensions/`` of
#: ``NHSDigital/personal-demographics-service-api``).
DEATH_NOTIFICATION_URL = (
    "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-DeathNotificationStatus"
)
REMOVAL_URL = "https://fhir.nhs.uk/StructureDefinition/Extension-PDS-RemovalFromRegistration"
#: Death notification status codes (``UKCore-DeathNotificationStatus``): 1 informal, 2 formal,
#: U removed (the notice was withdrawn: the patient is not taken to be dead).
_DEATH_NOTIFICATIONS = {"1": "informal", "2": "formal", "U": "removed"}
#: Removal-from-registration reason codes (``PDS-RemovalReasonExitCode``).
REMOVAL_REASONS = {
    "DEA": "death",
    "EMB": "embarkation",
    "SCT": "transferred to Scotland",
    "NIT": "transferred to Northern Ireland",
    "TRA": "temporary resident not returned",
    "ORR": "other reason",
}
#: Registration periods are dates in England: "today" is London's, not UTC's (between
#: midnight UTC and midnight BST they differ).
LONDON = ZoneInfo("Europe/London")
_CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
_DIGITS = re.compile(r"[0-9]{10}")
# Without a configured key, one per process: the router and its pds source agree, and no two
# processes' references can be matched (nor cached answers shared).
_PROCESS_KEY = secrets.token_bytes(32)
_X_REQUEST_NAMESPACE = uuid.UUID("6a0c3e2b-9f41-5d7a-8c2e-4b1f0d9e7a35")
# Ten digits in a row: what an NHS number looks like in a path or a message from PDS.
_NUMBER_LIKE = re.compile(r"(?<![0-9])[0-9]{10}(?![0-9])")


def check_nhs_number(value: object, field: str = "patient") -> str:
    """An NHS number: ten ASCII digits (spaces between groups allowed, ``943 476 5919``) whose
    last is the modulus-11 check digit of the first nine (weights 10 to 2; 10 is no digit).

    Raises :class:`InvalidNhsNumberError` before anything is sent; the message never repeats
    the value (it may be a real number with one digit mistyped).
    """
    if not isinstance(value, str):
        raise InvalidNhsNumberError(
            f"{field} must be a string of 10 digits, got {type(value).__name__}", field=field
        )
    compact = value.replace(" ", "")  # spaces between groups; anything else is refused
    if len(value) > 32 or not compact.isascii() or not _DIGITS.fullmatch(compact):
        raise InvalidNhsNumberError(f"{field} is not an NHS number (10 digits)", field=field)
    total = sum(
        int(digit) * weight for digit, weight in zip(compact[:9], range(10, 1, -1), strict=True)
    )
    check = (11 - total % 11) % 11
    if check == 10 or check != int(compact[9]):
        raise InvalidNhsNumberError(
            f"{field} is not an NHS number (its check digit does not match)", field=field
        )
    return compact


class _RedactPatientPaths(logging.Filter):
    """Masks the NHS number in a PDS URL that a library logs (httpx logs every request's URL
    at INFO): the one place the number travels that this project does not write itself."""

    _PATH = re.compile(r"(/Patient/)[0-9]{10}")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "/Patient/" in message:
            record.msg, record.args = self._PATH.sub(r"\1**********", message), None
        return True


_REDACT = _RedactPatientPaths()


def redact_library_logs() -> None:
    """Install the redaction on httpx's and httpcore's loggers (once; idempotent)."""
    for name in ("httpx", "httpcore"):
        library = logging.getLogger(name)
        if _REDACT not in library.filters:
            library.addFilter(_REDACT)


class PatientRefs:
    """Names patients without their NHS number: ``pt-`` and 16 hex digits of an HMAC-SHA256.

    The same key gives the same reference (a fleet sharing PDS answers through Redis needs one
    key: ``SDS_PATIENT_HASH_KEY``); without one, each process draws its own.
    """

    def __init__(self, key: str | bytes | None = None) -> None:
        if key is None:
            key = secrets.token_bytes(32)
        self._key = key.encode() if isinstance(key, str) else key

    def ref(self, nhs_number: str) -> str:
        digest = hmac.new(self._key, nhs_number.encode("ascii"), hashlib.sha256).hexdigest()
        return f"pt-{digest[:16]}"

    def scrub(self, text: str) -> str:
        """``text`` with anything that looks like an NHS number replaced by its reference."""
        return _NUMBER_LIKE.sub(lambda match: self.ref(match.group(0)), text)

    @classmethod
    def for_settings(cls, settings: Any) -> PatientRefs:
        """The references ``settings`` describe: ``patient_hash_key``, else this process's."""
        key = settings.patient_hash_key
        return cls(key.get_secret_value() if key is not None else _PROCESS_KEY)

    def __repr__(self) -> str:
        return "PatientRefs(<key>)"


class PatientQuery(BaseModel):
    """``GET /Patient/{nhs_number}``, keyed by the patient's reference (never the number)."""

    model_config = ConfigDict(frozen=True)

    nhs_number: str = Field(repr=False)
    ref: str
    #: ``NHSD-End-User-Organisation-ODS``: the organisation the route is made for (not in the
    #: key: the answer does not depend on it).
    end_user_org: str | None = None
    #: The caller's own id for the request (a broker message's id), so that a request
    #: delivered twice sends PDS the same ``X-Request-ID`` (not in the key).
    request_id: str | None = Field(default=None, repr=False)
    #: Whether the answer keeps the patient's demographics (an adapter needs them:
    #: :meth:`Adapter.needs_demographics`); such an answer is never cached, and its own key
    #: keeps it from sharing a fetch with one that does not.
    demographics: bool = False

    def key(self) -> str:
        return f"Patient/{self.ref}/demographics" if self.demographics else f"Patient/{self.ref}"

    def x_request_id(self) -> str:
        """PDS's ``X-Request-ID``: "if you re-send a failed request, use the same value".

        Derived from the caller's request id and the NHS number (UUID 5), so every delivery of
        one request sends the same; without a request id, a fresh UUID 4 (which the retries of
        this fetch keep). The number is in the hash only: the id goes to PDS alone.
        """
        if self.request_id is None:
            return str(uuid.uuid4())
        return str(uuid.uuid5(_X_REQUEST_NAMESPACE, f"{self.request_id}\n{self.nhs_number}"))


class PatientRegistration(ForeignRecord):
    """What routing needs from a PDS record, and nothing more.

    ``patient`` is the reference of the number asked for and ``record`` that of the record PDS
    answered with: they differ when the number was superseded (merged), and ``superseded`` says
    so. ``practice`` is the ODS code of the practice the patient "is, or was, registered
    with" (PDS's words; ``None`` when PDS gives none), over ``registration_start`` to
    ``registration_end`` (a FHIR period: both days included, either may be in the future);
    ``restricted`` records carry no practice.

    Life events, as facts for each adapter to decide on (:meth:`Adapter.check_patient`):
    ``deceased`` (``deceasedDateTime`` given and the death notice not withdrawn, status ``U``),
    ``death_notification`` (``informal``, ``formal`` or ``removed``), and the removal from
    registration (``removal_reason``: DEA, EMB, SCT, NIT, TRA or ORR; ``removal_start``, when
    it takes effect). The date of death stays out, and the demographics but for the routes
    whose adapter needs them (``demographics``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["pds_patient"] = "pds_patient"
    patient: str
    record: str
    superseded: bool = False
    practice: str | None = None
    registration_start: date | None = None
    registration_end: date | None = None
    restricted: bool = False
    deceased: bool = False
    death_notification: Literal["informal", "formal", "removed"] | None = None
    removal_reason: str | None = None
    removal_start: date | None = None
    #: The surviving record's NHS number when the number asked for was superseded, for the
    #: sender only (:attr:`RoutingEnvelope.current_nhs_number`): masked in every dump but the
    #: cache's own (``reveal_secrets``), never in a repr.
    current_nhs_number: str | None = Field(default=None, repr=False)
    #: The patient's NHS number, date of birth and surname, only when the route's adapter
    #: asked for them (:mod:`sds_plugins._demographics`): in memory only, never in a dump (so
    #: neither in a cache nor in provenance), masked in its repr.
    demographics: PatientDemographics | None = Field(default=None, repr=False, exclude=True)

    @field_serializer("current_nhs_number")
    def _mask_number(self, value: str | None, info: SerializationInfo) -> str | None:
        context = info.context
        reveal = isinstance(context, dict) and context.get("reveal_secrets")
        return value if value is None or reveal else "**********"

    def current_practice(self, today: date) -> str | None:
        """The practice, when the registration covers ``today`` (London's date: see
        :func:`london_today`): it has begun, and its end, if any, is today or later."""
        if self.practice is None:
            return None
        if self.registration_start is not None and self.registration_start > today:
            return None
        if self.registration_end is not None and self.registration_end < today:
            return None
        return self.practice

    def removed(self, today: date) -> bool:
        """Whether a removal from registration has taken effect by ``today``."""
        return self.removal_reason is not None and (
            self.removal_start is None or self.removal_start <= today
        )


def london_today(epoch_s: float) -> date:
    """The date in England at ``epoch_s`` (the day a registration period is judged by)."""
    return datetime.fromtimestamp(epoch_s, LONDON).date()


def _date(value: object) -> date | None:
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def _coding(extension: dict[str, Any], name: str) -> str | None:
    """The code of sub-extension ``name``'s ``valueCodeableConcept``, if there is one."""
    for item in extension.get("extension") or ():
        if isinstance(item, dict) and item.get("url") == name:
            concept = item.get("valueCodeableConcept")
            codings = concept.get("coding") if isinstance(concept, dict) else None
            for coding in codings if isinstance(codings, list) else ():
                code = coding.get("code") if isinstance(coding, dict) else None
                if isinstance(code, str):
                    return code
    return None


def _period_start(extension: dict[str, Any], name: str) -> date | None:
    for item in extension.get("extension") or ():
        if isinstance(item, dict) and item.get("url") == name:
            period = item.get("valuePeriod")
            return _date(period.get("start")) if isinstance(period, dict) else None
    return None


def _life_events(data: dict[str, Any]) -> dict[str, Any]:
    """Death and removal from registration, as :class:`PatientRegistration` fields."""
    notification = removal = removal_start = None
    extensions = data.get("extension")
    for extension in extensions if isinstance(extensions, list) else ():
        if not isinstance(extension, dict):
            continue
        if extension.get("url") == DEATH_NOTIFICATION_URL:
            notification = _DEATH_NOTIFICATIONS.get(
                _coding(extension, "deathNotificationStatus") or ""
            )
        elif extension.get("url") == REMOVAL_URL:
            code = _coding(extension, "removalFromRegistrationCode")
            if code in REMOVAL_REASONS:
                removal, removal_start = code, _period_start(extension, "effectiveTime")
    # A date of death stands unless its notice was withdrawn (status U); the date itself is
    # not kept. A formal or informal notice without a date is a death all the same.
    died = isinstance(data.get("deceasedDateTime"), str) and bool(data["deceasedDateTime"])
    deceased = (died or notification in ("informal", "formal")) and notification != "removed"
    return {
        "deceased": deceased,
        "death_notification": notification,
        "removal_reason": removal,
        "removal_start": removal_start,
    }


def parse_patient(
    body: bytes, asked: str, refs: PatientRefs, *, demographics: bool = False
) -> PatientRegistration:
    """The registration in a PDS ``Patient`` (bounded JSON already read), with the patient's
    demographics when asked for."""
    data = load_json(body, what="PDS answer")
    if not isinstance(data, dict) or data.get("resourceType") != "Patient":
        raise MalformedResponseError("PDS answered with something other than a Patient")
    record_id = data.get("id")
    if not isinstance(record_id, str) or not _DIGITS.fullmatch(record_id):
        raise MalformedResponseError("PDS answered with a Patient without a valid id", field="id")
    meta = data.get("meta")
    security = meta.get("security") if isinstance(meta, dict) else None
    restricted = isinstance(security, list) and any(
        isinstance(item, dict)
        and item.get("system") == _CONFIDENTIALITY
        and item.get("code") in ("R", "V")
        for item in security
    )
    practice = start = end = None
    practices = data.get("generalPractitioner")
    if isinstance(practices, list):
        for item in practices:  # zero or one item; the first with an ODS code counts
            identifier = item.get("identifier") if isinstance(item, dict) else None
            if not isinstance(identifier, dict) or identifier.get("system") != ODS_SYSTEM:
                continue
            value = identifier.get("value")
            if isinstance(value, str) and 3 <= len(value) <= 10 and value.isalnum():
                period = identifier.get("period")
                period = period if isinstance(period, dict) else {}
                practice = value.upper()
                start, end = _date(period.get("start")), _date(period.get("end"))
                break
    return PatientRegistration(
        patient=refs.ref(asked),
        record=refs.ref(record_id),
        superseded=record_id != asked,
        practice=None if restricted else practice,
        registration_start=start,
        registration_end=end,
        restricted=restricted,
        current_nhs_number=None if record_id == asked else record_id,
        demographics=parse_demographics(data, record_id, london_today(time.time()))
        if demographics and not restricted
        else None,
        **_life_events(data),
    )


class UnavailablePds(DirectorySource):
    """The ``pds`` source of a router that cannot ask PDS (not deployed where the router is,
    or its credentials incomplete): every route to a patient is refused, before anything is
    sent, with the reason and the setting that mends it."""

    name = PDS_SOURCE
    record_type = PatientRegistration
    stale_if_error = False

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.namespace = "unavailable"
        self.reason = reason

    async def fetch(
        self, query: Any, *, correlation_id: str, no_cache: bool = False
    ) -> FetchResult:
        raise ConfigurationError(self.reason)


class PdsSource(DirectorySource):
    """The PDS FHIR API as the ``pds`` directory source (application-restricted reads).

    Every request carries a fresh ``X-Request-ID`` (a UUID), reused as it is when the same
    request is re-sent after a failure, as PDS asks; ``X-Correlation-ID`` is the route's.
    """

    name = PDS_SOURCE
    record_type = PatientRegistration
    stale_if_error = False

    def __init__(
        self,
        base_url: str,
        *,
        refs: PatientRefs,
        auth: httpx.Auth | None = None,
        rate_limiter: RateLimiter | None = None,
        retry: RetryPolicy | None = None,
        cache_ttl_s: float = 60.0,
        end_user_org: str | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 10.0,
        max_response_bytes: int = 1024 * 1024,
        refusal: str | None = None,
    ) -> None:
        super().__init__()
        redact_library_logs()
        #: Why no request may be sent (PDS needs credentials this router does not have): every
        #: fetch is refused with it, before anything is sent.
        self.refusal = refusal
        self.auth = auth
        self.base_url = base_url.rstrip("/")
        self.namespace = self.base_url
        self.refs = refs
        self.rate_limiter = rate_limiter if rate_limiter is not None else Pacer(per_second=5)
        self.retry = retry or RetryPolicy()
        self.cache_ttl_s = cache_ttl_s
        self.end_user_org = end_user_org
        self.max_response_bytes = max_response_bytes
        self.requests_sent = 0
        self._http = httpx.AsyncClient(
            auth=auth,
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
            follow_redirects=False,
        )

    async def fetch(
        self, query: Any, *, correlation_id: str, no_cache: bool = False
    ) -> FetchResult:
        if not isinstance(query, PatientQuery):
            raise TypeError(f"the pds source takes a PatientQuery, not {type(query).__name__}")
        if self.refusal is not None:
            raise ConfigurationError(self.refusal)
        headers = {
            "Accept": "application/fhir+json",
            # One id for this request, the same on every retry and every redelivery of it
            # (PDS's rule).
            "X-Request-ID": query.x_request_id(),
            "X-Correlation-ID": correlation_id,
        }
        end_user_org = query.end_user_org or self.end_user_org
        if end_user_org:
            headers["NHSD-End-User-Organisation-ODS"] = end_user_org
        shown = f"{self.base_url}/Patient/{query.ref}"

        async def count() -> None:
            self.requests_sent += 1

        try:
            body, attempts = await get_with_retries(
                self._http,
                f"{self.base_url}/Patient/{query.nhs_number}",
                headers=headers,
                policy=self.retry,
                correlation_id=correlation_id,
                error_for=lambda response, cid: self._error(response, cid, query, shown),
                before_attempt=count,
                rate_limiter=self.rate_limiter,
                service="PDS",
                max_bytes=self.max_response_bytes,
                shown_url=shown,
            )
        except DirectoryError as exc:
            if exc.spine_code == "RESOURCE_NOT_FOUND":
                return FetchResult(records=(), attempts=exc.attempts)
            raise
        registration = parse_patient(
            body, query.nhs_number, self.refs, demographics=query.demographics
        )
        if registration.restricted:
            # Raised, not returned: an error is never cached, and nothing more about the
            # record is said or kept.
            raise PatientRestrictedError(
                f"PDS: patient {query.ref} is restricted; its registered practice is withheld",
                correlation_id=correlation_id,
                status_code=200,
                method="GET",
                url=shown,
                attempts=attempts,
            )
        return FetchResult(records=(registration,), attempts=attempts)

    def _error(
        self, response: httpx.Response, correlation_id: str, query: PatientQuery, shown: str
    ) -> DirectoryError:
        # The platform's mapping (401/403, 429 from the gateway or PDS, 5xx...), then PDS's own
        # codes; the URL shown is the one without the number, and PDS's diagnostics, which may
        # quote it, name the patient by its reference instead.
        error = error_from_response(response, correlation_id, service="PDS")
        error.url = shown
        if error.diagnostics:
            error.diagnostics = self.refs.scrub(error.diagnostics)
        status, code = response.status_code, error.spine_code
        kwargs: dict[str, Any] = {
            "correlation_id": error.correlation_id,
            "status_code": status,
            "spine_code": code,
            "diagnostics": error.diagnostics,
            "method": "GET",
            "url": shown,
        }
        if status == 404 and code == "INVALIDATED_RESOURCE":
            return PatientInvalidatedError(
                f"PDS: the record of patient {query.ref} has been invalidated; it must not be "
                "used (warn the user)",
                **kwargs,
            )
        if status == 404 and code == "RESOURCE_NOT_FOUND":
            return RequestRejectedError(f"PDS knows no patient {query.ref}", **kwargs)  # → none
        if status == 408:
            return DirectoryTimeoutError("PDS could not reach a service in time", **kwargs)
        if status == 401:
            # Application-restricted access is a signed-JWT bearer token (the live proxy
            # verifies it first: proxies/live/apiproxy/targets/ig3.xml); say what to set.
            if self.auth is None:
                return AuthenticationError(
                    "PDS refused the request, which carried no credentials: PDS takes a "
                    "signed-JWT bearer token; set SDS_CLIENT_ID (or SDS_API_KEY), "
                    "SDS_PRIVATE_KEY_FILE and SDS_KID (and SDS_PDS_TOKEN_URL if the token "
                    "endpoint is not the platform's)",
                    **kwargs,
                )
            return AuthenticationError(
                "PDS refused the signed-JWT token: check SDS_CLIENT_ID and SDS_KID, and that "
                "the application is approved for PDS",
                **kwargs,
            )
        return error

    def encode(self, records: tuple[Any, ...]) -> bytes:
        # A superseded patient's current number is kept with its answer (the next route from
        # the cache gives it to its sender too), for the answer's short life.
        return self._records_adapter().dump_json(records, context={"reveal_secrets": True})

    async def start(self) -> None:
        await self.rate_limiter.start()  # PDS's own pace, apart from SDS's

    async def aclose(self) -> None:
        await self._http.aclose()
