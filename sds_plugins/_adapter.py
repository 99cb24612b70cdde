"""What an adapter is: a pure planner and builder around the engine's I/O.

An adapter never performs I/O. It says which directory lookups it needs (:meth:`Adapter.plan`);
the engine runs them all concurrently (one round trip), through the cache, single-flight, rate
limiter and retries, and hands the answers back; the adapter turns them into a
:class:`RoutingEnvelope` (:meth:`Adapter.build`). That split is what lets every adapter, first or
third party, get caching, coalescing, events and one-round-trip resolution for free, and makes
adapters testable without a network.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from cachetools import LRUCache
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._adapter_options import MASKED_OPTIONS, options_key
from ._envelope import CacheStatus, ForeignRecord, Provenance, RoutingEnvelope
from ._exceptions import DirectoryError, InvalidInputError, NotFoundError
from ._models import AccreditedSystem, MessageHandlingEndpoint
from ._query import DeviceQuery, EndpointQuery
from ._validation import invalid_input, normalise_interaction, sds_correlation_id

if TYPE_CHECKING:
    from ._patients import PatientRegistration
    from ._warm import WarmState

__all__ = [
    "Adapter",
    "Candidate",
    "Lookup",
    "LookupOutcome",
    "Recipient",
    "Resolution",
    "RouteRequest",
    "join_on_party_key",
]


class Lookup(BaseModel):
    """One directory lookup an adapter needs: a source name and a query that source understands.

    The query must be a frozen pydantic model with a ``key()`` method giving a stable text key
    (SDS's :class:`DeviceQuery` and :class:`EndpointQuery` are).
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    source: str = "sds"
    query: Any

    @classmethod
    def devices(cls, **fields: Any) -> Lookup:
        """An SDS ``/Device`` lookup (``org``, ``interaction``, ``party_key``, ``manufacturer``)."""
        return cls(source="sds", query=DeviceQuery.build(**fields))

    @classmethod
    def endpoints(cls, **fields: Any) -> Lookup:
        """An SDS ``/Endpoint`` lookup (``org``, ``interaction``, ``party_key``)."""
        return cls(source="sds", query=EndpointQuery.build(**fields))

    def key(self) -> str:
        """``<source>:<query key>``, as shown in provenance and events."""
        return f"{self.source}:{self.query.key()}"


class RouteRequest(BaseModel):
    """One call of ``Router.route``: validated organisation, interaction and options.

    ``options`` is what the adapter's :attr:`Adapter.options_model` made of the caller's
    options (validated once, by the engine, before ``plan``), or the options as given for an
    adapter without a model.
    """

    model_config = ConfigDict(frozen=True)

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if name == "options" and isinstance(value, Mapping):
                value = {
                    key: ("**********" if key in MASKED_OPTIONS else option)
                    for key, option in value.items()
                }
            yield name, value

    adapter: str
    org: str
    interaction: str
    options: Any = Field(default_factory=dict)
    correlation_id: str
    #: Whether the caller chose ``correlation_id`` (``False``: the engine generated it, so an
    #: adapter may reuse it as its own per-message id, as GP Connect does for ``Ssp-TraceID``).
    correlation_id_given: bool = False
    encounter: str | None = None
    bypass_cache: bool = False

    def option(self, name: str, default: Any = None) -> Any:
        """Option ``name`` (a field of the options model, or a key of the options given)."""
        options = self.options
        if isinstance(options, Mapping):
            return options.get(name, default)
        value = getattr(options, name, default)
        return default if value is None else value


class LookupOutcome(BaseModel):
    """The answer to one :class:`Lookup`."""

    model_config = ConfigDict(frozen=True)

    lookup: Lookup
    records: tuple[Any, ...]
    cache: CacheStatus
    attempts: int = 0
    duration_s: float = 0.0


class Candidate(BaseModel):
    """One possible destination, for the selection policy to choose among."""

    model_config = ConfigDict(frozen=True)

    party_key: str | None = None
    address: str | None = None
    asid: str | None = None
    records: tuple[Any, ...] = ()
    #: What a caller's choice (the selection's ``option``) is compared with: a MESH mailbox id,
    #: for example. ``None``: the party key.
    key: str | None = None

    @property
    def choice(self) -> str | None:
        """The value a caller names to choose this candidate: :attr:`key`, else the party key."""
        return self.key if self.key is not None else self.party_key

    def describe(self) -> dict[str, Any]:
        """Party key, address and ASID (and key, when set), for messages and
        ``AmbiguousError.candidates``."""
        described = {"party_key": self.party_key, "address": self.address, "asid": self.asid}
        if self.key is not None:
            described["key"] = self.key
        return described

    @property
    def endpoint(self) -> MessageHandlingEndpoint | None:
        """The candidate's endpoint record, if it has one."""
        return next((r for r in self.records if isinstance(r, MessageHandlingEndpoint)), None)

    @property
    def device(self) -> AccreditedSystem | None:
        """The candidate's accredited-system record, if it has one."""
        return next((r for r in self.records if isinstance(r, AccreditedSystem)), None)


_M = TypeVar("_M", bound=BaseModel)


# The slots every pydantic model has, set the way model_construct sets them (through their
# descriptors: the models are frozen, and their own __setattr__ refuses).
_SET_FIELDS_SET = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_SET_EXTRA = BaseModel.__dict__["__pydantic_extra__"].__set__
_SET_PRIVATE = BaseModel.__dict__["__pydantic_private__"].__set__


def replaced(model: _M, changes: Mapping[str, Any]) -> _M:
    """``model.model_copy(update=changes)`` for a per-route copy, at a third of the cost.

    For values already checked (a correlation id made or normalised, a time): like
    ``model_copy`` it validates nothing. Models with extra or private attributes take
    ``model_copy`` itself.
    """
    if model.__pydantic_extra__ or model.__pydantic_private__:
        return model.model_copy(update=changes)
    new = object.__new__(type(model))
    values = model.__dict__.copy()
    values.update(changes)
    object.__setattr__(new, "__dict__", values)
    fields_set = model.__pydantic_fields_set__
    _SET_FIELDS_SET(
        new, fields_set if changes.keys() <= fields_set else fields_set | changes.keys()
    )
    _SET_EXTRA(new, None)
    _SET_PRIVATE(new, None)
    return new


_T = TypeVar("_T")


class Recipient(Candidate):
    """A candidate known to have an address (what :meth:`Resolution.recipient` returns)."""

    address: str


def join_on_party_key(
    endpoints: Iterable[MessageHandlingEndpoint], devices: Iterable[AccreditedSystem]
) -> list[Candidate]:
    """Pair each endpoint with the accredited system **whose party key matches** it.

    Never "the first device": a practice moving between suppliers has two of each. An endpoint
    with no matching device gives a candidate without an ASID; several matching devices give
    one candidate each (the selection policy then sees the ambiguity).
    """
    by_party_key: dict[str | None, list[AccreditedSystem]] = {}
    for device in devices:
        by_party_key.setdefault(device.party_key, []).append(device)
    candidates = []
    for endpoint in endpoints:
        matches: list[AccreditedSystem | None] = list(
            by_party_key.get(endpoint.party_key, []) if endpoint.party_key else []
        )
        for match in matches or [None]:
            candidates.append(
                Candidate(
                    party_key=endpoint.party_key,
                    address=endpoint.address,
                    asid=match.asid if match else None,
                    records=(endpoint, match) if match else (endpoint,),
                )
            )
    return candidates


class Resolution:
    """The answers to an adapter's plan, plus the engine services a builder may use."""

    def __init__(
        self,
        request: RouteRequest,
        outcomes: Mapping[str, LookupOutcome],
        select: Callable[[Sequence[Candidate], RouteRequest, str, str | None], Candidate],
        now: datetime | None = None,
        *,
        warm: WarmState | None = None,
        patient: PatientRegistration | None = None,
    ) -> None:
        self.request = request
        #: For a route to a patient: PDS's registration the route went by (with the
        #: demographics when the adapter asked for them: :meth:`Adapter.needs_demographics`).
        self.patient = patient
        self.outcomes = outcomes
        self._select = select
        self.now = now or datetime.now(UTC)
        # What was derived from these very records for the same request before (the router
        # keeps one per prepared route): selection hooks and provenance are pure, so while the
        # cache hands back the same record tuples, the answers are the same.
        self._warm = warm

    def records(self, name: str) -> tuple[Any, ...]:
        """Records of the planned lookup ``name``."""
        return self.outcomes[name].records

    def select(
        self,
        candidates: Sequence[Candidate],
        *,
        role: str = "target",
        option: str | None = "party_key",
    ) -> Candidate:
        """Apply the selection policy (the ``sds_select_candidate`` hook) to ``candidates``.

        ``role`` says what is being chosen ("provider", "consumer", "recipient"...) for messages;
        ``option`` is the route option through which the caller may name one (compared with
        :attr:`Candidate.choice`), ``None`` when there is none. Raises :class:`NotFoundError`
        or :class:`AmbiguousError` when the policy cannot choose.
        """
        return self._select(candidates, self.request, role, option)

    def recipient(
        self,
        endpoints: str = "endpoints",
        devices: str = "devices",
        *,
        role: str = "recipient",
        need_asid: bool = True,
    ) -> Recipient:
        """The MHS to send to: the planned ``/Endpoint`` and ``/Device`` lookups joined on party
        key (:func:`join_on_party_key`), chosen by the selection policy, with an address (and
        an ASID unless ``need_asid`` is false).

        The candidate's ``endpoint`` and ``device`` are its records. Raises
        :class:`NotFoundError` naming what is missing, or :class:`AmbiguousError` (policy).
        """
        found, systems = self.records(endpoints), self.records(devices)
        return self._derive(
            "core",
            f"recipient:{endpoints}:{devices}:{role}:{need_asid}",
            (found, systems),
            lambda: self._recipient(found, systems, role, need_asid),
        )

    def _recipient(
        self,
        found: tuple[Any, ...],
        systems: tuple[Any, ...],
        role: str,
        need_asid: bool,
    ) -> Recipient:
        request = self.request
        chosen = self.select(join_on_party_key(found, systems), role=role)
        if not chosen.address or chosen.endpoint is None:
            raise NotFoundError(
                f"{request.org}: the {role}'s MHS record (party key {chosen.party_key}) has no "
                f"usable endpoint address for {request.interaction}",
                correlation_id=request.correlation_id,
            )
        if need_asid and not chosen.asid:
            raise NotFoundError(
                f"{request.org}: no accredited system (ASID) has the {role}'s party key "
                f"{chosen.party_key} for {request.interaction}",
                correlation_id=request.correlation_id,
            )
        return Recipient.model_construct(**dict(chosen))  # checked above: it has an address

    def derive(
        self, name: str, depends_on: Sequence[Any], compute: Callable[[RouteRequest], _T]
    ) -> _T:
        """``compute(request)``, or what it returned last time for the same objects in
        ``depends_on``.

        For the parts of an envelope that follow from the request and the records alone (URLs,
        fixed headers, parties): a warm route of a busy caller gets the same cached record
        objects every time, so they are worked out once per (request, records) rather than
        once per route. ``depends_on`` are compared by identity (``is``); the request's
        adapter, organisation, interaction, options and encounter are implied. ``name``
        tells one derivation from another within an adapter; the last answer per name is kept.
        ``compute`` is given the request without its correlation id (``""``), and must not use
        the time either: they differ per route. Without a router's memory (a
        :class:`Resolution` built in a test), it just computes.
        """
        return self._derive("adapter", name, depends_on, lambda: compute(self._without_id()))

    def _without_id(self) -> RouteRequest:
        """The request as every route of the prepared route has it: no correlation id."""
        warm = self._warm
        if warm is not None and warm.request is not None:
            return warm.request
        return replaced(self.request, {"correlation_id": "", "correlation_id_given": False})

    def _derive(
        self,
        space: Literal["core", "adapter"],
        name: str,
        depends_on: Sequence[Any],
        compute: Callable[[], _T],
    ) -> _T:
        """:meth:`derive` in the router's own names (``core``) or the adapter's."""
        warm = self._warm
        if warm is None:
            return compute()
        derived = warm.core if space == "core" else warm.adapter
        # A route to a patient depends on the patient too: prepared routes are shared by every
        # patient of a practice, and a derivation must never hand one patient's to another.
        depends = tuple(depends_on) if self.patient is None else (*depends_on, self.patient)
        remembered = derived.get(name)
        if (
            remembered is not None
            and len(remembered[0]) == len(depends)
            and all(map(operator.is_, remembered[0], depends))
        ):
            return remembered[1]  # type: ignore[no-any-return]
        try:
            value = compute()
        except DirectoryError as exc:
            # The computation saw the request without its id (derive): the error gets the
            # route's own.
            if not exc.correlation_id:
                exc.correlation_id = self.request.correlation_id
            raise
        derived[name] = (depends, value)  # holding them keeps their identities unique
        return value

    @functools.cached_property
    def cache(self) -> CacheStatus:
        """The least fresh status among the lookups (stale > miss > bypass > hit)."""
        statuses = {outcome.cache for outcome in self.outcomes.values()}
        for status in ("stale", "miss", "bypass"):
            if status in statuses:
                return status
        return "hit"

    def provenance(self, records: Iterable[Any] = ()) -> Provenance:
        """Provenance for an envelope built from ``records``.

        An accredited system's interaction list (478 entries for some Spine systems) is cut to
        the interaction being routed: the rest says nothing about this envelope. An endpoint
        records the interaction its lookup queried, not the first of its MHS record's list.
        """
        given = tuple(record for record in records if record is not None)
        outcomes = tuple(self.outcomes.values())
        # All but the correlation id and the time follows from these records and outcomes (a
        # warm route gets the very same outcome objects again).
        template = self._derive(
            "core",
            "provenance",
            (*given, *outcomes),
            # Built from parts validated already (parsed records, computed keys).
            lambda: Provenance.model_construct(
                correlation_id=self.request.correlation_id,
                resolved_at=self.now,
                cache=self.cache,
                records=self._provenance_records(given),
                lookups=tuple(outcome.lookup.key() for outcome in outcomes),
            ),
        )
        correlation_id = self.request.correlation_id
        sds_id = sds_correlation_id(correlation_id)
        return replaced(
            template,
            {
                "correlation_id": correlation_id,
                "sds_correlation_id": None if sds_id == correlation_id else sds_id,
                "resolved_at": self.now,
            },
        )

    def _provenance_records(self, records: tuple[Any, ...]) -> tuple[Any, ...]:
        interaction = self.request.interaction
        # An MHS record may list several interactions and the parsed endpoint keeps the first;
        # provenance records the interaction its lookup asked for instead.
        queried = {
            id(record): asked
            for outcome in self.outcomes.values()
            if isinstance(asked := getattr(outcome.lookup.query, "interaction", None), str)
            for record in outcome.records
        }
        return tuple(
            record.model_copy(
                update={"interactions": tuple(i for i in record.interactions if i == interaction)}
            )
            if isinstance(record, AccreditedSystem)
            else record.model_copy(
                update={"interaction": queried.get(id(record), record.interaction)}
            )
            if isinstance(record, MessageHandlingEndpoint)
            else ForeignRecord(**record.model_dump(mode="json"))
            for record in records
        )


class Adapter:
    """Base class for adapters. Subclasses set ``name`` and implement ``plan`` and ``build``.

    Both methods are synchronous and must not perform I/O; raise :class:`InvalidInputError`
    (naming the option) for bad options and :class:`NotFoundError`/:class:`AmbiguousError` for
    directory answers that cannot be routed.
    """

    #: The name callers use: ``router.route("<name>", ...)``.
    name: ClassVar[str]
    #: One line for ``sds-plugins plugins`` and docs.
    description: ClassVar[str] = ""
    #: The options this adapter takes, as a pydantic model (frozen, ``extra="forbid"``): the
    #: engine validates a route's options with it once, before ``plan``, and ``plan`` and
    #: ``build`` find the instance in ``request.options``. Include ``party_key`` if callers may
    #: choose among candidates: the default selection policy reads that option.
    options_model: ClassVar[type[BaseModel] | None] = None
    #: Where a caller finds the options explained, for the "is required" message.
    options_help: ClassVar[str] = ""
    #: Without a model: the option names understood (others are refused); ``None`` accepts
    #: anything, passed through as a dict.
    options: ClassVar[frozenset[str] | None] = None
    #: A sample ``route()`` call (``org``, ``interaction`` and options) that works against the
    #: sandbox's default data; ``sds-plugins demo`` shows the envelope it gives.
    example: ClassVar[Mapping[str, Any] | None] = None

    def normalise_interaction(self, interaction: str) -> str:
        """Validate the caller's interaction (SDS URN by default; MESH uses workflow ids)."""
        return normalise_interaction(interaction)

    #: Why :meth:`cache_scope` may return ``None`` (lookups not stored), in words an operator
    #: can act on; ``sds-plugins prewarm`` shows it when it refuses to warm nothing.
    unstored_reason: ClassVar[str] = ""

    def cache_scope(self, request: RouteRequest) -> str | None:
        """The cache scope for this request's lookups: ``""`` shared, ``None`` do not reuse.

        GP Connect, for example, returns ``"encounter:<id>"`` so results are not reused across
        patient encounters, and ``None`` when the caller gave no encounter.
        """
        return ""

    def end_user_org(self, request: RouteRequest) -> str | None:
        """The organisation a route to a patient is made for (PDS's
        ``NHSD-End-User-Organisation-ODS``), from the request's options; ``None`` if they name
        none. ``request.org`` is not known yet (PDS names it). GP Connect answers its
        ``organization_ods``."""
        return None

    def needs_demographics(self, request: RouteRequest) -> bool:
        """Whether a route to a patient needs the patient's demographics (NHS number, date of
        birth, surname: :class:`PatientDemographics`), for an envelope that addresses the
        patient (MESH's demographic routing). Then the router asks PDS afresh, caches nothing,
        and ``build`` finds them in ``resolved.patient.demographics``. ``request.org`` is not
        known yet. The default: no (most routes need the practice alone)."""
        return False

    def check_patient(self, request: RouteRequest, patient: PatientRegistration) -> None:
        """Decide whether ``request`` may go to ``patient``'s practice, from what PDS says.

        Called for routes to a patient, after PDS named a current practice and before any
        lookup. Raise :class:`PatientNotFoundError` (with a ``reason``) or an error of your
        own to refuse; return to route. The default routes every patient, deceased or removed
        from registration included: the envelope's provenance carries those facts for the
        sender to decide (documents, MESH). GP Connect's Access Record Structured refuses a
        deceased patient, as its providers answer one as not found.
        """
        return

    def parse_options(self, options: Mapping[str, Any]) -> Any:
        """The caller's options, validated once (the engine calls this before :meth:`plan`).

        With an :attr:`options_model`, an instance of it; its validation errors become one
        :class:`InvalidInputError` naming the option. Without one, the options as given, after
        refusing names outside :attr:`options` (when set). Answers for identical options are
        remembered (frozen models only), so a busy caller that sends the same consumer
        settings on every route pays for their validation once.
        """
        model = self.options_model
        if model is None:
            self._check_names(options)
            return dict(options)
        key = options_key(options) if model.model_config.get("frozen") else None
        if key is not None:
            cached = self._parsed_options.get(key)
            if cached is not None:
                return cached
        try:
            parsed = model.model_validate(options)
        except ValidationError as exc:
            raise invalid_input(
                exc,
                missing=f"is required ({self.options_help or 'see the adapter documentation'})",
                unknown=f"is not a {self.name} option; it takes "
                f"{', '.join(sorted(model.model_fields))}",
                prefix=f"{self.name}: ",
            ) from None
        if key is not None:
            self._parsed_options[key] = parsed
        return parsed

    @functools.cached_property
    def _parsed_options(self) -> LRUCache[tuple[Any, ...], Any]:
        return LRUCache(maxsize=256)

    def _check_names(self, options: Mapping[str, Any]) -> None:
        if self.options is None:
            return
        unknown = sorted(set(options) - self.options)
        if unknown:
            raise InvalidInputError(
                f"{self.name}: unknown option(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(self.options))}",
                field=unknown[0],
            )

    def plan(self, request: RouteRequest) -> Mapping[str, Lookup]:
        """The lookups needed for ``request``, by name. They run concurrently."""
        raise NotImplementedError

    def build(self, request: RouteRequest, resolved: Resolution) -> RoutingEnvelope:
        """Turn the lookups' answers into an envelope."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
