"""The ``mesh`` adapter: (organisation, workflow id) → the recipient mailbox and a signed POST.

``plan`` checks every option (bad input costs no lookup) and asks the ``mesh`` source for the
mailboxes receiving the workflow at the organisation; ``build`` chooses one and writes the
outbox request: URL, ``mex-*`` headers and a fresh single-use ``Authorization: NHSMESH`` token.
Neither does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from cachetools import LRUCache
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationInfo, field_validator
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
    Resolution,
    RouteRequest,
    RoutingEnvelope,
)

from ._auth import nhsmesh_authorization
from ._config import MeshCredentials, MeshSettings, MeshTls, resolve_mesh_url
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


class MeshOptions(BaseModel):
    """A MESH route's options, each checked as MESH checks it (see :class:`MeshAdapter`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mesh_url: str | None = None
    mailbox: str | None = None
    password: SecretStr | None = None
    shared_key: SecretStr | None = None
    mailbox_id: str | None = None
    subject: str | None = None
    local_id: str | None = None
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

    @field_validator("subject", "local_id", mode="before")
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

    def mex_headers(self) -> dict[str, str]:
        """The optional ``mex-*`` and ``Content-Type`` headers (each checked above)."""
        headers = {
            "mex-subject": self.subject,
            "mex-localid": self.local_id,
            "mex-filename": self.filename,
            "mex-content-checksum": self.checksum,
            "mex-content-compressed": self.compressed,
            "mex-content-encrypted": self.encrypted,
            "Content-Type": self.content_type,
        }
        return {name: value for name, value in headers.items() if value is not None}


@dataclass(frozen=True)
class _Options:
    """A route's options, checked: what ``build`` needs, secrets as ``SecretStr``."""

    mesh_url: str
    credentials: MeshCredentials
    mailbox_id: str | None
    headers: dict[str, str]
    tls: MeshTls

    def __repr__(self) -> str:  # never print the credentials' secrets, even masked by pydantic
        return f"_Options(mesh_url={self.mesh_url!r}, mailbox={self.credentials.mailbox!r})"


class MeshAdapter(Adapter):
    """A MESH message: the recipient mailbox for (ODS code, workflow id), and its outbox POST.

    The interaction is the MESH workflow id (``TEST_WORKFLOW``), not an interaction URN. Options
    (all optional; credentials and host fall back to :class:`MeshSettings`, i.e. ``MESH_*``):

    - ``mesh_url``: ``int``, ``dep``, ``prod`` or a URL (``MESH_URL``);
    - ``mailbox``, ``password``, ``shared_key``: the sender mailbox and its secrets
      (``MESH_MAILBOX``, ``MESH_PASSWORD``, ``MESH_SHARED_KEY``); pass secrets as
      :class:`~pydantic.SecretStr` so the route request's ``repr`` masks them too;
    - ``mailbox_id``: which recipient mailbox, when the lookup returns several;
    - ``subject``, ``local_id`` (default: the correlation id), ``filename``, ``checksum``,
      ``content_type``, ``compressed``, ``encrypted``: the ``mex-*`` headers;
    - ``cert``, ``key``, ``ca_bundle``: client TLS for the *sender*, copied into
      ``extensions["mesh"]["tls"]`` (defaults from the settings for the host).
    """

    name: ClassVar[str] = "mesh"
    description: ClassVar[str] = (
        "MESH: the recipient mailbox for an organisation and workflow, and a signed outbox POST"
    )
    options_model = MeshOptions
    options_help = "see the MESH adapter's README"
    # No example route (the base's None): `sds-plugins demo` routes examples against the
    # embedded SDS sandbox, and MESH needs a mesh-sandbox; sds_plugins_mesh.demo() shows it.

    def __init__(self, settings: MeshSettings | None = None) -> None:
        self.settings = settings if settings is not None else MeshSettings()
        self._derived: LRUCache[MeshOptions, _Options] = LRUCache(maxsize=64)

    def normalise_interaction(self, interaction: str) -> str:
        return normalise_workflow_id(interaction, field="interaction")

    def plan(self, request: RouteRequest) -> Mapping[str, Lookup]:
        options = self._options(request)  # every option checked before any lookup
        query = MailboxQuery(
            mesh_url=options.mesh_url, ods_code=request.org, workflow_id=request.interaction
        )
        return {"mailboxes": Lookup(source="mesh", query=query)}

    def build(self, request: RouteRequest, resolved: Resolution) -> RoutingEnvelope:
        options = self._options(request)
        mailboxes = [r for r in resolved.records("mailboxes") if isinstance(r, MeshMailbox)]
        recipient = self._choose(request, resolved, mailboxes, options.mailbox_id)
        sender = options.credentials.mailbox
        headers = {
            # Built now, for this envelope only: MESH refuses a token it has already seen.
            "Authorization": nhsmesh_authorization(options.credentials, now=resolved.now),
            "Accept": MESH_V2_JSON,
            "mex-to": recipient.mailbox_id,
            "mex-workflowid": request.interaction,
            **options.headers,
        }
        headers.setdefault("mex-localid", request.correlation_id)
        headers.setdefault("Content-Type", DEFAULT_CONTENT_TYPE)
        tls = options.tls
        return RoutingEnvelope(
            adapter=self.name,
            interaction=request.interaction,
            target=Party(
                ods_code=request.org,
                mailbox_id=recipient.mailbox_id,
                mailbox_name=recipient.mailbox_name,
            ),
            source=Party(mailbox_id=sender),
            request=HttpRequestSpec(
                method="POST",
                url=f"{options.mesh_url}/messageexchange/{sender}/outbox",
                headers=headers,
            ),
            tls=_client_tls(tls),
            # The outbox POST is never retried: it may have landed even without an answer.
            reliability=EnvelopeReliability(retries=0),
            expires_at=resolved.now + ENVELOPE_TTL,
            provenance=resolved.provenance((recipient,)),
            extensions={
                "mesh": {
                    "mesh_url": options.mesh_url,
                    "mailbox": recipient.model_dump(mode="json"),
                    "retry_first_post": False,
                    "max_request_bytes": MAX_REQUEST_BYTES,
                    "tls": {
                        "cert": _path(tls.cert),
                        "key": _path(tls.key),
                        "ca_bundle": _path(tls.ca_bundle),
                    },
                }
            },
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
        (plan and build both ask; so does every route with the same options)."""
        options: MeshOptions = request.options
        derived = self._derived.get(options)
        if derived is None:
            derived = self._derived[options] = self._derive(options)
        return derived

    def _derive(self, options: MeshOptions) -> _Options:
        settings = self.settings
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
