"""Directory records in LDAP-attribute form: loading, normalising, indexing, generating."""

from __future__ import annotations

import hashlib
import json
import random
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

MHS_FILE = "mhs-records.json"
AS_FILE = "accredited-system-records.json"
#: Packaged records this project adds to NHS England's reference data (``data/additions``),
#: kept apart so the reference copies stay byte-for-byte what NHS published. Today: B82617's
#: accredited system, which the reference data lacks although it holds B82617's GP Connect MHS
#: record, so the README's GP Connect example resolves a provider ASID on the default data.
ADDITIONS = "additions"
#: A data folder's optional manifest: ``{"mode": "add"}`` serves the default data (reference
#: records, Spine's intermediaries included, plus the additions) and the folder's records;
#: ``{"mode": "replace"}`` (also the meaning without a manifest) serves the folder's alone.
DATA_MANIFEST = "sandbox-data.json"
DATA_MODES = ("replace", "add")

GPCONNECT_PREFIX = "urn:nhs:names:services:gpconnect:"
GPCONNECT_INTERACTIONS: tuple[str, ...] = tuple(
    GPCONNECT_PREFIX + suffix
    for suffix in (
        "fhir:rest:read:metadata-1",
        "fhir:rest:read:patient-1",
        "fhir:rest:search:patient-1",
        "fhir:rest:read:practitioner-1",
        "fhir:rest:search:practitioner-1",
        "fhir:rest:read:organization-1",
        "fhir:rest:search:organization-1",
        "fhir:rest:read:location-1",
        "fhir:operation:gpc.registerpatient-1",
        "fhir:rest:search:slot-1",
        "fhir:rest:read:appointment-1",
        "fhir:rest:create:appointment-1",
        "fhir:rest:update:appointment-1",
        "fhir:rest:cancel:appointment-1",
        "fhir:rest:search:patient_appointments-1",
        "fhir:operation:gpc.getstructuredrecord-1",
        "fhir:operation:gpc.migratestructuredrecord-1",
        "structured:fhir:rest:read:metadata-1",
        "documents:fhir:rest:read:metadata-1",
        "documents:fhir:rest:search:patient-1",
        "documents:fhir:rest:search:documentreference-1",
        "documents:fhir:rest:read:binary-1",
        "documents:fhir:rest:migrate:binary-1",
    )
)

# Supplier ODS code -> the host its practices' GP Connect endpoints live on.
SYNTHETIC_SUPPLIERS: tuple[tuple[str, str], ...] = (
    ("YGA", "tpp.gpconnect.thirdparty.nhs.uk"),
    ("YGM24", "emis.gpconnect.thirdparty.nhs.uk"),
    ("X26", "gpconnect.testlab.nhs.uk"),
    ("YGMA1", "vision.gpconnect.thirdparty.nhs.uk"),
)

# First letters of real GP practice codes (commissioning regions); avoids Spine's own "YES" etc.
_PRACTICE_LETTERS = "ABCDEFGHJKLMNPRSTUVW"


@dataclass(frozen=True, slots=True)
class Record:
    """One directory entry, attribute names folded to lower case, every value a tuple of strings.

    LDAP hands back the same attribute as a scalar, a list, an empty list or null depending on
    the server and the entry; folding all of those into one shape here keeps the mapping and
    matching code free of type checks.
    """

    attrs: Mapping[str, tuple[str, ...]]

    def values(self, name: str) -> tuple[str, ...]:
        return self.attrs.get(name.lower(), ())

    def first(self, name: str) -> str | None:
        found = self.attrs.get(name.lower())
        return found[0] if found else None


class Interner:
    """Lets many records share one object for equal attribute names and equal value tuples.

    Every synthetic practice carries the same interaction list; sharing it keeps 50,000
    practices from costing 50,000 copies.
    """

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.values: dict[tuple[str, ...], tuple[str, ...]] = {}


def _as_strings(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,) if value else ()
    if value is None or value == []:
        return ()
    items: list[object] = value if isinstance(value, list) else [value]
    if set(map(type, items)) == {str} and "" not in items:
        return tuple(items)  # type: ignore[arg-type]
    out: list[str] = []
    for item in items:
        if item is None or isinstance(item, (dict, list)):
            continue
        text = item if isinstance(item, str) else json.dumps(item)
        if text:
            out.append(text)
    return tuple(out)


def normalise(raw: Mapping[str, Any], interner: Interner | None = None) -> Record:
    """Turn one LDAP-attribute object into a :class:`Record`.

    Attribute names are case-insensitive in LDAP; when an object spells the same attribute
    twice, the values are merged in order.
    """
    if interner is None:
        interner = Interner()
    attrs: dict[str, tuple[str, ...]] = {}
    for key, value in raw.items():
        if type(value) is str:
            if not value:
                continue
            values: tuple[str, ...] = (value,)
        else:
            values = _as_strings(value)
            if not values:
                continue
        name = interner.names.get(key)
        if name is None:
            name = interner.names.setdefault(key, sys.intern(key.lower()))
        if name in attrs:
            values = attrs[name] + values
        if len(values) > 1:
            values = interner.values.setdefault(values, values)
        attrs[name] = values
    return Record(attrs)


def load_raw(path: Path) -> list[dict[str, Any]]:
    """Read a JSON list of LDAP-attribute objects; a missing file is an empty directory."""
    if not path.is_file():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise ValueError(f"{path}: expected a JSON list of objects")
    return data


def packaged_raw(name: str) -> list[dict[str, Any]]:
    """The reference records shipped inside the package."""
    text = resources.files(__package__).joinpath("data").joinpath(name).read_text(encoding="utf-8")
    data = json.loads(text)
    assert isinstance(data, list)
    return data


def packaged_additions(name: str) -> list[dict[str, Any]]:
    """This project's records added to the reference data (``data/additions``), if any."""
    path = resources.files(__package__).joinpath("data").joinpath(ADDITIONS).joinpath(name)
    if not path.is_file():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, list)
    return data


def default_raw(name: str) -> list[dict[str, Any]]:
    """The default data: NHS England's reference records, then this project's additions."""
    return packaged_raw(name) + packaged_additions(name)


def data_mode(data_dir: Path) -> str:
    """A data folder's mode from its manifest (``replace`` when it has none)."""
    manifest = Path(data_dir) / DATA_MANIFEST
    if not manifest.is_file():
        return "replace"
    settings = json.loads(manifest.read_text(encoding="utf-8"))
    mode = settings.get("mode", "replace") if isinstance(settings, dict) else None
    if mode not in DATA_MODES:
        raise ValueError(f'{manifest}: expected {{"mode": "replace"}} or {{"mode": "add"}}')
    return str(mode)


class _Index:
    """Records of one kind, with positions looked up by lower-cased attribute value.

    Only attributes that every API query pins down (ODS code, party key) are indexed: a lookup
    starts from the smallest matching bucket and checks the remaining criteria on those few
    records, so it costs the size of the answer rather than the size of the directory, without
    holding an index entry per interaction per record.
    """

    def __init__(self, records: Sequence[Record], keys: Sequence[str]) -> None:
        self.records = tuple(records)
        self._by: dict[str, dict[str, list[int]]] = {key.lower(): {} for key in keys}
        for position, record in enumerate(self.records):
            for key, table in self._by.items():
                for value in {v.lower() for v in record.values(key)}:
                    table.setdefault(value, []).append(position)

    def find(self, criteria: Mapping[str, str | None]) -> list[Record]:
        """Records whose attribute matches each given value, as an LDAP filter item does.

        Equality is case-insensitive; a value holding ``*`` is a substring (or, alone, a
        presence) match, because NHS's server puts query values unescaped into its LDAP filter
        (``sds/lookup/sds_client.py`` ``_build_search_filter``) and ldap3 reads ``*`` there as
        the wildcard (``ldap3/operation/search.py`` ``evaluate_match``). Such a value cannot
        use the index, so a search made only of wildcards scans the records.
        """
        wanted = {key.lower(): value.lower() for key, value in criteria.items() if value}
        if not wanted:
            return []
        buckets = [
            self._by[key].get(value, [])
            for key, value in wanted.items()
            if key in self._by and "*" not in value
        ]
        candidates: Sequence[int] = min(buckets, key=len) if buckets else range(len(self.records))
        tests = [(key, value_matcher(value)) for key, value in wanted.items()]
        return [
            self.records[position]
            for position in candidates
            if all(
                any(test(v.lower()) for v in self.records[position].values(key))
                for key, test in tests
            )
        ]


def value_matcher(pattern: str) -> Callable[[str], bool]:
    """A test of one lower-cased attribute value against a lower-cased filter value."""
    if "*" not in pattern:
        return pattern.__eq__
    first, *middle, last = pattern.split("*")

    def matches(value: str) -> bool:
        # A glob matched left to right in linear time (a regex of many ".*" backtracks
        # exponentially on a value that does not match: one query could hang the sandbox).
        if len(value) < len(first) + len(last):
            return False
        if not (value.startswith(first) and value.endswith(last)):
            return False
        at, end = len(first), len(value) - len(last)
        for part in middle:
            found = value.find(part, at, end)
            if found < 0:
                return False
            at = found + len(part)
        return True

    return matches


class Directory:
    """MHS records (served as /Endpoint) and accredited-system records (served as /Device)."""

    def __init__(self, mhs: Sequence[Record], accredited: Sequence[Record]) -> None:
        self._mhs = _Index(mhs, ("nhsIDCode", "nhsMHSPartyKey"))
        self._as = _Index(accredited, ("nhsIDCode", "nhsMHSPartyKey"))

    @classmethod
    def from_raw(
        cls, mhs: Iterable[Mapping[str, Any]], accredited: Iterable[Mapping[str, Any]]
    ) -> Directory:
        interner = Interner()
        return cls(
            [normalise(r, interner) for r in mhs], [normalise(r, interner) for r in accredited]
        )

    @property
    def mhs_count(self) -> int:
        return len(self._mhs.records)

    @property
    def as_count(self) -> int:
        return len(self._as.records)

    def find_mhs(
        self, ods: str | None, interaction: str | None, party_key: str | None
    ) -> list[Record]:
        return self._mhs.find(
            {"nhsIDCode": ods, "nhsMhsSvcIA": interaction, "nhsMHSPartyKey": party_key}
        )

    def find_as(
        self,
        ods: str | None,
        interaction: str | None,
        manufacturer: str | None = None,
        party_key: str | None = None,
    ) -> list[Record]:
        return self._as.find(
            {
                "nhsIDCode": ods,
                "nhsAsSvcIA": interaction,
                "nhsMhsManufacturerOrg": manufacturer,
                "nhsMHSPartyKey": party_key,
            }
        )


def synthetic_records(
    n: int, seed: int = 0, *, exclude: Iterable[str] = ()
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``n`` generated GP practices as (MHS records, AS records) in LDAP-attribute form.

    The same ``n`` and ``seed`` always give the same practices. ODS codes in ``exclude`` are
    never generated, so synthetic practices do not collide with loaded ones.
    """
    mhs: list[dict[str, Any]] = []
    accredited: list[dict[str, Any]] = []
    for mhs_record, as_record in iter_synthetic(n, seed, exclude=exclude):
        mhs.append(mhs_record)
        accredited.append(as_record)
    return mhs, accredited


def iter_synthetic(
    n: int, seed: int = 0, *, exclude: Iterable[str] = ()
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Like :func:`synthetic_records`, one practice (MHS record, AS record) at a time."""
    if n < 0:
        raise ValueError("n must not be negative")
    taken = {code.upper() for code in exclude}
    space = len(_PRACTICE_LETTERS) * 100_000
    if n > (space - len(taken)) // 2:
        raise ValueError(f"cannot generate {n} unique practice codes")
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not crypto
    # Each practice's details hash from (seed, code) rather than following on from the code
    # stream, so excluding a code drops just that practice and leaves the others identical.
    seen: set[str] = set()
    asids: set[str] = set()
    produced = 0
    while produced < n:
        slot = rng.randrange(space)
        ods = f"{_PRACTICE_LETTERS[slot // 100_000]}{slot % 100_000:05d}"
        if ods in seen or ods in taken:
            continue
        seen.add(ods)
        produced += 1
        digest = hashlib.blake2b(f"{seed}:{ods}".encode(), digest_size=32).digest()
        supplier, host = SYNTHETIC_SUPPLIERS[digest[0] % len(SYNTHETIC_SUPPLIERS)]
        party_key = f"{ods}-{int.from_bytes(digest[1:5], 'big') % 1_000_000:06d}"
        cpa_id = digest[5:15].hex()
        attempt = 0
        asid = str(10**11 + int.from_bytes(digest[15:23], "big") % (9 * 10**11))
        while asid in asids:
            attempt += 1
            again = hashlib.blake2b(f"{seed}:{ods}:{attempt}".encode(), digest_size=8).digest()
            asid = str(10**11 + int.from_bytes(again, "big") % (9 * 10**11))
        asids.add(asid)
        interactions = list(GPCONNECT_INTERACTIONS)
        yield (
            {
                "nhsIDCode": ods,
                "nhsMHSPartyKey": party_key,
                "nhsMhsSvcIA": interactions,
                "nhsMHSEndPoint": [f"https://{host}/{ods}/STU3/1/gpconnect/"],
                "nhsMhsFQDN": host,
                "nhsMhsCPAId": cpa_id,
                "uniqueIdentifier": [cpa_id],
                "nhsMHSSyncReplyMode": "None",
                "nhsMHSAckRequested": "never",
                "nhsMHSDuplicateElimination": "never",
                "nhsMHSActor": [],
                "nhsMHSRetries": [],
                "nhsMHSRetryInterval": [],
                "nhsMHSPersistDuration": [],
                "nhsEPInteractionType": "FHIR",
            },
            {
                "nhsIDCode": ods,
                "nhsMHSPartyKey": party_key,
                "nhsAsSvcIA": list(interactions),
                "uniqueIdentifier": [asid],
                "nhsAsClient": [ods],
                "nhsMhsManufacturerOrg": supplier,
            },
        )


def load_directory(data_dir: Path | None, synthetic: int = 0, seed: int = 0) -> Directory:
    """The default data (or ``data_dir``'s files, instead or in addition) and ``synthetic``.

    Without ``data_dir``: NHS England's reference records and this project's additions. With
    it: the folder's ``mhs-records.json`` and ``accredited-system-records.json``, replacing the
    default data, or added to it when the folder's ``sandbox-data.json`` says
    ``{"mode": "add"}`` (so Spine's own intermediary records stay, and forward-reliable and
    forward-express interactions in custom data are answered).
    """
    if data_dir is None:
        mhs_raw = default_raw(MHS_FILE)
        as_raw = default_raw(AS_FILE)
    else:
        mhs_raw = load_raw(Path(data_dir) / MHS_FILE)
        as_raw = load_raw(Path(data_dir) / AS_FILE)
        if data_mode(Path(data_dir)) == "add":
            mhs_raw = default_raw(MHS_FILE) + mhs_raw
            as_raw = default_raw(AS_FILE) + as_raw
    interner = Interner()
    mhs = [normalise(r, interner) for r in mhs_raw]
    accredited = [normalise(r, interner) for r in as_raw]
    if synthetic:
        existing = {code for r in (*mhs, *accredited) for code in r.values("nhsIDCode")}
        for mhs_record, as_record in iter_synthetic(synthetic, seed, exclude=existing):
            mhs.append(normalise(mhs_record, interner))
            accredited.append(normalise(as_record, interner))
    return Directory(mhs, accredited)
