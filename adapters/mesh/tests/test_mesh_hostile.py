"""A hostile MESH lookup answer ends in a typed error, never in ValueError or RecursionError,
and a mailbox id that could smuggle a header is refused. (Transport-level hostility, bombs and
trickles, is shared with SDS through ``get_with_retries`` and tested in the core's fault
matrix.)"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sds_plugins import (
    DirectoryError,
    DirectoryUnavailableError,
    MalformedResponseError,
    RetryPolicy,
)

from sds_plugins_mesh import MESH_ENVIRONMENTS, MeshSettings
from sds_plugins_mesh._lookup import MailboxQuery, MeshLookupSource, parse_lookup_response

FAST = RetryPolicy(attempts=2, backoff_s=0.001, max_backoff_s=0.002, budget_s=5)
QUERY = MailboxQuery(mesh_url=MESH_ENVIRONMENTS["int"], ods_code="X26", workflow_id="WF")


async def _lookup(response: httpx.Response) -> Any:
    source = MeshLookupSource(
        MeshSettings(url="int"),
        retry=FAST,
        transport=httpx.MockTransport(lambda request: response),
    )
    try:
        return await source.fetch(QUERY, correlation_id="6b1a2c3d-0000-4000-8000-000000000000")
    finally:
        await source.aclose()


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (httpx.Response(200, content=b"[" * 100_000 + b"]" * 100_000), MalformedResponseError),
        (httpx.Response(200, content=b"not json"), MalformedResponseError),
        (
            httpx.Response(200, json={"results": [{"mailbox_id": "X26OT1\r\nEvil: 1"}]}),
            MalformedResponseError,
        ),
        (httpx.Response(200, json={"results": [{"mailbox_id": "ßOT1"}]}), MalformedResponseError),
        (httpx.Response(200, json={"results": [{"mailbox_id": "X" * 65}]}), MalformedResponseError),
        (
            httpx.Response(503, headers=[(b"Retry-After", "²".encode())], content=b"{}"),
            DirectoryUnavailableError,
        ),
        (httpx.Response(500, content=b"[" * 100_000), DirectoryUnavailableError),
    ],
)
async def test_hostile_lookup_answers_are_typed(
    response: httpx.Response, expected: type[DirectoryError]
) -> None:
    with pytest.raises(expected) as raised:
        await _lookup(response)
    assert raised.value.correlation_id
    if isinstance(raised.value, DirectoryUnavailableError):
        after = raised.value.retry_after_s
        assert after is None or 0 <= after <= 86_400


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(
                st.sampled_from(
                    ["results", "mailbox_id", "mailbox_name", "address", "endpoint_type"]
                )
                | st.text(max_size=5),
                children,
                max_size=4,
            )
        ),
        max_leaves=20,
    )
)
def test_any_json_is_mailboxes_or_a_typed_error(body: object) -> None:
    try:
        mailboxes = parse_lookup_response(
            json.loads(json.dumps(body)), ods_code="X26", workflow_id="WF"
        )
    except MalformedResponseError:
        return
    for mailbox in mailboxes:
        assert re.fullmatch(r"[A-Z0-9_-]{1,64}", mailbox.mailbox_id)
