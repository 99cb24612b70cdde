"""The ``mesh`` adapter: (organisation, workflow id) → the recipient and a signed outbox POST.

``plan`` checks every option (bad input costs no lookup) and, for ODS routing, asks the ``mesh``
source for the mailboxes receiving the workflow at the organisation; ``build`` chooses one (or
writes the patient's demographic address, or the mailbox the caller named) and writes the outbox
request: URL, ``mex-*`` headers and a fresh single-use ``Authorization: NHSMESH`` token.
Neither does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from cachetools import LRUCache
from pydantic import (
    BaseModel,
    ConfigDict,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from sds_plugins import (
    ENVELOPE_TTL,
    Adapter,
    AmbiguousError,
    Candidate,
    ClientTls,
    ConfigurationError,
    EnvelopeReliability,
    HttpRequestSpec,
    InvalidInputError,
    Lookup,
    NotFoundError,
    Party,
    PatientRegistration,
    PatientRestrictedError,
    Resolution,
    RouteRequest,
    RoutingEnvelope,
    check_nhs_number,
)

from ._auth import nhsmesh_authorization
from ._config import MeshCredentials, MeshSettings, MeshTls, resolve_mesh_url
from ._demographic import (
    demographic_mex_to,
    normalise_birth_date,
    normalise_family_name,
    normalise_patient_number,
)
from ._itk import (
    ACKNOWLEDGEMENT_WORKFLOWS,
    ITK3_MESSAGES,
    Itk3Message,
    Routing,
    default_message,
    is_acknowledgement,
    subject_nhs_number,
)
from ._lookup import MESH_V2_JSON, MailboxQuery, MeshMailbox
from ._validation import (
    check_text_header,
    normalise_checksum,
    normalise_content_type,
    normalise_flag,
    normalise_mailbox_id,
    normalise_workflow_id,
)

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "ENVELOPE_TTL",
    "MAX_REQUEST_BYTES",
    "PERSONAL_HEADERS",
    "MeshAdapter",
    "MeshOptions",
]

#: How long an envelope may be used. Its NHSMESH token is stamped to the minute and MESH accepts
#: tokens up to two hours from its own clock; five minutes stays far inside that window even with
#: a skewed clock, and is also how stale a mailbox choice may get before the route is resolved
#: again (mailbox lookups themselves are cached by the engine's TTL).

#: MESH's limit per request (after compression). Larger payloads go in chunks: chunk_requests().
MAX_REQUEST_BYTES = 100 * 1000 * 1000

DEFAULT_CONTENT_TYPE = "application/octet-stream"

#: The headers that may name the patient: a demographic ``mex-to`` and a GP Connect Messaging
#: subject (see the README: the core masks only credentials when an envelope is printed).
PERSONAL_HEADERS = ("mex-to", "mex-subject")

_ROUTINGS: tuple[Routing, ...] = ("ods", "demographic", "mailbox")
_DEMOGRAPHICS = ("nhs_number", "birth_date", "family_name")


class MeshOptions(BaseModel):
    """A MESH route's options, each checked as MESH checks it (see :class:`MeshAdapter`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    mesh_url: str | None = None
    mailbox: str | None = None
    password: SecretStr | None = None
    shared_key: SecretStr | None = None
    mailbox_id: str | None = None
    routing: Literal["ods", "demographic", "mailbox"] | None = None
    message_type: (
        Literal[
            "consultation_report", "online_consultation_report", "generic_report", "update_record"
        ]
        | None
    ) = None
    # The patient, for demographic routing: personal data, masked like secrets (SecretStr).
    nhs_number: SecretStr | None = None
    birth_date: SecretStr | None = None
    family_name: SecretStr | None = None
    #: GP Connect Messaging's subjects name the patient (GPCM-SD-064): masked too.
    subject: SecretStr | None = None
    local_id: str | None = None
    partner_id: str | None = None
    filename: str | None = None
    checksum: str | None = None
    content_type: str | None = None
    compressed: str | None = None
    encrypted: str | None = None
    cert: Path | None = None
    key: Path | None = None
    ca_bundle: Path | None = None

    @field_validator("mesh_url", mode="before")
    @classmethod
    def _url(cls, value: object) -> object:
        return None if value is None else resolve_mesh_url(_string(value, "mesh_url"))

    @field_validator("mailbox", "mailbox_id", mode="before")
    @classmethod
    def _mailbox(cls, value: object, info: ValidationInfo) -> object:
        return None if value is None else normalise_mailbox_id(value, field=str(info.field_name))

    @field_validator("routing", "message_type", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        # The CLI passes strings as typed (-o routing=Demographic).
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("nhs_number", mode="before")
    @classmethod
    def _nhs_number(cls, value: object) -> object:
        return None if value is None else SecretStr(normalise_patient_number(value))

    @field_validator("birth_date", mode="before")
    @classmethod
    def _birth_date(cls, value: object) -> object:
        return None if value is None else SecretStr(normalise_birth_date(value).isoformat())

    @field_validator("family_name", mode="before")
    @classmethod
    def _family_name(cls, value: object) -> object:
        return None if value is None else SecretStr(normalise_family_name(value))

    @field_validator("subject", mode="before")
    @classmethod
    def _subject(cls, value: object) -> object:
        if value is None:
            return None
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        return SecretStr(check_text_header(text, "subject"))

    @field_validator("local_id", "partner_id", mode="before")
    @classmethod
    def _text(cls, value: object, info: ValidationInfo) -> object:
        return None if value is None else check_text_header(value, str(info.field_name))

    @field_validator("filename", mode="before")
    @classmethod
    def _filename(cls, value: object) -> object:
        return None if value is None else _filename(value)

    @field_validator("checksum", mode="before")
    @classmethod
    def _checksum(cls, value: object) -> object:
        return None if value is None else normalise_checksum(value, field="checksum")

    @field_validator("content_type", mode="before")
    @classmethod
    def _content_type(cls, value: object) -> object:
        return None if value is None else normalise_content_type(value)

    @field_validator("compressed", "encrypted", mode="before")
    @classmethod
    def _flag(cls, value: object, info: ValidationInfo) -> object:
        return None if value is None else normalise_flag(value, field=str(info.field_name))

    @field_validator("cert", "key", "ca_bundle", mode="before")
    @classmethod
    def _path(cls, value: object, info: ValidationInfo) -> object:
        if value is None:
            return None
        if not isinstance(value, str | Path) or not str(value).strip():
            raise InvalidInputError(
                f"{info.field_name} must be a file path", field=str(info.field_name)
            )
        if any(ord(char) < 0x20 or ord(char) == 0x7F for char in str(value)):
            raise InvalidInputError(
                f"{info.field_name} contains a control character", field=str(info.field_name)
            )
        return Path(value)

    @field_validator("password", "shared_key", mode="before")
    @classmethod
    def _secret(cls, value: object, info: ValidationInfo) -> object:
        if value is not None and not isinstance(value, str | SecretStr):
            # Only the type is reported: the value is a secret even when it is the wrong type.
            raise InvalidInputError(
                f"{info.field_name} must be a string or SecretStr, got {type(value).__name__}",
                field=str(info.field_name),
            )
        return value

    @model_validator(mode="after")
    def _routing_inputs(self) -> MeshOptions:
        # What does not depend on the workflow; the rest is checked per workflow (_Routed).
        given = [name for name in _DEMOGRAPHICS if getattr(self, name) is not None]
        if self.routing == "demographic":
            _need_demographics(self)
        elif self.routing is not None and given:
            raise InvalidInputError(
                f"mesh: {', '.join(given)} only apply to routing=demographic (routing is "
                f"{self.routing})",
                field=given[0],
            )
        if self.routing == "mailbox" and self.mailbox_id is None:
            raise InvalidInputError(
                "mesh: routing=mailbox sends to the mailbox_id option: it is required",
                field="mailbox_id",
            )
        return self

    def mex_headers(self) -> dict[str, str]:
        """The optional ``mex-*`` and ``Content-Type`` headers (each checked above)."""
        headers = {
            "mex-subject": _reveal(self.subject),
            "mex-localid": self.local_id,
            "mex-partnerid": self.partner_id,
            "mex-filename": self.filename,
            "mex-content-checksum": self.checksum,
            "mex-content-compressed": self.compressed,
            "mex-content-encrypted": self.encrypted,
            "Content-Type": self.content_type,
        }
        return {name: value for name, value in headers.items() if value is not None}


def _need_demographics(options: MeshOptions) -> bool:
    """Whether the options name the patient (all three given; ``False``: none, so a route to
    the patient takes them from PDS). Some but not all is refused."""
    missing = [name for name in _DEMOGRAPHICS if getattr(options, name) is None]
    if missing and len(missing) < len(_DEMOGRAPHICS):
        raise InvalidInputError(
            f"mesh: demographic routing needs {', '.join(missing)} too: the patient's NHS "
            "number, date of birth (YYYY-MM-DD) and surname as PDS holds them; or none of "
            "them, and route to the patient (patient=<NHS number>), which takes all three "
            "from PDS",
            field=missing[0],
        )
    return not missing


@dataclass(frozen=True)
class _Routed:
    """How one (options, workflow) is routed: checked once, then reused by plan and build."""

    routing: Routing
    message: Itk3Message | None
    ack_workflow_id: str | None
    #: The ``mex-to`` for demographic and mailbox routing (``None``: from the lookup, or
    #: from the patient's demographics in PDS, ``from_patient``).
    mex_to: str | None
    #: Demographic routing with the patient named by the route (``patient=``) rather than the
    #: options: PDS gives the NHS number, date of birth and surname.
    from_patient: bool = False

    def __repr__(self) -> str:  # mex-to may name the patient
        return f"_Routed(routing={self.routing!r}, message={getattr(self.message, 'name', None)!r})"


@dataclass(frozen=True)
class _Options:
    """A route's options, checked: what ``build`` needs, secrets as ``SecretStr``."""

    mesh_url: str
    credentials: MeshCredentials
    mailbox_id: str | None
    headers: dict[str, str]
    tls: MeshTls
    routed: _Routed

    def __repr__(self) -> str:  # never print the credentials' secrets, even masked by pydantic
        return f"_Options(mesh_url={self.mesh_url!r}, mailbox={self.credentials.mailbox!r})"


class MeshAdapter(Adapter):
    """A MESH message: its recipient (a mailbox or, for automated routing, the patient) and its
    outbox POST.

    The interaction is the MESH workflow id (``TEST_WORKFLOW``, ``GPFED_CONSULT_REPORT``), not
    an interaction URN. Options (all optional; credentials and host fall back to
    :class:`MeshSettings`, i.e. ``MESH_*``):

    - ``mesh_url``: ``int``, ``dep``, ``prod`` or a URL (``MESH_URL``);
    - ``mailbox``, ``password``, ``shared_key``: the sender mailbox and its secrets
      (``MESH_MAILBOX``, ``MESH_PASSWORD``, ``MESH_SHARED_KEY``); pass secrets as
      :class:`~pydantic.SecretStr` so the route request's ``repr`` masks them too;
    - ``routing``: ``ods`` (the endpoint lookup, the default), ``demographic`` (MESH's automated
      routing to the patient's registered GP: ``nhs_number``, ``birth_date``, ``family_name``)
      or ``mailbox`` (straight to ``mailbox_id``); GP Connect Messaging workflows have their own
      rules (:data:`~sds_plugins_mesh.ITK3_MESSAGES`, ``message_type``);
    - ``mailbox_id``: which recipient mailbox, when the lookup returns several; with
      ``routing=mailbox``, the recipient itself;
    - ``subject``, ``local_id`` (default: the correlation id), ``partner_id``, ``filename``,
      ``checksum``, ``content_type``, ``compressed``, ``encrypted``: the ``mex-*`` headers;
    - ``cert``, ``key``, ``ca_bundle``: client TLS for the *sender*, copied into
      ``extensions["mesh"]["tls"]`` (defaults from the settings for the host).

    Every envelope carries ``mex-from``, the sender's mailbox.
    """

    name: ClassVar[str] = "mesh"
    description: ClassVar[str] = (
        "MESH: the recipient mailbox (or the patient, for automated routing) and a signed "
        "outbox POST"
    )
    options_model = MeshOptions
    options_help = "see the MESH adapter's README"
    # No example route (the base's None): `sds-plugins demo` routes examples against the
    # embedded SDS sandbox, and MESH needs a mesh-sandbox; sds_plugins_mesh.demo() shows it.

    def __init__(self, settings: MeshSettings | None = None) -> None:
        self.settings = settings if settings is not None else MeshSettings()
        self._derived: LRUCache[tuple[MeshOptions, str], _Options] = LRUCache(maxsize=64)

    def normalise_interaction(self, interaction: str) -> str:
        return normalise_workflow_id(interaction, field="interaction")

    def check_patient(self, request: RouteRequest, patient: PatientRegistration) -> None:
        # Automated routing names the patient to MESH, which finds the practice in PDS: a
        # restricted record gives nothing to route with (and the core refuses it first). On a
        # route to the patient the address is PDS's: options naming a patient could name
        # another one than the route's.
        routed = self._options(request).routed
        if routed.routing != "demographic":
            return
        if patient.restricted:
            raise PatientRestrictedError(
                f"patient {patient.patient} is restricted (PDS): no demographic MESH routing",
                correlation_id=request.correlation_id,
            )
        if not routed.from_patient:
            raise InvalidInputError(
                "mesh: a route to the patient (patient=) takes the NHS number, date of birth "
                "and surname from PDS: leave out nhs_number, birth_date and family_name",
                field="nhs_number",
            )

    def needs_demographics(self, request: RouteRequest) -> bool:
        # A demographic route to a patient whose options do not name them: from PDS.
        return self._options(request).routed.from_patient

    def plan(self, request: RouteRequest) -> Mapping[str, Lookup]:
        options = self._options(request)  # every option checked before any lookup
        if options.routed.routing != "ods":
            return {}  # MESH itself routes (demographic), or the caller named the mailbox
        query = MailboxQuery(
            mesh_url=options.mesh_url, ods_code=request.org, workflow_id=request.interaction
        )
        return {"mailboxes": Lookup(source="mesh", query=query)}

    def build(self, request: RouteRequest, resolved: Resolution) -> RoutingEnvelope:
        options = self._options(request)
        routed = options.routed
        sender = options.credentials.mailbox
        recipient: MeshMailbox | None = None
        if routed.from_patient:
            mex_to = _patient_mex_to(request, resolved, options)
        elif routed.mex_to is None:
            mailboxes = [r for r in resolved.records("mailboxes") if isinstance(r, MeshMailbox)]
            recipient = self._choose(request, resolved, mailboxes, options.mailbox_id)
            mex_to = recipient.mailbox_id
        else:
            mex_to = routed.mex_to
        headers = {
            # Built now, for this envelope only: MESH refuses a token it has already seen.
            "Authorization": nhsmesh_authorization(options.credentials, now=resolved.now),
            "Accept": MESH_V2_JSON,
            "mex-from": sender,
            "mex-to": mex_to,
            "mex-workflowid": request.interaction,
            **options.headers,
        }
        headers.setdefault("mex-localid", request.correlation_id)
        headers.setdefault("Content-Type", DEFAULT_CONTENT_TYPE)
        tls = options.tls
        if routed.routing == "demographic":
            # Never the patient's address: MESH resolves the practice; ours is PDS's or the
            # caller's belief, as routed.
            target = Party(ods_code=request.org)
        elif recipient is not None:
            target = Party(
                ods_code=request.org,
                mailbox_id=recipient.mailbox_id,
                mailbox_name=recipient.mailbox_name,
            )
        else:
            target = Party(ods_code=request.org, mailbox_id=mex_to)
        extensions: dict[str, Any] = {
            "mesh_url": options.mesh_url,
            "routing": routed.routing,
            "mailbox": recipient.model_dump(mode="json") if recipient is not None else None,
            "message_type": routed.message.name if routed.message is not None else None,
            "ack_workflow_id": routed.ack_workflow_id,
            "personal_headers": _personal_headers(routed, headers),
            "retry_first_post": False,
            "max_request_bytes": MAX_REQUEST_BYTES,
            "tls": {
                "cert": _path(tls.cert),
                "key": _path(tls.key),
                "ca_bundle": _path(tls.ca_bundle),
            },
        }
        return RoutingEnvelope(
            adapter=self.name,
            interaction=request.interaction,
            target=target,
            source=Party(mailbox_id=sender),
            request=HttpRequestSpec(
                method="POST",
                url=f"{options.mesh_url}/messageexchange/{sender}/outbox",
                headers=headers,
                # Masked wherever the envelope is printed; the sender's to_message() has them.
                personal_headers=tuple(extensions["personal_headers"]),
            ),
            tls=_client_tls(tls),
            # The outbox POST is never retried: it may have landed even without an answer.
            reliability=EnvelopeReliability(retries=0),
            expires_at=resolved.now + ENVELOPE_TTL,
            provenance=resolved.provenance((recipient,) if recipient is not None else ()),
            extensions={"mesh": extensions},
        )

    # -- choosing the recipient ---------------------------------------------------------------

    def _choose(
        self,
        request: RouteRequest,
        resolved: Resolution,
        mailboxes: Sequence[MeshMailbox],
        wanted: str | None,
    ) -> MeshMailbox:
        where = f"{request.org} and workflow {request.interaction}"
        if not mailboxes:
            raise NotFoundError(
                f"no MESH mailbox receives {where}", correlation_id=request.correlation_id
            )
        pool = list(mailboxes)
        if wanted is not None:
            pool = [mailbox for mailbox in pool if mailbox.mailbox_id == wanted]
            if not pool:
                raise NotFoundError(
                    f"mailbox {wanted} does not receive {where} "
                    f"(mailboxes that do: {_list(mailboxes)})",
                    correlation_id=request.correlation_id,
                )
        if len(pool) == 1:
            return pool[0]
        # Several: the selection policy decides (a deployment may install one); the default
        # refuses, and the refusal is re-worded to name the option MESH callers have.
        candidates = [Candidate(key=m.mailbox_id, records=(m,)) for m in pool]
        try:
            chosen = resolved.select(candidates, role="recipient mailbox", option="mailbox_id")
        except AmbiguousError as exc:
            raise AmbiguousError(
                f"{len(pool)} MESH mailboxes receive {where}; pass the mailbox_id option to "
                f"choose: {_list(pool)}",
                candidates=[mailbox.describe() for mailbox in pool],
                correlation_id=request.correlation_id,
            ) from exc
        record = chosen.records[0]
        assert isinstance(record, MeshMailbox)  # we built the candidates above
        return record

    # -- options ------------------------------------------------------------------------------

    def _options(self, request: RouteRequest) -> _Options:
        """The route's options with the settings' defaults: derived once per distinct options
        and workflow (plan and build both ask; so does every route with the same options)."""
        options: MeshOptions = request.options
        key = (options, request.interaction)
        derived = self._derived.get(key)
        if derived is None:
            derived = self._derived[key] = self._derive(options, request.interaction)
        return derived

    def _derive(self, options: MeshOptions, workflow: str) -> _Options:
        settings = self.settings
        routed = _route(options, workflow)  # the caller's mistakes first, configuration after
        mesh_url = options.mesh_url or settings.resolved_url()
        if mesh_url is None:
            raise ConfigurationError(
                "no MESH host: pass the mesh_url option or set MESH_URL (int, dep, prod or a URL)"
            )
        return _Options(
            mesh_url=mesh_url,
            credentials=self._credentials(options),
            mailbox_id=options.mailbox_id,
            headers=options.mex_headers(),
            tls=settings.tls_for(mesh_url).merged(
                MeshTls(cert=options.cert, key=options.key, ca_bundle=options.ca_bundle)
            ),
            routed=routed,
        )

    def _credentials(self, options: MeshOptions) -> MeshCredentials:
        settings = self.settings
        mailbox = options.mailbox or settings.mailbox
        password = options.password or settings.password
        shared_key = options.shared_key or settings.shared_key
        missing = [
            (name, f"MESH_{name.upper()}")
            for name, value in (
                ("mailbox", mailbox),
                ("password", password),
                ("shared_key", shared_key),
            )
            if value is None
        ]
        if missing:
            raise ConfigurationError(
                "MESH sender credentials missing: pass the option(s) "
                + ", ".join(name for name, _ in missing)
                + " or set "
                + ", ".join(env for _, env in missing)
            )
        assert mailbox is not None  # "missing" above refused None for all three
        assert password is not None
        assert shared_key is not None
        return MeshCredentials.build(
            mailbox=normalise_mailbox_id(mailbox, field="mailbox"),
            password=password,
            shared_key=shared_key,
        )


def _route(options: MeshOptions, workflow: str) -> _Routed:
    """How ``options`` route a ``workflow`` message, with the GP Connect Messaging rules.

    Refusals name the option and the requirement, never a patient's value.
    """
    message = _message(options, workflow)
    if message is not None:
        allowed, default = message.routings, message.default_routing
    elif is_acknowledgement(workflow):
        # An acknowledgement goes back to the mailbox the message came from.
        allowed, default = ("mailbox", "ods"), "mailbox"
    else:
        allowed, default = _ROUTINGS, "ods"
    routing = options.routing or default
    if routing not in allowed:
        raise InvalidInputError(_refusal(routing, workflow, message), field="routing")
    given = [name for name in _DEMOGRAPHICS if getattr(options, name) is not None]
    if routing == "demographic":
        _need_demographics(options)
    elif given:
        raise InvalidInputError(
            f"mesh: {', '.join(given)} only apply to demographic routing ({workflow} is routed "
            f"by {routing})",
            field=given[0],
        )
    if routing == "mailbox" and options.mailbox_id is None:
        raise InvalidInputError(
            f"mesh: {workflow} is sent straight to a mailbox: pass mailbox_id (an "
            "acknowledgement goes to the mailbox the message came from; see "
            "route_acknowledgement)",
            field="mailbox_id",
        )
    mex_to: str | None = None
    from_patient = False
    if routing == "demographic":
        if _need_demographics(options):
            assert options.nhs_number is not None  # _need_demographics: all three given
            number = options.nhs_number.get_secret_value()
            mex_to = demographic_mex_to(number, options.birth_date, options.family_name)
            _check_named_patient(message, options, number)
        else:
            from_patient = True
    elif routing == "mailbox":
        mex_to = options.mailbox_id
    ack = (
        message.ack_workflow_id if message is not None else ACKNOWLEDGEMENT_WORKFLOWS.get(workflow)
    )
    return _Routed(
        routing=routing,
        message=message,
        ack_workflow_id=ack,
        mex_to=mex_to,
        from_patient=from_patient,
    )


def _check_named_patient(
    message: Itk3Message | None, options: MeshOptions, number: str, *, superseded: bool = False
) -> None:
    """The subject and local id against the patient routed to (never repeating a value)."""
    if (
        message is not None
        and message.name == "consultation_report"
        and subject_nhs_number(message, _reveal(options.subject)) != number
    ):
        why = (
            "the number routed to was superseded: PDS's current record, which mex-to names, "
            "has another NHS number; write the subject with it"
            if superseded
            else "the subject names another NHS number than the patient routed to"
        )
        raise InvalidInputError(
            f"mesh: {why} (GPCM-SD-063/-064 name the same patient)", field="subject"
        )
    if options.local_id is not None and _names_a_patient(options.local_id):
        raise InvalidInputError(
            "mesh: local_id must not contain patient identifiable data (MESH API, "
            "mex-localid); GP Connect Messaging puts the sender's ODS code there",
            field="local_id",
        )


def _patient_mex_to(request: RouteRequest, resolved: Resolution, options: _Options) -> str:
    """The demographic ``mex-to`` of a route to a patient, from PDS's demographics."""
    patient = resolved.patient
    demographics = patient.demographics if patient is not None else None
    if patient is None or demographics is None:
        raise InvalidInputError(
            "mesh: demographic routing names the patient: route to the patient "
            "(patient=<NHS number>; PDS gives the NHS number, date of birth and surname), or "
            "pass nhs_number, birth_date (YYYY-MM-DD) and family_name",
            field="nhs_number",
        )
    lacking = [
        what
        for what, value in (
            ("whole date of birth", demographics.birth_date),
            ("usual surname", demographics.family_name),
        )
        if value is None
    ]
    if lacking:
        raise InvalidInputError(
            f"mesh: PDS holds no {' and no '.join(lacking)} for patient {patient.patient}: "
            "demographic routing cannot address the patient",
            field="patient",
        )
    try:
        mex_to = demographic_mex_to(
            demographics.nhs_number, demographics.birth_date, demographics.family_name
        )
    except InvalidInputError as exc:
        # PDS's record, not the caller's input (a surname with "_" or beyond ASCII).
        raise InvalidInputError(
            f"mesh: PDS's {exc.field or 'record'} for patient {patient.patient} cannot be "
            f"written in a demographic mex-to: {exc}",
            field="patient",
        ) from None
    _check_named_patient(
        options.routed.message,
        request.options,
        demographics.nhs_number,
        superseded=patient.superseded,
    )
    return mex_to


_NHS_NUMBER_LIKE = re.compile(r"(?<!\d)(\d{3}) ?(\d{3}) ?(\d{4})(?!\d)")


def _names_a_patient(text: str) -> bool:
    """Whether ``text`` holds an NHS number: ten digits (or 3-3-4) with a valid check digit."""
    for match in _NHS_NUMBER_LIKE.finditer(text):
        try:
            check_nhs_number("".join(match.groups()))
        except InvalidInputError:
            continue
        return True
    return False


def _personal_headers(routed: _Routed, headers: Mapping[str, str]) -> list[str]:
    """The headers naming the patient: a demographic ``mex-to``, and the subject of a demographic
    route or a GP Connect Messaging message (their formats name the patient)."""
    named = routed.routing == "demographic" or routed.message is not None
    return [
        name
        for name in PERSONAL_HEADERS
        if name in headers and (routed.routing == "demographic" if name == "mex-to" else named)
    ]


def _reveal(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret is not None else None


def _message(options: MeshOptions, workflow: str) -> Itk3Message | None:
    if options.message_type is None:
        return default_message(workflow)
    message = ITK3_MESSAGES[options.message_type]
    if message.workflow_id != workflow:
        raise InvalidInputError(
            f"mesh: message_type {message.name} is sent with workflow {message.workflow_id}, "
            f"not {workflow}",
            field="message_type",
        )
    return message


def _refusal(routing: str, workflow: str, message: Itk3Message | None) -> str:
    if message is not None and message.name == "consultation_report":
        return (
            f"mesh: {workflow} ({message.title}) MUST use MESH automated message routing "
            "(GP Connect Messaging GPCM-SD-056, -063): mex-to is the patient's NHS number, "
            "date of birth and surname, not a mailbox found by ODS code. Pass "
            "routing=demographic with nhs_number, birth_date (YYYY-MM-DD) and family_name as "
            "PDS holds them (Online Consultation and Generic messages share this workflow and "
            "go to a mailbox: message_type=online_consultation_report or generic_report)"
        )
    if message is not None:
        return (
            f"mesh: a {message.title} ({workflow}) is routed by "
            f"{' or '.join(message.routings)}, not {routing} ({message.source})"
        )
    return (
        f"mesh: {workflow} is an acknowledgement: it goes back to the sender's mailbox "
        f"(routing=mailbox with mailbox_id, or ods), not by {routing} routing"
    )


def _filename(value: object) -> str:
    name = check_text_header(value, "filename")
    # A file name, not a path: the recipient's client writes it to disk.
    if "/" in name or "\\" in name or name in (".", ".."):
        raise InvalidInputError(
            "filename must be a bare file name (no '/' or '\\')", field="filename"
        )
    return name


def _string(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(
            f"{field} must be a string, got {type(value).__name__}", field=field
        )
    return check_text_header(value, field)


def _client_tls(tls: MeshTls) -> ClientTls | None:
    """The core's TLS description (what :class:`~sds_plugins.EnvelopeClients` reads)."""
    if tls.cert is None and tls.ca_bundle is None:
        return None
    return ClientTls(
        cert_path=tls.cert,
        key_path=tls.key if tls.cert is not None else None,
        ca_bundle_path=tls.ca_bundle,
    )


def _path(path: Path | None) -> str | None:
    return str(path) if path is not None else None


def _list(mailboxes: Sequence[MeshMailbox]) -> str:
    return ", ".join(
        f"{m.mailbox_id} ({m.mailbox_name})" if m.mailbox_name else m.mailbox_id for m in mailboxes
    )
