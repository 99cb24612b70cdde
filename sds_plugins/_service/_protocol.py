"""The HTTP protocol ``sds-plugins serve`` runs: the shared bounded one (header deadline, head
limits, a telling shutdown), its refusals in the service's own problem documents.

A module of its own so that uvicorn's worker processes (``--workers``) can import it by name:
``sds_plugins._service._protocol:ServiceProtocol``.
"""

from __future__ import annotations

from .._http_server import BoundedH11Protocol
from ._problems import MEDIA_TYPE, problem_body

__all__ = ["PROTOCOL_PATH", "ServiceProtocol"]

PROTOCOL_PATH = "sds_plugins._service._protocol:ServiceProtocol"


class ServiceProtocol(BoundedH11Protocol):
    """:class:`BoundedH11Protocol` answering ``431`` and ``400`` with the service's problem
    documents (``#problem-headers-too-large``, ``#problem-malformed-request``)."""

    def rejection(self, status: int, detail: str) -> tuple[bytes, bytes]:
        slug, error = (
            ("headers-too-large", "HeadersTooLarge")
            if status == 431
            else ("malformed-request", "MalformedRequest")
        )
        body = problem_body(
            slug, detail, error=error, correlation_id=None, retryable=False, retry_after_s=None
        )
        return MEDIA_TYPE.encode(), body
