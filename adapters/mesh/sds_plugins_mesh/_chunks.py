"""Large messages: one envelope + a payload → the chunk requests MESH expects.

MESH takes at most 100 MB per request. A larger message is sent in chunks: chunk 1 is POSTed to
``/outbox`` like a small message, with ``mex-chunk-range: 1:n``; MESH answers with the
``message_id``; chunks 2..n go to ``/outbox/{message_id}/{k}`` with ``mex-chunk-range: k:n``.
Each chunk is gzipped on its own (``Content-Encoding: gzip``, the same on every chunk, as MESH
insists) and the recipient's client un-gzips each chunk as it downloads it, so the recipient
receives the original bytes.

**The first POST is never retried blindly.** It may have landed even though no answer came
back (a timeout after the upload finished): sending it again would give the recipient two
messages. :class:`ChunkedSend` hands the first request out once and refuses the second time
(:class:`MeshResendRefusedError`); find out first with :func:`recover_first_post` (MESH's
tracking interface) before routing a new envelope. Chunks 2..n are safe to retry (MESH stores
chunk k once), so :meth:`ChunkedSend.chunk_request` builds them as often as asked, each with a
fresh token.

``mex-content-compressed`` is *not* set here: it tells the recipient that the sender compressed
the *content* itself (they must decompress after download), while ``Content-Encoding: gzip`` is
transport compression MESH and the recipient's client undo. This matches NHS England's
mesh-client; pass the ``compressed`` option only when your payload is itself compressed.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
from sds_plugins import (
    DirectoryUnavailableError,
    InvalidInputError,
    RetryPolicy,
    RoutingEnvelope,
)
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, stop_before_delay

from ._adapter import DEFAULT_CONTENT_TYPE, MAX_REQUEST_BYTES
from ._auth import nhsmesh_authorization
from ._config import MeshCredentials
from ._errors import MeshResendRefusedError, parse_send_response

__all__ = ["DEFAULT_CHUNK_SIZE", "ChunkedSend", "chunk_requests", "send_chunked"]

#: Bytes of payload per chunk before compression: NHS England's mesh-client default, leaving
#: room under MESH's 100 MB per request even for data gzip cannot shrink.
DEFAULT_CHUNK_SIZE = 75 * 1024 * 1024

# Headers that belong to the first request only (they describe the message, not a chunk).


class ChunkedSend:
    """The requests for one message sent in chunks; see the module documentation for the rules.

    ``first_request()`` (once), then record MESH's answer with ``accept(response)`` (or pass
    ``message_id=`` yourself), then ``chunk_requests()`` for chunks 2..n. Every request gets a
    fresh NHSMESH token from ``credentials``, which must be the envelope's sender mailbox; the
    credentials are used, never stored in a request or an envelope beyond that token.
    """

    def __init__(
        self,
        envelope: RoutingEnvelope,
        payload: bytes,
        *,
        credentials: MeshCredentials,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        compress: bool = True,
    ) -> None:
        spec = envelope.request
        if envelope.adapter != "mesh" or spec.method != "POST" or not spec.url.endswith("/outbox"):
            raise InvalidInputError("not a MESH outbox envelope", field="envelope")
        if envelope.expired:
            raise InvalidInputError(
                "the envelope has expired; route again for a current mailbox", field="envelope"
            )
        if credentials.mailbox != envelope.source.mailbox_id:
            raise InvalidInputError(
                f"credentials are for mailbox {credentials.mailbox}, the envelope sends from "
                f"{envelope.source.mailbox_id} (MESH requires the token's mailbox to match)",
                field="credentials",
            )
        if not payload:
            raise InvalidInputError("MESH refuses an empty message", field="payload")
        if not 1 <= chunk_size <= MAX_REQUEST_BYTES:
            raise InvalidInputError(
                f"chunk_size must be between 1 and {MAX_REQUEST_BYTES} bytes", field="chunk_size"
            )
        self.envelope = envelope
        self.payload = payload
        self.chunk_size = chunk_size
        self.compress = compress
        self.total_chunks = max(1, math.ceil(len(payload) / chunk_size))
        #: MESH's id for the message, once :meth:`accept` has read it (or a chunk was built).
        self.message_id: str | None = None
        self._credentials = credentials
        self._first_issued = False

    @property
    def outbox_url(self) -> str:
        return self.envelope.request.url

    def first_request(self) -> httpx.Request:
        """Chunk 1 as a request to ``/outbox``. Refused the second time: never retry it blindly."""
        if self._first_issued:
            raise MeshResendRefusedError(
                "the first outbox POST of this message was already handed out; it may have "
                "landed, so it is never sent twice. Find out with recover_first_post (MESH's "
                "tracking interface) before sending the message again with a new envelope.",
                field="first_request",
            )
        self._first_issued = True
        headers = {
            name: value
            for name, value in self.envelope.request.headers.items()
            if name.lower() != "authorization"
        }
        content_type = _pop(headers, "content-type") or DEFAULT_CONTENT_TYPE
        if self.total_chunks > 1:
            # MESH stores a chunked message's type in mex-content-type; each chunk is octets.
            headers["Content-Type"] = DEFAULT_CONTENT_TYPE
            if content_type != DEFAULT_CONTENT_TYPE:
                headers["mex-content-type"] = content_type
        else:
            headers["Content-Type"] = content_type
        return self._request(self.outbox_url, 1, headers)

    def accept(self, response: httpx.Response) -> str:
        """Read MESH's answer to the first request: its ``message_id``, or the typed error."""
        self.message_id = parse_send_response(response)
        return self.message_id

    def chunk_request(self, number: int, *, message_id: str | None = None) -> httpx.Request:
        """Chunk ``number`` (2..n); safe to build again for a retry (a fresh token each time)."""
        if not 2 <= number <= self.total_chunks:
            raise InvalidInputError(
                f"chunk {number} does not exist: this message has chunks 2..{self.total_chunks} "
                "after the first request",
                field="number",
            )
        message_id = message_id or self.message_id
        if not message_id:
            raise InvalidInputError(
                "chunks 2..n need the message_id MESH gave the first request", field="message_id"
            )
        self.message_id = message_id
        headers = {"Accept": self.envelope.request.headers.get("Accept", "application/json")}
        headers["Content-Type"] = DEFAULT_CONTENT_TYPE
        return self._request(f"{self.outbox_url}/{message_id}/{number}", number, headers)

    def chunk_requests(self, message_id: str | None = None) -> Iterator[httpx.Request]:
        """Requests for chunks 2..n, in order (nothing when the message is one chunk)."""
        for number in range(2, self.total_chunks + 1):
            yield self.chunk_request(number, message_id=message_id)

    def _request(self, url: str, number: int, headers: dict[str, str]) -> httpx.Request:
        start = (number - 1) * self.chunk_size
        body = self.payload[start : start + self.chunk_size]
        if self.compress:
            body = gzip.compress(body, compresslevel=6, mtime=0)
            headers["Content-Encoding"] = "gzip"
        if len(body) > MAX_REQUEST_BYTES:
            raise InvalidInputError(
                f"chunk {number} is {len(body)} bytes; MESH takes at most {MAX_REQUEST_BYTES} "
                "per request: use a smaller chunk_size",
                field="chunk_size",
            )
        headers["mex-chunk-range"] = f"{number}:{self.total_chunks}"
        headers["Authorization"] = nhsmesh_authorization(self._credentials, now=datetime.now(UTC))
        return httpx.Request("POST", url, headers=headers, content=body)

    def __repr__(self) -> str:
        return (
            f"<ChunkedSend to {self.envelope.target.mailbox_id} {len(self.payload)} bytes in "
            f"{self.total_chunks} chunk(s), message_id={self.message_id!r}>"
        )


def _pop(headers: dict[str, str], name: str) -> str | None:
    for key in list(headers):
        if key.lower() == name:
            return headers.pop(key)
    return None


def chunk_requests(
    envelope: RoutingEnvelope,
    payload: bytes,
    *,
    credentials: MeshCredentials,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    compress: bool = True,
) -> ChunkedSend:
    """The chunked send of ``payload`` with ``envelope``'s headers (see :class:`ChunkedSend`)."""
    return ChunkedSend(
        envelope, payload, credentials=credentials, chunk_size=chunk_size, compress=compress
    )


async def send_chunked(
    client: httpx.AsyncClient, chunked: ChunkedSend, *, retry: RetryPolicy | None = None
) -> str:
    """Send every request of ``chunked`` with ``client``; returns MESH's ``message_id``.

    The first request is sent exactly once, whatever happens; chunks 2..n are retried on
    timeouts, connection errors, 429 and 5xx under ``retry`` (each attempt with a new token).
    ``client`` carries the client certificate (``cert=``/``verify=``) for real MESH.
    """
    message_id = chunked.accept(await client.send(chunked.first_request()))
    policy = retry or RetryPolicy()
    for number in range(2, chunked.total_chunks + 1):
        retrying = AsyncRetrying(
            stop=stop_after_attempt(policy.attempts) | stop_before_delay(policy.budget_s),
            wait=lambda state: policy.wait(state.attempt_number, None),
            retry=retry_if_exception_type((DirectoryUnavailableError, httpx.TransportError)),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                response = await client.send(chunked.chunk_request(number, message_id=message_id))
                if response.status_code not in (200, 202):
                    parse_send_response(response)  # raises the typed error
    return message_id
