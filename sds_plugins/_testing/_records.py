"""Directory record builders for tests: MHS records and accredited systems in the
LDAP-attribute form the sandbox loads (public as :mod:`sds_plugins.testing`'s)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

__all__ = ["accredited_system_record", "default_party_key", "mhs_record"]


def _digits(text: str, count: int) -> int:
    """A stable number of ``count`` digits derived from ``text`` (same input, same number)."""
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % int(10**count)


def _as_list(value: str | Iterable[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def default_party_key(ods: str) -> str:
    """The party key the builders give ``ods`` when none is passed: ``<ODS>-0000001``.

    Both builders use it, so an MHS record and an accredited system built for the same
    organisation without explicit keys join on party key, as one supplier's records would.
    """
    return f"{ods.strip().upper()}-0000001"


def mhs_record(
    ods: str,
    interactions: str | Iterable[str],
    *,
    party_key: str | None = None,
    address: str | Iterable[str] | None = None,
    fqdn: str | None = None,
    cpa_id: str | None = None,
    retries: int | None = None,
    retry_interval: str | None = None,
    persist_duration: str | None = None,
    duplicate_elimination: str | None = None,
    ack_requested: str | None = None,
    sync_reply_mode: str | None = None,
    actor: str | None = None,
    **attributes: Any,
) -> dict[str, Any]:
    """An MHS record (served as SDS ``/Endpoint``) in the LDAP-attribute form the sandbox loads.

    :param ods: the organisation's ODS code (``nhsIDCode``).
    :param interactions: one interaction id or several (``nhsMhsSvcIA``).
    :param party_key: defaults to :func:`default_party_key`.
    :param address: one address or several (each becomes one ``/Endpoint``); defaults to
        ``https://<fqdn>/``; pass ``[]`` for a record without an address.
    :param fqdn: defaults to ``mhs.<ods>.example.com``.
    :param cpa_id: defaults to a stable id derived from party key and interactions; it is also
        the record's ``uniqueIdentifier`` (the endpoint's ``mhs_id``).
    :param retries: and the other reliability keywords: ebXML reliability settings, omitted when
        ``None``. Durations are ISO-8601 (``"PT1M"``); flags are ``"always"``/``"never"``.
    :param attributes: any other LDAP attributes, added last (they override the above).

    A forward-reliable interaction (e.g. ``gp2gp:COPC_IN000001UK01``) is answered with Spine's
    intermediary address, so the sandbox needs Spine's own MHS records to answer it: add your
    records to the reference data (``sds_sandbox_factory(..., mode="add")``), which holds them.
    """
    ods = ods.strip().upper()
    interaction_list = _as_list(interactions)
    party_key = party_key or default_party_key(ods)
    fqdn = fqdn or f"mhs.{ods.lower()}.example.com"
    addresses = [f"https://{fqdn}/"] if address is None else _as_list(address)
    if cpa_id is None:
        cpa_id = f"S{_digits(party_key + ' '.join(interaction_list), 12):012d}"
    record: dict[str, Any] = {
        "nhsIDCode": ods,
        "nhsMHSPartyKey": party_key,
        "nhsMhsSvcIA": interaction_list,
        "nhsMHSEndPoint": addresses,
        "nhsMhsFQDN": fqdn,
        "nhsMhsCPAId": cpa_id,
        "uniqueIdentifier": [cpa_id],
    }
    reliability: dict[str, object | None] = {
        "nhsMHSRetries": None if retries is None else str(retries),
        "nhsMHSRetryInterval": retry_interval,
        "nhsMHSPersistDuration": persist_duration,
        "nhsMHSDuplicateElimination": duplicate_elimination,
        "nhsMHSAckRequested": ack_requested,
        "nhsMHSSyncReplyMode": sync_reply_mode,
        "nhsMHSActor": None if actor is None else [actor],
    }
    record.update({name: value for name, value in reliability.items() if value is not None})
    record.update(attributes)
    return record


def accredited_system_record(
    ods: str,
    interactions: str | Iterable[str],
    *,
    party_key: str | None = None,
    asid: str | None = None,
    manufacturer: str | None = "X26",
    client: str | None = None,
    **attributes: Any,
) -> dict[str, Any]:
    """An accredited-system record (served as SDS ``/Device``) in LDAP-attribute form.

    :param ods: the organisation's ODS code (``nhsIDCode``).
    :param interactions: one interaction id or several (``nhsAsSvcIA``).
    :param party_key: defaults to :func:`default_party_key`, so it joins the organisation's
        :func:`mhs_record` built without a key.
    :param asid: defaults to a stable 12-digit ASID derived from the party key.
    :param manufacturer: the supplier's ODS code (``nhsMhsManufacturerOrg``); ``None`` omits it.
    :param client: the organisation the system serves (the Device's ``owner``); defaults to
        ``ods``.
    :param attributes: any other LDAP attributes, added last (they override the above).
    """
    ods = ods.strip().upper()
    party_key = party_key or default_party_key(ods)
    record: dict[str, Any] = {
        "nhsIDCode": ods,
        "nhsMHSPartyKey": party_key,
        "nhsAsSvcIA": _as_list(interactions),
        # Real ASIDs are 12 digits and never start with 0.
        "uniqueIdentifier": [asid or str(10**11 + _digits(party_key, 11) % (9 * 10**11))],
        "nhsAsClient": [client or ods],
    }
    if manufacturer is not None:
        record["nhsMhsManufacturerOrg"] = manufacturer
    record.update(attributes)
    return record
