"""What an adapter is: a pure planner and builder around the engine's I/O.

An adapter never performs I/O. It says which directory lookups it needs (:meth:`Adapter.plan`);
the engine runs them all concurrently (one round trip), through the cache, single-flight, rate
limiter and retries, and hands the answers back; the adapter turns them into a
:class:`RoutingEnvelope` (:meth:`Adapter.build`). That split is what lets every adapter, first or
third party, get caching, coalescing, events and one-round-trip resolution for free, and makes
adapters testable without a network.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from ._envelope import CacheStatus, ForeignRecord, Provenance, RoutingEnvelope
from ._exceptions import InvalidInputError
from ._models import AccreditedSystem, MessageHandlingEndpoint
from ._query import DeviceQuery, EndpointQuery
from ._validation import normalise_interaction

__all__ = [
    "Adapter",
    "Candidate",
    "Lookup",
    "LookupOutcome",
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


#: Option names whose values are credentials: masked wherever a request is printed.
SECRET_OPTIONS = frozenset(
    {"password", "shared_key", "api_key", "client_secret", "token", "user_access_token"}
)


class RouteRequest(BaseModel):
    """One call of ``Router.route``: validated organisation and interaction, raw options."""

    model_config = ConfigDict(frozen=True)

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if name == "options":
                value = {
                    key: ("**********" if key in SECRET_OPTIONS else option)
                    for key, option in self.options.items()
                }
            yield name, value

    adapter: str
    org: str
    interaction: str
    options: Mapping[str, Any] = Field(default_factory=dict)
    correlation_id: str
    #: Whether the caller chose ``correlation_id`` (``False``: the engine generated it, so an
    #: adapter may reuse it as its own per-message id, as GP Connect does for ``Ssp-TraceID``).
    correlation_id_given: bool = False
    encounter: str | None = None
    bypass_cache: bool = False

    def option(self, name: str, default: Any = None) -> Any:
        """The caller's option ``name`` (as given: strings from the CLI, typed from Python)."""
        return self.options.get(name, default)


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

    def describe(self) -> dict[str, Any]:
        """Party key, address and ASID, for messages and ``AmbiguousError.candidates``."""
        return {"party_key": self.party_key, "address": self.address, "asid": self.asid}

    @property
    def endpoint(self) -> MessageHandlingEndpoint | None:
        """The candidate's endpoint record, if it has one."""
        return next((r for r in self.records if isinstance(r, MessageHandlingEndpoint)), None)

    @property
    def device(self) -> AccreditedSystem | None:
        """The candidate's accredited-system record, if it has one."""
        return next((r for r in self.records if isinstance(r, AccreditedSystem)), None)


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
        select: Callable[[Sequence[Candidate], RouteRequest, str], Candidate],
        now: datetime | None = None,
    ) -> None:
        self.request = request
        self.outcomes = outcomes
        self._select = select
        self.now = now or datetime.now(UTC)

    def records(self, name: str) -> tuple[Any, ...]:
        """Records of the planned lookup ``name``."""
        return self.outcomes[name].records

    def select(self, candidates: Sequence[Candidate], *, role: str = "target") -> Candidate:
        """Apply the selection policy (the ``sds_select_candidate`` hook) to ``candidates``.

        ``role`` says what is being chosen ("provider", "consumer", "recipient"...) for messages.
        Raises :class:`NotFoundError` or :class:`AmbiguousError` when the policy cannot choose.
        """
        return self._select(candidates, self.request, role)

    @property
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
        interaction = self.request.interaction
        # An MHS record may list several interactions and the parsed endpoint keeps the first;
        # provenance records the interaction its lookup asked for instead.
        queried = {
            id(record): asked
            for outcome in self.outcomes.values()
            if isinstance(asked := getattr(outcome.lookup.query, "interaction", None), str)
            for record in outcome.records
        }
        kept = tuple(
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
            if record is not None
        )
        return Provenance(
            correlation_id=self.request.correlation_id,
            resolved_at=self.now,
            cache=self.cache,
            records=kept,
            lookups=tuple(outcome.lookup.key() for outcome in self.outcomes.values()),
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
    #: Option names this adapter understands; others are refused. ``None`` accepts anything.
    #: Include ``party_key`` if callers may choose among candidates: the default selection
    #: policy reads that option.
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

    def check_options(self, request: RouteRequest) -> None:
        if self.options is None:
            return
        unknown = sorted(set(request.options) - self.options)
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
